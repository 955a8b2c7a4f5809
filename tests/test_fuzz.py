"""No silent wrong results from the functional API and the drop-in schedulers.

Two parts. First, the cases that used to give a wrong value or a NaN without an error
(partial ``out=`` overlap, NaN / Inf scalars, a tensor ``t_prev >= t``, ``alphas_cumprod``
outside [0, 1] and a step from ``alphas_cumprod[t] = 0``, masks outside [0, 1], float scheduler
timesteps), each pinned by a test.
Second, property-based tests (hypothesis) over every op of :mod:`diffaccel.functional` on the
``torch`` and ``cpp`` backends: random shapes, strides (non-contiguous, channels-last,
stride-0), overlaps, dtypes, NaN/Inf scalars, out-of-range values and wrong types. The property:
a call either returns the float64 reference's result within the dtype's tolerance, or raises a
``ValueError`` / ``TypeError`` from diffaccel's own checks whose message names the argument —
never a wrong result, never an exception from inside torch.

In CI (``CI`` set) the ``ci`` hypothesis profile of ``tests/conftest.py`` runs a fixed number
of derandomized examples.
"""
from __future__ import annotations

import functools
import math
import re
import traceback

import pytest
import torch

import diffaccel
from diffaccel import functional as F
from diffaccel import reference as ref
from diffaccel.errors import DiffaccelError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BACKENDS = [b for b in diffaccel.available_backends("cpu") if b in ("torch", "cpp")]
T = 1000


def _abar(T: int = T, dtype=torch.float32) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).to(dtype)


ABAR = _abar()


