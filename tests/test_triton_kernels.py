"""The Triton kernels (``diffaccel.triton``) against the reference, kernel by kernel.

Without a GPU the kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, set
here and in conftest.py before Triton is imported), in float32 and float16 (the interpreter
has no bfloat16). bfloat16, ``opcheck`` of the ``triton_op`` registrations and
``torch.compile`` of a sampling step need CUDA: they are marked ``gpu``.

Goldens: the reference on the float32 upcast of the (rounded) inputs, rounded once to the
storage dtype, which is what a kernel doing float32 math on fp16/bf16 storage must match to
about one unit in the last place. Shapes are deliberately awkward and small (the interpreter
runs every program in numpy).
"""
from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:  # before the first `import triton` (conftest.py does the same)
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="Triton is not installed: the triton backend is absent")

from diffaccel import functional as F  # noqa: E402
from diffaccel import reference as ref  # noqa: E402
from diffaccel.triton import kernels  # noqa: E402
from diffaccel.triton import ops  # noqa: E402

if not HAS_CUDA and not kernels.INTERPRETED:
    pytest.skip("no GPU and Triton was imported before TRITON_INTERPRET=1 was set; "
                "run with TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU")]

#: (atol, rtol) per storage dtype
TOL = {
    torch.float64: (2e-5, 1e-5),  # float32 math, as the reference
    torch.float32: (2e-5, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=gpu)]

SHAPE = (3, 5, 17, 23)
T = 1000
# Per-sample timesteps: the noisiest step, an intermediate one landing on the final step
# (t_prev = -1 -> abar_prev = 1) and t = 0, where no noise may be added.
T_NOW = [999, 37, 0]
T_PREV = [969, -1, -1]


def _abar() -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float().to(DEVICE)


def _rand(dtype, shape=SHAPE, seed=0, kind="normal"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) if kind == "normal" else torch.rand(shape, generator=g) * 2 - 1
    return x.to(device=DEVICE, dtype=dtype)


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=DEVICE)


def _golden(fn, dtype, *tensors, **kwargs):
    """The reference on float32 upcasts, rounded once to ``dtype``."""
    up = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in tensors]
    return fn(*up, **kwargs).to(dtype)


def _close(actual, expected):
    atol, rtol = TOL[expected.dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def test_backend_is_available():
    assert "triton" in F.available_backends(DEVICE)
    assert ops.Backend.supports(DEVICE)
    assert ops.Backend.interpreted == (not HAS_CUDA)


# ----------------------------------------------------------------------------- elementwise ops
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_noise(dtype):
    x0, z, abar, t = _rand(dtype), _rand(dtype, seed=1), _abar(), _t(T_NOW)
    out = F.add_noise(x0, z, abar, t, backend="triton")
    _close(out, _golden(ref.add_noise, dtype, x0, z, abar, t))


@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_x0(dtype):
    x, eps, abar, t = _rand(dtype), _rand(dtype, seed=1), _abar(), _t(T_NOW)
    out = F.predict_x0(x, eps, abar, t, backend="triton")
    _close(out, _golden(ref.predict_x0, dtype, x, eps, abar, t))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 11), SHAPE])
def test_cfg_combine(dtype, shape):
    eu, ec = _rand(dtype, shape), _rand(dtype, shape, seed=1)
    out = F.cfg_combine(eu, ec, 7.5, backend="triton")
    _close(out, _golden(ref.cfg_combine, dtype, eu, ec, 7.5))


# ----------------------------------------------------------------------------- DDPM step
def _ddpm_ref(dtype, x, eu, ec, scale, abar, t, tp, noise=None, predicted_variance=None, **kw):
    """The reference DDPM step (after the reference CFG combine) on float32 upcasts."""
    up = lambda a: None if a is None else a.float()  # noqa: E731
    eps = up(eu) if ec is None else ref.cfg_combine(up(eu), up(ec), scale)
    out = ref.ddpm_step(up(x), eps, abar, t, tp, noise=up(noise), predicted_variance=up(predicted_variance), **kw)
    return out.to(dtype)


