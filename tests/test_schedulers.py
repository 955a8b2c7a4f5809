"""diffaccel.schedulers against diffusers' own DDPMScheduler / DDIMScheduler (drop-in fidelity, SPEC A1.4).

Every comparison runs a whole sampling loop twice from the same seed, once with diffusers'
scheduler and once with ours, feeding a deterministic fake "model" (a smooth function of the
sample and t), and checks the final samples, the per-step ``pred_original_sample`` and the
generator state afterwards (same draws, same order). fp32 throughout.
"""
from __future__ import annotations

import itertools
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")

from diffaccel import schedulers as S  # noqa: E402

warnings.filterwarnings("ignore", message=".*C\\+\\+ extension is not available.*")

ATOL, RTOL = 5e-5, 5e-5  # fp32 after a whole loop (values up to ~1e2 unclipped): coefficient rounding differs


def fake_model(x: torch.Tensor, t: float, variance: str | None) -> torch.Tensor:
    """A deterministic stand-in for a UNet: eps-like output (+ variance channels when learned)."""
    eps = 0.8 * torch.tanh(1.3 * x) + 0.05 * torch.cos(3 * x + t / 97.0)
    if variance == "learned_range":  # values in [-1, 1], as IF's UNet predicts
        return torch.cat([eps, torch.tanh(0.5 * x - t / 700.0)], 1)
    if variance == "learned":  # a positive variance, of the size of beta
        return torch.cat([eps, 0.01 * torch.sigmoid(x)], 1)
    return eps


def run_loop(scheduler, steps, shape, seed=0, ddim_kw=None, timesteps=None):
    """Sample with ``scheduler``; returns (x_final, [pred_x0 per step], generator probe)."""
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    vt = getattr(scheduler.config, "variance_type", None)
    x0s = []
    for t in scheduler.timesteps:
        out = fake_model(x, float(t), vt)
        if ddim_kw is None:
            res = scheduler.step(out, t, x, generator=g)
        else:
            res = scheduler.step(out, t, x, generator=g, **ddim_kw)
        x = res.prev_sample
        x0s.append(res.pred_original_sample)
    return x, x0s, torch.randn(4, generator=g)


def assert_same_loop(ours, theirs, tol=(ATOL, RTOL)):
    x_a, x0_a, g_a = ours
    x_b, x0_b, g_b = theirs
    assert torch.isfinite(x_b).all(), "diffusers' own loop is not finite; the config is not a fair test"
    torch.testing.assert_close(x_a, x_b, atol=tol[0], rtol=tol[1])
    for i, (a, b) in enumerate(zip(x0_a, x0_b)):
        torch.testing.assert_close(a, b, atol=tol[0] * 10, rtol=tol[1] * 10, msg=lambda m: f"pred_x0 step {i}: {m}")
    assert torch.equal(g_a, g_b), "the generator was used differently (noise draws differ)"


# ----------------------------------------------------------------------------- DDPM grid
BETA_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
VARIANCES = ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
BOUNDS = [dict(thresholding=False, clip_sample=False), dict(thresholding=False, clip_sample=True, clip_sample_range=1.3),
          dict(thresholding=True, clip_sample=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5),
          dict(thresholding=True, clip_sample=False, dynamic_thresholding_ratio=0.9, sample_max_value=2.0)]
SPACINGS = ["leading", "trailing", "linspace"]
STEPS = [20, 50]
SHAPES = [(1, 3, 64, 64), (3, 3, 13, 17), (3, 1, 8, 8), (1, 3, 7, 5)]


