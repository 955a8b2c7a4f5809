"""Every public op of :mod:`diffaccel.functional` x every available backend vs the reference.

Backends are discovered, not listed: ``available_backends("cpu")`` (plus CUDA ones, marked
``gpu``), so the C++ and Triton backends are tested as soon as they are built/installed.
Triton runs through its interpreter on machines without a GPU (``tests/conftest.py``).

The expected value is always :mod:`diffaccel.reference` computed in float32 from the same
inputs and rounded once to the storage dtype, which is what a fused kernel with float32
math computes; the per-dtype tolerances (Liger-Kernel style) allow for that one rounding
and float32 reassociation, nothing more.
"""
from __future__ import annotations

import os
import zlib

import pytest
import torch

import diffaccel
from diffaccel import functional as F
from diffaccel import reference as ref

HAS_CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _device_backend_params():
    params = [pytest.param("cpu", b, id=f"cpu-{b}") for b in diffaccel.available_backends("cpu")]
    if HAS_CUDA:
        cuda = diffaccel.available_backends("cuda")
    else:  # still list the CUDA cases so a CPU run shows them as skipped ("needs an NVIDIA GPU")
        cuda = ["torch", "cpp", "triton"]
    params += [pytest.param("cuda", b, id=f"cuda-{b}", marks=pytest.mark.gpu) for b in cuda]
    return params


DEVICE_BACKENDS = _device_backend_params()
CPU_BACKENDS = diffaccel.available_backends("cpu")

# (atol, rtol) per storage dtype. float32 allows reassociation: x0_hat = (x_t - sqrt(1 - abar) eps)
# / sqrt(abar) divides a rounding error of ~1e-7 by sqrt(abar[999]) ~ 6e-3, hence atol 1e-4.
# fp16/bf16 allow about one rounding of the output (ulp/value <= 2^-10 for fp16, 2^-7 for bf16).
TOL = {
    torch.float32: (1e-4, 2e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}
DTYPES = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in TOL]
SHAPES = [pytest.param((3, 5, 17, 23), id="3x5x17x23"), pytest.param((1, 3, 64, 64), id="1x3x64x64")]

T = 1000


def _abar(device="cpu") -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).to(torch.float32).to(device)


def _skip_unsupported(device: str, backend: str, dtype: torch.dtype) -> None:
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16 and INTERPRETED:
        pytest.skip("Triton's interpreter runs on numpy, which has no bfloat16")


def _per_sample_t(n: int):
    """Per-sample timesteps including t = 0 -> t_prev = -1 (the final step, abar_prev = 1)."""
    if n == 1:
        return torch.tensor([690]), torch.tensor([660])
    t = torch.tensor([999, 417, 0, 250, 30, 1, 7][:n])
    t_prev = torch.tensor([969, 0, -1, 240, 0, 0, 3][:n])
    return t, t_prev


def _long(t, n: int) -> torch.Tensor:
    if isinstance(t, int):
        return torch.full((n,), t, dtype=torch.int64)
    return t.to(torch.int64).reshape(-1).expand(n)


class Inputs:
    """Random inputs for every op on ``shape``; tensors in ``dtype`` on ``device``."""

    def __init__(self, shape, dtype, device, seed=0, t=None, t_prev=None):
        g = torch.Generator().manual_seed(seed)
        n = shape[0]

        def rnd(scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

        self.shape, self.dtype, self.device = shape, dtype, device
        self.x_t, self.x0, self.x_orig = rnd(), rnd(), rnd()
        self.eps, self.eps_u, self.eps_c, self.noise = rnd(), rnd(), rnd(), rnd()
        self.pv = (torch.rand(*shape, generator=g) * 2 - 1).to(device=device, dtype=dtype)
        self.mask = (torch.rand(n, 1, *shape[2:], generator=g) > 0.5).to(device)
        self.abar = _abar(device)
        pt, pp = _per_sample_t(n)
        self.t = (pt if t is None else t)
        self.t_prev = (pp if t_prev is None else t_prev)
        if isinstance(self.t, torch.Tensor):
            self.t = self.t.to(device)
        if isinstance(self.t_prev, torch.Tensor):
            self.t_prev = self.t_prev.to(device)

    def tensors(self):
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}