# ============================================================================ pinned cases
# ---------------------------------------------------------------- 1. partial overlap of out=
def _overlap_calls():
    """(name, fn(inp, out, backend), input-argument name): ``inp`` and ``out`` overlap partially."""
    nz = torch.randn(2, 3, 8, 8)
    e = torch.randn(2, 3, 8, 8)
    return [
        ("add_noise", lambda a, o, b: F.add_noise(a, nz, ABAR, 3, out=o, backend=b), "x0"),
        ("add_noise-noise", lambda a, o, b: F.add_noise(nz, a, ABAR, 3, out=o, backend=b), "noise"),
        ("predict_x0", lambda a, o, b: F.predict_x0(a, e, ABAR, 300, out=o, backend=b), "x_t"),
        ("cfg_combine", lambda a, o, b: F.cfg_combine(e, a, 3.0, out=o, backend=b), "eps_cond"),
        ("gaussian_blur", lambda a, o, b: F.gaussian_blur(a, 5, 1.5, out=o, backend=b), "x"),
        ("highpass", lambda a, o, b: F.highpass(a, 5, 1.5, out=o, backend=b), "x"),
        ("hybrid_combine", lambda a, o, b: F.hybrid_combine(e, a, 5, 1.5, out=o, backend=b), "eps_high"),
        ("ddpm_step-thr", lambda a, o, b: F.ddpm_step(a, e, ABAR, 500, 480, dynamic_threshold=(0.9, 1.5),
                                                      out=o, backend=b), "x_t"),
        ("ddpm_step-noise", lambda a, o, b: F.ddpm_step(e, e, ABAR, 500, 480, noise=a, out=o, backend=b), "noise"),
        ("cfg_ddpm_step", lambda a, o, b: F.cfg_ddpm_step(e, a, e, 2.0, ABAR, 500, 480, out=o, backend=b),
         "eps_uncond"),
        ("ddim_step", lambda a, o, b: F.ddim_step(e, a, ABAR, 500, 480, out=o, backend=b), "eps"),
        ("cfg_ddim_step", lambda a, o, b: F.cfg_ddim_step(e, e, a, 2.0, ABAR, 500, 480, out=o, backend=b),
         "eps_cond"),
        ("masked_project", lambda a, o, b: F.masked_project(a, e, torch.ones(8, 8), nz, ABAR, 300, out=o,
                                                            backend=b), "x_t"),
        ("heun_step", lambda a, o, b: F.heun_step(a, e, e, 0.1, out=o, backend=b), "x"),
        ("dpmpp_2m_step", lambda a, o, b: F.dpmpp_2m_step(a, e, ABAR, 500, 480, out=o, backend=b)[0], "x_t"),
        ("dpmpp_2m_step-x0_out", lambda a, o, b: F.dpmpp_2m_step(e, e, ABAR, 500, 480, x0_prev=a, t_last=520,
                                                                 x0_out=o, backend=b)[1], "x0_prev"),
        ("unipc_step-x_corr_out", lambda a, o, b: F.unipc_step(e, e, ABAR, 500, 480, x0_prev=e, t_last=520,
                                                               x_last=a, x_corr_out=o, backend=b)[2], "x_last"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", _overlap_calls(), ids=lambda c: c[0])
def test_partial_overlap_of_out_and_an_input_is_refused(case, backend):
    _, fn, arg = case
    buf = torch.randn(3, 3, 8, 8)
    with pytest.raises(ValueError, match=rf"(?s)(out|x0_out|x_corr_out).*{arg}|{arg}.*(out|x0_out|x_corr_out)"):
        fn(buf[0:2], buf[1:3], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_aliasing_of_out_stays_allowed(backend):
    x = torch.randn(2, 3, 8, 8)
    nz = torch.randn_like(x)
    want = ref.add_noise(x.clone(), nz, ABAR, torch.tensor([3, 3]))
    got = F.add_noise(x, nz, ABAR, 3, out=x, backend=backend)
    assert got.data_ptr() == x.data_ptr()
    torch.testing.assert_close(got, want)
    x = torch.randn(2, 3, 8, 8)
    want = ref.gaussian_blur(x.clone(), 5, 1.5)
    torch.testing.assert_close(F.gaussian_blur(x, 5, 1.5, out=x, backend=backend), want)


def test_out_buffers_of_a_solver_step_must_not_overlap_each_other():
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    buf = torch.empty(3, 3, 8, 8)
    with pytest.raises(ValueError, match="out.*x0_out"):
        F.dpmpp_2m_step(x, e, ABAR, 500, 480, out=buf[0:2], x0_out=buf[1:3])


def test_disjoint_views_of_one_buffer_are_fine():
    buf = torch.randn(4, 3, 8, 8)
    nz = torch.randn(2, 3, 8, 8)
    want = ref.add_noise(buf[0:2].clone(), nz, ABAR, torch.tensor([3, 3]))
    torch.testing.assert_close(F.add_noise(buf[0:2], nz, ABAR, 3, out=buf[2:4]), want)


# ---------------------------------------------------------------- 2. NaN / Inf scalars
def _scalar_calls():
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    return [
        ("scale", lambda v, b: F.cfg_combine(e, x, v, backend=b)),
        ("scale", lambda v, b: F.cfg_ddpm_step(x, e, e, v, ABAR, 500, 480, backend=b)),
        ("scale", lambda v, b: F.cfg_ddim_step(x, e, e, v, ABAR, 500, 480, backend=b)),
        ("scale", lambda v, b: F.cfg_dpmpp_2m_step(x, e, e, v, ABAR, 500, 480, backend=b)),
        ("scale", lambda v, b: F.cfg_unipc_step(x, e, e, v, ABAR, 500, 480, backend=b)),
        ("eta", lambda v, b: F.ddim_step(x, e, ABAR, 500, 480, eta=v, noise=e, backend=b)),
        ("eta", lambda v, b: F.cfg_ddim_step(x, e, e, 1.0, ABAR, 500, 480, eta=v, noise=e, backend=b)),
        ("clip_x0", lambda v, b: F.ddpm_step(x, e, ABAR, 500, 480, clip_x0=v, backend=b)),
        ("dynamic_threshold", lambda v, b: F.ddpm_step(x, e, ABAR, 500, 480, dynamic_threshold=(0.9, v),
                                                       backend=b)),
        ("dynamic_threshold", lambda v, b: F.ddpm_step(x, e, ABAR, 500, 480, dynamic_threshold=(v, 1.5),
                                                       backend=b)),
        ("dynamic_threshold", lambda v, b: F.dpmpp_2m_step(x, e, ABAR, 500, 480, dynamic_threshold=(0.9, v),
                                                           backend=b)),
        ("clip_x0", lambda v, b: F.unipc_step(x, e, ABAR, 500, 480, clip_x0=v, backend=b)),
        ("sigma", lambda v, b: F.gaussian_blur(x, 5, v, backend=b)),
        ("sigma", lambda v, b: F.highpass(x, 5, v, backend=b)),
        ("sigma", lambda v, b: F.hybrid_combine(x, e, 5, v, backend=b)),
        ("sigma", lambda v, b: F.add_gaussian_noise(x, e, v)),
        ("dt", lambda v, b: F.euler_step(x, e, v)),
        ("dt", lambda v, b: F.heun_step(x, e, e, v, backend=b)),
    ]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", _scalar_calls(), ids=lambda c: c[0])
def test_non_finite_scalars_are_refused_on_every_backend(case, backend, value):
    name, fn = case
    with pytest.raises(ValueError, match=rf"{name}.* must be finite"):
        fn(value, backend)


# ---------------------------------------------------------------- 3. t, alphas_cumprod, masks, schedulers
_T_PREV_FORMS = [  # (t, t_prev) in every mix of the int and tensor forms; x0 = e at sample 1 of 3
    ("int-int", 400, 400),
    ("tensor-tensor", torch.tensor([500, 400, 300]), torch.tensor([480, 400, 200])),
    ("int-tensor", 400, torch.tensor([380, 400, 200])),
    ("tensor-int", torch.tensor([500, 400, 450]), 400),
    ("scalar tensors", torch.tensor(400), torch.tensor(400)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["ddpm_step", "cfg_ddpm_step", "ddim_step", "cfg_ddim_step", "dpmpp_2m_step",
                                "cfg_dpmpp_2m_step", "unipc_step", "cfg_unipc_step"])
@pytest.mark.parametrize("form", _T_PREV_FORMS, ids=lambda c: c[0])
@pytest.mark.parametrize("rel", ["equal", "above"])
def test_t_prev_not_below_t_is_refused_in_every_form(rel, form, op, backend):
    """One rule for ints and tensors: a step goes back in time, ``t_prev < t``; ``t_prev == t`` (no
    step: the solvers divide by its h = 0) is refused like ``t_prev > t``."""
    x, e = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    fn = getattr(F, op)
    lead = (x, e, e, 2.0) if op.startswith("cfg_") else (x, e)
    _, t, t_prev = form
    if rel == "above":
        t_prev = t_prev + 5 if isinstance(t_prev, int) else t_prev + 5 * (t_prev == 400)
    with pytest.raises(ValueError, match="t_prev must be smaller than t"):
        fn(*lead, ABAR, t, t_prev, backend=backend)
    # one step below is fine in the same form
    t_ok = 399 if isinstance(t_prev, int) else torch.where(t_prev >= 400, 399, t_prev)
    got = fn(*lead, ABAR, t, t_ok, backend=backend)
    got = got[0] if isinstance(got, tuple) else got
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_without_set_alpha_to_one_still_steps_t0_onto_itself_as_diffusers(eta, clip_sample, prediction_type):
    """diffusers' DDIM without ``set_alpha_to_one`` ends with a step from t = 0 onto abar[0] (t -> t).
    The functional ops refuse t_prev == t; the drop-in scheduler takes that step itself."""
    schedulers = pytest.importorskip("diffaccel.schedulers")
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(set_alpha_to_one=False, clip_sample=clip_sample, prediction_type=prediction_type)
    ours, theirs = schedulers.DDIMScheduler(**cfg), diffusers.DDIMScheduler(**cfg)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert int(ours.timesteps[-1]) == 0 and ours.previous_timestep(0) == 0
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    xa, xb = x.clone(), x.clone()
    for t in ours.timesteps:
        out = torch.randn_like(x) * 0.5
        ra = ours.step(out, t, xa, eta=eta, generator=torch.Generator().manual_seed(int(t)))
        rb = theirs.step(out, t, xb, eta=eta, generator=torch.Generator().manual_seed(int(t)))
        xa, xb = ra.prev_sample, rb.prev_sample
        torch.testing.assert_close(xa, xb, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(ra.pred_original_sample, rb.pred_original_sample, atol=2e-4, rtol=1e-4)


def test_tensor_history_timestep_must_be_earlier():
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="t_last must be larger than t"):
        F.dpmpp_2m_step(x, e, ABAR, torch.tensor([500, 500]), 480, x0_prev=e, t_last=torch.tensor([520, 500]))


def _bad_abars():
    good = _abar()
    zero, one, nan, big, neg, inf = (good.clone() for _ in range(6))
    nan[500] = math.nan
    big[0] = 1.5
    neg[-1] = -0.01
    inf[3] = math.inf
    return [("nan", nan), ("above 1", big), ("negative", neg), ("inf", inf)]


def _abar_calls():
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    return [
        ("add_noise", lambda a, b: F.add_noise(x, e, a, 3, backend=b)),
        ("predict_x0", lambda a, b: F.predict_x0(x, e, a, 3, backend=b)),
        ("ddpm_step", lambda a, b: F.ddpm_step(x, e, a, 10, 5, backend=b)),
        ("ddim_step", lambda a, b: F.ddim_step(x, e, a, 10, 5, backend=b)),
        ("masked_project", lambda a, b: F.masked_project(x, e, torch.ones(8, 8), e, a, 3, backend=b)),
        ("dpmpp_2m_step", lambda a, b: F.dpmpp_2m_step(x, e, a, 10, 5, backend=b)[0]),
        ("unipc_step", lambda a, b: F.unipc_step(x, e, a, 10, 5, backend=b)[0]),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", _bad_abars(), ids=lambda c: c[0])
@pytest.mark.parametrize("case", _abar_calls(), ids=lambda c: c[0])
def test_alphas_cumprod_outside_0_1_is_refused(case, bad, backend):
    with pytest.raises(ValueError, match=r"alphas_cumprod .*\[0, 1\]"):
        case[1](bad[1], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alphas_cumprod_of_one_is_allowed_where_the_formula_is_finite(backend):
    """``abar = 1`` (beta = 0, e.g. a zero first beta or diffusers' appended final entry) is a valid
    table entry: the forward process and x0 prediction are finite there; a step *from* it is not."""
    a = _abar().clone()
    a[0] = 1.0
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(F.add_noise(x, e, a, 0, backend=backend), x)
    torch.testing.assert_close(F.predict_x0(x, e, a, 0, backend=backend), x)
    torch.testing.assert_close(F.ddpm_step(x, e, a, 10, 0, backend=backend),
                               ref.ddpm_step(x, e, a, torch.tensor([10, 10]), torch.tensor([0, 0])))
    with pytest.raises(ValueError, match=r"t .*alphas_cumprod\[t\] = 1"):
        F.ddim_step(x, e, a, 0, -1, backend=backend)
    with pytest.raises(ValueError, match=r"t .*alphas_cumprod\[t\] = 1"):
        F.ddpm_step(x, e, a, torch.tensor([5, 0]), torch.tensor([-1, -1]), backend=backend)


def _zero_snr_abar() -> torch.Tensor:
    """A zero-terminal-SNR table: abar = 0 at 997..999."""
    a = _abar().clone()
    a[-3:] = 0.0
    return a


def _zero_t_calls():
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    return [
        ("predict_x0", lambda a, t, b: F.predict_x0(x, e, a, t, backend=b)),
        ("ddpm_step", lambda a, t, b: F.ddpm_step(x, e, a, t, 400, backend=b)),
        ("cfg_ddpm_step", lambda a, t, b: F.cfg_ddpm_step(x, e, x, 2.0, a, t, 400, backend=b)),
        ("ddim_step", lambda a, t, b: F.ddim_step(x, e, a, t, 400, backend=b)),
        ("cfg_ddim_step", lambda a, t, b: F.cfg_ddim_step(x, e, x, 2.0, a, t, 400, eta=0.5, noise=e, backend=b)),
        ("dpmpp_2m_step", lambda a, t, b: F.dpmpp_2m_step(x, e, a, t, 400, backend=b)),
        ("cfg_dpmpp_2m_step", lambda a, t, b: F.cfg_dpmpp_2m_step(x, e, x, 2.0, a, t, -1, backend=b)),
        ("unipc_step", lambda a, t, b: F.unipc_step(x, e, a, t, 400, backend=b)),
        ("cfg_unipc_step", lambda a, t, b: F.cfg_unipc_step(x, e, x, 2.0, a, t, 400, backend=b)),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["int", "tensor"])
@pytest.mark.parametrize("case", _zero_t_calls(), ids=lambda c: c[0])
def test_x0_or_a_step_from_alphas_cumprod_of_zero_is_refused(case, form, backend):
    """``abar[t] = 0`` (zero terminal SNR): x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) divides by
    zero, so x0 prediction and every step from that t are refused, as a step from abar[t] = 1 is."""
    a = _zero_snr_abar()
    t = 998 if form == "int" else torch.tensor([500, 998])
    with pytest.raises(ValueError, match=r"^t must index alphas_cumprod above 0.*alphas_cumprod is 0 at \[997, 998, 999\]"):
        case[1](a, t, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alphas_cumprod_of_zero_is_allowed_where_the_formula_is_finite(backend):
    """The forward process, a step from below the zeros, and a solver history entry there are finite."""
    a = _zero_snr_abar()
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(F.add_noise(x, e, a, 999, backend=backend), e)
    torch.testing.assert_close(F.masked_project(x, x, torch.zeros(8, 8), e, a, 999, backend=backend), e)
    tt, tp = torch.tensor([996, 996]), torch.tensor([400, 400])
    torch.testing.assert_close(F.ddim_step(x, e, a, 996, 400, backend=backend), ref.ddim_step(x, e, a, tt, tp))
    torch.testing.assert_close(F.ddpm_step(x, e, a, 996, 400, backend=backend), ref.ddpm_step(x, e, a, tt, tp))
    got = F.dpmpp_2m_step(x, e, a, 996, 400, x0_prev=x, t_last=999, backend=backend)
    want = ref.dpmpp_2m_step(x, e, a, tt, tp, x0_prev=x, t_last=torch.tensor([999, 999]))
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_onto_alphas_cumprod_of_zero_is_refused(backend):
    """Only a table that is not a cumulative product has abar[t_prev] = 0 below a t with abar[t] > 0;
    the posterior's alpha_t = abar_t / abar_prev is then infinite."""
    a = _abar().clone()
    a[100] = 0.0
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for t_prev in (100, torch.tensor([100, 50])):
        with pytest.raises(ValueError, match=r"^t_prev must index alphas_cumprod above 0"):
            F.ddpm_step(x, e, a, 500, t_prev, backend=backend)
        with pytest.raises(ValueError, match=r"^t_prev must index alphas_cumprod above 0"):
            F.ddim_step(x, e, a, 500, t_prev, backend=backend)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample", "epsilon"])
@pytest.mark.parametrize("bounds", [{}, {"clip_sample": False}, {"thresholding": True}])
def test_zero_snr_schedulers_step_from_abar_zero_as_diffusers_or_refuse(name, prediction_type, bounds):
    """``rescale_betas_zero_snr=True`` with "trailing" spacing starts at t = 999, abar = 0. With v or
    x0 prediction (what zero-SNR models use) the drop-ins give diffusers' steps; with eps prediction
    (no information about x0 at SNR 0: diffusers returns NaN, or the signs of x_t - eps when clipping)
    they refuse with an error naming t."""
    schedulers = pytest.importorskip("diffaccel.schedulers")
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type=prediction_type, **bounds)
    ours, theirs = getattr(schedulers, name)(**cfg), getattr(diffusers, name)(**cfg)
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    assert int(ours.timesteps[0]) == 999 and float(ours.alphas_cumprod[999]) == 0.0
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    kw = {"eta": 0.5} if name == "DDIMScheduler" else {}
    if prediction_type == "epsilon":
        with pytest.raises(ValueError, match=r"^timestep must index alphas_cumprod above 0.*epsilon"):
            ours.step(torch.randn_like(x), ours.timesteps[0], x, **kw)
        return
    xa, xb = x.clone(), x.clone()
    for t in ours.timesteps:
        out = torch.randn_like(x) * 0.5
        ra = ours.step(out, t, xa, generator=torch.Generator().manual_seed(int(t)), **kw)
        rb = theirs.step(out, t, xb, generator=torch.Generator().manual_seed(int(t)), **kw)
        xa, xb = ra.prev_sample, rb.prev_sample
        assert torch.isfinite(xa).all()
        torch.testing.assert_close(xa, xb, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(ra.pred_original_sample, rb.pred_original_sample, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("variance_type", ["fixed_small_log", "fixed_large", "learned_range"])
def test_zero_snr_ddpm_variance_types_as_diffusers(variance_type):
    schedulers = pytest.importorskip("diffaccel.schedulers")
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
               variance_type=variance_type)
    ours, theirs = schedulers.DDPMScheduler(**cfg), diffusers.DDPMScheduler(**cfg)
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    xa, xb = x.clone(), x.clone()
    c = 6 if variance_type == "learned_range" else 3
    for t in ours.timesteps:
        out = torch.cat([torch.randn_like(x) * 0.5, torch.rand_like(x) * 2 - 1], 1)[:, :c]
        xa = ours.step(out, t, xa, generator=torch.Generator().manual_seed(int(t))).prev_sample
        xb = theirs.step(out, t, xb, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(xa, xb, atol=2e-4, rtol=1e-4)


def test_alphas_cumprod_modified_in_place_is_checked_again():
    a = _abar().clone()
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    F.add_noise(x, e, a, 3)
    a[3] = math.nan
    with pytest.raises(ValueError, match="alphas_cumprod"):
        F.add_noise(x, e, a, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [-0.5, 1.5, math.nan, math.inf])
def test_masks_outside_0_1_are_refused(backend, value):
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    m = torch.rand(8, 8)
    m[2, 3] = value
    with pytest.raises(ValueError, match=r"mask .*\[0, 1\]"):
        F.masked_project(x, e, m, e, ABAR, 300, backend=backend)


def test_masks_in_0_1_and_bool_masks_are_fine():
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for m in (torch.rand(2, 1, 8, 8), torch.rand(8, 8) > 0.5, torch.zeros(8, 8), torch.ones(1, 3, 8, 8)):
        want = ref.masked_project(x, e, m.float().expand(2, 3, 8, 8), e, ABAR, torch.tensor([300, 300]))
        torch.testing.assert_close(F.masked_project(x, e, m, e, ABAR, 300), want)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_scheduler_add_noise_refuses_float_timesteps(name):
    schedulers = pytest.importorskip("diffaccel.schedulers")
    s = getattr(schedulers, name)()
    x, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for ts in (torch.tensor([5.7, 3.0]), [5.7, 3.0], 5.7):
        with pytest.raises((TypeError, ValueError), match="timesteps"):
            s.add_noise(x, e, ts)
    torch.testing.assert_close(s.add_noise(x, e, torch.tensor([5, 3])),
                               ref.add_noise(x, e, s.alphas_cumprod, torch.tensor([5, 3])))


# ============================================================================ properties
# Argument names a refusal may name, per op (the message must name one of them).
_NAMES = ("x0", "noise", "x_t", "eps", "eps_uncond", "eps_cond", "scale", "alphas_cumprod", "t", "t_prev",
          "out", "x", "kernel_size", "sigma", "eps_low", "eps_high", "mask", "x_orig", "eta", "clip_x0",
          "dynamic_threshold", "variance", "predicted_variance", "backend", "v", "v_next", "dt", "x0_prev",
          "t_last", "x_last", "x0_out")
TOL = {torch.float32: 1e-3, torch.float64: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}


@st.composite
def _image(draw, shape, dtype, finite: bool = False):
    """A tensor of ``shape`` in one of the layouts users pass: contiguous, channels-last,
    transposed (non-contiguous), a stride-0 batch (expanded), or (unless ``finite``) with a NaN / Inf."""
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed", "expanded"]
                                  + ([] if finite else ["nonfinite"])))
    n, c, h, w = shape
    if layout == "transposed":
        x = torch.randn(n, c, w, h, dtype=torch.float64).transpose(2, 3)
    elif layout == "expanded":
        x = torch.randn(1, c, h, w, dtype=torch.float64).expand(n, c, h, w)
    else:
        x = torch.randn(shape, dtype=torch.float64)
    x = x.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "nonfinite":
        x = x.clone()
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf]))
    return x


_scalars = st.one_of(st.floats(-3, 8), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0]),
                     st.integers(-2, 3), st.sampled_from(["1.5", None, True]))


def _timestep(lo=-2, hi=T + 1):
    return st.one_of(st.integers(lo, hi), st.sampled_from([1.5, "3", None, True]),
                     st.lists(st.integers(lo, hi), min_size=1, max_size=3).map(torch.tensor))


def _is_ours(exc: BaseException) -> bool:
    """Raised by diffaccel's checks: one of our types, or its innermost frame is in diffaccel."""
    if isinstance(exc, DiffaccelError):
        return True
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "diffaccel" in frames[-1].filename.replace("\\", "/").split("/tests/")[0] \
        and "/tests/" not in frames[-1].filename


def _finite(*xs) -> bool:
    return all(not isinstance(x, torch.Tensor) or bool(torch.isfinite(x).all()) for x in xs)


def _call_checked(fn, want_fn, finite_inputs: bool = False):
    """The property: fn() matches want_fn() (the reference, from the same inputs) or raises one of
    our ValueError / TypeError naming an argument. From finite inputs (``finite_inputs``) a result
    must be finite too: a NaN made from a NaN scalar or a bad schedule is a silent wrong result
    even where the reference computes the same NaN."""
    try:
        got = fn()
    except (ValueError, TypeError) as e:
        assert _is_ours(e), f"exception from inside torch, not from diffaccel's checks: {e!r}"
        msg = str(e)
        assert any(n in msg for n in _NAMES), f"message names no argument: {msg}"
        event("refused")
        return None
    event("returned")
    want = want_fn()
    got = got if isinstance(got, tuple) else (got,)
    if finite_inputs:
        assert _finite(*got), "finite inputs gave a non-finite result without an error"
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        tol = TOL[g.dtype] * (1 + float(w.double().abs().nan_to_num(0, 0, 0).max()) if w.numel() else 1)
        torch.testing.assert_close(g, w.to(g.dtype), atol=tol, rtol=TOL[g.dtype], equal_nan=True)
    return got


def _long(t, n):
    return torch.full((n,), t, dtype=torch.int64) if isinstance(t, int) else t.to(torch.int64).reshape(-1).expand(n)


_SHAPES = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(3, 9), st.integers(3, 9))
_DTYPES = st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64])
_FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_FUZZ
def _draw_out(data, shape, dtype, x):
    """``(x, out)`` for an op's ``out=``: none, a fresh tensor, ``x`` itself (in place) or, with
    ``x``'s values, two views of one buffer overlapping by all but one sample (must be refused)."""
    kind = data.draw(st.sampled_from(["none", "fresh", "in_place", "partial"]), "out")
    if kind == "fresh":
        return x, torch.empty(shape, dtype=dtype)
    if kind == "in_place" and x.is_contiguous():
        return x, x
    if kind == "partial":
        buf = torch.zeros(shape[0] + 1, *shape[1:], dtype=dtype)
        return buf[:-1].copy_(x), buf[1:]
    return x, None


