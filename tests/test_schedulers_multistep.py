"""diffaccel's DPMSolverMultistepScheduler / UniPCMultistepScheduler against diffusers' own.

Each comparison runs a whole sampling loop twice from the same seed, once with diffusers' class
and once with ours, feeding a deterministic fake "model" (a smooth function of the sample and t),
and checks every intermediate sample and the generator state afterwards (same draws, same
order). The grid covers the config axes diffusers offers: solver orders, algorithm / solver
types, thresholding, lower_order_final, sigma spacings, timestep spacings, prediction types,
learned variance, final sigma types. fp32 throughout.
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
warnings.filterwarnings("ignore", message=".*deprecated.*")

# fp32 over a whole loop; diffusers computes the solver coefficients in float32, we in float64
ATOL, RTOL = 1e-4, 1e-4
SHAPES = [(2, 3, 16, 16), (1, 3, 9, 13), (3, 1, 8, 8)]


def fake_model(x: torch.Tensor, t: float, learned: bool) -> torch.Tensor:
    """A deterministic stand-in for a UNet: eps-like output (+ variance channels when learned)."""
    eps = 0.8 * torch.tanh(1.3 * x) + 0.05 * torch.cos(3 * x + t / 97.0)
    if learned:
        return torch.cat([eps, torch.tanh(0.5 * x - t / 700.0)], 1)
    return eps


def run_loop(s, steps, shape, seed=0, set_kw=None, step_kw=None, fused=None):
    """Sample with ``s``; returns ([x after each step], generator probe)."""
    if fused is not None:
        s.use_fused_ops = fused
    s.set_timesteps(steps, **(set_kw or {}))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    learned = getattr(s.config, "variance_type", None) in ("learned", "learned_range")
    xs = []
    kw = dict(step_kw or {})
    if "generator" in s.step.__code__.co_varnames:
        kw["generator"] = g
    for t in s.timesteps:
        x = s.step(fake_model(x, float(t), learned), t, x, **kw).prev_sample
        xs.append(x)
    return xs, torch.randn(4, generator=g)


def assert_same_loop(ours, theirs, tol=(ATOL, RTOL)):
    (xs_a, g_a), (xs_b, g_b) = ours, theirs
    assert torch.isfinite(xs_b[-1]).all(), "diffusers' own loop is not finite; the config is not a fair test"
    assert len(xs_a) == len(xs_b)
    for i, (a, b) in enumerate(zip(xs_a, xs_b)):
        scale = max(1.0, float(b.abs().max()))  # fake-model loops can reach |x| ~ 1e4: fp32 is relative to that
        torch.testing.assert_close(a, b, atol=tol[0] * scale, rtol=tol[1], msg=lambda m: f"step {i}: {m}")
    assert torch.equal(g_a, g_b), "the generator was used differently (noise draws differ)"


def compare(cls_ours, cls_theirs, cfg, steps, shape, tol=(ATOL, RTOL), **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = run_loop(cls_theirs(**cfg), steps, shape, **kw)
        ours = run_loop(cls_ours(**cfg), steps, shape, **kw)
    assert_same_loop(ours, theirs, tol)
    return ours


THRESH = dict(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
SPACINGS = ["linspace", "leading", "trailing"]
BETAS = ["linear", "scaled_linear", "squaredcos_cap_v2"]
PREDICTIONS = ["epsilon", "v_prediction", "sample"]


# ----------------------------------------------------------------------------- DPM-Solver
def _dpm_grid():
    cases = []
    axes = itertools.product([1, 2, 3], ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"],
                             ["midpoint", "heun"], [False, True])
    for i, (order, alg, solver, thr) in enumerate(axes):
        if alg == "sde-dpmsolver" and order == 3:
            continue  # diffusers has no third-order update for it
        cfg = dict(solver_order=order, algorithm_type=alg, solver_type=solver, beta_schedule=BETAS[i % 3],
                   timestep_spacing=SPACINGS[(i // 3) % 3], lower_order_final=bool(i % 2),
                   prediction_type=PREDICTIONS[(i // 2) % (3 if alg.endswith("++") else 2)] if i % 4 else "epsilon",
                   final_sigmas_type="sigma_min" if (alg in ("dpmsolver", "sde-dpmsolver") or i % 5 == 0) else "zero")
        if thr:
            cfg.update(THRESH)
        if not alg.endswith("++") and cfg["beta_schedule"] == "squaredcos_cap_v2":
            # eps-space updates from abar[999] ~ 1e-9: x_prev = (huge) x - (huge) eps cancels to fp32 noise
            cfg["beta_schedule"] = "linear"
        if i % 7 == 3 and cfg["prediction_type"] == "epsilon":
            cfg["variance_type"] = "learned_range"
        steps = [8, 12, 20, 25][i % 4]
        cases.append(pytest.param(cfg, steps, SHAPES[i % 3], id=f"{alg}-o{order}-{solver}-thr{int(thr)}-{i}"))
    return cases


@pytest.mark.parametrize("cfg,steps,shape", _dpm_grid())
def test_dpm_loop_matches_diffusers(cfg, steps, shape):
    compare(S.DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler, cfg, steps, shape)


@pytest.mark.parametrize("spacing", ["use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas"])
@pytest.mark.parametrize("beta", ["scaled_linear", "linear"])  # (diffusers' own loop fails on cosine + Karras)
@pytest.mark.parametrize("order,alg", [(2, "dpmsolver++"), (3, "sde-dpmsolver++")])
def test_dpm_sigma_spacings(spacing, beta, order, alg):
    cfg = {spacing: True, "beta_schedule": beta, "solver_order": order, "algorithm_type": alg,
           "final_sigmas_type": "sigma_min" if (beta == "scaled_linear" and order == 2) else "zero", **THRESH}
    compare(S.DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler, cfg, 15, (2, 3, 8, 8))


@pytest.mark.parametrize("kw", [dict(lambda_min_clipped=-5.1, beta_schedule="squaredcos_cap_v2"),
                                dict(euler_at_final=True, algorithm_type="sde-dpmsolver++"),
                                dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"),
                                dict(steps_offset=1, timestep_spacing="leading", solver_order=3),
                                dict(algorithm_type="deis", solver_type="bh2", final_sigmas_type="sigma_min")])
def test_dpm_other_options(kw):
    compare(S.DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler, kw, 12, (2, 3, 8, 8))


@pytest.mark.parametrize("timesteps", [[999, 800, 500, 120, 3], [900, 641, 17, 0]])
def test_dpm_custom_timesteps(timesteps):
    cfg = dict(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", **THRESH)
    for cls in (S.DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler):
        s = cls(**cfg)
        s.set_timesteps(timesteps=timesteps)
        assert s.timesteps.tolist() == timesteps
    theirs = run_loop(diffusers.DPMSolverMultistepScheduler(**cfg), None, (2, 3, 8, 8), set_kw=dict(timesteps=timesteps))
    ours = run_loop(S.DPMSolverMultistepScheduler(**cfg), None, (2, 3, 8, 8), set_kw=dict(timesteps=timesteps))
    assert_same_loop(ours, theirs)


def test_dpm_variance_noise():
    cfg = dict(algorithm_type="sde-dpmsolver++")
    a, b = S.DPMSolverMultistepScheduler(**cfg), diffusers.DPMSolverMultistepScheduler(**cfg)
    x, z = torch.randn(2, 1, 3, 8, 8).unbind(0)
    for s in (a, b):
        s.set_timesteps(10)
    for t in b.timesteps[:4]:
        e = fake_model(x, float(t), False)
        xa = a.step(e, t, x, variance_noise=z).prev_sample
        xb = b.step(e, t, x, variance_noise=z).prev_sample
        torch.testing.assert_close(xa, xb, atol=ATOL, rtol=RTOL)
        x = xb


# ----------------------------------------------------------------------------- UniPC
def _unipc_grid():
    cases = []
    axes = itertools.product([1, 2, 3], ["bh1", "bh2"], [True, False], [False, True])
    for i, (order, solver, predict_x0, thr) in enumerate(axes):
        cfg = dict(solver_order=order, solver_type=solver, predict_x0=predict_x0, beta_schedule=BETAS[i % 3],
                   timestep_spacing=SPACINGS[(i // 3) % 3], lower_order_final=bool((i // 2) % 2) or order == 1,
                   prediction_type=PREDICTIONS[(i // 4) % 3] if i % 3 else "epsilon",
                   final_sigmas_type="sigma_min" if i % 5 == 1 else "zero",
                   disable_corrector=[0, 3] if i % 6 == 5 else [])
        if thr:
            cfg.update(THRESH)
        if not predict_x0 and cfg["beta_schedule"] == "squaredcos_cap_v2":
            cfg["beta_schedule"] = "linear"  # eps-space updates from abar[999] ~ 1e-9 cancel to fp32 noise
        if cfg["final_sigmas_type"] == "zero" and (solver == "bh1" or not predict_x0 or
                                                    (not cfg["lower_order_final"] and order > 1)):
            cfg["final_sigmas_type"] = "sigma_min"  # diffusers' update is NaN at a final sigma of 0 (h = inf)
        steps = [8, 12, 20, 25][i % 4]
        cases.append(pytest.param(cfg, steps, SHAPES[i % 3],
                                  id=f"o{order}-{solver}-x0{int(predict_x0)}-thr{int(thr)}-{i}"))
    return cases


@pytest.mark.parametrize("cfg,steps,shape", _unipc_grid())
def test_unipc_loop_matches_diffusers(cfg, steps, shape):
    compare(S.UniPCMultistepScheduler, diffusers.UniPCMultistepScheduler, cfg, steps, shape)


@pytest.mark.parametrize("spacing,bounds", [
    ("use_karras_sigmas", {}), ("use_exponential_sigmas", {}), ("use_beta_sigmas", {}),
    ("use_karras_sigmas", dict(sigma_min=0.05, sigma_max=40.0)), ("use_exponential_sigmas", dict(sigma_min=0.05))])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_unipc_sigma_spacings(spacing, final, bounds):
    cfg = {spacing: True, "beta_schedule": "scaled_linear", "final_sigmas_type": final, **bounds, **THRESH}
    compare(S.UniPCMultistepScheduler, diffusers.UniPCMultistepScheduler, cfg, 15, (2, 3, 8, 8))


def test_unipc_solver_p():
    cfg = dict(solver_order=2)
    ours = S.UniPCMultistepScheduler(solver_p=S.DPMSolverMultistepScheduler(), **cfg)
    theirs = diffusers.UniPCMultistepScheduler(solver_p=diffusers.DPMSolverMultistepScheduler(), **cfg)
    assert_same_loop(run_loop(ours, 10, (2, 3, 8, 8)), run_loop(theirs, 10, (2, 3, 8, 8)))


# ----------------------------------------------------------------------------- fused vs general path
FUSED_CONFIGS = [
    (S.DPMSolverMultistepScheduler, dict(solver_order=2)),
    (S.DPMSolverMultistepScheduler, dict(solver_order=2, variance_type="learned_range", **THRESH,
                                         beta_schedule="squaredcos_cap_v2")),
    (S.DPMSolverMultistepScheduler, dict(solver_order=1, final_sigmas_type="sigma_min", timestep_spacing="trailing")),
    (S.UniPCMultistepScheduler, dict(solver_order=2)),
    (S.UniPCMultistepScheduler, dict(solver_order=2, **THRESH, beta_schedule="squaredcos_cap_v2",
                                     disable_corrector=[2])),
    (S.UniPCMultistepScheduler, dict(solver_order=1, final_sigmas_type="sigma_min", timestep_spacing="leading")),
    # second order up to the last step, which lands on abar[0] (t_prev = 0, not the final -1)
    (S.DPMSolverMultistepScheduler, dict(final_sigmas_type="sigma_min", lower_order_final=False, **THRESH)),
    (S.UniPCMultistepScheduler, dict(final_sigmas_type="sigma_min", lower_order_final=False, **THRESH)),
    # SDE-DPM-Solver++(2M): the fused step with the scheduler's draws (the generator stream must match diffusers')
    (S.DPMSolverMultistepScheduler, dict(solver_order=2, algorithm_type="sde-dpmsolver++")),
    (S.DPMSolverMultistepScheduler, dict(solver_order=2, algorithm_type="sde-dpmsolver++", **THRESH,
                                         final_sigmas_type="sigma_min", timestep_spacing="trailing")),
]


@pytest.mark.parametrize("cls,cfg", FUSED_CONFIGS)
@pytest.mark.parametrize("steps", [6, 20])
def test_fused_path_is_taken_and_matches(cls, cfg, steps, monkeypatch):
    """The common configs run on the fused ops (counted), and agree with the general path."""
    from diffaccel import functional as F

    op = "unipc_step" if cls is S.UniPCMultistepScheduler else \
        "dpmpp_2m_sde_step" if cfg.get("algorithm_type") == "sde-dpmsolver++" else "dpmpp_2m_step"
    if not hasattr(F, op):
        pytest.skip(f"F.{op} is not in this checkout")
    calls = []
    real = getattr(F, op)
    monkeypatch.setattr(F, op, lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = run_loop(cls(**cfg), steps, (2, 3, 16, 16), fused=True)
    assert len(calls) == steps
    general = run_loop(cls(**cfg), steps, (2, 3, 16, 16), fused=False)
    assert len(calls) == steps
    assert_same_loop(fused, general)
    base = diffusers.DPMSolverMultistepScheduler if cls is S.DPMSolverMultistepScheduler else diffusers.UniPCMultistepScheduler
    assert_same_loop(fused, run_loop(base(**cfg), steps, (2, 3, 16, 16)))


@pytest.mark.parametrize("cls", [S.DPMSolverMultistepScheduler, S.UniPCMultistepScheduler])
def test_sigma_spacings_stay_on_the_general_path(cls):
    s = cls(use_karras_sigmas=True)
    s.set_timesteps(10)
    assert s._grid is None  # Karras sigmas are not abar at integer timesteps
    s = cls()
    s.set_timesteps(10)
    assert s._grid == s.timesteps.tolist() + [-1]


# ----------------------------------------------------------------------------- config / API
@pytest.mark.parametrize("ours,theirs", [(S.DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler),
                                         (S.UniPCMultistepScheduler, diffusers.UniPCMultistepScheduler)])
def test_config_round_trip(ours, theirs, tmp_path):
    fields = lambda s: {k: v for k, v in s.config.items() if not k.startswith("_")}  # noqa: E731
    assert fields(ours()) == fields(theirs())
    assert ours.order == theirs.order and set(ours._compatibles) == set(theirs._compatibles)
    # IF's config (diffusers' UniPC keeps the foreign variance_type but cannot step 6-channel outputs)
    vt = "learned_range" if ours is S.DPMSolverMultistepScheduler else "fixed_small"
    if_cfg = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type=vt,
                                     thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5).config
    a, b = ours.from_config(if_cfg), theirs.from_config(if_cfg)
    assert fields(a) == fields(b) and a.config.thresholding and a.config.beta_schedule == "squaredcos_cap_v2"
    a.save_config(tmp_path)
    again = ours.from_pretrained(tmp_path)
    assert fields(again) == fields(b)
    assert fields(theirs.from_config(again.config)) == fields(b)
    assert_same_loop(run_loop(again, 10, (1, 3, 8, 8)), run_loop(b, 10, (1, 3, 8, 8)))


@pytest.mark.parametrize("cls,base", [(S.DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler),
                                      (S.UniPCMultistepScheduler, diffusers.UniPCMultistepScheduler)])
@pytest.mark.parametrize("cfg", [{}, dict(use_karras_sigmas=True), dict(timestep_spacing="leading", steps_offset=1)])
def test_tables_timesteps_and_add_noise_equal_diffusers(cls, base, cfg):
    a, b = cls(**cfg), base(**cfg)
    assert torch.equal(a.alphas_cumprod, b.alphas_cumprod) and torch.equal(a.sigmas, b.sigmas)
    assert torch.equal(a.lambda_t, b.lambda_t)
    for n in (7, 20, 50):
        a.set_timesteps(n)
        b.set_timesteps(n)
        assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.sigmas, b.sigmas)
    x0, noise = torch.randn(2, 3, 3, 5, 4).unbind(0)
    t = b.timesteps[[0, 5, 19]]
    torch.testing.assert_close(a.add_noise(x0, noise, t), b.add_noise(x0, noise, t), atol=0, rtol=0)
    a.set_begin_index(4)
    b.set_begin_index(4)
    torch.testing.assert_close(a.add_noise(x0, noise, t), b.add_noise(x0, noise, t), atol=0, rtol=0)
    assert a.scale_model_input(x0, t[0]) is x0


def test_begin_index_and_restart():
    """img2img: set_begin_index starts mid-schedule; set_timesteps resets the multistep history."""
    cfg = dict(**THRESH, beta_schedule="squaredcos_cap_v2")
    for ours, theirs in [(S.DPMSolverMultistepScheduler(**cfg), diffusers.DPMSolverMultistepScheduler(**cfg)),
                         (S.UniPCMultistepScheduler(**cfg), diffusers.UniPCMultistepScheduler(**cfg))]:
        for _ in range(2):
            results = []
            for s in (ours, theirs):
                s.set_timesteps(12)
                s.set_begin_index(5)
                x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
                for t in s.timesteps[5:]:
                    x = s.step(fake_model(x, float(t), False), t, x).prev_sample
                results.append(x)
            torch.testing.assert_close(results[0], results[1], atol=ATOL, rtol=RTOL)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="solver_order"):
        S.DPMSolverMultistepScheduler(solver_order=4)
    with pytest.raises(NotImplementedError, match="algorithm_type"):
        S.DPMSolverMultistepScheduler(algorithm_type="nope")
    for alg in ("dpmsolver", "deis"):
        with pytest.raises(ValueError, match="final_sigmas_type"):
            S.DPMSolverMultistepScheduler(algorithm_type=alg, final_sigmas_type="zero")
    with pytest.raises(ValueError, match="prediction_type"):
        S.UniPCMultistepScheduler(prediction_type="nope")
    with pytest.raises(NotImplementedError, match="flow"):
        S.UniPCMultistepScheduler(use_flow_sigmas=True)
    with pytest.raises(NotImplementedError, match="sigmoid"):
        S.UniPCMultistepScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="Only one of"):
        S.DPMSolverMultistepScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    s = S.DPMSolverMultistepScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(torch.zeros(1, 3, 4, 4), 10, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="timesteps"):
        S.DPMSolverMultistepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 100])
    s.set_timesteps(3)
    x = torch.zeros(1, 3, 4, 4)
    for t in s.timesteps:
        s.step(x, t, x)
    with pytest.raises(IndexError, match="set_timesteps"):
        s.step(x, s.timesteps[-1], x)


# ----------------------------------------------------------------------------- IF pipelines
from test_schedulers import if_parts  # noqa: E402,F401  (the tiny IF UNet and prompt embeddings, a fixture)


@pytest.mark.parametrize("pipeline", ["IFPipeline", "IFImg2ImgPipeline", "IFInpaintingPipeline"])
@pytest.mark.parametrize("scheduler", ["dpm", "unipc"])
def test_if_pipelines_same_images(if_parts, pipeline, scheduler, monkeypatch):
    """IF's stage-I config (thresholding 0.95 / 1.5) in diffusers' IF pipelines, on the fused path."""
    from test_schedulers import IF_STAGE_I_CONFIG, _if_pipeline_inputs, _run_if

    from diffaccel import functional as F

    unet, emb, neg = if_parts
    cls = getattr(diffusers, pipeline)
    cfg = {k: v for k, v in IF_STAGE_I_CONFIG.items() if not k.startswith("_")}
    if scheduler == "dpm":  # keeps learned_range: the scheduler drops the variance channels itself
        theirs = diffusers.DPMSolverMultistepScheduler.from_config(cfg)
        ours = S.DPMSolverMultistepScheduler.from_config(theirs.config)
        op = "dpmpp_2m_step"
    else:  # diffusers' UniPC cannot take the variance channels: the pipeline drops them (fixed_small)
        theirs = diffusers.UniPCMultistepScheduler.from_config({**cfg, "variance_type": "fixed_small"})
        ours = S.UniPCMultistepScheduler.from_config(theirs.config)
        op = "unipc_step"
    calls = []
    real = getattr(F, op)
    monkeypatch.setattr(F, op, lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = _if_pipeline_inputs(pipeline)
    ref_img = _run_if(cls, unet, theirs, emb, neg, **kw)
    our_img = _run_if(cls, unet, ours, emb, neg, **kw)
    assert calls, "the IF config must step on the fused op"
    assert torch.isfinite(ref_img).all()
    # as the DDPM/DDIM pipeline tests: ~1 ulp per step, amplified by the random UNet and guidance
    torch.testing.assert_close(our_img, ref_img, atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- GPU: no syncs
@pytest.mark.gpu
@pytest.mark.parametrize("cls,cfg", [
    (S.DPMSolverMultistepScheduler, dict(variance_type="learned_range", **THRESH)),
    (S.DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++", solver_order=3)),
    (S.UniPCMultistepScheduler, dict(**THRESH)),
])
def test_step_has_no_device_to_host_sync(cls, cfg):
    dev = torch.device("cuda")
    s = cls(beta_schedule="squaredcos_cap_v2", **cfg)
    s.set_timesteps(10, device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(2, 3, 32, 32, device=dev)
    c = 6 if cfg.get("variance_type") == "learned_range" else 3
    out = torch.randn(2, c, 32, 32, device=dev).clamp(-1, 1)
    kw = {"generator": g} if cls is S.DPMSolverMultistepScheduler else {}
    s.step(out, s.timesteps[0], x, **kw)  # warm-up: lazy imports, allocator
    s.set_timesteps(10, device=dev)
    s.set_begin_index(0)  # as IF's pipelines do: the first step reads no timestep
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in s.timesteps:
            x = s.step(out, t, x, **kw).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()