class RefAPI:
    """The public signatures, computed by :mod:`diffaccel.reference` in float32.

    Inputs are upcast first so a fused kernel (float32 math on fp16/bf16 storage, one rounding
    at the end) is compared with the exact same math; ``backend`` and ``out`` are ignored.
    """

    @staticmethod
    def _f(*xs):
        return [None if x is None else x.float() for x in xs]

    @staticmethod
    def add_noise(x0, noise, abar, t, **_):
        a, b = RefAPI._f(x0, noise)
        return ref.add_noise(a, b, abar, _long(t, x0.shape[0]).to(x0.device)).to(x0.dtype)

    @staticmethod
    def predict_x0(x_t, eps, abar, t, **_):
        a, b = RefAPI._f(x_t, eps)
        return ref.predict_x0(a, b, abar, _long(t, x_t.shape[0]).to(x_t.device)).to(x_t.dtype)

    @staticmethod
    def cfg_combine(eps_u, eps_c, scale, **_):
        a, b = RefAPI._f(eps_u, eps_c)
        return ref.cfg_combine(a, b, scale).to(eps_u.dtype)

    @staticmethod
    def ddpm_step(x_t, eps, abar, t, t_prev, *, noise=None, variance="fixed_small", predicted_variance=None,
                  clip_x0=None, dynamic_threshold=None, **_):
        n, dev = x_t.shape[0], x_t.device
        x, e, z, pv = RefAPI._f(x_t, eps, noise, predicted_variance)
        return ref.ddpm_step(x, e, abar, _long(t, n).to(dev), _long(t_prev, n).to(dev), noise=z,
                             variance=variance, predicted_variance=pv, clip_x0=clip_x0,
                             dynamic_threshold=dynamic_threshold).to(x_t.dtype)

    @staticmethod
    def cfg_ddpm_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, **kw):
        eps = ref.cfg_combine(eps_u.float(), eps_c.float(), scale)
        return RefAPI.ddpm_step(x_t.float(), eps, abar, t, t_prev, **kw).to(x_t.dtype)

    @staticmethod
    def ddim_step(x_t, eps, abar, t, t_prev, *, eta=0.0, noise=None, **_):
        n, dev = x_t.shape[0], x_t.device
        x, e, z = RefAPI._f(x_t, eps, noise)
        return ref.ddim_step(x, e, abar, _long(t, n).to(dev), _long(t_prev, n).to(dev), eta=eta,
                             noise=z).to(x_t.dtype)

    @staticmethod
    def cfg_ddim_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, **kw):
        eps = ref.cfg_combine(eps_u.float(), eps_c.float(), scale)
        return RefAPI.ddim_step(x_t.float(), eps, abar, t, t_prev, **kw).to(x_t.dtype)

    @staticmethod
    def gaussian_blur(x, k, sigma, **_):
        return ref.gaussian_blur(x.float(), k, sigma).to(x.dtype)

    @staticmethod
    def highpass(x, k, sigma, **_):
        return ref.highpass(x.float(), k, sigma).to(x.dtype)

    @staticmethod
    def hybrid_combine(lo, hi, k=33, sigma=2.0, **_):
        return ref.hybrid_combine(lo.float(), hi.float(), k, sigma).to(lo.dtype)

    @staticmethod
    def masked_project(x_t, x_orig, mask, noise, abar, t, **_):
        # The API stores the mask in the images' dtype (a soft fp16 mask is rounded like the images).
        m = mask if mask.dim() == 4 else mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        x, xo, z = RefAPI._f(x_t, x_orig, noise)
        return ref.masked_project(x, xo, m.to(x_t.dtype).float(), z, abar,
                                  _long(t, x_t.shape[0]).to(x_t.device)).to(x_t.dtype)