@given(data=st.data(), shape=_SHAPES, dtype=_DTYPES, backend=st.sampled_from(BACKENDS),
       op=st.sampled_from(["add_noise", "predict_x0", "masked_project"]))
def test_fuzz_per_sample_ops(data, shape, dtype, backend, op):
    a = data.draw(_image(shape, dtype), "a")
    b = data.draw(_image(shape, dtype), "b")
    t = data.draw(_timestep(), "t")
    abar = data.draw(st.sampled_from([ABAR, ABAR.double(), ABAR.flip(0) * 1.5, ABAR.half()]), "abar")
    n = shape[0]
    a, out = _draw_out(data, shape, dtype, a)
    a_in = a.clone()  # the reference reads the inputs as they were before the call
    if op == "masked_project":
        m = data.draw(st.sampled_from([torch.rand(shape[2], shape[3]), torch.rand(shape[2], shape[3]) * 2 - 0.5,
                                       torch.rand(shape[2], shape[3]) > 0.5]), "mask")
        _call_checked(lambda: F.masked_project(a, b, m, b, abar, t, out=out, backend=backend),
                      lambda: ref.masked_project(a_in, b, m.to(a.dtype).expand(shape), b, abar.float(), _long(t, n)),
                      _finite(a, b))
    else:
        _call_checked(lambda: getattr(F, op)(a, b, abar, t, out=out, backend=backend),
                      lambda: getattr(ref, op)(a_in, b, abar.float(), _long(t, n)), _finite(a, b))


