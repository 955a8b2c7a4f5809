"""Anagram views (exact signed permutations, the reference's definitions, 64 -> 256), factorizations, animations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffaccel import functional as Fn
from diffaccel.errors import ArgumentError
from diffaccel.pipelines import animation
from diffaccel.pipelines.factorizations import get_factorization, grayscale
from diffaccel.pipelines.views import (JIGSAW_CLASSES, PermutationView, combine_estimates, get_view, jigsaw_pieces,
                                       list_views)

ALL = list_views()
#: views whose native (per-size) permutation already commutes with nearest-neighbour upsampling
NATIVELY_CONSISTENT = {"identity", "flip", "rotate_cw", "rotate_ccw", "rotate_180", "negate", "patch_permute"}


def make(name, size, **kw):
    """The view with options that suit ``size`` (28 px is not divisible into 8x8 patches)."""
    if name == "patch_permute" and size % 8:
        kw.setdefault("num_patches", 4)
    return get_view(name, **kw)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def up(x, m=4):
    return F.interpolate(x, scale_factor=m, mode="nearest")


def test_registry_has_every_view():
    assert set(ALL) == {"identity", "flip", "rotate_cw", "rotate_ccw", "rotate_180", "negate", "skew",
                        "patch_permute", "pixel_permute", "jigsaw", "inner_circle", "square_hinge"}
    with pytest.raises(ArgumentError, match="unknown view 'sideways'.*flip"):
        get_view("sideways")
    with pytest.raises(ArgumentError, match=r"no option.*'angle'.*'quarter_turns', 'radius'"):
        get_view("inner_circle", radius=0.5, angle=90)
    with pytest.raises(ArgumentError, match="num_patches"):
        get_view("patch_permute", num_patches=0)
    with pytest.raises(ArgumentError, match="base_size"):
        get_view("flip", base_size=0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("size", [28, 64, 256])
def test_inverse_is_exact(name, dtype, size):
    v = make(name, size)
    x = randn(2, 3, size, size).to(dtype)
    y = v.view(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.equal(v.inverse(y), x)
    assert torch.equal(v.view(v.inverse(x)), x)
    if name != "identity":
        assert not torch.equal(y, x)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("size", [28, 32])
def test_view_is_a_signed_permutation_matrix(name, size):
    """The view's matrix (its action on the standard basis) has one +-1 per row and column: orthogonal,
    so N(0, I) noise stays N(0, I) exactly."""
    v = make(name, size)
    n = size * size
    basis = torch.eye(n).reshape(n, 1, size, size)
    M = v.view(basis).reshape(n, n).T  # column j: the image of basis vector j
    assert set(M.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal((M != 0).sum(0), torch.ones(n, dtype=torch.int64))
    assert torch.equal((M != 0).sum(1), torch.ones(n, dtype=torch.int64))
    assert torch.equal(M @ M.T, torch.eye(n))
    # the same sign for every pixel: a negation or a pure permutation
    assert set(M.sum(0).tolist()) == {float(v.sign)}
    # and the inverse is the transpose
    Minv = v.inverse(basis).reshape(n, n).T
    assert torch.equal(Minv, M.T)


@pytest.mark.parametrize("name", ALL)
def test_view_keeps_gaussian_noise_gaussian(name):
    v = make(name, 32)
    x = randn(64, 3, 32, 32)
    y = v.view(x)
    if isinstance(v, PermutationView):
        # a permutation of positions: every sample keeps exactly its multiset of values
        assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    flat = y.flatten()
    assert abs(flat.mean().item()) < 0.01 and abs(flat.std().item() - 1) < 0.01
    for q in (-1.5, -0.5, 0.0, 0.5, 1.5):
        phi = 0.5 * (1 + math.erf(q / math.sqrt(2)))
        assert abs((flat < q).float().mean().item() - phi) < 0.005
    neigh = (y[..., :, 1:] * y[..., :, :-1]).mean().item()
    assert abs(neigh) < 0.01


# ----------------------------------------------------------------------------- the channel rule
@pytest.mark.parametrize("name", ALL)
def test_six_channel_rule(name):
    """IF's output is [eps (3), learned variance (3)]: the sign applies to eps only."""
    v = make(name, 32)
    out = randn(2, 6, 32, 32)
    inv = v.inverse(out, noise_channels=3)
    assert torch.equal(inv[:, :3], v.inverse(out[:, :3]))
    assert torch.equal(inv[:, 3:], v.inverse_variance(out[:, 3:]))
    # the variance part is the spatial inverse alone: viewing it back gives sign * original
    assert torch.equal(v.view(v.inverse_variance(out)), v.sign * out)
    # view acts on all channels alike (stage II views [x_t, upscaled stage-I image] together)
    assert torch.equal(v.view(out)[:, 3:], v.view(out[:, 3:]))