# Each case: (id, call(api, inputs, **kw)). ``api`` is diffaccel.functional or RefAPI.
CASES = {
    "add_noise": lambda A, d, **kw: A.add_noise(d.x0, d.noise, d.abar, d.t, **kw),
    "predict_x0": lambda A, d, **kw: A.predict_x0(d.x_t, d.eps, d.abar, d.t, **kw),
    "cfg_combine": lambda A, d, **kw: A.cfg_combine(d.eps_u, d.eps_c, 7.5, **kw),
    "ddpm_small": lambda A, d, **kw: A.ddpm_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, noise=d.noise, **kw),
    "ddpm_small_nonoise": lambda A, d, **kw: A.ddpm_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, **kw),
    "ddpm_large": lambda A, d, **kw: A.ddpm_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, noise=d.noise,
                                                 variance="fixed_large", **kw),
    "ddpm_learned": lambda A, d, **kw: A.ddpm_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, noise=d.noise,
                                                   variance="learned_range", predicted_variance=d.pv, **kw),
    "ddpm_clip": lambda A, d, **kw: A.ddpm_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, noise=d.noise,
                                                clip_x0=1.0, **kw),
    "ddpm_threshold": lambda A, d, **kw: A.ddpm_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, noise=d.noise,
                                                     variance="learned_range", predicted_variance=d.pv,
                                                     dynamic_threshold=(0.9, 3.0), **kw),
    "cfg_ddpm_small": lambda A, d, **kw: A.cfg_ddpm_step(d.x_t, d.eps_u, d.eps_c, 5.0, d.abar, d.t, d.t_prev,
                                                         noise=d.noise, **kw),
    "cfg_ddpm_if": lambda A, d, **kw: A.cfg_ddpm_step(d.x_t, d.eps_u, d.eps_c, 7.0, d.abar, d.t, d.t_prev,
                                                      noise=d.noise, variance="learned_range",
                                                      predicted_variance=d.pv, dynamic_threshold=(0.95, 1.5),
                                                      **kw),
    "cfg_ddpm_clip": lambda A, d, **kw: A.cfg_ddpm_step(d.x_t, d.eps_u, d.eps_c, 3.0, d.abar, d.t, d.t_prev,
                                                        variance="fixed_large", clip_x0=1.0, **kw),
    "ddim_eta0": lambda A, d, **kw: A.ddim_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, **kw),
    "ddim_eta07": lambda A, d, **kw: A.ddim_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, eta=0.7,
                                                 noise=d.noise, **kw),
    "cfg_ddim_eta0": lambda A, d, **kw: A.cfg_ddim_step(d.x_t, d.eps_u, d.eps_c, 7.5, d.abar, d.t, d.t_prev,
                                                        **kw),
    "cfg_ddim_eta07": lambda A, d, **kw: A.cfg_ddim_step(d.x_t, d.eps_u, d.eps_c, 7.5, d.abar, d.t, d.t_prev,
                                                         eta=0.7, noise=d.noise, **kw),
    "gaussian_blur_k33": lambda A, d, **kw: A.gaussian_blur(d.x_t, 33, 2.0, **kw),
    "gaussian_blur_k5": lambda A, d, **kw: A.gaussian_blur(d.x_t, 5, 0.8, **kw),
    "gaussian_blur_k1": lambda A, d, **kw: A.gaussian_blur(d.x_t, 1, 1.0, **kw),
    "highpass_k33": lambda A, d, **kw: A.highpass(d.x_t, 33, 2.0, **kw),
    "highpass_k9": lambda A, d, **kw: A.highpass(d.x_t, 9, 3.0, **kw),
    "hybrid_combine": lambda A, d, **kw: A.hybrid_combine(d.eps_u, d.eps_c, **kw),
    "hybrid_combine_k7": lambda A, d, **kw: A.hybrid_combine(d.eps_u, d.eps_c, 7, 1.0, **kw),
    "masked_project": lambda A, d, **kw: A.masked_project(d.x_t, d.x_orig, d.mask, d.noise, d.abar, d.t, **kw),
}
# The tensor an in-place call naturally overwrites (``out=`` aliasing it).
ALIAS = {name: ("x0" if name == "add_noise" else "eps_u" if name.startswith(("cfg_combine", "hybrid"))
                else "x_t") for name in CASES}


def _check(name, device, backend, dtype, d: Inputs, **kw):
    want = CASES[name](RefAPI, d)
    got = CASES[name](F, d, backend=backend, **kw)
    assert got.dtype == dtype and got.shape == d.shape and got.device.type == device
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{name} [{backend}]: {m}")
    return got


# ----------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_op_matches_reference(device, backend, name, dtype, shape):
    """Per-sample t (incl. t = 0 -> t_prev = -1), fresh output."""
    _skip_unsupported(device, backend, dtype)
    d = Inputs(shape, dtype, device, seed=zlib.crc32(f"{name}{shape}".encode()) % 1000)
    _check(name, device, backend, dtype, d)