def _ddpm_grid():
    """Every beta_schedule x variance_type pair; the other axes cycle so each value appears often."""
    cases = []
    for i, (beta, var) in enumerate(itertools.product(BETA_SCHEDULES, VARIANCES)):
        cfg = dict(beta_schedule=beta, variance_type=var, timestep_spacing=SPACINGS[i % 3], **BOUNDS[i % 4])
        cases.append(pytest.param(cfg, STEPS[(i // 3) % 2], SHAPES[i % 4], id=f"{beta}-{var}-{i}"))
    return cases


@pytest.mark.parametrize("cfg,steps,shape", _ddpm_grid())
def test_ddpm_loop_matches_diffusers(cfg, steps, shape):
    theirs = run_loop(diffusers.DDPMScheduler(**cfg), steps, shape)
    ours = run_loop(S.DDPMScheduler(**cfg), steps, shape)
    assert_same_loop(ours, theirs)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("bounds", [0, 1, 2])
@pytest.mark.parametrize("rescale", [False, True])
def test_ddpm_prediction_types(prediction_type, bounds, rescale):
    cfg = dict(beta_schedule="scaled_linear", prediction_type=prediction_type, rescale_betas_zero_snr=rescale,
               variance_type="fixed_small", **BOUNDS[bounds])
    if rescale and prediction_type == "sample":
        pytest.skip("zero terminal SNR: abar[T-1] = 0, so eps from x0 is undefined at the first step")
    theirs = run_loop(diffusers.DDPMScheduler(**cfg), 20, (3, 3, 13, 17), seed=1)
    ours = run_loop(S.DDPMScheduler(**cfg), 20, (3, 3, 13, 17), seed=1)
    # "sample"/"v" go through eps: one extra rounding, amplified where abar is near 0 or 1
    tol = (ATOL, RTOL) if prediction_type == "epsilon" else (2e-4, 1e-4)
    assert_same_loop(ours, theirs, tol)


@pytest.mark.parametrize("timesteps", [[999, 800, 500, 120, 3, 0], [900, 641, 17]])
def test_ddpm_custom_timesteps(timesteps):
    cfg = dict(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True,
               dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
    theirs = run_loop(diffusers.DDPMScheduler(**cfg), None, (2, 3, 16, 16), timesteps=timesteps)
    ours = run_loop(S.DDPMScheduler(**cfg), None, (2, 3, 16, 16), timesteps=timesteps)
    assert_same_loop(ours, theirs)


def test_ddpm_steps_offset_and_trained_betas():
    betas = torch.linspace(1e-4, 0.03, 500).tolist()
    cfg = dict(num_train_timesteps=500, trained_betas=betas, steps_offset=1, clip_sample=False)
    assert_same_loop(run_loop(S.DDPMScheduler(**cfg), 25, (2, 3, 9, 9)),
                     run_loop(diffusers.DDPMScheduler(**cfg), 25, (2, 3, 9, 9)))


def test_ddpm_fixed_large_log_is_fixed_large():
    """diffusers takes sqrt(log beta) (NaN) for fixed_large_log; ours uses the std sqrt(beta)."""
    cfg = dict(beta_schedule="linear", clip_sample=False)
    ours = run_loop(S.DDPMScheduler(variance_type="fixed_large_log", **cfg), 20, (2, 3, 8, 8))
    expect = run_loop(diffusers.DDPMScheduler(variance_type="fixed_large", **cfg), 20, (2, 3, 8, 8))
    assert_same_loop(ours, expect)


@pytest.mark.parametrize("beta", ["linear", "squaredcos_cap_v2", "sigmoid", "scaled_linear", "laplace"])
@pytest.mark.parametrize("rescale", [False, True])
def test_tables_equal_diffusers(beta, rescale):
    a = S.DDPMScheduler(beta_schedule=beta, rescale_betas_zero_snr=rescale)
    b = diffusers.DDPMScheduler(beta_schedule=beta, rescale_betas_zero_snr=rescale)
    assert torch.equal(a.betas, b.betas) and torch.equal(a.alphas_cumprod, b.alphas_cumprod)
    for spacing, n in itertools.product(SPACINGS, [20, 50, 1000]):
        a.register_to_config(timestep_spacing=spacing)
        b.register_to_config(timestep_spacing=spacing)
        a.set_timesteps(n)
        b.set_timesteps(n)
        assert torch.equal(a.timesteps, b.timesteps)
        for t in b.timesteps[:: max(1, n // 7)]:
            assert a.previous_timestep(int(t)) == int(b.previous_timestep(t))


# ----------------------------------------------------------------------------- drop-in fidelity
#: bounds diffusers accepts that the fused kernels do not take (x0 is bounded on the host)
ODD_BOUNDS = [dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=0.5),
              dict(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=0.9, clip_sample=False),
              dict(thresholding=True, dynamic_thresholding_ratio=0.0, sample_max_value=1.5),
              dict(clip_sample=True, clip_sample_range=0.0), dict(clip_sample=True, clip_sample_range=-0.3),
              dict(clip_sample=True, clip_sample_range=0.4)]


@pytest.mark.parametrize("bounds", ODD_BOUNDS, ids=lambda b: "-".join(f"{k}={v}" for k, v in b.items()))
@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_ddpm_bounds_diffusers_accepts(bounds, variance_type):
    cfg = dict(beta_schedule="squaredcos_cap_v2", variance_type=variance_type, **bounds)
    assert_same_loop(run_loop(S.DDPMScheduler(**cfg), 20, (2, 3, 9, 11), seed=4),
                     run_loop(diffusers.DDPMScheduler(**cfg), 20, (2, 3, 9, 11), seed=4))


@pytest.mark.parametrize("bounds", ODD_BOUNDS[:2] + ODD_BOUNDS[3:5], ids=["thr0.5", "thr0.9", "clip0", "clip-0.3"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_bounds_diffusers_accepts(bounds, eta):
    cfg = dict(beta_schedule="scaled_linear", **bounds)
    kw = dict(eta=eta)
    assert_same_loop(run_loop(S.DDIMScheduler(**cfg), 20, (2, 3, 9, 11), seed=5, ddim_kw=kw),
                     run_loop(diffusers.DDIMScheduler(**cfg), 20, (2, 3, 9, 11), seed=5, ddim_kw=kw))


@pytest.mark.parametrize("variance_type", ["nope", "fixed_small_logs"])
def test_ddpm_unknown_variance_type_steps_as_fixed_small(variance_type):
    with pytest.warns(UserWarning, match="fixed_small"):
        ours = S.DDPMScheduler(variance_type=variance_type, clip_sample=False)
    assert ours.config.variance_type == variance_type  # kept, as diffusers keeps it
    theirs = diffusers.DDPMScheduler(variance_type=variance_type, clip_sample=False)
    assert_same_loop(run_loop(ours, 20, (2, 3, 8, 8)), run_loop(theirs, 20, (2, 3, 8, 8)))
    expect = run_loop(diffusers.DDPMScheduler(variance_type="fixed_small", clip_sample=False), 20, (2, 3, 8, 8))
    assert_same_loop(run_loop(ours, 20, (2, 3, 8, 8)), expect)


@pytest.mark.parametrize("beta", ["linear", "squaredcos_cap_v2", "sigmoid"])
@pytest.mark.parametrize("config_vt", ["fixed_small", "learned_range"])
def test_ddpm_get_variance_equals_diffusers(beta, config_vt):
    kinds = [None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range", "x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = S.DDPMScheduler(beta_schedule=beta, variance_type=config_vt), diffusers.DDPMScheduler(
            beta_schedule=beta, variance_type=config_vt)
    pv = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for setup in (lambda s: None, lambda s: s.set_timesteps(17), lambda s: s.set_timesteps(timesteps=[999, 500, 3])):
        setup(a), setup(b)
        for t in [int(b.timesteps[0]), int(b.timesteps[1]), int(b.timesteps[-1])]:
            for kind in kinds:
                for tt in (t, torch.tensor(t)):
                    got = a._get_variance(tt, predicted_variance=pv, variance_type=kind)
                    want = b._get_variance(tt, predicted_variance=pv, variance_type=kind)
                    assert torch.equal(got, want), (t, kind)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("beta", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddim_get_variance_equals_diffusers(beta, set_alpha_to_one):
    a = S.DDIMScheduler(beta_schedule=beta, set_alpha_to_one=set_alpha_to_one)
    b = diffusers.DDIMScheduler(beta_schedule=beta, set_alpha_to_one=set_alpha_to_one)
    for t, prev in [(999, 949), (500, 480), (20, -30), (0, -1), (1, 0)]:
        for args in ((t, prev), (torch.tensor(t), torch.tensor(prev))):
            assert torch.equal(a._get_variance(*args), b._get_variance(*args)), (t, prev)


@pytest.mark.parametrize("kind", ["cosine", "laplace", "exp"])
@pytest.mark.parametrize("T", [1000, 37])
def test_schedules_equal_diffusers_helpers_bitwise(kind, T):
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr

    from diffaccel import schedules

    ours = schedules.betas_for_alpha_bar(T, alpha_transform_type=kind)
    assert torch.equal(ours, betas_for_alpha_bar(T, alpha_transform_type=kind))
    assert torch.equal(schedules.rescale_zero_terminal_snr(ours), rescale_zero_terminal_snr(ours))
    assert torch.equal(schedules.alphas_cumprod(ours), diffusers.DDPMScheduler(trained_betas=ours.tolist(),
                                                                             num_train_timesteps=T).alphas_cumprod)
    with pytest.raises(ValueError, match="alpha_transform_type"):
        schedules.betas_for_alpha_bar(T, alpha_transform_type="nope")


# ----------------------------------------------------------------------------- DDIM
def _ddim_grid():
    cases = []
    combos = itertools.product(["linear", "scaled_linear", "squaredcos_cap_v2"], [0.0, 0.6], [0, 1, 2])
    for i, (beta, eta, bounds) in enumerate(combos):
        cfg = dict(beta_schedule=beta, timestep_spacing=SPACINGS[i % 3], set_alpha_to_one=bool(i % 2), **BOUNDS[bounds])
        kw = dict(eta=eta, use_clipped_model_output=bool((i // 2) % 2))
        cases.append(pytest.param(cfg, kw, STEPS[i % 2], SHAPES[i % 4], id=f"{beta}-eta{eta}-b{bounds}-{i}"))
    return cases


@pytest.mark.parametrize("cfg,kw,steps,shape", _ddim_grid())
def test_ddim_loop_matches_diffusers(cfg, kw, steps, shape):
    theirs = run_loop(diffusers.DDIMScheduler(**cfg), steps, shape, ddim_kw=kw)
    ours = run_loop(S.DDIMScheduler(**cfg), steps, shape, ddim_kw=kw)
    assert_same_loop(ours, theirs)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_prediction_types(prediction_type, eta):
    cfg = dict(beta_schedule="scaled_linear", prediction_type=prediction_type, clip_sample=True)
    kw = dict(eta=eta)
    assert_same_loop(run_loop(S.DDIMScheduler(**cfg), 20, (3, 3, 13, 17), ddim_kw=kw),
                     run_loop(diffusers.DDIMScheduler(**cfg), 20, (3, 3, 13, 17), ddim_kw=kw), (2e-4, 1e-4))


def test_ddim_variance_noise_and_errors():
    s = S.DDIMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(torch.zeros(1, 3, 4, 4), 10, torch.zeros(1, 3, 4, 4))
    s.set_timesteps(10)
    x, e, z = torch.randn(3, 1, 3, 4, 4).unbind(0)
    with pytest.raises(ValueError, match="generator"):
        s.step(e, 500, x, eta=1.0, variance_noise=z, generator=torch.Generator())
    d = diffusers.DDIMScheduler()
    d.set_timesteps(10)
    torch.testing.assert_close(s.step(e, 500, x, eta=1.0, variance_noise=z).prev_sample,
                               d.step(e, 500, x, eta=1.0, variance_noise=z).prev_sample, atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------- config / API
#: DeepFloyd IF scheduler configs as published on the hub (``scheduler/scheduler_config.json``).
IF_STAGE_I_CONFIG = {
    "_class_name": "DDPMScheduler", "_diffusers_version": "0.16.0.dev0",
    "beta_end": 0.02, "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001,
    "clip_sample": True, "clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.95,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.5,
    "thresholding": True, "trained_betas": None, "variance_type": "learned_range",
}
IF_STAGE_II_CONFIG = {**IF_STAGE_I_CONFIG, "sample_max_value": 1.0}
IF_STAGE_II_NOISING_CONFIG = {  # stage II's image_noising_scheduler
    "_class_name": "DDPMScheduler", "_diffusers_version": "0.16.0.dev0",
    "beta_end": 0.02, "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001,
    "clip_sample": True, "clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.95,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0,
    "thresholding": False, "trained_betas": None, "variance_type": "fixed_small",
}


@pytest.mark.parametrize("config", [IF_STAGE_I_CONFIG, IF_STAGE_II_CONFIG, IF_STAGE_II_NOISING_CONFIG],
                         ids=["stage_I", "stage_II", "stage_II_noising"])
def test_from_config_round_trip(config, tmp_path):
    theirs = diffusers.DDPMScheduler.from_config(config)
    ours = S.DDPMScheduler.from_config(theirs.config)
    fields = lambda s: {k: v for k, v in s.config.items() if not k.startswith("_")}  # noqa: E731
    assert fields(ours) == fields(theirs)
    assert fields(ours) == {**fields(diffusers.DDPMScheduler()), **{k: v for k, v in config.items() if k[0] != "_"}}
    back = diffusers.DDPMScheduler.from_config(ours.config)
    assert fields(back) == fields(theirs)
    ours.save_config(tmp_path)
    again = S.DDPMScheduler.from_pretrained(tmp_path)
    assert fields(again) == fields(theirs)
    assert_same_loop(run_loop(again, 30, (2, 3, 16, 16)), run_loop(theirs, 30, (2, 3, 16, 16)))


def test_same_config_fields_as_diffusers():
    for ours, theirs in [(S.DDPMScheduler, diffusers.DDPMScheduler), (S.DDIMScheduler, diffusers.DDIMScheduler)]:
        assert dict(ours().config) == dict(theirs().config)
        assert ours.order == theirs.order and set(ours._compatibles) == set(theirs._compatibles)
    ddim = S.DDIMScheduler.from_config(diffusers.DDPMScheduler(**{k: v for k, v in IF_STAGE_I_CONFIG.items()
                                                                  if not k.startswith("_")}).config)
    assert ddim.config.beta_schedule == "squaredcos_cap_v2" and ddim.config.thresholding


def test_add_noise_and_velocity_equal_diffusers():
    a, b = S.DDPMScheduler(beta_schedule="squaredcos_cap_v2"), diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    x0, noise = torch.randn(2, 3, 3, 9, 7).unbind(0)
    t = torch.tensor([999, 17, 0])
    torch.testing.assert_close(a.add_noise(x0, noise, t), b.add_noise(x0, noise, t), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.get_velocity(x0, noise, t), b.get_velocity(x0, noise, t), atol=1e-6, rtol=1e-6)
    x1, n1 = torch.randn(2, 3, 5).unbind(0)  # any rank, as diffusers
    torch.testing.assert_close(a.add_noise(x1, n1, t), b.add_noise(x1, n1, t), atol=1e-6, rtol=1e-6)


def test_return_dict_false_and_skip_pred_x0():
    s = S.DDPMScheduler(**{k: v for k, v in IF_STAGE_I_CONFIG.items() if not k.startswith("_")})
    s.set_timesteps(10)
    x = torch.randn(1, 3, 8, 8)
    out = s.step(fake_model(x, 900.0, "learned_range"), s.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 2 and out[1] is not None
    s.compute_pred_original_sample = False
    res = s.step(fake_model(x, 900.0, "learned_range"), s.timesteps[1], x)
    assert res.pred_original_sample is None and res.prev_sample.shape == x.shape


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="prediction_type"):
        S.DDPMScheduler(prediction_type="nope")
    with pytest.raises(NotImplementedError, match="sigmoid"):
        S.DDIMScheduler(beta_schedule="sigmoid")
    s = S.DDPMScheduler(variance_type="learned_range")
    s.set_timesteps(10)
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="2 x 3 channels"):
        s.step(x, 900, x)
    with pytest.raises(ValueError, match="timestep"):
        s.step(torch.cat([x, x], 1), 1000, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(2000)
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[10, 20])


# ----------------------------------------------------------------------------- IF pipelines
def _tiny_if_unet():
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnAddedKVProcessor

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, layers_per_block=1, block_out_channels=[32, 64],
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
        in_channels=3, out_channels=6, cross_attention_dim=32, encoder_hid_dim=8, attention_head_dim=8,
        addition_embed_type="text", addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", act_fn="gelu")
    unet.set_attn_processor(AttnAddedKVProcessor())
    return unet.eval()


@pytest.fixture(scope="module")
def if_parts():
    unet = _tiny_if_unet()
    g = torch.Generator().manual_seed(0)
    emb, neg = torch.randn(2, 1, 5, 8, generator=g).unbind(0)
    return unet, emb, neg


def _if_pipe(cls, unet, scheduler):
    return cls(tokenizer=None, text_encoder=None, unet=unet, scheduler=scheduler, safety_checker=None,
               feature_extractor=None, watermarker=None, requires_safety_checker=False)


def _if_pipeline_inputs(pipeline: str) -> dict:
    """The call arguments of a tiny IF pipeline run: a 16x16 image (and half mask) for img2img / inpainting."""
    kw = {}
    g = torch.Generator().manual_seed(7)
    if pipeline != "IFPipeline":
        kw["image"] = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
        kw["strength"] = 0.7
    else:
        kw.update(height=16, width=16)
    if pipeline == "IFInpaintingPipeline":
        mask = torch.zeros(1, 1, 16, 16)
        mask[..., :, 8:] = 1
        kw["mask_image"] = mask
    return kw


def _run_if(cls, unet, scheduler, emb, neg, **kw):
    pipe = _if_pipe(cls, unet, scheduler)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(prompt_embeds=emb, negative_prompt_embeds=neg, num_inference_steps=6, output_type="pt",
                    generator=torch.Generator().manual_seed(3), **kw).images


@pytest.mark.parametrize("pipeline", ["IFPipeline", "IFImg2ImgPipeline", "IFInpaintingPipeline"])
@pytest.mark.parametrize("scheduler", ["ddpm", "ddim"])
def test_if_pipelines_same_images(if_parts, pipeline, scheduler):
    unet, emb, neg = if_parts
    cls = getattr(diffusers, pipeline)
    cfg = {k: v for k, v in IF_STAGE_I_CONFIG.items() if not k.startswith("_")}
    if scheduler == "ddpm":
        theirs = diffusers.DDPMScheduler(**cfg)
        ours = S.DDPMScheduler.from_config(theirs.config)
    else:  # IF pipelines also run DDIM; the pipeline drops the variance channels when the config says so
        theirs = diffusers.DDIMScheduler.from_config({**cfg, "variance_type": "fixed_small"})
        ours = S.DDIMScheduler.from_config(theirs.config)
    kw = _if_pipeline_inputs(pipeline)
    ref_img = _run_if(cls, unet, theirs, emb, neg, **kw)
    our_img = _run_if(cls, unet, ours, emb, neg, **kw)
    assert torch.isfinite(ref_img).all()
    # Each step agrees to ~1 ulp; the random UNet and guidance (x7 per step) amplify that over
    # the loop to ~1e-4 (output_type="pt": the raw sample, |x| <= ~1.5). A wrong formula or noise draw differs by >1e-2.
    torch.testing.assert_close(our_img, ref_img, atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- GPU: no syncs
@pytest.mark.gpu
@pytest.mark.parametrize("cls,cfg", [
    (S.DDPMScheduler, {k: v for k, v in IF_STAGE_I_CONFIG.items() if not k.startswith("_")}),
    (S.DDPMScheduler, dict(variance_type="fixed_small", clip_sample=True)),
    (S.DDIMScheduler, dict(clip_sample=True)),
    # zero terminal SNR: the step from abar = 0 and the abar check add no sync either
    (S.DDPMScheduler, dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")),
    (S.DDIMScheduler, dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")),
    (S.DDIMScheduler, dict(set_alpha_to_one=False, clip_sample=False)),  # ends with the t = 0 -> 0 step
])
def test_step_has_no_device_to_host_sync(cls, cfg):
    dev = torch.device("cuda")
    s = cls(**cfg)
    s.set_timesteps(10, device=dev)
    s.compute_pred_original_sample = False
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(2, 3, 32, 32, device=dev)
    c = 6 if getattr(s.config, "variance_type", "") == "learned_range" else 3
    out = torch.randn(2, c, 32, 32, device=dev).clamp(-1, 1)
    kw = {"eta": 0.5} if cls is S.DDIMScheduler else {}
    s.step(out, s.timesteps[0], x, generator=g, **kw)  # warm-up: lazy imports, allocator
    s.set_begin_index(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in s.timesteps:
            x = s.step(out, t, x, generator=g, **kw).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()
