"""Anagram views (exact inverses, Gaussian-preserving), factorizations and animations."""
from __future__ import annotations

import math

import pytest
import torch

from diffaccel import functional as Fn
from diffaccel.pipelines import animation
from diffaccel.pipelines.factorizations import get_factorization, grayscale
from diffaccel.pipelines.views import PermutationView, get_view, list_views

ALL = list_views()


def test_registry_has_every_view():
    assert set(ALL) >= {"identity", "flip", "rotate_cw", "rotate_ccw", "rotate_180", "negate", "skew",
                        "patch_permute", "pixel_permute", "jigsaw", "inner_circle"}
    with pytest.raises(ValueError, match="unknown view 'sideways'.*flip"):
        get_view("sideways")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_inverse_is_exact(name, dtype):
    v = get_view(name)
    x = torch.randn(3, 3, 32, 32).to(dtype)
    y = v.view(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.equal(v.inverse(y), x)
    assert torch.equal(v.view(v.inverse(x)), x)
    if name != "identity":
        assert not torch.equal(y, x)


@pytest.mark.parametrize("name", ALL)
def test_view_keeps_gaussian_noise_gaussian(name):
    v = get_view(name)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = v.view(x)
    if isinstance(v, PermutationView):
        # a permutation of positions: every sample keeps exactly its multiset of values
        assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    flat = y.flatten()
    assert abs(flat.mean().item()) < 0.01 and abs(flat.std().item() - 1) < 0.01
    # normality: empirical CDF at a few points vs Phi, and per-pixel independence of neighbours
    for q in (-1.5, -0.5, 0.0, 0.5, 1.5):
        phi = 0.5 * (1 + math.erf(q / math.sqrt(2)))
        assert abs((flat < q).float().mean().item() - phi) < 0.005
    neigh = (y[..., :, 1:] * y[..., :, :-1]).mean().item()
    assert abs(neigh) < 0.01


def test_flip_is_upside_down_and_rotations():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(get_view("flip")(x), x.flip(2))
    assert torch.equal(get_view("rotate_180")(x), x.flip(2).flip(3))
    assert torch.equal(get_view("rotate_cw")(x), torch.rot90(x, -1, (2, 3)))
    assert torch.equal(get_view("rotate_ccw")(x), torch.rot90(x, 1, (2, 3)))
    assert torch.equal(get_view("negate")(x), -x)


def test_seeded_permutations_are_fixed():
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(get_view("pixel_permute", seed=3)(x), get_view("pixel_permute", seed=3)(x))
    assert not torch.equal(get_view("pixel_permute", seed=3)(x), get_view("pixel_permute", seed=4)(x))


def test_inner_circle_leaves_the_ring():
    x = torch.randn(1, 1, 32, 32)
    y = get_view("inner_circle")(x)
    assert torch.equal(y[..., 0, :], x[..., 0, :]) and torch.equal(y[..., :, 0], x[..., :, 0])
    assert not torch.equal(y[..., 16, 16], x[..., 16, 16]) or not torch.equal(y, x)


def test_view_shape_errors():
    with pytest.raises(ValueError, match="square"):
        get_view("rotate_cw")(torch.zeros(1, 1, 8, 6))
    with pytest.raises(ValueError, match="divisible"):
        get_view("patch_permute", num_patches=4)(torch.zeros(1, 1, 10, 10))
    with pytest.raises(ValueError, match="NCHW"):
        get_view("flip")(torch.zeros(8, 8))


# ----------------------------------------------------------------------------- factorizations
@pytest.mark.parametrize("name,kw", [("high_low", {"kernel_size": 9}), ("triple", {"kernel_size": 9}),
                                     ("color_gray", {}), ("motion_blur", {})])
def test_factorization_components_sum_to_image(name, kw):
    f = get_factorization(name, **kw)
    x = torch.randn(2, 3, 32, 32)
    parts = f.components(x)
    assert len(parts) == f.num_components
    torch.testing.assert_close(sum(parts), x, atol=1e-5, rtol=1e-5)
    # combining k copies of one estimate gives it back (what lets CFG share one unconditional pass)
    torch.testing.assert_close(f.combine([x] * f.num_components), x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="combine"):
        f.combine([x] * (f.num_components + 1))


def test_high_low_is_spec_hybrid():
    a, b = torch.randn(2, 1, 3, 40, 40).unbind(0)
    f = get_factorization("high_low")
    expect = Fn.gaussian_blur(a, 33, 2.0) + (b - Fn.gaussian_blur(b, 33, 2.0))
    torch.testing.assert_close(f.combine([a, b]), expect, atol=1e-5, rtol=1e-5)


def test_color_gray():
    x = torch.randn(1, 3, 8, 8)
    g = grayscale(x)
    assert torch.allclose(g[:, 0], x.mean(1)) and torch.allclose(g[:, 0], g[:, 2])
    with pytest.raises(ValueError, match="unknown factorization"):
        get_factorization("fourier")


# ----------------------------------------------------------------------------- animation
def test_make_gif_and_view_animation(tmp_path):
    from PIL import Image

    frames = [torch.rand(2, 3, 16, 16) * 2 - 1 for _ in range(4)]
    p = animation.make_gif(frames, tmp_path / "a" / "run.gif")
    im = Image.open(p)
    assert im.n_frames == 4 and im.size == (32, 16)
    img = torch.rand(3, 16, 16) * 2 - 1
    for v in ("rotate_cw", "flip", "negate", "jigsaw"):
        fr = animation.view_transition_frames(img, v, 6)
        assert len(fr) == 6 and torch.equal(fr[-1], get_view(v)(img[None])[0])
        assert torch.allclose(fr[0], img, atol=1e-5)
        animation.animate_view(img, v, tmp_path / f"{v}.gif", num_frames=6)
    with pytest.raises(ValueError, match="at least one frame"):
        animation.make_gif([], tmp_path / "x.gif")


def test_rotation_frames_turn_the_right_way():
    img = torch.zeros(1, 32, 32)
    img[:, 4:12, 14:18] = 1  # a bar near the top
    fr = animation.view_transition_frames(img, "rotate_cw", 11)
    target = get_view("rotate_cw")(img[None])[0]
    near_end = fr[-2]
    other = get_view("rotate_ccw")(img[None])[0]
    assert (near_end - target).abs().mean() < (near_end - other).abs().mean()