@pytest.mark.parametrize("t,t_prev", [(0, -1), (500, 470), (999, 0), (1, 0)])
@pytest.mark.parametrize("name", [n for n in CASES if n.startswith(("ddpm", "cfg_ddpm", "ddim", "cfg_ddim"))]
                         + ["add_noise", "predict_x0", "masked_project"])
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_int_timesteps(device, backend, name, t, t_prev):
    _skip_unsupported(device, backend, torch.float32)
    d = Inputs((3, 5, 17, 23), torch.float32, device, seed=1, t=t, t_prev=t_prev)
    _check(name, device, backend, torch.float32, d)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_broadcast_timestep_tensors(device, backend):
    """A 0-d or 1-element t tensor applies to every sample, like an int."""
    shape = (3, 5, 17, 23)
    a = Inputs(shape, torch.float32, device, t=torch.tensor(400), t_prev=torch.tensor([380]))
    b = Inputs(shape, torch.float32, device, t=400, t_prev=380)
    for name in ("add_noise", "ddpm_learned", "cfg_ddim_eta07", "masked_project"):
        torch.testing.assert_close(CASES[name](F, a, backend=backend), CASES[name](F, b, backend=backend))
        _check(name, device, backend, torch.float32, a)


def test_noise_is_added_only_where_t_is_positive():
    """The rule both backends follow (diffusers, SPEC B2.3): no noise on the step that lands on x0."""
    d = Inputs((3, 5, 17, 23), torch.float32, "cpu")
    with_noise = F.ddpm_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, noise=d.noise, backend="torch")
    without = F.ddpm_step(d.x_t, d.eps, d.abar, d.t, d.t_prev, backend="torch")
    differs = (with_noise != without).flatten(1).any(1)
    assert differs.tolist() == (d.t > 0).tolist()