@_FUZZ
@given(data=st.data(), shape=_SHAPES, dtype=_DTYPES, backend=st.sampled_from(BACKENDS),
       op=st.sampled_from(["ddpm_step", "cfg_ddpm_step", "ddim_step", "cfg_ddim_step"]))
def test_fuzz_steps(data, shape, dtype, backend, op):
    x = data.draw(_image(shape, dtype), "x_t")
    e = data.draw(_image(shape, dtype), "eps")
    noise = data.draw(st.one_of(st.none(), _image(shape, dtype)), "noise")
    t = data.draw(_timestep(), "t")
    t_prev = data.draw(_timestep(-3, T), "t_prev")
    n = shape[0]
    kw, rkw = {}, {}
    cfg = op.startswith("cfg_")
    scale = data.draw(_scalars, "scale") if cfg else 1.0
    if "ddpm" in op:
        variance = data.draw(st.sampled_from(["fixed_small", "fixed_large", "learned_range", "bogus"]), "variance")
        pv = data.draw(_image(shape, dtype), "pv").clamp(-1, 1) if variance == "learned_range" else None
        thr = data.draw(st.sampled_from(["none", "clip", "dyn"]), "thr")
        kw = dict(variance=variance, predicted_variance=pv)
        if thr == "clip":
            kw["clip_x0"] = data.draw(_scalars, "clip_x0")
        elif thr == "dyn":
            kw["dynamic_threshold"] = (data.draw(_scalars, "ratio"), data.draw(_scalars, "max"))
        rkw = dict(kw)
        if isinstance(rkw.get("clip_x0"), bool):
            rkw["clip_x0"] = float(rkw["clip_x0"])
    else:
        kw = rkw = dict(eta=data.draw(_scalars, "eta"))
    fn = getattr(F, op)
    base = op.removeprefix("cfg_")

    def call():
        if cfg:
            return fn(x, e, x, scale, ABAR, t, t_prev, noise=noise, backend=backend, **kw)
        return fn(x, e, ABAR, t, t_prev, noise=noise, backend=backend, **kw)

    def want():
        eps = ref.cfg_combine(e.float(), x.float(), scale) if cfg else e
        return getattr(ref, base)(x, eps, ABAR, _long(t, n), _long(t_prev, n), noise=noise, **rkw)

    _call_checked(call, want, _finite(x, e, noise) and (pv is None or _finite(pv) if "ddpm" in op else True))


