"""The fused multistep solver steps: DPM-Solver++(2M), UniPC (bh2) and Heun.

Three layers of evidence:

1. :mod:`diffaccel.reference` against float64 transcriptions of the papers' updates written the way
   diffusers writes them (``D0, D1`` for DPM-Solver++; the ``rks`` / ``R`` / ``b`` system solved
   with ``torch.linalg.solve`` for UniPC), and whole sampling loops against diffusers'
   ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` themselves.
2. Every backend of :mod:`diffaccel.functional` against the reference (float32 math on the upcast
   inputs, rounded once), per dtype with its own tolerance, on odd shapes, per-sample t,
   non-contiguous inputs and outputs that alias inputs (Liger-Kernel style).
3. The checks: bad arguments raise errors that name them; ``torch.compile(fullgraph=True)`` of a
   whole solver step.
"""
from __future__ import annotations

import math

import pytest
import torch

import diffaccel
from diffaccel import functional as F
from diffaccel import reference as ref

T = 1000
HAS_CUDA = torch.cuda.is_available()
TOL = {
    torch.float32: (1e-4, 2e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}
DTYPES = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in TOL]
SHAPES = [pytest.param((3, 5, 17, 23), id="3x5x17x23"), pytest.param((1, 3, 64, 64), id="1x3x64x64"),
          pytest.param((4, 1, 28, 28), id="4x1x28x28")]
SOLVER_OPS = ("dpmpp_2m_step", "unipc_step", "heun_step")


def _abar(device="cpu") -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).to(torch.float32).to(device)


def _backend_has(backend: str, device: str, op: str) -> bool:
    if backend == "torch":
        return True
    from diffaccel import _backends
    return getattr(_backends.get(backend, torch.device(device)), op, None) is not None


def _backends(op: str):
    params = [pytest.param("cpu", b, id=f"cpu-{b}") for b in diffaccel.available_backends("cpu")
              if _backend_has(b, "cpu", op)]
    cuda = [b for b in diffaccel.available_backends("cuda") if _backend_has(b, "cuda", op)] if HAS_CUDA else \
        ["torch", "cpp", "triton"]
    params += [pytest.param("cuda", b, id=f"cuda-{b}", marks=pytest.mark.gpu) for b in cuda]
    return params


