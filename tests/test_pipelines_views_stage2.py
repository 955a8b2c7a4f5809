"""Anagram views in IF's stage II, and the channel rule in the anagram loop (Geng et al. 2024).

The reference runs the anagram's views in stage II too: every view sees the 6-channel input
``[x_t, upscaled stage-I image]`` viewed as a whole, its 6-channel output is inverted with the
channel rule (the sign on the noise estimate only), CFG is applied per view, and eps and the
learned variance are averaged over the views. These tests transcribe that loop with one
stage-II call per view and prompt and compare it with ``techniques.upsample_stage2(...,
views=...)``. Factorizations in stage II: the stage-I filters scaled by the upsampling factor.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from diffaccel import functional as Fn  # noqa: E402
from diffaccel.pipelines import techniques as T  # noqa: E402
from diffaccel.pipelines.loading import load_if_stage  # noqa: E402
from diffaccel.pipelines.views import get_view  # noqa: E402
from test_pipelines_if import SIZE, _embeds, den, gen, if_dirs  # noqa: E402,F401  (fixtures; tests/ is on sys.path)

NOISE_LEVEL = 250


@pytest.fixture(scope="module")
def den2(if_dirs):  # noqa: F811
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    d = load_if_stage(if_dirs / "stage2", stage=2, device="cpu", prompt_embeds=_embeds())
    mp.undo()
    return d


def _low(seed=0):
    return torch.rand(1, 3, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _reference_stage2(d2, low, conds, views, steps, g, guidance):
    """The reference's ``sample_stage_2`` (reduction "mean") on our denoiser, one call per view and prompt.

    Draw order as ``upsample_stage2``: the low-res noise, x_T, then one step noise per step.
    """
    _, H, W = d2.sample_shape
    up = F.interpolate(low, (H, W), mode="bilinear", align_corners=True)
    up = Fn.add_noise(up, torch.randn(up.shape, generator=g), d2.noising_alphas_cumprod, NOISE_LEVEL)
    x = torch.randn(up.shape, generator=g)
    ts = T.inference_timesteps(steps, d2.num_train_timesteps)
    for t, t_prev in zip(ts, ts[1:]):
        eps, var = [], []
        for v, p in zip(views, conds):
            bound = d2.with_low_res(v.view(up), NOISE_LEVEL)  # [x_t, upscaled] viewed as a whole
            xv = v.view(x)
            u, c = bound(xv, t, ""), bound(xv, t, p)
            inv_u = v.inverse(torch.cat([u.eps, u.variance], 1), noise_channels=3)
            inv_c = v.inverse(torch.cat([c.eps, c.variance], 1), noise_channels=3)
            eps.append(inv_u[:, :3] + guidance * (inv_c[:, :3] - inv_u[:, :3]))
            var.append(inv_c[:, 3:])
        noise = torch.randn(x.shape, generator=g)
        x = Fn.ddpm_step(x, sum(eps) / len(eps), d2.alphas_cumprod, t, t_prev, noise=noise,
                         variance="learned_range", predicted_variance=sum(var) / len(var))
    return x


@pytest.mark.parametrize("views", [("identity", "flip"), ("identity", "negate"),
                                   ("identity", get_view("pixel_permute", base_size=SIZE // 2))])
def test_stage2_anagram_is_the_per_view_combine(den2, views):
    """Stage II of an anagram: each view's stage-II estimate (on its own viewed low-res image, with its
    own prompt), inverted and averaged — the upright reading from prompt 1, the viewed one from prompt 2.
    The pixel permutation is built for the stage-I size (16 px) and acts on 2x2 blocks at 32 px."""
    low, conds = _low(), ["a man", "a dog"]
    vs = [get_view(v) for v in views]
    got = T.upsample_stage2(den2, low, cond=conds, views=views, num_inference_steps=3, guidance_scale=4.0,
                            noise_level=NOISE_LEVEL, generator=gen(0), dynamic_threshold=None)
    expect = _reference_stage2(den2, low, conds, vs, 3, gen(0), 4.0)
    torch.testing.assert_close(got.image, expect, atol=1e-4, rtol=1e-4)


def test_stage2_single_view_is_plain_stage2(den2):
    """Where the identity holds exactly: an anagram whose views are all the identity with one prompt is
    plain stage II (every view's estimate is the same)."""
    low = _low(1)
    kw = dict(num_inference_steps=3, noise_level=NOISE_LEVEL, dynamic_threshold=None)
    plain = T.upsample_stage2(den2, low, cond="a dog", generator=gen(0), **kw)
    both = T.upsample_stage2(den2, low, cond=["a dog", "a dog"], views=("identity", "identity"), generator=gen(0),
                             **kw)
    # Equal up to float rounding: the views' batch of 2 and the plain batch of 1 run the UNet's
    # convolutions through different kernels (thread-count dependent: 1 thread gave 1.2e-5 after
    # 3 steps), so the tolerance is the per-view test's; a wrong combine is off by far more.
    torch.testing.assert_close(both.image, plain.image, atol=1e-4, rtol=1e-4)


def test_stage1_anagram_keeps_the_variance_sign(den):  # noqa: F811
    """Stage I with negate: the learned variance is averaged with the spatial inverse only (the
    reference's channel rule), not negated."""
    x = torch.randn(1, 3, SIZE, SIZE, generator=gen(0))
    seen = []
    T.visual_anagram(den, ["a man", "a dog"], ("identity", "negate"), 1, [690, 660], 7.0, gen(0),
                     callback=seen.append)

    def cfg(xx, p):
        u, c = den(xx, 690, ""), den(xx, 690, p)
        return u.eps + 7.0 * (c.eps - u.eps), c.variance

    e1, v1 = cfg(x, "a man")
    e2, v2 = cfg(-x, "a dog")
    expect = Fn.ddpm_step(x, (e1 - e2) / 2, den.alphas_cumprod, 690, 660, noise=seen[0]["noise"],
                          variance="learned_range", predicted_variance=(v1 + v2) / 2)
    torch.testing.assert_close(seen[0]["x"], expect, atol=1e-4, rtol=1e-4)


def test_factorization_filters_scale_with_the_resolution():
    """The reference's rule: kernel ``k f + ((f + 1) mod 2)``, sigma ``sigma f`` (33, 2 -> 133, 8 at 256 px)."""
    from diffaccel.pipelines.factorizations import ColorGray, HighLow, MotionBlur, TripleBand

    assert HighLow().scaled(4) == HighLow(133, 8.0) and HighLow(7, 1.0).scaled(1) == HighLow(7, 1.0)
    assert HighLow(7, 1.5).scaled(3) == HighLow(21, 4.5)
    assert TripleBand(9, 3.0, 1.0).scaled(2) == TripleBand(19, 6.0, 2.0)
    assert MotionBlur(9, 30.0).scaled(4) == MotionBlur(37, 30.0)
    assert ColorGray().scaled(4) == ColorGray()
    with pytest.raises(ValueError, match="factor"):
        HighLow().scaled(0)


def test_stage2_hybrid_is_the_scaled_filter_on_the_noise(den2):
    """Stage II of a hybrid (CFG): the model input is the plain ``[x_t, upscaled]`` under each prompt, and
    the noise estimate is ``lowpass(eps_1) + highpass(eps_2)`` with the stage-I filter (7, 1.0) scaled by
    the upsampling factor 2 (15, 2.0); the learned variance is the conditional passes' mean. One step,
    against a direct computation."""
    from diffaccel.pipelines.factorizations import HighLow

    low, g = _low(2), 4.0
    seen = []
    T.upsample_stage2(den2, low, cond=["a man", "a dog"], factorization=HighLow(7, 1.0), num_inference_steps=2,
                      guidance_scale=g, noise_level=NOISE_LEVEL, generator=gen(0), dynamic_threshold=None,
                      callback=lambda info: seen.append({k: v.clone() if torch.is_tensor(v) else v
                                                         for k, v in info.items()}))  # x is the loop's buffer
    _, H, W = den2.sample_shape
    src = gen(0)
    up = F.interpolate(low, (H, W), mode="bilinear", align_corners=True)
    up = Fn.add_noise(up, torch.randn(up.shape, generator=src), den2.noising_alphas_cumprod, NOISE_LEVEL)
    x = torch.randn(up.shape, generator=src)
    t, t_prev = seen[0]["t"], seen[0]["t_prev"]
    bound = den2.with_low_res(up, NOISE_LEVEL)
    u, c1, c2 = bound(x, t, ""), bound(x, t, "a man"), bound(x, t, "a dog")

    def expect(kernel_size, sigma):
        blur = lambda e: Fn.gaussian_blur(e, kernel_size, sigma, backend="torch")  # noqa: E731
        eps_c = blur(c1.eps) + c2.eps - blur(c2.eps)
        return Fn.ddpm_step(x, u.eps + g * (eps_c - u.eps), den2.alphas_cumprod, t, t_prev, noise=seen[0]["noise"],
                            variance="learned_range", predicted_variance=(c1.variance + c2.variance) / 2)

    torch.testing.assert_close(seen[0]["x"], expect(15, 2.0), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(seen[0]["x"], expect(7, 1.0), atol=1e-3)  # the unscaled filter is another image
    with pytest.raises(ValueError, match="2 conditions"):
        T.upsample_stage2(den2, low, cond="a dog", factorization="high_low", num_inference_steps=1)
    with pytest.raises(ValueError, match="not both"):
        T.upsample_stage2(den2, low, cond=["a", "b"], views=("identity", "flip"), factorization="high_low")
    with pytest.raises(ValueError, match="one view per prompt"):
        T.upsample_stage2(den2, low, cond=["a man", "a dog"], views=("identity", "flip", "negate"))
