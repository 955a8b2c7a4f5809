"""Part A on small randomly initialised IF-architecture UNets, saved and loaded back offline (SPEC Part A)."""
from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel  # noqa: E402

from diffaccel import functional as Fn  # noqa: E402
from diffaccel.pipelines import techniques as T  # noqa: E402
from diffaccel.pipelines.denoisers import IF_SCHEDULER_CONFIG, DiffusersDenoiser, IFDenoiser  # noqa: E402
from diffaccel.pipelines.loading import load_if_stage  # noqa: E402

E = 32  # embedding width (4096 for the real IF)
SIZE = 32
SHORT = T.strided_timesteps(990, 90)  # 12 steps: enough to exercise every path, fast on CPU


def tiny_if_unet(stage: int = 1) -> UNet2DConditionModel:
    """IF's UNet family (ResNet/SimpleCrossAttn blocks, text_proj, scale-shift) at toy width."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=SIZE, in_channels=3 if stage == 1 else 6, out_channels=6, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32, encoder_hid_dim=E, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
        act_fn="gelu", norm_num_groups=8, class_embed_type="timestep" if stage == 2 else None)


def _embeds():
    g = torch.Generator().manual_seed(1)
    return {p: torch.randn(1, 77, E, generator=g) for p in ["", "a high quality photo", "an oil painting",
                                                             "a rocket", "a man", "a dog"]}


@pytest.fixture(scope="module")
def if_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("if")
    for stage in (1, 2):
        d = root / f"stage{stage}"
        tiny_if_unet(stage).save_pretrained(d / "unet")
        DDPMScheduler.from_config(IF_SCHEDULER_CONFIG).save_pretrained(d / "scheduler")
        if stage == 2:
            DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(d / "image_noising_scheduler")
    return root


@pytest.fixture(scope="module")
def den(if_dirs):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    d = load_if_stage(if_dirs / "stage1", stage=1, device="cpu", prompt_embeds=_embeds())
    mp.undo()
    return d


def _img(seed=0, n=1):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- loading
def test_load_if_stage_offline(den, if_dirs):
    assert isinstance(den, IFDenoiser)
    assert den.sample_shape == (3, SIZE, SIZE) and den.dtype == torch.float32 and den.learned_variance
    ref = DDPMScheduler.from_config(IF_SCHEDULER_CONFIG).alphas_cumprod
    torch.testing.assert_close(den.alphas_cumprod, ref.float())
    # the denoiser is the saved UNet: same output as a direct call
    unet = tiny_if_unet(1).eval()
    x, t = _img(), torch.tensor([500])
    emb = _embeds()["a dog"]
    out = den(x, t, "a dog")
    with torch.no_grad():
        direct = unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]
    torch.testing.assert_close(out.eps, direct[:, :3])
    torch.testing.assert_close(out.variance, direct[:, 3:])


def test_load_bare_unet_dir_and_missing(tmp_path):
    tiny_if_unet(1).save_pretrained(tmp_path / "bare")
    d = load_if_stage(tmp_path / "bare", prompt_embeds=_embeds())
    assert d.alphas_cumprod.numel() == 1000
    with pytest.raises(OSError):
        load_if_stage(tmp_path / "nothing_here")
    with pytest.raises(ValueError, match="stage"):
        load_if_stage(tmp_path / "bare", stage=3)


def test_missing_prompt_lists_available(den):
    with pytest.raises(KeyError, match="available prompts.*a dog"):
        den(_img(), 10, "a cat")
    with pytest.raises(ValueError, match=r"\[R, L, 32\]"):
        IFDenoiser(den.unet, IF_SCHEDULER_CONFIG, {"x": torch.randn(1, 77, 7)})
    with pytest.raises(ValueError, match="prompt"):
        den(_img(), 10, None)


def test_batched_conds_equal_separate_calls(den):
    x = _img(n=2)
    both = den(torch.cat([x, x]), 700, den.batch_conds(["", "a dog"]))
    u, c = den(x, 700, ""), den(x, 700, "a dog")
    torch.testing.assert_close(both.eps, torch.cat([u.eps, c.eps]), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        den(torch.cat([x, x[:1]]), 700, den.batch_conds(["", "a dog"]))


# ----------------------------------------------------------------------------- techniques
def test_timesteps():
    assert T.strided_timesteps()[:3] == [990, 960, 930] and T.strided_timesteps()[-1] == 0
    assert T.strided_timesteps()[10] == 690  # the course's i_start = 10
    ts = T.strided_timesteps(num_train_timesteps=300)
    assert ts[0] < 300 and ts[-1] == 0 and len(ts) == len(T.strided_timesteps())
    assert T.inference_timesteps(20) == list(range(950, -1, -50)) + [-1]
    with pytest.raises(ValueError, match="start"):
        T.strided_timesteps(start=1000)


def test_forward_and_one_step(den):
    x0 = _img()
    z = torch.randn(x0.shape, generator=gen(3))
    x_t = T.forward(den, x0, 500, gen(3))
    a = den.alphas_cumprod[500]
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * z)
    x0_hat = T.one_step_denoise(den, x_t, 500)
    eps = den(x_t, 500, "a high quality photo").eps
    torch.testing.assert_close(x0_hat, (x_t - (1 - a).sqrt() * eps) / a.sqrt(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(T.blur_denoise(x_t, 5, 2.0), Fn.gaussian_blur(x_t, 5, 2.0))
    sig = [T.blur_params(t)[1] for t in (250, 500, 750)]
    assert sig == sorted(sig) and T.blur_denoise(x_t, t=750).shape == x_t.shape
    with pytest.raises(ValueError, match="kernel_size and sigma"):
        T.blur_denoise(x_t)


def _spec_a14(den, x, ts, i_start, prompt, g):
    """Direct transcription of SPEC A1.4 (learned-range variance as diffusers computes t -> t')."""
    abar = den.alphas_cumprod.double()
    x = x.double()
    for i in range(i_start, len(ts) - 1):
        t, tp = ts[i], ts[i + 1]
        out = den(x.float(), t, prompt)
        eps, v = out.eps.double(), out.variance.double()
        a_t, a_p = abar[t], abar[tp]
        alpha = a_t / a_p
        beta = 1 - alpha
        x0_hat = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        mean = a_p.sqrt() * beta / (1 - a_t) * x0_hat + alpha.sqrt() * (1 - a_p) / (1 - a_t) * x
        small = (1 - a_p) / (1 - a_t) * beta
        frac = (v + 1) / 2
        var = torch.exp(frac * beta.log() + (1 - frac) * small.log())
        z = torch.randn(x.shape, generator=g).double()
        x = mean + var.sqrt() * z
    return x.float()


def test_iterative_denoise_equals_spec_transcription(den):
    ts = T.strided_timesteps()
    x_t = T.forward(den, _img(), ts[10], gen(0))
    res = T.iterative_denoise(den, x_t, 10, ts, "a high quality photo", gen(1))
    expect = _spec_a14(den, x_t, ts, 10, "a high quality photo", gen(1))
    torch.testing.assert_close(res.image, expect, atol=2e-4, rtol=1e-4)
    assert len(res.intermediates) == len([i for i in range(10, len(ts) - 1) if i % 5 == 0])


def test_cfg_one_step_equals_manual(den):
    x = torch.randn(1, 3, SIZE, SIZE, generator=gen(5))
    res = T.iterative_denoise_cfg(den, x, 0, [690, 660], "a rocket", 7.0, gen(2))
    u, c = den(x, 690, ""), den(x, 690, "a rocket")
    z = torch.randn(x.shape, generator=gen(2))
    expect = Fn.ddpm_step(x, Fn.cfg_combine(u.eps, c.eps, 7.0), den.alphas_cumprod, 690, 660, noise=z,
                          variance="learned_range", predicted_variance=c.variance)
    torch.testing.assert_close(res.image, expect, atol=1e-4, rtol=1e-4)


def test_sampling_deterministic_per_seed(den):
    a = T.sample(den, "a dog", 2, SHORT, generator=gen(7))
    b = T.sample(den, "a dog", 2, SHORT, generator=gen(7))
    c = T.sample(den, "a dog", 2, SHORT, generator=gen(8))
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)
    assert a.image.shape == (2, 3, SIZE, SIZE) and torch.isfinite(a.image).all()
    # A0: diffusers' timesteps + CFG + IF's dynamic thresholding; the last step lands on -1
    seen = []
    d = T.sample(den, "a dog", 1, num_inference_steps=5, guidance_scale=7.0, generator=gen(1),
                 dynamic_threshold=(0.95, 1.5), callback=seen.append)
    assert [s["t_prev"] for s in seen][-1] == -1 and d.image.abs().max() <= 1 + 1e-5