def _skip_unsupported(device, backend, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter runs on numpy, which has no bfloat16")


def _long(t, n):
    return torch.full((n,), t, dtype=torch.int64) if isinstance(t, int) else t.to(torch.int64)


# ----------------------------------------------------------------------------- float64 transcriptions
def _als64(abar, t):
    """float64 alpha_t, sigma_t, lambda_t of one timestep (t = -1: 1, 0, inf)."""
    a = 1.0 if t < 0 else float(abar[t])
    alpha, sigma = math.sqrt(a), math.sqrt(1 - a)
    return alpha, sigma, (math.inf if sigma == 0 else math.log(alpha) - math.log(sigma))


def _dpmpp_64(x, x0, abar, t, t_prev, x0_prev=None, t_last=None):
    """DPM-Solver++(2M) as diffusers' ``multistep_dpm_solver_second_order_update`` (midpoint)."""
    a_t, s_t, l_t = _als64(abar, t_prev)
    a_0, s_0, l_0 = _als64(abar, t)
    h = l_t - l_0
    if x0_prev is None or t_prev < 0:  # dpm_solver_first_order_update
        return (s_t / s_0) * x - (a_t * math.expm1(-h)) * x0
    _, _, l_1 = _als64(abar, t_last)
    r0 = (l_0 - l_1) / h
    d0, d1 = x0, (1.0 / r0) * (x0 - x0_prev)
    return (s_t / s_0) * x - (a_t * math.expm1(-h)) * d0 - 0.5 * (a_t * math.expm1(-h)) * d1


def _dpmpp_sde_64(x, x0, abar, t, t_prev, noise, x0_prev=None, t_last=None):
    """SDE-DPM-Solver++(2M) as diffusers' ``dpm_solver_first_order_update`` /
    ``multistep_dpm_solver_second_order_update`` with ``algorithm_type="sde-dpmsolver++"`` (midpoint)."""
    a_t, s_t, l_t = _als64(abar, t_prev)
    _, s_0, l_0 = _als64(abar, t)
    h = l_t - l_0
    e_h, e_2h = math.exp(-h), math.exp(-2.0 * h)
    if x0_prev is None or t_prev < 0:
        return (s_t / s_0 * e_h) * x + (a_t * (1 - e_2h)) * x0 + s_t * math.sqrt(1.0 - e_2h) * noise
    _, _, l_1 = _als64(abar, t_last)
    r0 = (l_0 - l_1) / h
    d0, d1 = x0, (1.0 / r0) * (x0 - x0_prev)
    return ((s_t / s_0 * e_h) * x + (a_t * (1 - e_2h)) * d0 + 0.5 * (a_t * (1 - e_2h)) * d1
            + s_t * math.sqrt(1.0 - e_2h) * noise)


def _uni_p_64(x, ms, ts, abar, t_prev, order):
    """diffusers' ``multistep_uni_p_bh_update`` (bh2, predict_x0) with history ms/ts, newest last."""
    a_t, s_t, l_t = _als64(abar, t_prev)
    _, s_0, l_0 = _als64(abar, ts[-1])
    m0 = ms[-1]
    h = l_t - l_0
    rks, d1s = [], []
    for i in range(1, order):
        _, _, l_i = _als64(abar, ts[-(i + 1)])
        rk = (l_i - l_0) / h
        rks.append(rk)
        d1s.append((ms[-(i + 1)] - m0) / rk)
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    x_t = s_t / s_0 * x - a_t * h_phi_1 * m0
    if d1s:
        rhos_p = [0.5]  # diffusers' simplification for order 2
        x_t = x_t - a_t * b_h * sum(r * d for r, d in zip(rhos_p, d1s))
    return x_t


def _uni_c_64(model_t, x_last, x_t, ms, ts, abar, t, order):
    """diffusers' ``multistep_uni_c_bh_update`` (bh2, predict_x0): R rho = b solved in float64."""
    a_t, s_t, l_t = _als64(abar, t)
    _, s_0, l_0 = _als64(abar, ts[-1])
    m0 = ms[-1]
    h = l_t - l_0
    rks, d1s = [], []
    for i in range(1, order):
        _, _, l_i = _als64(abar, ts[-(i + 1)])
        rk = (l_i - l_0) / h
        rks.append(rk)
        d1s.append((ms[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    rks = torch.tensor(rks, dtype=torch.float64)
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    b_h = math.expm1(hh)
    r_rows, b = [], []
    for i in range(1, order + 1):
        r_rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    if order == 1:
        rhos_c = torch.tensor([0.5], dtype=torch.float64)
    else:
        rhos_c = torch.linalg.solve(torch.stack(r_rows), torch.tensor(b, dtype=torch.float64))
    corr = sum(float(r) * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
    return s_t / s_0 * x_last - a_t * h_phi_1 * m0 - a_t * b_h * (corr + float(rhos_c[-1]) * (model_t - m0))


def _x0_64(x, eps, abar, t):
    a = float(abar[t])
    return (x - math.sqrt(1 - a) * eps) / math.sqrt(a)


def _rnd(shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("t,t_prev,t_last", [(500, 450, 550), (40, 10, 70), (10, -1, 40), (999, 966, None),
                                             (20, 0, 51)])
def test_dpmpp_reference_matches_float64_transcription(t, t_prev, t_last):
    abar = _abar()
    shape = (2, 3, 9, 7)
    x, eps, x0p = _rnd(shape, 1), _rnd(shape, 2), _rnd(shape, 3)
    n = shape[0]
    got, x0 = ref.dpmpp_2m_step(x, eps, abar, _long(t, n), _long(t_prev, n),
                                x0_prev=None if t_last is None else x0p,
                                t_last=None if t_last is None else _long(t_last, n))
    x0_64 = _x0_64(x.double(), eps.double(), abar, t)
    want = _dpmpp_64(x.double(), x0_64, abar, t, t_prev, None if t_last is None else x0p.double(), t_last)
    torch.testing.assert_close(x0.double(), x0_64, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("t,t_prev,t_last", [(500, 450, 550), (40, 10, 70), (10, -1, 40), (999, 966, None),
                                             (20, 0, 51), (900, 100, 999)])
def test_dpmpp_sde_reference_matches_float64_transcription(t, t_prev, t_last):
    abar = _abar()
    shape = (2, 3, 9, 7)
    x, eps, x0p, z = _rnd(shape, 1), _rnd(shape, 2), _rnd(shape, 3), _rnd(shape, 4)
    n = shape[0]
    got, x0 = ref.dpmpp_2m_step(x, eps, abar, _long(t, n), _long(t_prev, n), noise=z,
                                x0_prev=None if t_last is None else x0p,
                                t_last=None if t_last is None else _long(t_last, n))
    x0_64 = _x0_64(x.double(), eps.double(), abar, t)
    want = _dpmpp_sde_64(x.double(), x0_64, abar, t, t_prev, z.double(), None if t_last is None else x0p.double(),
                         t_last)
    torch.testing.assert_close(x0.double(), x0_64, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    ode, _ = ref.dpmpp_2m_step(x, eps, abar, _long(t, n), _long(t_prev, n),
                               x0_prev=None if t_last is None else x0p,
                               t_last=None if t_last is None else _long(t_last, n))
    if t_prev < 0:  # onto the clean image both forms return x0, whatever the noise
        torch.testing.assert_close(got, ode, atol=0, rtol=0)
    else:
        assert (got - ode).abs().max() > 0.01


@pytest.mark.parametrize("t,t_prev", [(500, 450), (40, 10), (999, 0), (20, 0)])
def test_dpmpp_sde_first_order_is_the_ddpm_posterior_step(t, t_prev):
    """SDE-DPM-Solver++(1) = ancestral DDPM with the posterior ("fixed_small") variance (Lu et al. 2022):
    an independent check through ``reference.ddpm_step``."""
    abar = _abar()
    shape = (2, 3, 9, 7)
    x, eps, z = _rnd(shape, 1), _rnd(shape, 2), _rnd(shape, 4)
    tt, tp = _long(t, 2), _long(t_prev, 2)
    got, _ = ref.dpmpp_2m_step(x, eps, abar, tt, tp, noise=z)
    want = ref.ddpm_step(x, eps, abar, tt, tp, noise=z, variance="fixed_small")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("t,t_prev,t_last,t_last2,corrector,order", [
    (500, 450, None, None, False, 2),   # first step: predictor order 1, no corrector
    (450, 400, 500, None, True, 2),     # corrector order 1, predictor order 2
    (400, 350, 450, 500, True, 2),      # corrector order 2, predictor order 2
    (400, 350, 450, 500, True, 1),      # predictor order 1
    (30, -1, 80, 130, True, 2),         # final step: predictor order 1
    (120, 60, 240, None, False, 2),     # predictor only, order 2
])
def test_unipc_reference_matches_float64_transcription(t, t_prev, t_last, t_last2, corrector, order):
    abar = _abar()
    shape = (2, 3, 9, 7)
    n = shape[0]
    x, eps, x0p, xl, x0p2 = (_rnd(shape, s) for s in range(5))
    kw = {}
    if t_last is not None:
        kw.update(x0_prev=x0p, t_last=_long(t_last, n))
    if corrector:
        kw.update(x_last=xl)
        if t_last2 is not None:
            kw.update(x0_prev2=x0p2, t_last2=_long(t_last2, n))
    got, x0, x_corr = ref.unipc_step(x, eps, abar, _long(t, n), _long(t_prev, n), predictor_order=order, **kw)

    x0_64 = _x0_64(x.double(), eps.double(), abar, t)
    ms, ts = [], []
    if t_last2 is not None and corrector:
        ms, ts = [x0p2.double()], [t_last2]
    if t_last is not None:
        ms, ts = ms + [x0p.double()], ts + [t_last]
    xc = x.double()
    if corrector:
        xc = _uni_c_64(x0_64, xl.double(), x.double(), ms, ts, abar, t, order=len(ms))
    ms2, ts2 = ms[-1:] + [x0_64], ts[-1:] + [t]
    p_order = 1 if (t_prev < 0 or t_last is None) else order
    want = _uni_p_64(xc, ms2, ts2, abar, t_prev, p_order)
    torch.testing.assert_close(x_corr.double(), xc, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_heun_reference_is_the_trapezoid():
    x, v, w = _rnd((3, 4), 0), _rnd((3, 4), 1), _rnd((3, 4), 2)
    torch.testing.assert_close(ref.heun_step(x, v, w, 0.25).double(),
                               x.double() + 0.125 * (v.double() + w.double()), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- against diffusers
def _fake_model(x, t):
    """A deterministic eps model with some structure (so thresholding and history matter)."""
    return 0.6 * x + 0.4 * torch.sin(3 * x + float(t) / 97.0)


def _diffusers_loop(sched, x, steps):
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(_fake_model(x, int(t)), t, x).prev_sample
    return x, [int(t) for t in sched.timesteps]


@pytest.mark.parametrize("thresholding", [False, True], ids=["plain", "threshold"])
@pytest.mark.parametrize("steps", [5, 12])
def test_dpmpp_loop_matches_diffusers(thresholding, steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", solver_order=2, algorithm_type="dpmsolver++",
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero", thresholding=thresholding,
        dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    x = _rnd((2, 3, 16, 16), 7) * 3
    want, ts = _diffusers_loop(sched, x.clone(), steps)
    abar = sched.alphas_cumprod.to(torch.float32)
    x0_prev = t_last = None
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x, x0_prev = F.dpmpp_2m_step(x, _fake_model(x, t), abar, t, t_prev, x0_prev=x0_prev, t_last=t_last,
                                     dynamic_threshold=(0.9, 1.5) if thresholding else None, backend="torch")
        t_last = t
    torch.testing.assert_close(x, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("thresholding", [False, True], ids=["plain", "threshold"])
@pytest.mark.parametrize("steps", [5, 12])
def test_dpmpp_sde_loop_matches_diffusers(thresholding, steps):
    """The whole SDE-DPM-Solver++(2M) loop against diffusers' scheduler, the same noise handed to both
    (diffusers' ``variance_noise``)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", solver_order=2, algorithm_type="sde-dpmsolver++",
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero", thresholding=thresholding,
        dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    x = _rnd((2, 3, 16, 16), 7) * 3
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    zs = [_rnd(x.shape, 100 + i) for i in range(len(ts))]
    want = x.clone()
    for i, t in enumerate(ts):
        want = sched.step(_fake_model(want, t), t, want, variance_noise=zs[i]).prev_sample
    abar = sched.alphas_cumprod.to(torch.float32)
    x0_prev = t_last = None
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x, x0_prev = F.dpmpp_2m_sde_step(x, _fake_model(x, t), abar, t, t_prev, zs[i], x0_prev=x0_prev,
                                         t_last=t_last, dynamic_threshold=(0.9, 1.5) if thresholding else None,
                                         backend="torch")
        t_last = t
    torch.testing.assert_close(x, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("thresholding", [False, True], ids=["plain", "threshold"])
@pytest.mark.parametrize("steps", [5, 12])
def test_unipc_loop_matches_diffusers(thresholding, steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", solver_order=2, predict_x0=True, solver_type="bh2",
        lower_order_final=True, final_sigmas_type="zero", thresholding=thresholding,
        dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    x = _rnd((2, 3, 16, 16), 8) * 3
    want, ts = _diffusers_loop(sched, x.clone(), steps)
    abar = sched.alphas_cumprod.to(torch.float32)
    hist = {}  # x0_prev, t_last, x_last, x0_prev2, t_last2
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x_new, x0, x_corr = F.unipc_step(x, _fake_model(x, t), abar, t, t_prev, **hist,
                                         dynamic_threshold=(0.9, 1.5) if thresholding else None, backend="torch")
        prev = {k: hist[k] for k in ("x0_prev", "t_last") if k in hist}
        hist = dict(x0_prev=x0, t_last=t, x_last=x_corr)
        if prev:
            hist.update(x0_prev2=prev["x0_prev"], t_last2=prev["t_last"])
        x = x_new
    torch.testing.assert_close(x, want, atol=2e-4, rtol=2e-4)


# ----------------------------------------------------------------------------- every backend
class Inputs:
    def __init__(self, shape, dtype, device, seed=0):
        n = shape[0]
        g = torch.Generator().manual_seed(seed)

        def rnd(scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

        self.x_t, self.eps, self.eps_u, self.eps_c = rnd(), rnd(), rnd(), rnd()
        self.x0_prev, self.x_last, self.x0_prev2 = rnd(2.0), rnd(), rnd(2.0)
        self.v, self.v_next = rnd(), rnd()
        self.noise = rnd()
        self.abar = _abar(device)
        # per sample (t, t_prev, t_last, t_last2): an ordinary step, the last step (t_prev = -1),
        # a large step near T, small t
        rows = [(400, 350, 450, 500), (30, -1, 80, 130), (900, 866, 950, 990), (17, 3, 40, 77)]
        rows = [rows[i % len(rows)] for i in range(n)]
        self.t, self.t_prev, self.t_last, self.t_last2 = (
            torch.tensor([r[k] for r in rows], device=device) for k in range(4))


def _threshold_kw(kind):
    return {"none": {}, "clip": {"clip_x0": 1.0}, "dynamic": {"dynamic_threshold": (0.9, 1.5)}}[kind]


DPMPP_CASES = {
    "first": lambda A, d, **kw: A.dpmpp_2m_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, **kw),
    "second": lambda A, d, **kw: A.dpmpp_2m_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev,
                                                 t_last=d.t_last, **kw),
    "cfg_second": lambda A, d, **kw: A.cfg_dpmpp_2m_step(d.x_t, d.eps_u, d.eps_c, 5.0, d.abar, d.t, d.t_prev,
                                                         x0_prev=d.x0_prev, t_last=d.t_last, **kw),
    "sde_first": lambda A, d, **kw: A.dpmpp_2m_sde_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, d.noise, **kw),
    "sde_second": lambda A, d, **kw: A.dpmpp_2m_sde_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, d.noise,
                                                         x0_prev=d.x0_prev, t_last=d.t_last, **kw),
    "cfg_sde_second": lambda A, d, **kw: A.cfg_dpmpp_2m_sde_step(d.x_t, d.eps_u, d.eps_c, 5.0, d.abar, d.t,
                                                                 d.t_prev, d.noise, x0_prev=d.x0_prev,
                                                                 t_last=d.t_last, **kw),
}
UNIPC_CASES = {
    "predictor1": lambda A, d, **kw: A.unipc_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, **kw),
    "predictor2": lambda A, d, **kw: A.unipc_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev,
                                                  t_last=d.t_last, **kw),
    "corrector1": lambda A, d, **kw: A.unipc_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev,
                                                  t_last=d.t_last, x_last=d.x_last, **kw),
    "corrector2": lambda A, d, **kw: A.unipc_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev,
                                                  t_last=d.t_last, x_last=d.x_last, x0_prev2=d.x0_prev2,
                                                  t_last2=d.t_last2, **kw),
    "corrector2_p1": lambda A, d, **kw: A.unipc_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev,
                                                     t_last=d.t_last, x_last=d.x_last, x0_prev2=d.x0_prev2,
                                                     t_last2=d.t_last2, predictor_order=1, **kw),
    "cfg_corrector2": lambda A, d, **kw: A.cfg_unipc_step(d.x_t, d.eps_u, d.eps_c, 3.0, d.abar, d.t, d.t_prev,
                                                          x0_prev=d.x0_prev, t_last=d.t_last, x_last=d.x_last,
                                                          x0_prev2=d.x0_prev2, t_last2=d.t_last2, **kw),
}


class RefAPI:
    """The public solver signatures computed by the reference on float32 copies of the inputs,
    rounded once to the storage dtype (what a fused kernel with float32 math computes)."""

    @staticmethod
    def _args(x_t, t, t_prev, kw):
        n, dev = x_t.shape[0], x_t.device
        out = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
               for k, v in kw.items() if k not in ("out", "x0_out", "x_corr_out", "backend")}
        for k in ("t_last", "t_last2"):
            if out.get(k) is not None:
                out[k] = _long(out[k], n).to(dev)
        return _long(t, n).to(dev), _long(t_prev, n).to(dev), out

    @staticmethod
    def dpmpp_2m_step(x_t, eps, abar, t, t_prev, **kw):
        tt, tp, kw = RefAPI._args(x_t, t, t_prev, kw)
        return tuple(r.to(x_t.dtype) for r in ref.dpmpp_2m_step(x_t.float(), eps.float(), abar, tt, tp, **kw))

    @staticmethod
    def cfg_dpmpp_2m_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, **kw):
        eps = ref.cfg_combine(eps_u.float(), eps_c.float(), scale)
        return RefAPI.dpmpp_2m_step(x_t, eps, abar, t, t_prev, **kw)

    @staticmethod
    def dpmpp_2m_sde_step(x_t, eps, abar, t, t_prev, noise, **kw):
        return RefAPI.dpmpp_2m_step(x_t, eps, abar, t, t_prev, noise=noise, **kw)

    @staticmethod
    def cfg_dpmpp_2m_sde_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, noise, **kw):
        return RefAPI.cfg_dpmpp_2m_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, noise=noise, **kw)

    @staticmethod
    def unipc_step(x_t, eps, abar, t, t_prev, **kw):
        tt, tp, kw = RefAPI._args(x_t, t, t_prev, kw)
        return tuple(r.to(x_t.dtype) for r in ref.unipc_step(x_t.float(), eps.float(), abar, tt, tp, **kw))

    @staticmethod
    def cfg_unipc_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, **kw):
        eps = ref.cfg_combine(eps_u.float(), eps_c.float(), scale)
        return RefAPI.unipc_step(x_t, eps, abar, t, t_prev, **kw)


def _assert_results(got, want, dtype, threshold="none"):
    atol, rtol = TOL[dtype]
    if threshold == "dynamic" and dtype != torch.float32:
        # the per-sample quantile is taken of float32 |x0| computed from rounded inputs on both sides,
        # but s divides every x0: allow one more rounding of the result
        atol, rtol = 2 * atol, 2 * rtol
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", ["none", "clip", "dynamic"])
@pytest.mark.parametrize("case", list(DPMPP_CASES))
@pytest.mark.parametrize("device,backend", _backends("dpmpp_2m_step"))
def test_dpmpp_matches_reference(device, backend, case, threshold, dtype, shape):
    _skip_unsupported(device, backend, dtype)
    d = Inputs(shape, dtype, device)
    got = DPMPP_CASES[case](F, d, backend=backend, **_threshold_kw(threshold))
    want = DPMPP_CASES[case](RefAPI, d, **_threshold_kw(threshold))
    _assert_results(got, want, dtype, threshold)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", ["none", "clip", "dynamic"])
@pytest.mark.parametrize("case", list(UNIPC_CASES))
@pytest.mark.parametrize("device,backend", _backends("unipc_step"))
def test_unipc_matches_reference(device, backend, case, threshold, dtype, shape):
    _skip_unsupported(device, backend, dtype)
    d = Inputs(shape, dtype, device)
    got = UNIPC_CASES[case](F, d, backend=backend, **_threshold_kw(threshold))
    want = UNIPC_CASES[case](RefAPI, d, **_threshold_kw(threshold))
    _assert_results(got, want, dtype, threshold)


@pytest.mark.parametrize("shape", [(3, 5, 17, 23), (7,), (2, 4096 + 3)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device,backend", _backends("heun_step"))
def test_heun_matches_reference(device, backend, dtype, shape):
    _skip_unsupported(device, backend, dtype)
    x, v, w = (_rnd(shape, s).to(device=device, dtype=dtype) for s in range(3))
    got = F.heun_step(x, v, w, -0.0625, backend=backend)
    want = ref.heun_step(x.float(), v.float(), w.float(), -0.0625).to(dtype)
    torch.testing.assert_close(got, want, atol=TOL[dtype][0], rtol=TOL[dtype][1])


@pytest.mark.parametrize("threshold", ["none", "dynamic"])
@pytest.mark.parametrize("device,backend", _backends("unipc_step"))
def test_unipc_int_timesteps(device, backend, threshold):
    d = Inputs((2, 3, 16, 16), torch.float32, device)
    kw = dict(x0_prev=d.x0_prev, x_last=d.x_last, x0_prev2=d.x0_prev2, **_threshold_kw(threshold))
    got = F.unipc_step(d.x_t, d.eps, d.abar, 300, 200, t_last=400, t_last2=500, backend=backend, **kw)
    want = RefAPI.unipc_step(d.x_t, d.eps, d.abar, 300, 200, t_last=400, t_last2=500, **kw)
    _assert_results(got, want, torch.float32)


@pytest.mark.parametrize("how", ["transposed", "channels_last"])
@pytest.mark.parametrize("device,backend", _backends("unipc_step"))
def test_noncontiguous_inputs(device, backend, how):
    d = Inputs((3, 4, 16, 12), torch.float32, device)

    def mess(x):
        if how == "channels_last":
            return x.contiguous(memory_format=torch.channels_last)
        return x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, permuted strides

    for name in ("x_t", "eps", "x0_prev", "x_last", "x0_prev2"):
        setattr(d, name + "_nc", mess(getattr(d, name)))
    assert not d.x_t_nc.is_contiguous()
    got = F.unipc_step(d.x_t_nc, d.eps_nc, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev_nc, t_last=d.t_last,
                       x_last=d.x_last_nc, x0_prev2=d.x0_prev2_nc, t_last2=d.t_last2, backend=backend,
                       dynamic_threshold=(0.9, 1.5))
    want = UNIPC_CASES["corrector2"](RefAPI, d, dynamic_threshold=(0.9, 1.5))
    _assert_results(got, want, torch.float32)
    got = F.dpmpp_2m_step(d.x_t_nc, d.eps_nc, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev_nc, t_last=d.t_last,
                          backend=backend)
    _assert_results(got, DPMPP_CASES["second"](RefAPI, d), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", ["none", "dynamic"])
@pytest.mark.parametrize("device,backend", _backends("unipc_step"))
def test_outputs_alias_inputs(device, backend, threshold, dtype):
    """A sampler's buffer rotation: x_prev over x_t, x0 over x0_prev2 (or x0_prev), x_corr over x_last."""
    _skip_unsupported(device, backend, dtype)
    d = Inputs((3, 5, 17, 23), dtype, device)
    kw = _threshold_kw(threshold)
    want = UNIPC_CASES["corrector2"](RefAPI, d, **kw)
    x_t, x0p2, xl = d.x_t.clone(), d.x0_prev2.clone(), d.x_last.clone()
    got = F.unipc_step(x_t, d.eps, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev, t_last=d.t_last, x_last=xl,
                       x0_prev2=x0p2, t_last2=d.t_last2, out=x_t, x0_out=x0p2, x_corr_out=xl, backend=backend, **kw)
    assert got[0] is x_t and got[1] is x0p2 and got[2] is xl
    _assert_results(got, want, dtype, threshold)

    want = DPMPP_CASES["second"](RefAPI, d, **kw)
    x_t, x0p = d.x_t.clone(), d.x0_prev.clone()
    got = F.dpmpp_2m_step(x_t, d.eps, d.abar, d.t, d.t_prev, x0_prev=x0p, t_last=d.t_last, out=x_t, x0_out=x0p,
                          backend=backend, **kw)
    assert got[0] is x_t and got[1] is x0p
    _assert_results(got, want, dtype, threshold)

    want = DPMPP_CASES["sde_second"](RefAPI, d, **kw)  # the noise buffer reused as the output
    z, x0p = d.noise.clone(), d.x0_prev.clone()
    got = F.dpmpp_2m_sde_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, z, x0_prev=x0p, t_last=d.t_last, out=z,
                              x0_out=x0p, backend=backend, **kw)
    assert got[0] is z and got[1] is x0p
    _assert_results(got, want, dtype, threshold)

    x, v, w = d.x_t.clone(), d.v, d.v_next
    want = ref.heun_step(x.float(), v.float(), w.float(), 0.1).to(dtype)
    torch.testing.assert_close(F.heun_step(x, v, w, 0.1, out=x, backend=backend), want,
                               atol=TOL[dtype][0], rtol=TOL[dtype][1])


@pytest.mark.parametrize("device,backend", _backends("dpmpp_2m_step"))
def test_final_step_returns_x0(device, backend):
    """t_prev = -1 (abar = 1, sigma = 0): both solvers land on x0 exactly, whatever the history."""
    d = Inputs((2, 3, 8, 8), torch.float32, device)
    x_prev, x0 = F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 20, -1, x0_prev=d.x0_prev, t_last=50, backend=backend)
    torch.testing.assert_close(x_prev, x0, atol=1e-6, rtol=1e-6)
    x_prev, x0, _ = F.unipc_step(d.x_t, d.eps, d.abar, 20, -1, x0_prev=d.x0_prev, t_last=50, backend=backend)
    torch.testing.assert_close(x_prev, x0, atol=1e-6, rtol=1e-6)
    x_prev, x0 = F.dpmpp_2m_sde_step(d.x_t, d.eps, d.abar, 20, -1, d.noise * 100, x0_prev=d.x0_prev, t_last=50,
                                     backend=backend)
    torch.testing.assert_close(x_prev, x0, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- checks
def _d():
    return Inputs((2, 3, 8, 8), torch.float32, "cpu")


BAD = [
    ("x0_prev without t_last", ValueError, "x0_prev needs t_last",
     lambda d: F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 5, 4, x0_prev=d.x0_prev)),
    ("t_last without x0_prev", ValueError, "t_last needs x0_prev",
     lambda d: F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 5, 4, t_last=9)),
    ("t_last not earlier", ValueError, "t_last must be larger than t",
     lambda d: F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 5, 4, x0_prev=d.x0_prev, t_last=5)),
    ("t_last out of range", ValueError, "t_last must be in",
     lambda d: F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 5, 4, x0_prev=d.x0_prev, t_last=torch.tensor([9, T]))),
    ("x0_prev shape", ValueError, "x0_prev must have shape",
     lambda d: F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 5, 4, x0_prev=d.x0_prev[:1], t_last=9)),
    ("x0_prev dtype", TypeError, "x0_prev has dtype",
     lambda d: F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 5, 4, x0_prev=d.x0_prev.half(), t_last=9)),
    ("t_prev not smaller", ValueError, "t_prev must be smaller than t",
     lambda d: F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 5, 5)),
    ("both thresholds", ValueError, "clip_x0 or dynamic_threshold",
     lambda d: F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 5, 4, clip_x0=1.0, dynamic_threshold=(0.9, 2.0))),
    ("out is x0_out", ValueError, "out and x0_out must be different",
     lambda d: F.dpmpp_2m_step(d.x_t, d.eps, d.abar, 5, 4, out=d.x_last, x0_out=d.x_last)),
    ("cfg scale", TypeError, "scale must be a number",
     lambda d: F.cfg_dpmpp_2m_step(d.x_t, d.eps_u, d.eps_c, "5", d.abar, 5, 4)),
    ("sde noise None", TypeError, "noise must be a torch.Tensor",
     lambda d: F.dpmpp_2m_sde_step(d.x_t, d.eps, d.abar, 5, 4, None)),
    ("sde noise shape", ValueError, "noise must have shape",
     lambda d: F.cfg_dpmpp_2m_sde_step(d.x_t, d.eps_u, d.eps_c, 2.0, d.abar, 5, 4, d.noise[:1])),
    ("sde noise overlaps out", ValueError, "out partially overlaps noise",
     lambda d: (lambda buf: F.dpmpp_2m_sde_step(d.x_t, d.eps, d.abar, 5, 4, buf[0:2], out=buf[1:3]))(
         torch.zeros(3, 3, 8, 8))),
    ("cfg eps_cond None", TypeError, "eps_cond must be a torch.Tensor",
     lambda d: F.cfg_unipc_step(d.x_t, d.eps_u, None, 5.0, d.abar, 5, 4)),
    ("x_last without x0_prev", ValueError, "x_last needs x0_prev",
     lambda d: F.unipc_step(d.x_t, d.eps, d.abar, 5, 4, x_last=d.x_last)),
    ("x0_prev2 without x_last", ValueError, "x0_prev2 is only used by the corrector",
     lambda d: F.unipc_step(d.x_t, d.eps, d.abar, 5, 4, x0_prev=d.x0_prev, t_last=9, x0_prev2=d.x0_prev2,
                            t_last2=12)),
    ("t_last2 order", ValueError, "t_last2 must be larger than t_last",
     lambda d: F.unipc_step(d.x_t, d.eps, d.abar, 5, 4, x0_prev=d.x0_prev, t_last=9, x_last=d.x_last,
                            x0_prev2=d.x0_prev2, t_last2=9)),
    ("predictor_order", ValueError, "predictor_order must be 1 or 2",
     lambda d: F.unipc_step(d.x_t, d.eps, d.abar, 5, 4, predictor_order=3)),
    ("x_corr_out is out", ValueError, "out and x_corr_out must be different",
     lambda d: F.unipc_step(d.x_t, d.eps, d.abar, 5, 4, out=d.x_last, x_corr_out=d.x_last)),
    ("heun v shape", ValueError, "v_next must have shape",
     lambda d: F.heun_step(d.x_t, d.v, d.v_next[:1], 0.1)),
    ("heun dt", TypeError, "dt must be a number",
     lambda d: F.heun_step(d.x_t, d.v, d.v_next, None)),
    ("bad backend", ValueError, "backend must be one of",
     lambda d: F.heun_step(d.x_t, d.v, d.v_next, 0.1, backend="cuda")),
]


@pytest.mark.parametrize("what,exc,match,call", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_the_argument(what, exc, match, call):
    with pytest.raises(exc, match=match):
        call(_d())


def test_history_errors_are_diffaccel_errors():
    from diffaccel.errors import ArgumentError
    with pytest.raises(ArgumentError, match="x0_prev needs t_last"):
        F.unipc_step(*(lambda d: (d.x_t, d.eps, d.abar, 5, 4))(_d()), x0_prev=_d().x0_prev)


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("threshold", ["none", "dynamic"])
# Triton's interpreter cannot run on fake tensors (triton/ops.py), so it is compiled on CUDA only.
@pytest.mark.parametrize("device,backend", [p for p in _backends("unipc_step") if p.values[:2] != ("cpu", "triton")])
def test_compiled_solver_step_matches_eager(device, backend, threshold):
    """A whole UniPC step (a stand-in model call, the CFG combine and the fused op) compiles with
    fullgraph=True and matches eager."""
    torch._dynamo.reset()
    d = Inputs((2, 3, 16, 16), torch.float32, device)
    kw = _threshold_kw(threshold)

    def step(x, x0_prev, x_last, x0_prev2, t, t_prev, t_last, t_last2):
        xx = torch.cat([x, x])
        eps = torch.tanh(xx) * 0.5 + 0.1 * xx  # the model stand-in, batched [uncond, cond]
        eps_u, eps_c = eps.chunk(2)
        return F.cfg_unipc_step(x, eps_u, eps_c, 4.0, d.abar, t, t_prev, x0_prev=x0_prev, t_last=t_last,
                                x_last=x_last, x0_prev2=x0_prev2, t_last2=t_last2, backend=backend, **kw)

    args = (d.x_t, d.x0_prev, d.x_last, d.x0_prev2, d.t, d.t_prev, d.t_last, d.t_last2)
    want = step(*args)
    got = torch.compile(step, fullgraph=True)(*args)
    _assert_results(got, want, torch.float32)

    def heun(x, v, w):
        return F.heun_step(x, torch.sin(v), w, 0.05, backend=backend)

    torch.testing.assert_close(torch.compile(heun, fullgraph=True)(d.x_t, d.v, d.v_next), heun(d.x_t, d.v, d.v_next))


# ----------------------------------------------------------------------------- the C++ ops themselves
def _cpp_ops():
    if "cpp" not in diffaccel.available_backends("cpu") or not _backend_has("cpp", "cpu", "unipc_step"):
        pytest.skip("the C++ extension with the solver ops is not built")
    return torch.ops.diffaccel


def _opcheck_cases():
    for dtype in (torch.float32, torch.float16):
        d = Inputs((2, 3, 8, 9), dtype, "cpu")
        o = lambda: torch.empty_like(d.x_t)  # noqa: E731
        for cond in (None, d.eps_c):
            for thr in ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.9, 1.5)):
                yield "dpmpp_2m_step", (d.x_t, d.eps_u, cond, 3.0, d.abar, d.t, d.t_prev, None, None, *thr, o(), o())
                yield "dpmpp_2m_step", (d.x_t, d.eps_u, cond, 3.0, d.abar, d.t, d.t_prev, d.x0_prev, d.t_last, *thr,
                                        o(), o())
                yield "dpmpp_2m_step", (d.x_t, d.eps_u, cond, 3.0, d.abar, d.t, d.t_prev, d.x0_prev, d.t_last, *thr,
                                        o(), o(), d.noise)
                yield "unipc_step", (d.x_t, d.eps_u, cond, 3.0, d.abar, d.t, d.t_prev, d.x0_prev, d.t_last, d.x_last,
                                     d.x0_prev2, d.t_last2, 2, *thr, o(), o(), o())
            yield "unipc_step", (d.x_t, d.eps_u, cond, 3.0, d.abar, d.t, d.t_prev, None, None, None, None, None, 2,
                                 0.0, 0.0, 0.0, o(), o(), o())
            yield "unipc_step", (d.x_t, d.eps_u, cond, 3.0, d.abar, d.t, d.t_prev, d.x0_prev, d.t_last, d.x_last,
                                 None, None, 1, 0.0, 0.0, 0.0, o(), o(), o())
        yield "heun_step", (d.x_t, d.v, d.v_next, 0.1, o())


@pytest.mark.parametrize("name,args", [pytest.param(n, a, id=f"{n}-{i}") for i, (n, a) in enumerate(_opcheck_cases())])
def test_opcheck(name, args):
    ops = _cpp_ops()
    torch.library.opcheck(getattr(ops, name).default, args)


CPP_BAD = [
    ("t_last without x0_prev", "x0_prev and t_last must be given together",
     lambda d, o: ("dpmpp_2m_step", (d.x_t, d.eps, None, 1.0, d.abar, d.t, d.t_prev, None, d.t_last, 0.0, 0.0, 0.0,
                                     o(), o()))),
    ("x0_out shape", "x0_out must have shape",
     lambda d, o: ("dpmpp_2m_step", (d.x_t, d.eps, None, 1.0, d.abar, d.t, d.t_prev, None, None, 0.0, 0.0, 0.0,
                                     o(), o()[:1]))),
    ("t_last range", "t_last must be in",
     lambda d, o: ("dpmpp_2m_step", (d.x_t, d.eps, None, 1.0, d.abar, d.t, d.t_prev, d.x0_prev, d.t_last + T, 0.0,
                                     0.0, 0.0, o(), o()))),
    ("x0_prev2 without x_last", "x0_prev2 is only used by the corrector",
     lambda d, o: ("unipc_step", (d.x_t, d.eps, None, 1.0, d.abar, d.t, d.t_prev, d.x0_prev, d.t_last, None,
                                  d.x0_prev2, d.t_last2, 2, 0.0, 0.0, 0.0, o(), o(), o()))),
    ("predictor_order", "predictor_order must be 1 or 2",
     lambda d, o: ("unipc_step", (d.x_t, d.eps, None, 1.0, d.abar, d.t, d.t_prev, None, None, None, None, None, 3,
                                  0.0, 0.0, 0.0, o(), o(), o()))),
    ("threshold ratio", "dynamic thresholding needs ratio",
     lambda d, o: ("unipc_step", (d.x_t, d.eps, None, 1.0, d.abar, d.t, d.t_prev, None, None, None, None, None, 2,
                                  0.0, 1.5, 2.0, o(), o(), o()))),
    ("heun v_next dtype", "v_next must have dtype",
     lambda d, o: ("heun_step", (d.x_t, d.v, d.v_next.double(), 0.1, o()))),
]


@pytest.mark.parametrize("what,match,case", CPP_BAD, ids=[c[0] for c in CPP_BAD])
def test_cpp_checks_name_the_argument(what, match, case):
    ops = _cpp_ops()
    d = Inputs((2, 3, 8, 9), torch.float32, "cpu")
    name, args = case(d, lambda: torch.empty_like(d.x_t))
    with pytest.raises((ValueError, TypeError), match=match):
        getattr(ops, name)(*args)


@pytest.mark.parametrize("ratio", [0.3, 0.95])
def test_threshold_large_batch_one_sample_matches_torch_quantile(ratio):
    """Batch 1, 3x128x128: the quantile is split over every thread (the few-samples path)."""
    _cpp_ops()
    d = Inputs((1, 3, 128, 128), torch.float32, "cpu")
    x = d.x_t * 4
    got = F.unipc_step(x, d.eps, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev, t_last=d.t_last, backend="cpp",
                       dynamic_threshold=(ratio, 1e6))
    want = ref.unipc_step(x, d.eps, d.abar, d.t, d.t_prev, x0_prev=d.x0_prev, t_last=d.t_last,
                          dynamic_threshold=(ratio, 1e6))
    _assert_results(got, want, torch.float32)


@pytest.mark.parametrize("where", ["unaligned", "aliased"])
def test_threshold_streaming_outputs(where):
    """2 x 4M float32 values = 32 MiB per output: the thresholded step writes with streaming stores
    (csrc/cpu/solver_ops.cpp). Outputs start one float past a 32-byte boundary (the scalar head
    before the aligned stores), or alias the inputs they are computed from (x_prev over x_t, x0
    over x0_prev, the corrected sample over x_last)."""
    _cpp_ops()
    d = Inputs((2, 4, 1024, 1024), torch.float32, "cpu")
    x = d.x_t * 4
    kw = dict(x0_prev=d.x0_prev, t_last=d.t_last, x_last=d.x_last, dynamic_threshold=(0.95, 1.5))
    want = ref.unipc_step(x, d.eps, d.abar, d.t, d.t_prev, **kw)

    def unaligned():
        buf = torch.empty(x.numel() + 16)[1:x.numel() + 1].view(x.shape)
        assert buf.data_ptr() % 32 != 0
        return buf

    outs = (unaligned(), unaligned(), unaligned()) if where == "unaligned" else (x, d.x0_prev, d.x_last)
    got = F.unipc_step(x, d.eps, d.abar, d.t, d.t_prev, backend="cpp", out=outs[0], x0_out=outs[1],
                       x_corr_out=outs[2], **kw)
    assert all(g.data_ptr() == o.data_ptr() for g, o in zip(got, outs))
    _assert_results(got, want, torch.float32)


def test_backend_without_the_op_falls_back_under_auto_only(monkeypatch):
    """An extension built before the solver ops existed: "auto" uses the reference, "cpp" says why not."""
    _cpp_ops()
    from diffaccel import _backends
    from diffaccel.errors import ArgumentError
    cpp = _backends.get("cpp", torch.device("cpu"))
    monkeypatch.setattr(cpp, "has_op", staticmethod(lambda name, device: name != "unipc_step"))
    d = Inputs((2, 3, 8, 8), torch.float32, "cpu")
    got = F.unipc_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, backend="auto")
    _assert_results(got, UNIPC_CASES["predictor1"](RefAPI, d), torch.float32)
    with pytest.raises(ArgumentError, match="backend 'cpp' has no unipc_step kernel in this build"):
        F.unipc_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, backend="cpp")
    F.dpmpp_2m_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, backend="cpp")  # the others still run