def test_negate_leaves_variance_channels_alone():
    v = get_view("negate")
    out = randn(1, 6, 8, 8)
    inv = v.inverse(out, noise_channels=3)
    assert torch.equal(inv[:, :3], -out[:, :3]) and torch.equal(inv[:, 3:], out[:, 3:])
    assert torch.equal(v.inverse(out), -out)  # without the rule: a noise estimate, all channels
    assert torch.equal(v.view(out), -out)
    for bad in (7, -1, 1.5, True):
        with pytest.raises(ArgumentError, match="noise_channels"):
            v.inverse(out, noise_channels=bad)


def test_combine_estimates_is_the_reference_reduction():
    """A transcription of the reference's stage-I/II loop: inverse_view on each 6-channel output, split
    into eps and variance, mean over the views."""
    views = [get_view(n) for n in ("identity", "negate", "jigsaw", "skew")]
    outs = [randn(1, 6, 32, 32, seed=i) for i in range(len(views))]
    inverted = [v.inverse(o, noise_channels=3) for v, o in zip(views, outs)]
    ref_eps = torch.stack([o[:, :3] for o in inverted]).mean(0)
    ref_var = torch.stack([o[:, 3:] for o in inverted]).mean(0)
    eps, var = combine_estimates(views, [o[:, :3] for o in outs], [o[:, 3:] for o in outs])
    torch.testing.assert_close(eps, ref_eps, rtol=0, atol=1e-6)
    torch.testing.assert_close(var, ref_var, rtol=0, atol=1e-6)
    assert combine_estimates(views, [o[:, :3] for o in outs])[1] is None
    with pytest.raises(ArgumentError, match="one estimate per view"):
        combine_estimates(views, outs[:2])


# ----------------------------------------------------------------------------- 64 -> 256
@pytest.mark.parametrize("name", ALL)
def test_stage2_size_is_consistent_with_stage1(name):
    """A view built for 64 px acts on 256 px as its 64-px permutation on 4x4 blocks:
    nearest-neighbour upsampling commutes with it, so IF's stage II sees stage I's arrangement."""
    v = get_view(name)
    x = randn(2, 3, 64, 64)
    assert torch.equal(up(v.view(x)), v.view(up(x)))
    assert torch.equal(up(v.inverse(x)), v.inverse(up(x)))
    assert torch.equal(up(v.view(x), 2), v.view(up(x, 2)))  # any multiple of the base size


@pytest.mark.parametrize("name", ALL)
def test_native_views_and_consistency(name):
    """Built natively at each size (``base_size=None``), only the views defined by a grid or an exact
    symmetry commute with upsampling; the others draw a finer picture at 256 px (a new random pixel
    order, a rounder disc, 85-px hinge squares, finer knobs, skew offsets of a finer column index)."""
    opts = {} if name in ("identity", "negate") else {"base_size": None}
    v = get_view(name, **opts)
    x = randn(1, 3, 64, 64)
    assert torch.equal(up(v.view(x)), v.view(up(x))) == (name in NATIVELY_CONSISTENT)