def test_sdedit_img2img(den):
    img = _img(4)
    out = T.sdedit(den, img, (1, 3, 10), timesteps=SHORT, generator=gen(0))
    assert sorted(out) == [1, 3, 10] and all(v.shape == img.shape for v in out.values())
    again = T.sdedit(den, img, (1, 3, 10), timesteps=SHORT, generator=gen(0))
    assert all(torch.equal(out[k], again[k]) for k in out)
    e = T.img2img(den, img, "an oil painting", 3, SHORT, generator=gen(0))
    assert e.shape == img.shape
    with pytest.raises(ValueError, match="i_start"):
        T.sdedit(den, img, (1, 50), timesteps=SHORT)
    with pytest.raises(ValueError, match="i_start"):
        T.iterative_denoise(den, img, 33, generator=gen(0))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        T.img2img(den, torch.zeros(1, 3, 64, 64))


def test_inpaint_keeps_unmasked_region(den):
    img = _img(6)
    mask = torch.zeros(SIZE, SIZE)
    mask[8:24, 8:24] = 1
    abar = den.alphas_cumprod
    checked = []

    def check(info):
        tp = info["t_prev"]
        a = abar[tp]
        renoised = a.sqrt() * img + (1 - a).sqrt() * info["projection_noise"]
        keep = (1 - mask).bool().expand_as(img)
        torch.testing.assert_close(info["x"][keep], renoised[keep], atol=1e-5, rtol=1e-5)
        checked.append(tp)

    res = T.inpaint(den, img, mask, "a dog", 0, SHORT, generator=gen(0), callback=check)
    assert checked == SHORT[1:]
    res2 = T.inpaint(den, img, mask, "a dog", 0, SHORT, generator=gen(0))
    assert torch.equal(res.image, res2.image)
    with pytest.raises(ValueError, match="mask"):
        T.inpaint(den, img, torch.ones(16, 16), timesteps=SHORT)