@_FUZZ
@given(data=st.data(), shape=_SHAPES, dtype=_DTYPES, backend=st.sampled_from(BACKENDS),
       op=st.sampled_from(["gaussian_blur", "highpass", "hybrid_combine", "cfg_combine", "heun_step"]))
def test_fuzz_filters_and_combines(data, shape, dtype, backend, op):
    a = data.draw(_image(shape, dtype), "a")
    b = data.draw(_image(shape, dtype), "b")
    s = data.draw(_scalars, "scalar")
    if op in ("cfg_combine", "heun_step"):
        if op == "cfg_combine":
            _call_checked(lambda: F.cfg_combine(a, b, s, backend=backend), lambda: ref.cfg_combine(a, b, float(s)),
                          _finite(a, b))
        else:
            _call_checked(lambda: F.heun_step(a, b, a, s, backend=backend), lambda: ref.heun_step(a, b, a, float(s)),
                          _finite(a, b))
        return
    k = data.draw(st.one_of(st.integers(-1, 9), st.just(3.0)), "kernel_size")
    args = (a, b) if op == "hybrid_combine" else (a,)
    _call_checked(lambda: getattr(F, op)(*args, k, s, backend=backend),
                  lambda: getattr(ref, op)(*args, k, float(s)), _finite(a, b))


@_FUZZ
@given(data=st.data(), shape=_SHAPES, backend=st.sampled_from(BACKENDS),
       op=st.sampled_from(["dpmpp_2m_step", "unipc_step", "cfg_dpmpp_2m_step", "cfg_unipc_step", "dpmpp_2m_sde_step",
                           "cfg_dpmpp_2m_sde_step"]))
def test_fuzz_solver_steps(data, shape, backend, op):
    dtype = torch.float32
    x = data.draw(_image(shape, dtype), "x_t")
    e = data.draw(_image(shape, dtype), "eps")
    t = data.draw(_timestep(0, T - 1), "t")
    t_prev = data.draw(_timestep(-1, T - 1), "t_prev")
    hist = data.draw(st.booleans(), "history")
    t_last = data.draw(_timestep(0, T - 1), "t_last") if hist else None
    x0_prev = data.draw(_image(shape, dtype), "x0_prev") if hist else None
    thr = data.draw(st.sampled_from([{}, {"clip_x0": 1.0}, {"dynamic_threshold": (0.9, 1.5)}]), "thr")
    n = shape[0]
    cfg = op.startswith("cfg_")
    scale = data.draw(_scalars, "scale") if cfg else 1.0
    fn = getattr(F, op)
    base = getattr(ref, op.removeprefix("cfg_").replace("_sde", ""))
    sde = "_sde" in op  # SDE-DPM-Solver++(2M): the reference's dpmpp_2m_step with noise
    z = data.draw(_image(shape, dtype), "noise") if sde else None

    def call():
        lead = (x, e, x, scale) if cfg else (x, e)
        return fn(*lead, ABAR, t, t_prev, *((z,) if sde else ()), x0_prev=x0_prev, t_last=t_last, backend=backend,
                  **thr)

    def want():
        eps = ref.cfg_combine(e.float(), x.float(), float(scale)) if cfg else e
        res = base(x, eps, ABAR, _long(t, n), _long(t_prev, n), x0_prev=x0_prev,
                   t_last=None if t_last is None else _long(t_last, n), **({"noise": z} if sde else {}), **thr)
        return res

    _call_checked(call, want, _finite(x, e, x0_prev, z))