def test_base_size_block_form_and_native_sizes():
    v = get_view("pixel_permute")
    assert v.block(256, 256) == 4 and v.block(64, 64) == 1 and v.block(28, 28) == 1 and v.block(96, 96) == 1
    p64, _ = v.perm(64, 64)
    p256, _ = v.perm(256, 256)
    # pixel (4r + a, 4c + b) of the 256 view comes from block p64[r, c], same offset (a, b)
    R, C = 4 * 5 + 3, 4 * 17 + 1
    src = int(p64[5 * 64 + 17])
    assert int(p256[R * 256 + C]) == (4 * (src // 64) + 3) * 256 + 4 * (src % 64) + 1
    assert not torch.equal(get_view("pixel_permute", base_size=None).perm(256, 256)[0], p256)


# ----------------------------------------------------------------------------- the reference's views
def test_flip_is_upside_down_and_rotations():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(get_view("flip")(x), x.flip(2))
    assert torch.equal(get_view("rotate_180")(x), x.flip(2).flip(3))
    assert torch.equal(get_view("rotate_cw")(x), torch.rot90(x, -1, (2, 3)))
    assert torch.equal(get_view("rotate_ccw")(x), torch.rot90(x, 1, (2, 3)))
    assert torch.equal(get_view("negate")(x), -x)


def _reference_skew(im, factor=1.5):
    """Transcribed from the reference's skew: column i rolled by int(factor * (i - h // 2)) along H."""
    c, h, w = im.shape
    cols = []
    for i in range(w):
        d = int(factor * (i - h // 2))
        cols.append(im[:, :, i].roll(d, dims=1))
    return torch.stack(cols, dim=2)


@pytest.mark.parametrize("size", [(64, 64), (28, 28), (33, 33), (20, 31)])
def test_skew_matches_reference(size):
    x = randn(2, 3, *size)
    v = get_view("skew")
    assert torch.equal(v(x), torch.stack([_reference_skew(xi) for xi in x]))
    # truncation, not rounding: column 1 of 64 moves int(1.5 * -31) = -46 rows, round() would say -46 too,
    # but column 2 moves int(-45.0) = -45 and column 3 int(-43.5) = -43 (round: -44)
    col = v(torch.arange(64.0)[None, None, :, None].expand(1, 1, 64, 64))[0, 0, :, 3]
    assert torch.equal(col, torch.arange(64.0).roll(-43))


def _reference_inner_circle_perm(im_size, r):
    """Transcribed from the reference: pixel centres at i - size // 2 + 0.5, the disc x^2 + y^2 < r^2 turned 180."""
    perm = []
    for iy in range(im_size):
        for ix in range(im_size):
            x, y = ix - im_size // 2 + 0.5, iy - im_size // 2 + 0.5
            if x ** 2 + y ** 2 < r ** 2:
                x, y = -x, -y
            perm.append(int(x + im_size // 2 - 0.5) + int(y + im_size // 2 - 0.5) * im_size)
    return torch.tensor(perm)


def test_inner_circle_matches_reference_and_leaves_the_ring():
    v = get_view("inner_circle")
    assert torch.equal(v.perm(64, 64)[0], _reference_inner_circle_perm(64, 24))
    x = randn(1, 1, 32, 32)
    y = v(x)
    assert torch.equal(y[..., 0, :], x[..., 0, :]) and torch.equal(y[..., :, 0], x[..., :, 0])
    assert torch.equal(y[..., 16, 16], x[..., 15, 15])  # half a turn about the centre
    q = get_view("inner_circle", quarter_turns=1)(x)  # ours as an option: a quarter turn
    assert torch.equal(q[..., 16, 16], x[..., 16, 15])


def test_patch_permute_default_is_8x8():
    v = get_view("patch_permute")
    x = torch.arange(64.0 * 64).reshape(1, 1, 64, 64)
    y = v(x)
    tiles = y.reshape(8, 8, 8, 8).permute(0, 2, 1, 3).reshape(64, 8, 8)
    src = x.reshape(8, 8, 8, 8).permute(0, 2, 1, 3).reshape(64, 8, 8)
    order = [int((src[:, 0, 0] == t[0, 0]).nonzero()) for t in tiles]
    assert sorted(order) == list(range(64)) and order != list(range(64))
    assert all(torch.equal(t, src[o]) for t, o in zip(tiles, order))  # whole 8x8-px patches move
    with pytest.raises(ArgumentError, match="divisible by 8"):
        v(torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize("size", [63, 64, 65, 28, 30])
def test_square_hinge(size):
    """3x3 sub-squares of side size // 3 turned a quarter in place, clockwise where (i + j) is even."""
    v = get_view("square_hinge", base_size=None)
    x = randn(1, 2, size, size)
    y = v(x)
    q = size // 3
    expect = x.clone()
    for i in range(3):
        for j in range(3):
            blk = x[..., i * q:(i + 1) * q, j * q:(j + 1) * q]
            expect[..., i * q:(i + 1) * q, j * q:(j + 1) * q] = torch.rot90(blk, -1 if (i + j) % 2 == 0 else 1, (2, 3))
    assert torch.equal(y, expect)
    # the leftover rows / columns stay put; the centre square turns clockwise
    assert torch.equal(y[..., 3 * q:, :], x[..., 3 * q:, :]) and torch.equal(y[..., :, 3 * q:], x[..., :, 3 * q:])
    assert torch.equal(y[..., q, 2 * q - 1], x[..., q, q])  # top-left of the centre goes to its top-right
    assert (3 * q == size) == (size % 3 == 0)


# ----------------------------------------------------------------------------- jigsaw
def _rigid_motion(src: torch.Tensor, dst: torch.Tensor):
    """The quarter turn k with dst = rot_k(src) + t for every point ([P, 2] row/col), or None."""
    for k in range(4):
        a = src.clone().float()
        for _ in range(k):  # a quarter turn clockwise: (r, c) -> (c, -r)
            a = torch.stack([a[:, 1], -a[:, 0]], 1)
        t = dst.float() - a
        if torch.equal(t, t[:1].expand_as(t)):
            return k
    return None


@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_jigsaw_pieces_keep_their_shape(size):
    label = jigsaw_pieces(size)
    v = get_view("jigsaw", base_size=None)
    moved = v(label[None, None].double())[0, 0].long()  # at each place: the id of the piece that lands there
    cls = [JIGSAW_CLASSES[i // 4] for i in range(16)]
    assert sorted(set(cls)) == ["corner", "edge", "interior"]
    landed = {}
    for q in range(16):
        ids = moved[label == q].unique().tolist()
        assert len(ids) == 1, f"place {q} is filled by pieces {ids}"  # exactly one piece fills each place
        p = ids[0]
        assert cls[p] == cls[q]  # corners stay corners, edges edges, interior interior
        landed[p] = q
        # the piece moved rigidly: its pixels are a turned and shifted copy of itself
        src = (label == p).nonzero()
        perm = v.perm(size, size)[1]  # inverse: where each source pixel lands
        dst_flat = perm[src[:, 0] * size + src[:, 1]]
        dst = torch.stack([dst_flat // size, dst_flat % size], 1)
        assert _rigid_motion(src, dst) is not None
    assert sorted(landed) == list(range(16)) and any(p != q for p, q in landed.items())
    # real pieces: every piece has knobs or holes (its pixels are not its grid cell); 2-px cells have no room
    s = size // 4
    for p in range(16 if size > 8 else 0):
        r, c = (label == p).nonzero().float().mean(0).div(s).floor().long().tolist()
        cell = torch.zeros(size, size, dtype=torch.bool)
        cell[r * s:(r + 1) * s, c * s:(c + 1) * s] = True
        assert not torch.equal(label == p, cell)
    # the four corners, the eight edges and the four interior pieces each have one shape
    shapes = {}
    for p in range(16):
        a = (label == p).nonzero()
        forms = []  # a canonical form: the smallest of the four turns, shifted to the origin
        for _ in range(4):
            a = torch.stack([a[:, 1], -a[:, 0]], 1)
            b = a - a.min(0).values
            forms.append(tuple(sorted(map(tuple, b.tolist()))))
        shapes.setdefault(cls[p], set()).add(min(forms))
    assert all(len(f) == 1 for f in shapes.values())
    assert len(set().union(*shapes.values())) == (3 if size > 8 else 1)  # three shapes (squares at 8 px)


def test_jigsaw_errors_and_seed():
    with pytest.raises(ArgumentError, match="multiple of 4"):
        get_view("jigsaw")(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ArgumentError, match="square"):
        get_view("jigsaw")(torch.zeros(1, 1, 32, 16))
    x = randn(1, 1, 32, 32)
    assert not torch.equal(get_view("jigsaw", seed=1)(x), get_view("jigsaw", seed=2)(x))


def test_seeded_permutations_are_fixed():
    x = randn(1, 1, 16, 16)
    assert torch.equal(get_view("pixel_permute", seed=3)(x), get_view("pixel_permute", seed=3)(x))
    assert not torch.equal(get_view("pixel_permute", seed=3)(x), get_view("pixel_permute", seed=4)(x))


def test_view_shape_errors():
    with pytest.raises(ArgumentError, match="square"):
        get_view("rotate_cw")(torch.zeros(1, 1, 8, 6))
    with pytest.raises(ArgumentError, match="divisible"):
        get_view("patch_permute", num_patches=4)(torch.zeros(1, 1, 10, 10))
    with pytest.raises(ArgumentError, match="NCHW"):
        get_view("flip")(torch.zeros(8, 8))
    with pytest.raises(TypeError, match="NCHW"):
        get_view("negate").inverse([1.0])


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