def _noncontiguous(x: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as ``x`` in a non-contiguous view."""
    if how == "transposed":
        y = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif how == "sliced":
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        big[..., ::2] = x
        y = big[..., ::2]
    else:  # channels_last: contiguous in memory, but not in NCHW order
        y = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, x) and not y.is_contiguous()
    return y


@pytest.mark.parametrize("how", ["transposed", "sliced", "channels_last"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_noncontiguous_inputs(device, backend, name, how):
    d = Inputs((3, 5, 17, 23), torch.float32, device, seed=2)
    for k, v in d.tensors().items():
        if k not in ("abar", "t", "t_prev") and (k != "mask" or how != "channels_last"):
            setattr(d, k, _noncontiguous(v, how))
    got = _check(name, device, backend, torch.float32, d)
    assert got.is_contiguous()


MASKS = {
    "N1HW": lambda n, c, h, w: (n, 1, h, w),
    "11HW": lambda n, c, h, w: (1, 1, h, w),
    "1CHW": lambda n, c, h, w: (1, c, h, w),
    "NCHW": lambda n, c, h, w: (n, c, h, w),
    "HW": lambda n, c, h, w: (h, w),
    "CHW": lambda n, c, h, w: (c, h, w),
}


@pytest.mark.parametrize("kind", ["bool", "soft", "soft_transposed"])
@pytest.mark.parametrize("mask_shape", list(MASKS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_masked_project_broadcast_masks(device, backend, dtype, mask_shape, kind):
    _skip_unsupported(device, backend, dtype)
    shape = (3, 5, 17, 23)
    d = Inputs(shape, dtype, device, seed=3)
    g = torch.Generator().manual_seed(4)
    m = torch.rand(*MASKS[mask_shape](*shape), generator=g)
    if kind == "bool":
        m = m > 0.5
    elif kind == "soft_transposed":
        m = m.transpose(-1, -2).contiguous().transpose(-1, -2)
    d.mask = m.to(device)
    got = _check("masked_project", device, backend, dtype, d)
    if kind == "bool":  # a hard mask keeps x_t exactly where m = 1, the noised original elsewhere
        full = d.mask.reshape((1,) * (4 - d.mask.dim()) + tuple(d.mask.shape)).expand(shape)
        assert torch.equal(got[full], d.x_t[full])
        fwd = RefAPI.add_noise(d.x_orig, d.noise, d.abar, d.t)
        torch.testing.assert_close(got[~full], fwd[~full], atol=TOL[dtype][0], rtol=TOL[dtype][1])


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_out_preallocated(device, backend, name):
    d = Inputs((3, 5, 17, 23), torch.float32, device, seed=5)
    before = {k: v.clone() for k, v in d.tensors().items()}
    out = torch.full(d.shape, float("nan"), device=device)
    got = _check(name, device, backend, torch.float32, d, out=out)
    assert got is out
    for k, v in d.tensors().items():  # inputs are not written
        assert torch.equal(v, before[k]), f"{name} [{backend}] modified input {k}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_out_aliases_input(device, backend, name, dtype):
    """``out=x_t`` (in-place sampling loops): the result is as if the input were read first."""
    _skip_unsupported(device, backend, dtype)
    d = Inputs((1, 3, 64, 64), dtype, device, seed=6)
    want = CASES[name](RefAPI, d)
    target = getattr(d, ALIAS[name])
    got = CASES[name](F, d, backend=backend, out=target)
    assert got is target
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_float64_abar_and_images(device, backend):
    """alphas_cumprod in float64 is accepted (converted to float32 on the images' device)."""
    d = Inputs((3, 5, 17, 23), torch.float32, device, seed=7)
    d.abar = d.abar.double()
    _check("ddpm_learned", device, backend, torch.float32, d)


# ----------------------------------------------------------------------------- bad input
def _bad_inputs():
    d = Inputs((3, 5, 17, 23), torch.float32, "cpu")
    x, e, a = d.x_t, d.eps, d.abar
    small = torch.randn(3, 5, 17, 22)
    meta = torch.empty(3, 5, 17, 23, device="meta")
    half = e.half()
    return [
        # shapes
        ("eps shape", ValueError, r"eps must have shape", lambda: F.ddpm_step(x, small, a, 10, 5)),
        ("noise shape", ValueError, r"noise must have shape", lambda: F.add_noise(x, small, a, 10)),
        ("eps_cond shape", ValueError, r"eps_cond", lambda: F.cfg_combine(x, small, 7.0)),
        ("x_orig shape", ValueError, r"x_orig", lambda: F.masked_project(x, small, d.mask, e, a, 3)),
        ("eps_high shape", ValueError, r"eps_high", lambda: F.hybrid_combine(x, small)),
        ("x_t 3-D", ValueError, r"x_t must be a 4-D", lambda: F.ddpm_step(x[0], e[0], a, 10, 5)),
        ("pv shape", ValueError, r"predicted_variance",
         lambda: F.ddpm_step(x, e, a, 10, 5, variance="learned_range", predicted_variance=small)),
        ("out shape", ValueError, r"out must have shape", lambda: F.predict_x0(x, e, a, 10, out=small)),
        ("out dtype", ValueError, r"out must have", lambda: F.predict_x0(x, e, a, 10, out=half)),
        # timesteps
        ("t too large", ValueError, r"t must be in \[0, 999\]", lambda: F.add_noise(x, e, a, 1000)),
        ("t negative", ValueError, r"t must be in \[0, 999\]", lambda: F.predict_x0(x, e, a, -1)),
        ("t_prev < -1", ValueError, r"t_prev must be in \[-1, 999\]", lambda: F.ddpm_step(x, e, a, 10, -2)),
        ("t_prev >= t", ValueError, r"t_prev must be smaller than t", lambda: F.ddim_step(x, e, a, 10, 10)),
        ("t tensor too large", ValueError, r"t must be in \[0, 999\].*1000",
         lambda: F.ddpm_step(x, e, a, torch.tensor([5, 1000, 3]), torch.tensor([1, 2, 0]))),
        ("t_prev tensor", ValueError, r"t_prev must be in \[-1, 999\]",
         lambda: F.ddpm_step(x, e, a, torch.tensor([5, 6, 3]), torch.tensor([1, -5, 0]))),
        ("masked t tensor", ValueError, r"t must be in",
         lambda: F.masked_project(x, x, d.mask, e, a, torch.tensor([5, -1, 3]))),
        ("t float", TypeError, r"t must be an int", lambda: F.add_noise(x, e, a, 10.0)),
        ("t float tensor", TypeError, r"t must be an integer tensor", lambda: F.add_noise(x, e, a, torch.tensor([1.0] * 3))),
        ("t bool", TypeError, r"t must be an int", lambda: F.add_noise(x, e, a, True)),
        ("t wrong length", ValueError, r"t must be a scalar or have one entry per sample",
         lambda: F.add_noise(x, e, a, torch.tensor([1, 2]))),
        # devices and dtypes
        ("eps on meta", ValueError, r"eps is on meta", lambda: F.ddpm_step(x, meta, a, 10, 5)),
        ("noise on meta", ValueError, r"noise is on meta", lambda: F.ddim_step(x, e, a, 10, 5, eta=1.0, noise=meta)),
        ("mask on meta", ValueError, r"mask is on meta",
         lambda: F.masked_project(x, x, torch.empty(3, 1, 17, 23, device="meta"), e, a, 3)),
        ("eps dtype", TypeError, r"eps has dtype torch.float16", lambda: F.ddpm_step(x, half, a, 10, 5)),
        ("eps_cond dtype", TypeError, r"eps_cond has dtype", lambda: F.cfg_ddim_step(x, e, half, 7.0, a, 10, 5)),
        ("x_t int", TypeError, r"x_t must be a floating tensor", lambda: F.predict_x0(x.long(), e, a, 10)),
        ("x not a tensor", TypeError, r"x must be a torch.Tensor", lambda: F.gaussian_blur(x.numpy(), 3, 1.0)),
        ("abar 2-D", ValueError, r"alphas_cumprod must be a non-empty 1-D", lambda: F.add_noise(x, e, a[None], 1)),
        ("abar list", TypeError, r"alphas_cumprod must be a 1-D torch.Tensor", lambda: F.add_noise(x, e, [0.5], 0)),
        # masks
        ("mask batch", ValueError, r"mask must broadcast as \(N or 1, 1 or C, H, W\)",
         lambda: F.masked_project(x, x, torch.ones(2, 1, 17, 23), e, a, 3)),
        ("mask channels", ValueError, r"mask must broadcast",
         lambda: F.masked_project(x, x, torch.ones(1, 3, 17, 23), e, a, 3)),
        ("mask HW", ValueError, r"mask must broadcast",
         lambda: F.masked_project(x, x, torch.ones(17, 22), e, a, 3)),
        ("mask 5-D", ValueError, r"mask must broadcast",
         lambda: F.masked_project(x, x, torch.ones(1, 3, 1, 17, 23), e, a, 3)),
        ("mask int", TypeError, r"mask must be bool or floating",
         lambda: F.masked_project(x, x, torch.ones(17, 23, dtype=torch.int32), e, a, 3)),
        # kernels
        ("kernel even", ValueError, r"kernel_size must be an odd int >= 1, got 4", lambda: F.gaussian_blur(x, 4, 1.0)),
        ("kernel zero", ValueError, r"kernel_size must be an odd int >= 1, got 0", lambda: F.highpass(x, 0, 1.0)),
        ("kernel negative", ValueError, r"kernel_size must be an odd int", lambda: F.hybrid_combine(x, x, -3, 1.0)),
        ("kernel float", TypeError, r"kernel_size must be an odd int", lambda: F.gaussian_blur(x, 3.0, 1.0)),
        ("kernel too large", ValueError, r"kernel_size 35 is too large", lambda: F.gaussian_blur(x, 35, 2.0)),
        ("sigma zero", ValueError, r"sigma must be > 0", lambda: F.gaussian_blur(x, 3, 0.0)),
        ("sigma negative", ValueError, r"sigma must be > 0", lambda: F.highpass(x, 3, -1.0)),
        # options
        ("unknown backend", ValueError, r"backend must be one of", lambda: F.add_noise(x, e, a, 1, backend="cuda")),
        ("unknown variance", ValueError, r"variance must be one of", lambda: F.ddpm_step(x, e, a, 10, 5, variance="learned")),
        ("learned_range no pv", ValueError, r"needs predicted_variance",
         lambda: F.ddpm_step(x, e, a, 10, 5, variance="learned_range")),
        ("pv without learned_range", ValueError, r"predicted_variance is only used",
         lambda: F.cfg_ddpm_step(x, e, e, 2.0, a, 10, 5, predicted_variance=e)),
        ("clip and threshold", ValueError, r"clip_x0 or dynamic_threshold, not both",
         lambda: F.ddpm_step(x, e, a, 10, 5, clip_x0=1.0, dynamic_threshold=(0.95, 1.5))),
        ("clip zero", ValueError, r"clip_x0 must be > 0", lambda: F.ddpm_step(x, e, a, 10, 5, clip_x0=0.0)),
        ("threshold ratio", ValueError, r"dynamic_threshold ratio", lambda: F.ddpm_step(x, e, a, 10, 5, dynamic_threshold=(1.5, 2.0))),
        ("threshold max", ValueError, r"dynamic_threshold max_value", lambda: F.ddpm_step(x, e, a, 10, 5, dynamic_threshold=(0.9, 0.5))),
        ("threshold scalar", TypeError, r"dynamic_threshold must be a pair", lambda: F.ddpm_step(x, e, a, 10, 5, dynamic_threshold=0.95)),
        ("eta negative", ValueError, r"eta must be >= 0", lambda: F.ddim_step(x, e, a, 10, 5, eta=-0.1)),
        ("scale string", TypeError, r"scale must be a number", lambda: F.cfg_combine(x, e, "7")),
    ]


BAD = _bad_inputs()


@pytest.mark.parametrize("what,exc,match,call", [pytest.param(*b, id=b[0]) for b in BAD])
def test_bad_input_raises_naming_the_argument(what, exc, match, call):
    with pytest.raises(exc, match=match):
        call()


def test_unavailable_backend_is_named():
    x = torch.randn(1, 3, 8, 8)
    missing = [b for b in ("cpp", "triton") if b not in CPU_BACKENDS]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(ValueError, match=rf"backend '{missing[0]}' is not available on cpu"):
        F.cfg_combine(x, x, 2.0, backend=missing[0])


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_validation_is_the_same_for_every_backend(device, backend):
    d = Inputs((3, 5, 17, 23), torch.float32, device)
    with pytest.raises(ValueError, match=r"t must be in \[0, 999\]"):
        F.add_noise(d.x0, d.noise, d.abar, 1000, backend=backend)
    with pytest.raises(ValueError, match=r"kernel_size must be an odd int >= 1, got 2"):
        F.gaussian_blur(d.x_t, 2, 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"mask must broadcast"):
        F.masked_project(d.x_t, d.x_orig, d.mask[:2], d.noise, d.abar, d.t, backend=backend)


# ----------------------------------------------------------------------------- discovery / compile
def test_available_backends():
    names = diffaccel.available_backends()
    assert names[0] == "torch" and set(names) <= {"torch", "cpp", "triton"}
    assert diffaccel.available_backends("cpu") == names
    assert F.available_backends(torch.device("cpu")) == names


def _compile_params():
    params = [pytest.param("cpu", b, id=f"cpu-{b}") for b in CPU_BACKENDS if b != "triton"]
    cuda = diffaccel.available_backends("cuda") if HAS_CUDA else ["torch", "cpp", "triton"]
    params += [pytest.param("cuda", b, id=f"cuda-{b}", marks=pytest.mark.gpu) for b in cuda]
    return params


@pytest.mark.parametrize("dynamic_threshold", [None, (0.95, 1.5)], ids=["plain", "threshold"])
@pytest.mark.parametrize("device,backend", _compile_params())
def test_compiled_sampling_step_matches_eager(device, backend, dynamic_threshold):
    """A CFG sampling step (toy model + fused step, written in place) compiles without graph breaks."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 6, 3, padding=1).to(device)
    abar = _abar(device)

    def step(x, t, t_prev, noise):
        out_u, out_c = model(x).chunk(2, dim=1), model(-x).chunk(2, dim=1)
        return F.cfg_ddpm_step(x, out_u[0], out_c[0], 7.0, abar, t, t_prev, noise=noise,
                               variance="learned_range", predicted_variance=torch.tanh(out_c[1]),
                               dynamic_threshold=dynamic_threshold, backend=backend)

    compiled = torch.compile(step, fullgraph=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g).to(device)
    with torch.no_grad():
        for t, t_prev in ((990, 960), (30, 0), (0, -1)):
            tt, tp = torch.tensor([t, t]), torch.tensor([t_prev, t_prev])
            noise = torch.randn(2, 3, 16, 16, generator=g).to(device)
            want = step(x, tt, tp, noise)
            got = compiled(x, tt, tp, noise)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            x = want