def test_visual_anagram_one_step_matches_formula(den):
    x = torch.randn(1, 3, SIZE, SIZE, generator=gen(0))
    seen = []
    T.visual_anagram(den, ["a man", "a dog"], ("identity", "flip"), 1, [690, 660], 7.0, gen(0),
                     callback=seen.append)
    assert torch.equal(seen[0]["noise"], torch.randn(x.shape, generator=_after_one(x.shape)))
    g = 7.0

    def cfg(xx, p):
        u, c = den(xx, 690, ""), den(xx, 690, p)
        return u.eps + g * (c.eps - u.eps), c.variance

    e1, v1 = cfg(x, "a man")
    e2, v2 = cfg(x.flip(2), "a dog")
    eps = (e1 + e2.flip(2)) / 2  # SPEC A1.8
    var = (v1 + v2.flip(2)) / 2
    expect = Fn.ddpm_step(x, eps, den.alphas_cumprod, 690, 660, noise=seen[0]["noise"], variance="learned_range",
                          predicted_variance=var)
    torch.testing.assert_close(seen[0]["x"], expect, atol=1e-4, rtol=1e-4)


def _after_one(shape):
    g = gen(0)
    torch.randn(shape, generator=g)  # the initial x_T
    return g


@pytest.mark.parametrize("views", [("identity", "rotate_cw", "rotate_180"),
                                   ("identity", "flip", "negate", "jigsaw")])