X0_MODES = {"plain": {}, "clip": {"clip_x0": 1.0}, "threshold": {"dynamic_threshold": (0.95, 1.5)}}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("x0_mode", list(X0_MODES))
@pytest.mark.parametrize("cfg", [False, True], ids=["eps", "cfg"])
def test_ddpm_step(dtype, variance, x0_mode, cfg):
    x, eu, ec, z = (_rand(dtype, seed=s) for s in range(4))
    pv = _rand(dtype, seed=4, kind="uniform") if variance == "learned_range" else None
    abar, t, tp = _abar(), _t(T_NOW), _t(T_PREV)
    opts = dict(noise=z, variance=variance, predicted_variance=pv, **X0_MODES[x0_mode])
    if cfg:
        out = F.cfg_ddpm_step(x, eu, ec, 7.0, abar, t, tp, backend="triton", **opts)
    else:
        out = F.ddpm_step(x, eu, abar, t, tp, backend="triton", **opts)
    expected = _ddpm_ref(dtype, x, eu, ec if cfg else None, 7.0, abar, t, tp, noise=z, variance=variance,
                         predicted_variance=pv, **X0_MODES[x0_mode])
    _close(out, expected)


def test_ddpm_step_noise_only_where_t_positive():
    x, eps, z = _rand(torch.float32), _rand(torch.float32, seed=1), _rand(torch.float32, seed=2)
    abar, t, tp = _abar(), _t(T_NOW), _t(T_PREV)
    with_noise = F.ddpm_step(x, eps, abar, t, tp, noise=z, variance="fixed_large", backend="triton")
    mean = F.ddpm_step(x, eps, abar, t, tp, variance="fixed_large", backend="triton")
    _close(mean, _ddpm_ref(torch.float32, x, eps, None, 1.0, abar, t, tp))
    assert torch.equal(with_noise[2], mean[2])  # t = 0: the step lands on the clean image
    assert not torch.allclose(with_noise[:2], mean[:2])


def test_ddpm_step_thresholding_is_exercised():
    """At t = 999 x0_hat is far outside [-1, 1]: thresholding must change the result."""
    x, eps = _rand(torch.float32), _rand(torch.float32, seed=1)
    abar, t, tp = _abar(), _t(T_NOW), _t(T_PREV)
    plain = F.ddpm_step(x, eps, abar, t, tp, backend="triton")
    thr = F.ddpm_step(x, eps, abar, t, tp, dynamic_threshold=(0.95, 1.5), backend="triton")
    assert not torch.allclose(plain[0], thr[0])


# Dynamic thresholding's s, exact and without torch.quantile: up to kernels.THRESHOLD_FUSED_MAX
# values per sample one program per sample selects it in registers; larger samples take the
# radix select over several programs per sample (histograms merged with atomics). Values scaled
# up so the quantile, not the clamp to 1, sets s.
@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (3, 1, 1, 2), (1, 3, 64, 64), (2, 3, 33, 37), (2, 3, 90, 61)],
                         ids=["1", "2", "3x64x64", "odd", "radix"])