@_FUZZ
@given(data=st.data(), n=st.integers(1, 3), name=st.sampled_from(["DDPMScheduler", "DDIMScheduler"]))
def test_fuzz_scheduler_add_noise_and_step(data, n, name):
    schedulers = pytest.importorskip("diffaccel.schedulers")
    s = getattr(schedulers, name)(clip_sample=False)
    s.set_timesteps(10)
    x = data.draw(_image((n, 2, 4, 4), torch.float32), "x")
    e = data.draw(_image((n, 2, 4, 4), torch.float32), "e")
    ts = data.draw(st.one_of(st.lists(st.integers(-2, 1001), min_size=n, max_size=n).map(torch.tensor),
                             st.lists(st.floats(0, 999), min_size=n, max_size=n).map(torch.tensor)), "timesteps")
    _call_checked(lambda: s.add_noise(x, e, ts),
                  lambda: ref.add_noise(x, e, s.alphas_cumprod, ts))
    diffusers = pytest.importorskip("diffusers")
    theirs = getattr(diffusers, name)(clip_sample=False)
    theirs.set_timesteps(10)
    t = data.draw(st.sampled_from([int(v) for v in s.timesteps]), "t")
    _call_checked(lambda: s.step(e, t, x, generator=torch.Generator().manual_seed(0)).prev_sample,
                  lambda: theirs.step(e, t, x, generator=torch.Generator().manual_seed(0)).prev_sample)


# ---------------------------------------------------------------- the fused solver ops, every argument
_TABLES = {"linear": ABAR, "linear float64": ABAR.double(), "zero terminal SNR": _zero_snr_abar()}
_ORDERS = st.one_of(st.sampled_from([1, 2]), st.sampled_from([0, 3, True, 2.0, "2", None]))


_SOLVER_ARGS = ("t", "t_prev", "t_last", "t_last2", "scale", "predictor_order", "clip_x0", "dynamic_threshold",
                "x0_prev", "x_last")


@_FUZZ
@given(data=st.data(), shape=_SHAPES, dtype=_DTYPES, backend=st.sampled_from(BACKENDS),
       op=st.sampled_from(["dpmpp_2m_step", "unipc_step", "cfg_dpmpp_2m_step", "cfg_unipc_step"]),
       wild=st.sampled_from((None,) * 6 + _SOLVER_ARGS))
def test_fuzz_solver_steps_every_argument(data, shape, dtype, backend, op, wild):
    """dpmpp_2m_step / unipc_step (and cfg_) with every argument drawn: dtypes and layouts of every
    tensor, the history (x0_prev / t_last, and for UniPC the corrector's x_last, x0_prev2 / t_last2,
    predictor_order), thresholds, zero-SNR tables, and ``out`` / ``x0_out`` / ``x_corr_out`` fresh,
    aliasing an input or partially overlapping one. ``wild`` names the one argument drawn from
    everything (bad types, out of range, NaN); the others are drawn valid, so most calls return."""
    unipc = "unipc" in op
    cfg = op.startswith("cfg_")

    def arg(name, valid, anything):
        return data.draw(anything if wild == name else valid, name)

    x = data.draw(_image(shape, dtype), "x_t")
    e = data.draw(_image(shape, dtype), "eps")
    ec = data.draw(_image(shape, dtype), "eps_cond") if cfg else None
    scale = arg("scale", st.floats(-3, 8), _scalars) if cfg else 1.0
    abar = _TABLES[data.draw(st.sampled_from(sorted(_TABLES)), "alphas_cumprod")]
    t = arg("t", st.integers(1, T - 5), _timestep(-1, T))
    t_prev = arg("t_prev", st.integers(-1, (t if isinstance(t, int) else T - 5) - 1), _timestep(-2, T))
    kw = {}
    # History tensors are finite: whether a NaN in one the step does not use (order 1, the final
    # step) reaches the result differs between the reference (0 * NaN) and the cpp kernels (term
    # skipped); neither is a wrong result. x_t and eps still carry NaN / Inf.
    hist = functools.partial(_image, finite=True)
    if data.draw(st.booleans(), "history") or wild in ("t_last", "t_last2", "x0_prev", "x_last"):
        lo = t + 1 if isinstance(t, int) else T - 4
        kw["x0_prev"] = arg("x0_prev", hist(shape, dtype), st.one_of(st.none(), hist(shape, torch.float32),
                                                                       hist((shape[0], 1, 3, 3), dtype)))
        kw["t_last"] = arg("t_last", st.integers(min(lo, T - 3), T - 3), _timestep(-1, T))
        if unipc and (data.draw(st.booleans(), "corrector") or wild in ("x_last", "t_last2")):
            kw["x_last"] = arg("x_last", hist(shape, dtype), st.one_of(st.none(), hist(shape, torch.float64)))
            if data.draw(st.booleans(), "order-2 corrector") or wild == "t_last2":
                kw["x0_prev2"] = data.draw(hist(shape, dtype), "x0_prev2")
                kw["t_last2"] = arg("t_last2", st.integers(T - 2, T - 1), _timestep(-1, T))
    elif wild == "x_last" and unipc:
        kw["x_last"] = data.draw(hist(shape, dtype), "x_last")  # without x0_prev: refused
    if unipc:
        kw["predictor_order"] = arg("predictor_order", st.sampled_from([1, 2]), _ORDERS)
    thr = data.draw(st.sampled_from(["none", "clip", "dyn"]), "thr")
    if thr == "clip" or wild == "clip_x0":
        kw["clip_x0"] = arg("clip_x0", st.floats(0.5, 3), _scalars)
    if thr == "dyn" or wild == "dynamic_threshold":
        kw["dynamic_threshold"] = arg("dynamic_threshold", st.tuples(st.floats(0.5, 1), st.floats(1, 3)),
                                      st.tuples(_scalars, _scalars) | st.sampled_from([(0.9,), 1.5, None]))
    outs = ("out", "x0_out", "x_corr_out") if unipc else ("out", "x0_out")
    inputs = {"x_t": x, "x0_prev": kw.get("x0_prev"), "x_last": kw.get("x_last")}
    partial = False
    for name in outs:
        kind = data.draw(st.sampled_from(["none", "fresh", "alias", "alias", "partial"]), name)
        if kind == "fresh":
            kw[name] = torch.empty(shape, dtype=dtype)
        elif kind == "alias" and any(v is not None for v in inputs.values()):  # exactly an input: in place
            src = data.draw(st.sampled_from([k for k, v in inputs.items() if v is not None]), f"{name} aliases")
            if inputs[src].is_contiguous() and inputs[src].shape == shape and inputs[src].dtype == dtype:
                kw[name] = inputs.pop(src)
        elif kind == "partial" and not partial:
            partial = True
            buf = torch.zeros(shape[0] + 1, *shape[1:], dtype=dtype)
            kw[name] = buf[1:]
            x = buf[:-1].copy_(x)  # x_t is now a view that partially overlaps this out buffer
    n = shape[0]
    snapshot = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items() if k not in outs}
    x_in, e_in, ec_in = x.clone(), e.clone(), None if ec is None else ec.clone()

    def call():
        lead = (x, e, ec, scale) if cfg else (x, e)
        return getattr(F, op)(*lead, abar, t, t_prev, backend=backend, **kw)

    def want():
        r = dict(snapshot)
        for k in ("t_last", "t_last2"):
            if r.get(k) is not None:
                r[k] = _long(r[k], n)
        if unipc:
            r["predictor_order"] = int(r["predictor_order"])
        eps = ref.cfg_combine(e_in.float(), ec_in.float(), float(scale)) if cfg else e_in
        base = getattr(ref, op.removeprefix("cfg_"))
        return base(x_in, eps, abar, _long(t, n), _long(t_prev, n), **r)

    _call_checked(call, want, _finite(x_in, e_in, ec_in, *snapshot.values()))