def test_multi_view_anagrams_run(den, views):
    conds = ["a man", "a dog", "a rocket", "an oil painting"][: len(views)]
    a = T.visual_anagram(den, conds, views, 1, SHORT, generator=gen(3))
    b = T.visual_anagram(den, conds, views, 1, SHORT, generator=gen(3))
    assert torch.equal(a.image, b.image) and torch.isfinite(a.image).all()


def test_anagram_errors(den):
    with pytest.raises(ValueError, match="unknown view"):
        T.visual_anagram(den, ["a man", "a dog"], ("identity", "sideways"), timesteps=SHORT)
    with pytest.raises(ValueError, match="one view per condition"):
        T.visual_anagram(den, ["a man", "a dog"], ("identity",), timesteps=SHORT)


def test_hybrid_one_step_matches_formula(den):
    x = torch.randn(1, 3, SIZE, SIZE, generator=gen(0))
    seen = []
    T.hybrid(den, "a man", "a dog", 9, 2.0, 1, [690, 660], 7.0, gen(0), callback=seen.append)
    u, c1, c2 = den(x, 690, ""), den(x, 690, "a man"), den(x, 690, "a dog")
    e1 = u.eps + 7 * (c1.eps - u.eps)
    e2 = u.eps + 7 * (c2.eps - u.eps)
    eps = Fn.gaussian_blur(e1, 9, 2.0) + Fn.highpass(e2, 9, 2.0)  # SPEC A1.9
    expect = Fn.ddpm_step(x, eps, den.alphas_cumprod, 690, 660, noise=seen[0]["noise"], variance="learned_range",
                          predicted_variance=(c1.variance + c2.variance) / 2)
    torch.testing.assert_close(seen[0]["x"], expect, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fac", ["triple", "color_gray", "motion_blur"])
def test_factorized_runs(den, fac):
    k = 3 if fac == "triple" else 2
    kw = {"kernel_size": 9} if fac == "triple" else {}
    from diffaccel.pipelines.factorizations import get_factorization

    r = T.factorized(den, ["a man", "a dog", "a rocket"][:k], get_factorization(fac, **kw), 1, SHORT,
                     generator=gen(0))
    assert torch.isfinite(r.image).all()


def test_stage2_upsample(if_dirs):
    d2 = load_if_stage(if_dirs / "stage2", stage=2, prompt_embeds=_embeds())
    low = _img(0, n=2)[:, :, ::2, ::2]
    a = T.upsample_stage2(d2, low, "a dog", num_inference_steps=4, generator=gen(0))
    b = T.upsample_stage2(d2, low, "a dog", num_inference_steps=4, generator=gen(0))
    assert a.image.shape == (2, 3, SIZE, SIZE) and torch.equal(a.image, b.image)
    # each sample sees its own low-res image in both CFG halves: batching does not mix samples
    one = T.upsample_stage2(d2, low[1:], "a dog", num_inference_steps=1, generator=gen(0), dynamic_threshold=None)
    x_t = torch.randn(1, 3, SIZE, SIZE)
    bound = d2.with_low_res(torch.cat([x_t, x_t + 1]), 250)
    both = bound(torch.cat([x_t, x_t, x_t, x_t]), 500, bound.batch_conds(["", "a dog"])).eps
    alone = d2.with_low_res(x_t + 1, 250)(torch.cat([x_t, x_t]), 500, bound.batch_conds(["", "a dog"])).eps
    torch.testing.assert_close(both[[1, 3]], alone, atol=1e-5, rtol=1e-4)
    assert one.image.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(TypeError, match="stage-II"):
        T.upsample_stage2(load_if_stage(if_dirs / "stage1", prompt_embeds=_embeds()), low)


def test_diffusers_denoiser_unconditional():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    d = DiffusersDenoiser(unet, dict(DDPMScheduler().config))
    r = T.sample(d, None, 2, T.strided_timesteps(990, 200), generator=gen(0))
    assert r.image.shape == (2, 1, 16, 16) and d.learned_variance is False
    with pytest.raises(ValueError, match="unconditional"):
        d(torch.zeros(1, 1, 16, 16), 5, "a dog")