@pytest.mark.parametrize("ratio", [0.001, 0.5, 0.95, 0.995, 1.0])
def test_ddpm_step_threshold_quantile(shape, ratio, monkeypatch):
    calls = []
    quantile = torch.quantile
    monkeypatch.setattr(torch, "quantile", lambda *a, **k: calls.append(1) or quantile(*a, **k))
    x, eu, ec = (_rand(torch.float32, shape, seed=s) for s in range(3))
    x = x * 40
    abar = _abar()
    t = torch.linspace(30, 999, shape[0]).long().to(DEVICE)
    out = F.cfg_ddpm_step(x, eu, ec, 3.0, abar, t, t - 30, dynamic_threshold=(ratio, 1e6), backend="triton")
    assert not calls
    monkeypatch.setattr(torch, "quantile", quantile)
    _close(out, _ddpm_ref(torch.float32, x, eu, ec, 3.0, abar, t, t - 30, dynamic_threshold=(ratio, 1e6)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ["fused", "radix"])
def test_ddpm_step_threshold_ties_and_nan(dtype, shape):
    # Few distinct |x0_hat| values (ties around every rank), then a NaN in one sample: torch.quantile
    # makes that sample's s NaN (its step is NaN), the other sample is unaffected.
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 3, 20, 30, generator=g) * 4).round().mul(10).to(DEVICE, dtype)
    if shape == "radix":
        x = x.repeat(1, 10, 1, 1)  # 18000 values per sample
    e = torch.zeros_like(x)
    abar, t = _abar(), _t([500, 999])
    for ratio in (0.5, 0.95):
        out = F.ddpm_step(x, e, abar, t, t - 30, dynamic_threshold=(ratio, 1e6), backend="triton")
        _close(out, _ddpm_ref(dtype, x, e, None, 1.0, abar, t, t - 30, dynamic_threshold=(ratio, 1e6)))
    e[0, 1, 2, 3] = float("nan")
    out = F.ddpm_step(x, e, abar, t, t - 30, dynamic_threshold=(0.95, 1.5), backend="triton")
    expected = _ddpm_ref(dtype, x, e, None, 1.0, abar, t, t - 30, dynamic_threshold=(0.95, 1.5))
    assert expected[0].isnan().all() and out[0].isnan().all()
    _close(out[1:], expected[1:])


def test_ddpm_step_out_may_alias_x_t():
    x, eu, ec, z = (_rand(torch.float32, seed=s) for s in range(4))
    abar, t, tp = _abar(), _t(T_NOW), _t(T_PREV)
    expected = _ddpm_ref(torch.float32, x, eu, ec, 5.0, abar, t, tp, noise=z, dynamic_threshold=(0.9, 2.0))
    buf = x.clone()
    out = F.cfg_ddpm_step(buf, eu, ec, 5.0, abar, t, tp, noise=z, dynamic_threshold=(0.9, 2.0), out=buf,
                          backend="triton")
    assert out.data_ptr() == buf.data_ptr()
    _close(buf, expected)


def test_timestep_indices_are_clamped():
    """Out-of-range t (which functional cannot check on CUDA without a sync) reads abar[T-1]."""
    x, eps, abar = _rand(torch.float32), _rand(torch.float32, seed=1), _abar()
    out = torch.empty_like(x)
    ops.Backend.predict_x0(x, eps, abar, _t([T + 5, -3 + T, 10 ** 6]), out)
    _close(out, ref.predict_x0(x, eps, abar, _t([T - 1, T - 3, T - 1])))


# ----------------------------------------------------------------------------- DDIM step
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eta", [0.0, 0.6])
@pytest.mark.parametrize("cfg", [False, True], ids=["eps", "cfg"])
def test_ddim_step(dtype, eta, cfg):
    x, eu, ec, z = (_rand(dtype, seed=s) for s in range(4))
    abar, t, tp = _abar(), _t(T_NOW), _t(T_PREV)
    if cfg:
        out = F.cfg_ddim_step(x, eu, ec, 4.0, abar, t, tp, eta=eta, noise=z, backend="triton")
        eps = ref.cfg_combine(eu.float(), ec.float(), 4.0)
    else:
        out = F.ddim_step(x, eu, abar, t, tp, eta=eta, noise=z, backend="triton")
        eps = eu.float()
    expected = ref.ddim_step(x.float(), eps, abar, t, tp, eta=eta, noise=z.float()).to(dtype)
    _close(out, expected)