@_FUZZ
@given(data=st.data(), shape=_SHAPES, dtype=_DTYPES, backend=st.sampled_from(BACKENDS))
def test_fuzz_heun_step_every_argument(data, shape, dtype, backend):
    x = data.draw(_image(shape, dtype), "x")
    v = data.draw(_image(shape, dtype), "v")
    v_next = data.draw(st.one_of(_image(shape, dtype), _image((shape[0], shape[1], shape[3], shape[2]), dtype),
                                 st.just(None)), "v_next")
    dt = data.draw(st.one_of(st.floats(-1, 1), _scalars), "dt")
    x, out = _draw_out(data, shape, dtype, x)
    x_in = x.clone()
    _call_checked(lambda: F.heun_step(x, v, v_next, dt, out=out, backend=backend),
                  lambda: ref.heun_step(x_in, v, v_next, float(dt)), _finite(x_in, v, v_next))


# ---------------------------------------------------------------- the MNIST sampling API
_MNIST_T = 10  # tiny DDPM schedules: sample(num_steps=None) runs all T steps
_MNIST_ARGS = ("model", "n", "labels", "num_steps", "sampler", "guidance_scale", "seed", "batch_size", "start_index")
# what a refusal of a bad ``wild`` argument may name (n and labels are checked together; n also bounds start_index)
_MNIST_NAMES = {"n": ("n", "labels", "start_index"), "labels": ("labels", "n")}


@functools.lru_cache(maxsize=None)
def _tiny_mnist(name: str):
    """Untrained D = 4 UNets (random init, class embedding scaled up so the label matters, BatchNorm
    with non-trivial statistics), as models of each kind: ``ddpm_class``, ``ddpm_time``, ``flow_class``."""
    from diffaccel.mnist import MNISTDiffusion
    from diffaccel.mnist.models import UNet, one_hot
    from diffaccel.mnist.train import TrainConfig
    from diffaccel.schedules import ddpm_linear_schedule

    task, cond = name.split("_")
    tc = TrainConfig(task=task, conditioning=cond, hidden=4, num_timesteps=_MNIST_T)
    torch.manual_seed(0)
    net = UNet(tc.model_config()).train()
    with torch.no_grad():
        if cond == "class":
            for fc in (net.fc1_c, net.fc2_c):
                fc[2].weight.mul_(20.0)
        x, t, c = torch.rand(8, 1, 28, 28), torch.rand(8), one_hot(torch.arange(8) % 10, 8)
        for _ in range(3):
            net(x, t, c if cond == "class" else None)
    abar = ddpm_linear_schedule(_MNIST_T, beta_end=0.3)[2] if task == "ddpm" else None
    return MNISTDiffusion(name=f"tiny_{name}", model=net.eval(), kind=task, num_timesteps=_MNIST_T,
                          alphas_cumprod=abar)


def _int_list(v) -> list:
    """``labels`` as the documentation defines them: a sequence of ints or an integer tensor (no
    silent truncation of floats, bools or strings)."""
    if isinstance(v, torch.Tensor):
        assert not (v.is_floating_point() or v.dtype == torch.bool) and v.ndim == 1, f"accepted labels {v!r}"
        return v.tolist()
    assert not isinstance(v, (str, bytes)) and all(type(i) is int for i in v), f"accepted labels {v!r}"
    return list(v)


def _reference_sample(model, labels, n, guidance_scale, num_steps, seed, sampler, batch_size, start_index):
    """What ``sample`` promises, from the raw arguments: the same schedule and per-sample noise
    streams, the network unfolded (BatchNorm as trained, NCHW) and called twice per guided step,
    the loop on the reference ops (``backend="torch"``), one batch. Asserts the arguments were valid."""
    from diffaccel import samplers as SM
    from diffaccel.mnist import sampling as S
    from diffaccel.mnist.models import one_hot

    assert type(seed) is int and 0 <= seed < 2 ** 64, f"accepted seed {seed!r}"
    assert type(batch_size) is int and batch_size >= 1, f"accepted batch_size {batch_size!r}"
    assert type(guidance_scale) in (int, float) and math.isfinite(guidance_scale), \
        f"accepted guidance_scale {guidance_scale!r}"
    assert num_steps is None or (type(num_steps) is int and num_steps >= 1), f"accepted num_steps {num_steps!r}"
    if model.kind == "ddpm":
        assert num_steps is None or num_steps <= model.num_timesteps, f"accepted num_steps {num_steps!r}"
        assert sampler in (None,) + SM.DDPM_SAMPLERS, f"accepted sampler {sampler!r}"
    else:
        assert sampler in (None,) + SM.FLOW_SAMPLERS, f"accepted sampler {sampler!r}"
    class_cond = model.conditioning == "class"
    if labels is not None:
        assert class_cond, "accepted labels for a model without classes"
        labels = _int_list(labels)
        assert labels and all(0 <= v <= 9 for v in labels), f"accepted labels {labels!r}"
        assert n is None or n == len(labels), f"accepted n={n!r} with {len(labels)} labels"
        n = len(labels)
    assert type(n) is int and n >= 1, f"accepted n {n!r}"
    assert type(start_index) is int and 0 <= start_index and start_index + n <= 2 ** 32, \
        f"accepted start_index {start_index!r}"
    if class_cond and labels is None:
        labels = [i % 10 for i in range(n)]
    sampler = sampler or ("ddpm" if model.kind == "ddpm" else "euler")
    c = one_hot(torch.tensor(labels), n) if class_cond else None
    ts = S._schedule(model, num_steps, sampler)
    noise = S.PerSampleNoise(seed, range(start_index, start_index + n), (1, 28, 28))
    x = noise.draw()
    net, g = model.model, float(guidance_scale)

    def fn(x, t):
        t_in = model.time_input(torch.full((n,), t))
        if c is None:
            return net(x, t_in)
        eps_c = net(x, t_in, c)
        if g == 1.0:
            return eps_c
        eps_u = net(x, t_in, torch.zeros_like(c))
        return eps_u + g * (eps_c - eps_u)

    with torch.no_grad():
        if model.kind == "flow":
            x = SM.get_sampler(sampler)(fn, x, ts, backend="torch")
        elif sampler == "ddpm":
            x = SM.sample_ddpm(fn, x, ts, model.alphas_cumprod, noise=noise, variance="fixed_large", backend="torch")
        else:
            x = SM.get_sampler(sampler)(fn, x, ts, model.alphas_cumprod, backend="torch")
    return x.clamp(0, 1)