# ----------------------------------------------------------------------------- masked projection
MASK_SHAPES = [(3, 1, 17, 23), (1, 5, 17, 23), (1, 1, 17, 23), (3, 5, 17, 23), (17, 23)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_kind", ["bool", "soft"])
def test_masked_project(dtype, mask_shape, mask_kind):
    x, xo, z = _rand(dtype), _rand(dtype, seed=1), _rand(dtype, seed=2)
    g = torch.Generator().manual_seed(3)
    m = torch.rand(mask_shape, generator=g)
    m = (m > 0.5) if mask_kind == "bool" else m
    m = m.to(DEVICE)
    abar, t = _abar(), _t(T_NOW)
    out = F.masked_project(x, xo, m, z, abar, t, backend="triton")
    m4 = m.to(dtype).reshape((1,) * (4 - m.ndim) + tuple(m.shape))  # what functional hands the kernel
    _close(out, _golden(ref.masked_project, dtype, x, xo, m4, z, abar, t))


# ----------------------------------------------------------------------------- Gaussian filter
def _check_filter(which, dtype, kernel_size, sigma, shape=SHAPE):
    a, b = _rand(dtype, shape), _rand(dtype, shape, seed=1)
    if which == "blur":
        out = F.gaussian_blur(a, kernel_size, sigma, backend="triton")
        expected = _golden(ref.gaussian_blur, dtype, a, kernel_size, sigma)
    elif which == "highpass":
        out = F.highpass(a, kernel_size, sigma, backend="triton")
        expected = _golden(ref.highpass, dtype, a, kernel_size, sigma)
    else:
        out = F.hybrid_combine(a, b, kernel_size, sigma, backend="triton")
        expected = _golden(ref.hybrid_combine, dtype, a, b, kernel_size, sigma)
    _close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size,sigma", [(1, 1.0), (5, 0.8)])
@pytest.mark.parametrize("which", ["blur", "highpass", "hybrid"])
def test_gaussian_filter(dtype, kernel_size, sigma, which):
    _check_filter(which, dtype, kernel_size, sigma)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["blur", "highpass", "hybrid"])
def test_gaussian_filter_spec_kernel(dtype, which):
    """SPEC A1.9's kernel (33 taps, sigma 2): the radius 16 reflects off both edges of a
    17-row image. Two planes only: 33 taps are slow in the interpreter."""
    _check_filter(which, dtype, 33, 2.0, shape=(1, 2, 17, 23))


def test_float64_storage_uses_float32_math():
    """float64 is accepted by the API; like the reference, math is float32, stored back as float64."""
    x, eu, ec, z = (_rand(torch.float64, seed=s) for s in range(4))
    abar, t, tp = _abar(), _t(T_NOW), _t(T_PREV)
    opts = dict(noise=z, dynamic_threshold=(0.95, 1.5))
    _close(F.cfg_ddpm_step(x, eu, ec, 7.0, abar, t, tp, backend="triton", **opts),
           _ddpm_ref(torch.float64, x, eu, ec, 7.0, abar, t, tp, **opts))
    _close(F.hybrid_combine(eu, ec, 5, 1.0, backend="triton"),
           _golden(ref.hybrid_combine, torch.float64, eu, ec, 5, 1.0))


# ----------------------------------------------------------------------------- tiling
def test_small_blocks_cover_tails_and_many_programs(monkeypatch):
    """Force tiny blocks/tiles so every kernel runs many programs per sample with ragged tails
    (on the interpreter the default block is a whole sample)."""
    monkeypatch.setattr(kernels, "_block", lambda inner: 128)
    monkeypatch.setattr(kernels, "_tile", lambda h, w: (4, 8))
    x, eu, ec, z, xo = (_rand(torch.float32, seed=s) for s in range(5))
    pv = _rand(torch.float32, seed=5, kind="uniform")
    abar, t, tp = _abar(), _t(T_NOW), _t(T_PREV)
    _close(F.add_noise(xo, z, abar, t, backend="triton"), ref.add_noise(xo, z, abar, t))
    _close(F.cfg_combine(eu, ec, 3.0, backend="triton"), ref.cfg_combine(eu, ec, 3.0))
    opts = dict(noise=z, variance="learned_range", predicted_variance=pv, dynamic_threshold=(0.95, 1.5))
    _close(F.cfg_ddpm_step(x, eu, ec, 7.0, abar, t, tp, backend="triton", **opts),
           _ddpm_ref(torch.float32, x, eu, ec, 7.0, abar, t, tp, **opts))
    _close(F.ddim_step(x, eu, abar, t, tp, eta=1.0, noise=z, backend="triton"),
           ref.ddim_step(x, eu, abar, t, tp, eta=1.0, noise=z))
    m = (torch.rand(1, 5, 17, 23, generator=torch.Generator().manual_seed(9)) > 0.5).float().to(DEVICE)
    _close(F.masked_project(x, xo, m, z, abar, t, backend="triton"), ref.masked_project(x, xo, m, z, abar, t))
    lo, hi = eu[:1, :2, :9, :11].contiguous(), ec[:1, :2, :9, :11].contiguous()  # 12 tiles of 4x8
    _close(F.hybrid_combine(lo, hi, 5, 1.5, backend="triton"), ref.hybrid_combine(lo, hi, 5, 1.5))


# ----------------------------------------------------------------------------- the registered ops
def _op_cases():
    """(op name, args) for every ``torch.ops.diffaccel.*_triton`` op, fp32 on DEVICE."""
    x, eu, ec, z, xo = (_rand(torch.float32, seed=s) for s in range(5))
    pv = _rand(torch.float32, seed=5, kind="uniform")
    m = (torch.rand(1, 1, 17, 23, generator=torch.Generator().manual_seed(9)) > 0.5).float().to(DEVICE)
    abar, t, tp = _abar(), _t(T_NOW), _t(T_PREV)
    out = lambda: torch.empty_like(x)  # noqa: E731
    return [
        ("add_noise", (xo, z, abar, t, out())),
        ("predict_x0", (x, eu, abar, t, out())),
        ("cfg_combine", (eu, ec, 7.0, out())),
        ("ddpm_step", (x, eu, ec, 7.0, abar, t, tp, z, 2, pv, 0.0, 0.95, 1.5, out())),
        ("ddpm_step", (x, eu, None, 1.0, abar, t, tp, None, 0, None, 1.0, 0.0, 0.0, out())),
        ("ddim_step", (x, eu, ec, 3.0, abar, t, tp, 0.5, z, out())),
        ("gaussian_filter", (eu, ec, 9, 2.0, out())),
        ("gaussian_filter", (None, ec, 5, 1.0, out())),
        ("masked_project", (x, xo, m, z, abar, t, out())),
    ]


@pytest.mark.parametrize("case", range(len(_op_cases())))
def test_registered_op_matches_reference_backend(case):
    """``torch.ops.diffaccel.<op>_triton`` (run eagerly, the interpreter included) writes what
    the reference backend writes."""
    name, args = _op_cases()[case]
    op = getattr(torch.ops.diffaccel, f"{name}_triton")
    expected = args[-1].clone()
    getattr(F._TorchBackend, name)(*args[:-1], expected)
    op(*args)
    _close(args[-1], expected)


@pytest.mark.parametrize("case", range(len(_op_cases())))
@pytest.mark.parametrize("_", [pytest.param(None, marks=gpu)], ids=["cuda"])
def test_opcheck(case, _):
    name, args = _op_cases()[case]
    torch.library.opcheck(getattr(torch.ops.diffaccel, f"{name}_triton").default, args)


@pytest.mark.parametrize("_", [pytest.param(None, marks=gpu)], ids=["cuda"])
@pytest.mark.parametrize("dynamic_threshold", [None, (0.95, 1.5)])
def test_compiled_cfg_ddpm_step_fullgraph(_, dynamic_threshold):
    x, eu, ec, z = (_rand(torch.float16, seed=s) for s in range(4))
    pv = _rand(torch.float16, seed=4, kind="uniform")
    abar, t, tp = _abar(), _t(T_NOW), _t(T_PREV)

    def step(x, eu, ec, z, pv, out):
        return F.cfg_ddpm_step(x, eu, ec, 7.0, abar, t, tp, noise=z, variance="learned_range",
                               predicted_variance=pv, dynamic_threshold=dynamic_threshold, out=out,
                               backend="triton")

    compiled = torch.compile(step, fullgraph=True)
    got = compiled(x, eu, ec, z, pv, torch.empty_like(x))
    _close(got, step(x, eu, ec, z, pv, torch.empty_like(x)))