@_FUZZ
@given(data=st.data(), name=st.sampled_from(["ddpm_class", "ddpm_time", "flow_class"]),
       wild=st.sampled_from((None,) * 4 + _MNIST_ARGS))
def test_fuzz_mnist_sample(data, name, wild):
    """``diffaccel.mnist.sample`` with one argument (``wild``) drawn from everything — bad types,
    out of range, NaN / Inf, huge and negative seeds — and the others valid: a call either gives
    the reference's digits or raises the package's ValueError / TypeError naming that argument.
    With every argument valid it must return."""
    from diffaccel.mnist import sampling as S

    model = _tiny_mnist(name)
    samplers = ("ddpm", "ddim", "dpmpp_2m", "unipc") if model.kind == "ddpm" else ("euler", "heun")
    class_cond = model.conditioning == "class"

    def arg(key, valid, anything):
        return data.draw(anything if wild == key else valid, key)

    any_int = st.sampled_from([0, -1, 2.5, "3", True, None, 2 ** 33, -(2 ** 70)])
    n_valid = st.integers(1, 4)
    labels = None
    if class_cond and data.draw(st.booleans(), "give labels"):
        labels = arg("labels", st.lists(st.integers(0, 9), min_size=1, max_size=4), st.one_of(
            st.lists(st.integers(-2, 12), max_size=4),
            st.lists(st.integers(0, 9), min_size=1, max_size=4).map(torch.tensor),
            st.sampled_from(["12", 3, [1.5], [True, False], (1, 2), torch.tensor([1.0, 2.0]),
                             torch.tensor([[1, 2]]), torch.tensor([3, 4], dtype=torch.int32), [], None])))
        n = arg("n", st.none() if data.draw(st.booleans(), "n with labels") else st.just(
            len(labels) if isinstance(labels, (list, tuple)) else None), st.one_of(n_valid, any_int))
    else:
        if wild == "labels":
            labels = data.draw(st.sampled_from([[1, 2], torch.tensor([0]), "7", [11]]), "labels")
        n = arg("n", n_valid, st.one_of(st.integers(-3, 5), any_int))
    num_steps = arg("num_steps", (st.none() | st.integers(1, _MNIST_T)) if model.kind == "ddpm" else st.integers(1, 4),
                    st.one_of(st.integers(-2, _MNIST_T + 3), st.sampled_from([2.5, "3", True, 0, 100_001])))
    sampler = arg("sampler", st.sampled_from((None,) + samplers),
                  st.sampled_from(["ddpm", "ddim", "dpmpp_2m", "unipc", "euler", "heun", "bogus", 3, "DDPM"]))
    guidance = arg("guidance_scale", st.floats(-2, 8) | st.just(1.0), st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.sampled_from([math.nan, math.inf, -math.inf, "5", None, True, 3])))
    seed = arg("seed", st.integers(0, 2 ** 64 - 1), st.one_of(st.integers(-(2 ** 65), 2 ** 65), st.sampled_from(
        [-1, 2 ** 64, 2 ** 64 - 1, 2 ** 63, 2 ** 32, 1.5, "0", None, True])))
    batch_size = arg("batch_size", st.integers(1, 5), st.one_of(st.integers(-2, 6), st.sampled_from(
        [0, 2.5, None, True, "2"])))
    start_index = arg("start_index", st.sampled_from([0, 7, 2 ** 32 - 5]), st.sampled_from(
        [-1, 2 ** 32, 2 ** 32 - 1, 2 ** 32 - 4, 1.5, None, True]))
    target = {"the model": model, "None": None, "its name": name, "its UNet": model.model}[
        arg("model", st.just("the model"), st.sampled_from(["None", "its name", "its UNet"]))]
    kw = dict(labels=labels, n=n, guidance_scale=guidance, num_steps=num_steps, seed=seed, sampler=sampler,
              batch_size=batch_size, start_index=start_index)
    try:
        got = S.sample(target, **kw)
    except (ValueError, TypeError) as e:
        assert isinstance(e, DiffaccelError), f"not the package's error type: {e!r}"
        assert wild is not None, f"valid arguments refused: {e}"
        names = _MNIST_NAMES.get(wild, (wild,))
        assert any(re.search(rf"\b{k}\b", str(e)) for k in names), f"{wild} is not named: {e}"
        event("refused")
        return
    event("returned")
    want = _reference_sample(model, **kw)
    assert got.shape == want.shape and got.dtype == torch.float32
    # float32 rounding of eps, amplified by the guidance scale (a scale of ~1e10 overflows to NaN in
    # the formula itself: the reference's result then is NaN too, and so must ours be)
    g = abs(float(guidance)) if model.conditioning == "class" else 0.0
    torch.testing.assert_close(got, want, atol=TOL[torch.float32] * 2 * (1 + g), rtol=0, equal_nan=True)


def test_mnist_sample_bounds_n_and_flow_steps_before_allocating():
    """Found by the property above: ``n = 2**33`` allocated its labels (64 GB) before the 32-bit index
    check, and a flow model's ``num_steps`` had no bound (``2**40`` built a 2**40-entry schedule)."""
    from diffaccel.mnist import sampling as S

    with pytest.raises(ValueError, match=r"^n must be an int .*<= 4294967296"):
        S.sample(_tiny_mnist("ddpm_class"), n=2 ** 33)
    with pytest.raises(ValueError, match=rf"^num_steps must be an int .*<= {S.MAX_FLOW_STEPS}"):
        S.sample(_tiny_mnist("flow_class"), n=1, num_steps=S.MAX_FLOW_STEPS + 1)
