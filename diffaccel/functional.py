"""The public functional API: validated, dispatching, one place per formula.

Every op takes ``backend="auto" | "torch" | "cpp" | "triton"`` and ``out=`` (written in
place; may alias ``x_t``), so sampling loops reuse their buffers. ``t`` / ``t_prev`` are an
int or a LongTensor with one entry per sample; ``t_prev = -1`` is the final step
(``abar_prev = 1``); ``t_prev < t`` in both forms (see :func:`_check_order`). Images are NCHW; math is done in float32 whatever the storage dtype.

Backends all implement the same low-level calls (see :class:`_TorchBackend`):

* ``torch``  — :mod:`diffaccel.reference`, plain PyTorch (always available);
* ``cpp``    — ``torch.ops.diffaccel.*`` from the compiled extension (CPU, and CUDA where built);
* ``triton`` — ``torch.ops.diffaccel.*_triton`` (CUDA, or Triton's interpreter).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from . import reference as ref
from .errors import ArgumentError, ArgumentTypeError

Timestep = Union[int, torch.Tensor]
BACKENDS = ("auto", "torch", "cpp", "triton")
VARIANCES = tuple(ref.VARIANCE_TYPES)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------- backends
class _TorchBackend:
    """The reference, behind the low-level calling convention every backend shares.

    Arguments arrive validated: same-shape contiguous image tensors, ``alphas_cumprod`` as
    float32 on the images' device, ``t``/``t_prev`` as int64 ``[N]``, ``out`` allocated.
    """

    name = "torch"

    @staticmethod
    def add_noise(x0, noise, abar, t, out):
        out.copy_(ref.add_noise(x0, noise, abar, t))

    @staticmethod
    def predict_x0(x_t, eps, abar, t, out):
        out.copy_(ref.predict_x0(x_t, eps, abar, t))

    @staticmethod
    def cfg_combine(eps_u, eps_c, scale, out):
        out.copy_(ref.cfg_combine(eps_u, eps_c, scale))

    @staticmethod
    def ddpm_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, noise, variance_code,
                  predicted_variance, clip_x0, th_ratio, th_max, out):
        eps = eps_u if eps_c is None else ref.cfg_combine(eps_u.float(), eps_c.float(), scale)  # fp32: no rounding between the fused stages
        variance = VARIANCES[variance_code]
        out.copy_(ref.ddpm_step(
            x_t, eps, abar, t, t_prev, noise=noise, variance=variance,
            predicted_variance=predicted_variance,
            clip_x0=clip_x0 if clip_x0 > 0 else None,
            dynamic_threshold=(th_ratio, th_max) if th_ratio > 0 else None))

    @staticmethod
    def ddim_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, eta, noise, out):
        eps = eps_u if eps_c is None else ref.cfg_combine(eps_u.float(), eps_c.float(), scale)  # fp32: no rounding between the fused stages
        out.copy_(ref.ddim_step(x_t, eps, abar, t, t_prev, eta=eta, noise=noise))

    @staticmethod
    def dpmpp_2m_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, clip_x0, th_ratio, th_max,
                      out, x0_out, noise=None):
        eps = eps_u if eps_c is None else ref.cfg_combine(eps_u.float(), eps_c.float(), scale)
        x_prev, x0 = ref.dpmpp_2m_step(x_t, eps, abar, t, t_prev, x0_prev=x0_prev, t_last=t_last, noise=noise,
                                       **_threshold_kwargs(clip_x0, th_ratio, th_max))
        out.copy_(x_prev)
        x0_out.copy_(x0)

    @staticmethod
    def unipc_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, x_last, x0_prev2, t_last2,
                   predictor_order, clip_x0, th_ratio, th_max, out, x0_out, x_corr_out):
        eps = eps_u if eps_c is None else ref.cfg_combine(eps_u.float(), eps_c.float(), scale)
        x_prev, x0, x_corr = ref.unipc_step(
            x_t, eps, abar, t, t_prev, x0_prev=x0_prev, t_last=t_last, x_last=x_last, x0_prev2=x0_prev2,
            t_last2=t_last2, predictor_order=predictor_order, **_threshold_kwargs(clip_x0, th_ratio, th_max))
        # x_corr is x_t itself when there is no corrector: store it before out (which may alias x_t)
        x_corr_out.copy_(x_corr)
        x0_out.copy_(x0)
        out.copy_(x_prev)

    @staticmethod
    def heun_step(x, v, v_next, dt, out):
        out.copy_(ref.heun_step(x, v, v_next, dt))

    @staticmethod
    def gaussian_filter(low, high, kernel_size, sigma, out):
        """``out = blur(low) + (high - blur(high))``; either input may be None."""
        if low is not None and high is not None:
            out.copy_(ref.hybrid_combine(low, high, kernel_size, sigma))
        elif low is not None:
            out.copy_(ref.gaussian_blur(low, kernel_size, sigma))
        else:
            out.copy_(ref.highpass(high, kernel_size, sigma))

    @staticmethod
    def masked_project(x_t, x_orig, mask, noise, abar, t, out):
        out.copy_(ref.masked_project(x_t, x_orig, mask, noise, abar, t))


def _threshold_kwargs(clip_x0: float, th_ratio: float, th_max: float) -> dict:
    """The kernels' encoding (0 = off) back to the reference's keywords."""
    return dict(clip_x0=clip_x0 if clip_x0 > 0 else None,
                dynamic_threshold=(th_ratio, th_max) if th_ratio > 0 else None)


def _get_backend(name: str, device: torch.device):
    from . import _backends

    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        name = _backends.auto_backend(device)
    if name == "torch":
        return _TorchBackend
    return _backends.get(name, device)


def _get_op(backend: str, device: torch.device, op: str):
    """The backend's implementation of ``op``. A compiled backend built before ``op`` existed
    lacks it: "auto" then uses the reference, an explicit choice is an error."""
    be = _get_backend(backend, device)
    fn = getattr(be, op, None)
    has_op = getattr(be, "has_op", None)
    if fn is not None and (has_op is None or has_op(op, device)):
        return fn
    if backend == "auto":
        return getattr(_TorchBackend, op)
    raise ArgumentError(f"backend {backend!r} has no {op} kernel in this build; rebuild the extension "
                        f"(pip install --no-build-isolation -e .) or pass backend='torch'")


def available_backends(device: Union[str, torch.device, None] = None) -> list:
    """The backends this install can run on ``device`` (default: CPU), best first after "torch"."""
    from . import _backends

    return _backends.available(torch.device(device or "cpu"))


# ----------------------------------------------------------------------------- checks
def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _unreadable(x: torch.Tensor) -> bool:
    """Checks that read values or addresses cannot run on ``x``: while tracing for torch.compile
    (no host sync possible), and on meta tensors (shapes only: no values, no memory)."""
    return _compiling() or x.is_meta


def _check_image(name: str, x, ref_x: Optional[torch.Tensor] = None, ndim4: bool = True):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float32, float16 or bfloat16), got {x.dtype}")
    if ndim4 and x.ndim != 4:
        raise ValueError(f"{name} must be a 4-D NCHW tensor, got shape {tuple(x.shape)}")
    if ref_x is not None:
        if x.shape != ref_x.shape:
            raise ValueError(f"{name} must have shape {tuple(ref_x.shape)} (like x_t), got {tuple(x.shape)}")
        if x.device != ref_x.device:
            raise ValueError(f"{name} is on {x.device} but x_t is on {ref_x.device}; put them on one device")
        if x.dtype != ref_x.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but x_t has {ref_x.dtype}; use one dtype")
    return x.contiguous()


def _check_abar(alphas_cumprod, device: torch.device) -> torch.Tensor:
    if not isinstance(alphas_cumprod, torch.Tensor):
        raise TypeError(f"alphas_cumprod must be a 1-D torch.Tensor, got {type(alphas_cumprod).__name__}")
    if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() == 0:
        raise ValueError(f"alphas_cumprod must be a non-empty 1-D tensor, got shape {tuple(alphas_cumprod.shape)}")
    if not alphas_cumprod.is_floating_point():
        raise TypeError(f"alphas_cumprod must be floating point, got {alphas_cumprod.dtype}")
    if alphas_cumprod.device.type != device.type and alphas_cumprod.device.type != "cpu":
        raise ValueError(f"alphas_cumprod is on {alphas_cumprod.device} but x_t is on {device}")
    abar = alphas_cumprod.to(device=device, dtype=torch.float32).contiguous()
    _validate_abar(alphas_cumprod, abar)
    return abar


# alphas_cumprod tensor -> (its version counter when checked, indices where abar == 1, indices where
# abar == 0). A schedule is checked once per version (in-place edits bump it): on CPU that saves a
# pass per call, on CUDA the one check is the only host sync, paid at the first call (set-up),
# never per step. It is skipped while tracing for torch.compile or capturing a CUDA graph (no host
# sync is possible; the tables a sampler captures were checked at its eager warm-up call) and on
# meta tensors (no values).
_ABAR_CHECKED = torch.utils.weak.WeakIdKeyDictionary()


def _validate_abar(given: torch.Tensor, abar: torch.Tensor) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """``abar`` (float32, as the kernels see it) must be in [0, 1]: sqrt(abar) and sqrt(1 - abar)
    are real. ``abar = 0`` is the last entry of zero-terminal-SNR schedules (Lin et al. 2023; diffusers'
    ``rescale_betas_zero_snr``), valid for the forward process. ``abar = 1`` (beta = 0) is a
    valid entry for the forward process. The ops that divide by ``sqrt(abar[t])`` or
    ``1 - abar[t]`` refuse a ``t`` there (see :func:`_check_t_index`).
    Returns the indices where ``abar == 1`` and where ``abar == 0``."""
    if _unreadable(abar) or (abar.is_cuda and torch.cuda.is_current_stream_capturing()):
        return (), ()
    hit = _ABAR_CHECKED.get(given)
    if hit is not None and hit[0] == given._version:
        return hit[1], hit[2]
    bad = ~((abar >= 0) & (abar <= 1))  # NaN fails both comparisons
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ArgumentError(
            f"alphas_cumprod must be in [0, 1] (a cumulative product of alphas = 1 - beta, beta in [0, 1]); "
            f"got alphas_cumprod[{i}] = {abar[i].item()} (as float32)")
    ones = tuple(int(i) for i in (abar == 1).nonzero().reshape(-1).tolist())
    zeros = tuple(int(i) for i in (abar == 0).nonzero().reshape(-1).tolist())
    _ABAR_CHECKED[given] = (given._version, ones, zeros)
    return ones, zeros


def _indices(ix: Tuple[int, ...]) -> str:
    """``[3]``, ``[0, 5]``, or a run of trailing zeros as ``997..999``."""
    if len(ix) > 3 and ix[-1] - ix[0] + 1 == len(ix):
        return f"{ix[0]}..{ix[-1]}"
    return str(list(ix))


def _check_t_index(name: str, t: Timestep, alphas_cumprod: torch.Tensor, one: bool = True) -> None:
    """Refuse a ``t`` the op would divide by zero at: ``abar[t] = 0`` (x0 = (x_t - sqrt(1 - abar) eps)
    / sqrt(abar): pure noise, zero SNR, says nothing about x0) and, for the steps (``one``),
    ``abar[t] = 1`` (the step divides by 1 - abar[t]). Host ints and CPU tensors only: the indices
    where abar is 0 or 1 are known on the host once the table was checked, so this costs no sync
    (a CUDA ``t`` is not checked, as its range is not)."""
    if _compiling():
        return
    hit = _ABAR_CHECKED.get(alphas_cumprod)
    if hit is None or hit[0] != alphas_cumprod._version:
        return
    ones, zeros = (hit[1] if one else ()), hit[2]
    for ix, what in ((zeros, "zero"), (ones, "one")):
        if not ix:
            continue
        if isinstance(t, int):
            found = t in ix
        elif t.device.type == "cpu":
            found = bool(torch.isin(t.long(), torch.tensor(ix, dtype=torch.int64)).any())
        else:
            return
        if not found:
            continue
        if what == "one":
            raise ArgumentError(
                f"{name} must index alphas_cumprod below 1: a step from alphas_cumprod[t] = 1 (no noise) "
                f"divides by 1 - alphas_cumprod[t] = 0; alphas_cumprod is 1 at {_indices(ix)}")
        raise ArgumentError(
            f"{name} must index alphas_cumprod above 0: at alphas_cumprod[{name}] = 0 (pure noise, zero SNR) "
            f"this op divides by zero (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)); alphas_cumprod is 0 at "
            f"{_indices(ix)} (a zero-terminal-SNR schedule: start below that t, or predict v or x0 as "
            f"diffaccel.schedulers do there)")


def _check_t(name: str, t: Timestep, n: int, num_t: int, device: torch.device, allow_final: bool) -> torch.Tensor:
    lo = -1 if allow_final else 0
    what = f"in [{lo}, {num_t - 1}]" + (" (-1 = the final step)" if allow_final else "")
    if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
        raise TypeError(f"{name} must be an int or a LongTensor with one entry per sample, got {type(t).__name__}")
    if isinstance(t, int):
        if not lo <= t < num_t:
            raise ValueError(f"{name} must be {what}, got {t}")
        return torch.full((n,), t, dtype=torch.int64, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be an integer tensor (torch.long), got {t.dtype}")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a scalar or have one entry per sample ({n}), got shape {tuple(t.shape)}")
    if t.device != device and t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device} but x_t is on {device}")
    # Range check only where it costs no device->host sync and does not break a graph;
    # the kernels clamp indices so a bad CUDA t cannot read out of bounds.
    if t.device.type == "cpu" and not _compiling() and t.numel() > 0:
        tmin, tmax = int(t.min()), int(t.max())
        if tmin < lo or tmax >= num_t:
            raise ValueError(f"{name} must be {what}, got values in [{tmin}, {tmax}]")
    return t.to(device=device, dtype=torch.int64).reshape(-1).expand(n).contiguous()


def _check_out(out, like: torch.Tensor, name: str = "out", **inputs) -> torch.Tensor:
    """A fresh buffer, or the given one checked, and refused if it partially overlaps one of
    ``inputs`` (the kernels read an input element after writing an overlapping ``out`` element)."""
    if out is None:
        return torch.empty_like(like, memory_format=torch.contiguous_format)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"{name} must have shape {tuple(like.shape)}, dtype {like.dtype} and device {like.device}; "
            f"got {tuple(out.shape)}, {out.dtype}, {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    _check_no_partial_overlap(name, out, inputs)
    return out


def _byte_range(x: torch.Tensor) -> Tuple[int, int]:
    """``[first, last)`` bytes of memory that ``x`` spans."""
    if x.numel() == 0:
        return 0, 0
    extent = sum((n - 1) * st for n, st in zip(x.shape, x.stride()))  # torch strides are >= 0
    return x.data_ptr(), x.data_ptr() + (extent + 1) * x.element_size()


def _check_no_partial_overlap(name: str, out: torch.Tensor, inputs: dict) -> None:
    """As ATen's ``assert_no_partial_overlap``: ``out`` may be exactly an input (same memory, shape
    and strides: every op is elementwise per output element or computes before writing), but
    must not share only some memory with one. Inputs here are the contiguous tensors the kernels
    read (a non-contiguous input was already copied), so overlapping byte ranges are exact."""
    if _unreadable(out) or out.numel() == 0:
        return
    o0, o1 = _byte_range(out)
    storage = out.untyped_storage().data_ptr()
    for key, x in inputs.items():
        if x is None or x.numel() == 0 or x.untyped_storage().data_ptr() != storage:
            continue
        x0, x1 = _byte_range(x)
        if x1 <= o0 or o1 <= x0:
            continue
        if (x.data_ptr() == out.data_ptr() and x.dtype == out.dtype and x.shape == out.shape
                and x.stride() == out.stride()):
            continue
        raise ArgumentError(f"{name} partially overlaps {key} in memory (results would depend on the write "
                            f"order); pass {name} as exactly {key} (in place), a separate buffer, or None")


def _check_scalar(name: str, v, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ArgumentError(f"{name} must be finite, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def _check_variance(variance, predicted_variance, x_t):
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if variance == "learned_range":
        if predicted_variance is None:
            raise ValueError("variance='learned_range' needs predicted_variance (the model's extra channels in [-1, 1])")
        return _check_image("predicted_variance", predicted_variance, x_t)
    if predicted_variance is not None:
        raise ValueError(f"predicted_variance is only used with variance='learned_range', not {variance!r}")
    return None


def _check_threshold(clip_x0, dynamic_threshold) -> Tuple[float, float, float]:
    if clip_x0 is not None and dynamic_threshold is not None:
        raise ValueError("give clip_x0 or dynamic_threshold, not both (thresholding already bounds x0_hat)")
    clip = 0.0
    if clip_x0 is not None:
        clip = _check_scalar("clip_x0", clip_x0, positive=True)
    ratio, max_value = 0.0, 0.0
    if dynamic_threshold is not None:
        if not isinstance(dynamic_threshold, Sequence) or len(dynamic_threshold) != 2:
            raise TypeError("dynamic_threshold must be a pair (ratio, max_value), e.g. (0.95, 1.5)")
        ratio = _check_scalar("dynamic_threshold[0] (ratio)", dynamic_threshold[0])
        max_value = _check_scalar("dynamic_threshold[1] (max_value)", dynamic_threshold[1])
        if not 0 < ratio <= 1:
            raise ValueError(f"dynamic_threshold ratio must be in (0, 1], got {ratio}")
        if max_value < 1:
            raise ValueError(f"dynamic_threshold max_value must be >= 1, got {max_value}")
    return clip, ratio, max_value


def _check_kernel(kernel_size, sigma, x: torch.Tensor) -> Tuple[int, float]:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"kernel_size must be an odd int >= 1, got {type(kernel_size).__name__}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size}")
    sigma = _check_scalar("sigma", sigma, positive=True)
    h, w = x.shape[-2:]
    if kernel_size // 2 >= min(h, w):
        raise ValueError(
            f"kernel_size {kernel_size} is too large for a {h}x{w} image (reflect padding needs "
            f"kernel_size // 2 < min(H, W) = {min(h, w)})")
    return kernel_size, sigma


# ----------------------------------------------------------------------------- ops
def add_noise(x0, noise, alphas_cumprod, t: Timestep, *, out=None, backend: str = "auto"):
    """Forward process (SPEC A1.1, B2.2): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
    x0 = _check_image("x0", x0)
    noise = _check_image("noise", noise, x0)
    abar = _check_abar(alphas_cumprod, x0.device)
    tt = _check_t("t", t, x0.shape[0], abar.numel(), x0.device, allow_final=False)
    out = _check_out(out, x0, x0=x0, noise=noise, alphas_cumprod=abar)
    _get_backend(backend, x0.device).add_noise(x0, noise, abar, tt, out)
    return out


def predict_x0(x_t, eps, alphas_cumprod, t: Timestep, *, out=None, backend: str = "auto"):
    """One-step denoising (SPEC A1.3): ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
    x_t = _check_image("x_t", x_t)
    eps = _check_image("eps", eps, x_t)
    abar = _check_abar(alphas_cumprod, x_t.device)
    tt = _check_t("t", t, x_t.shape[0], abar.numel(), x_t.device, allow_final=False)
    _check_t_index("t", t, alphas_cumprod, one=False)  # abar[t] = 1 is fine here: x0 = x_t
    out = _check_out(out, x_t, x_t=x_t, eps=eps, alphas_cumprod=abar)
    _get_backend(backend, x_t.device).predict_x0(x_t, eps, abar, tt, out)
    return out


def cfg_combine(eps_uncond, eps_cond, scale: float, *, out=None, backend: str = "auto"):
    """Classifier-free guidance (SPEC A1.6): ``eps_u + scale (eps_c - eps_u)``."""
    eps_uncond = _check_image("eps_uncond", eps_uncond, ndim4=False)
    eps_cond = _check_image("eps_cond", eps_cond, eps_uncond, ndim4=False)
    scale = _check_scalar("scale", scale)
    out = _check_out(out, eps_uncond, eps_uncond=eps_uncond, eps_cond=eps_cond)
    _get_backend(backend, eps_uncond.device).cfg_combine(eps_uncond, eps_cond, scale, out)
    return out


def _check_order(small_name: str, small: Timestep, small_t: torch.Tensor, big_name: str, big: Timestep,
                 big_t: torch.Tensor) -> None:
    """``small < big`` per sample (a step goes back in time; a history entry is an earlier step):
    checked for host ints and CPU tensors, where it costs no device sync.

    One rule for both forms: ``t_prev == t`` is refused as an int and as a tensor. It is no step
    (h = lambda(t_prev) - lambda(t) = 0): the DDPM learned-range variance takes log(beta = 0) and
    the multistep solvers divide by h, so allowing it would mean a special case in every kernel.
    The one caller that needs it, diffusers' ``DDIMScheduler`` without ``set_alpha_to_one`` (its
    last step goes from t = 0 to ``final_alpha_cumprod = abar[0]``), handles that step itself
    (:meth:`diffaccel.schedulers.DDIMScheduler.step`: the forward process at t_prev, as diffusers
    computes it)."""
    if isinstance(small, int) and isinstance(big, int):
        ok, got = small < big, f"{big_name}={big}, {small_name}={small}"
    elif small_t.device.type == "cpu" and not _compiling():
        bad = (small_t >= big_t).nonzero()
        ok = bad.numel() == 0
        got = "" if ok else (f"{big_name}={int(big_t[bad[0, 0]])}, {small_name}={int(small_t[bad[0, 0]])} "
                             f"at sample {int(bad[0, 0])}")
    else:
        return
    if not ok:
        if small_name == "t_prev":
            raise ArgumentError(f"t_prev must be smaller than {big_name} (a step goes back in time), got {got}")
        raise ArgumentError(f"{big_name} must be larger than {small_name} (an earlier step), got {got}")


def _step_common(x_t, alphas_cumprod, t, t_prev, noise):
    x_t = _check_image("x_t", x_t)
    abar = _check_abar(alphas_cumprod, x_t.device)
    n = x_t.shape[0]
    tt = _check_t("t", t, n, abar.numel(), x_t.device, allow_final=False)
    tp = _check_t("t_prev", t_prev, n, abar.numel(), x_t.device, allow_final=True)
    _check_order("t_prev", t_prev, tp, "t", t, tt)
    _check_t_index("t", t, alphas_cumprod)
    _check_t_index("t_prev", t_prev, alphas_cumprod, one=False)  # abar_prev = 0: only in a non-monotone table
    noise = None if noise is None else _check_image("noise", noise, x_t)
    return x_t, abar, tt, tp, noise


def _check_eps(cfg: bool, eps_u, eps_c, scale, x_t: torch.Tensor):
    """A step's eps inputs: ``eps`` alone, or (cfg) ``eps_uncond``, ``eps_cond`` and ``scale``.
    Returns them checked, with the eps tensors by name (for :func:`_check_out`)."""
    if not cfg:
        eps_u = _check_image("eps", eps_u, x_t)
        return eps_u, None, 1.0, {"eps": eps_u}
    eps_u = _check_image("eps_uncond", eps_u, x_t)
    eps_c = _check_image("eps_cond", eps_c, x_t)
    return eps_u, eps_c, _check_scalar("scale", scale), {"eps_uncond": eps_u, "eps_cond": eps_c}


def _ddpm(cfg, x_t, eps_u, eps_c, scale, alphas_cumprod, t, t_prev, noise, variance, predicted_variance, clip_x0,
          dynamic_threshold, out, backend):
    """ddpm_step and (cfg) cfg_ddpm_step: the checks, then the backend's ddpm_step."""
    x_t, abar, tt, tp, noise = _step_common(x_t, alphas_cumprod, t, t_prev, noise)
    eps_u, eps_c, scale, eps = _check_eps(cfg, eps_u, eps_c, scale, x_t)
    pv = _check_variance(variance, predicted_variance, x_t)
    clip, ratio, max_value = _check_threshold(clip_x0, dynamic_threshold)
    out = _check_out(out, x_t, x_t=x_t, **eps, noise=noise, predicted_variance=pv, alphas_cumprod=abar)
    _get_backend(backend, x_t.device).ddpm_step(
        x_t, eps_u, eps_c, scale, abar, tt, tp, noise, ref.VARIANCE_TYPES[variance], pv, clip, ratio, max_value, out)
    return out


def ddpm_step(x_t, eps, alphas_cumprod, t: Timestep, t_prev: Timestep, *, noise=None,
              variance: str = "fixed_small", predicted_variance=None, clip_x0: Optional[float] = None,
              dynamic_threshold: Optional[Tuple[float, float]] = None, out=None, backend: str = "auto"):
    """Strided DDPM posterior step t -> t_prev (SPEC A1.4, B2.3); see :func:`reference.ddpm_step`."""
    return _ddpm(False, x_t, eps, None, 1.0, alphas_cumprod, t, t_prev, noise, variance, predicted_variance,
                 clip_x0, dynamic_threshold, out, backend)


def cfg_ddpm_step(x_t, eps_uncond, eps_cond, scale: float, alphas_cumprod, t: Timestep, t_prev: Timestep, *,
                  noise=None, variance: str = "fixed_small", predicted_variance=None,
                  clip_x0: Optional[float] = None, dynamic_threshold: Optional[Tuple[float, float]] = None,
                  out=None, backend: str = "auto"):
    """CFG combine and DDPM step in one pass: ``ddpm_step(x_t, eps_u + scale (eps_c - eps_u), ...)``.

    The guided eps is kept in float32 inside the pass (no rounding to fp16/bf16 between the
    two stages, unlike calling ``cfg_combine`` then ``ddpm_step``). ``predicted_variance``
    comes from the conditional pass (SPEC A1.6).
    """
    return _ddpm(True, x_t, eps_uncond, eps_cond, scale, alphas_cumprod, t, t_prev, noise, variance,
                 predicted_variance, clip_x0, dynamic_threshold, out, backend)


def _ddim(cfg, x_t, eps_u, eps_c, scale, alphas_cumprod, t, t_prev, eta, noise, out, backend):
    """ddim_step and (cfg) cfg_ddim_step: the checks, then the backend's ddim_step."""
    x_t, abar, tt, tp, noise = _step_common(x_t, alphas_cumprod, t, t_prev, noise)
    eps_u, eps_c, scale, eps = _check_eps(cfg, eps_u, eps_c, scale, x_t)
    eta = _check_scalar("eta", eta)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    out = _check_out(out, x_t, x_t=x_t, **eps, noise=noise, alphas_cumprod=abar)
    _get_backend(backend, x_t.device).ddim_step(x_t, eps_u, eps_c, scale, abar, tt, tp, eta, noise, out)
    return out


def ddim_step(x_t, eps, alphas_cumprod, t: Timestep, t_prev: Timestep, *, eta: float = 0.0, noise=None,
              out=None, backend: str = "auto"):
    """DDIM step t -> t_prev with stochasticity ``eta``; see :func:`reference.ddim_step`."""
    return _ddim(False, x_t, eps, None, 1.0, alphas_cumprod, t, t_prev, eta, noise, out, backend)


def cfg_ddim_step(x_t, eps_uncond, eps_cond, scale: float, alphas_cumprod, t: Timestep, t_prev: Timestep, *,
                  eta: float = 0.0, noise=None, out=None, backend: str = "auto"):
    """CFG combine and DDIM step in one pass."""
    return _ddim(True, x_t, eps_uncond, eps_cond, scale, alphas_cumprod, t, t_prev, eta, noise, out, backend)


def gaussian_blur(x, kernel_size: int, sigma: float, *, out=None, backend: str = "auto"):
    """Separable Gaussian low-pass, reflect padding (equals torchvision's ``gaussian_blur``)."""
    x = _check_image("x", x)
    kernel_size, sigma = _check_kernel(kernel_size, sigma, x)
    out = _check_out(out, x, x=x)
    _get_backend(backend, x.device).gaussian_filter(x, None, kernel_size, sigma, out)
    return out


def highpass(x, kernel_size: int, sigma: float, *, out=None, backend: str = "auto"):
    """SPEC A1.9: ``x - gaussian_blur(x)``."""
    x = _check_image("x", x)
    kernel_size, sigma = _check_kernel(kernel_size, sigma, x)
    out = _check_out(out, x, x=x)
    _get_backend(backend, x.device).gaussian_filter(None, x, kernel_size, sigma, out)
    return out


def hybrid_combine(eps_low, eps_high, kernel_size: int = 33, sigma: float = 2.0, *, out=None,
                   backend: str = "auto"):
    """Factorized diffusion (SPEC A1.9): ``lowpass(eps_low) + highpass(eps_high)``."""
    eps_low = _check_image("eps_low", eps_low)
    eps_high = _check_image("eps_high", eps_high, eps_low)
    kernel_size, sigma = _check_kernel(kernel_size, sigma, eps_low)
    out = _check_out(out, eps_low, eps_low=eps_low, eps_high=eps_high)
    _get_backend(backend, eps_low.device).gaussian_filter(eps_low, eps_high, kernel_size, sigma, out)
    return out


def _check_mask(mask, x_t: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    n, c, h, w = x_t.shape
    shape = tuple(mask.shape)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[None]
    ok = mask.ndim == 4 and mask.shape[0] in (1, n) and mask.shape[1] in (1, c) and tuple(mask.shape[2:]) == (h, w)
    if not ok:
        raise ValueError(f"mask must broadcast as (N or 1, 1 or C, H, W) = ({n} or 1, 1 or {c}, {h}, {w}); got {shape}")
    if mask.device != x_t.device:
        raise ValueError(f"mask is on {mask.device} but x_t is on {x_t.device}")
    if not (mask.dtype == torch.bool or mask.is_floating_point()):
        raise TypeError(f"mask must be bool or floating point (1 = regenerate), got {mask.dtype}")
    # A host read: on CPU always, on CUDA outside graph capture / tracing (one sync per call; a
    # mask is made once per image, and the inpainting loop keeps it in one tensor).
    if (mask.is_floating_point() and not _compiling()
            and not (mask.is_cuda and torch.cuda.is_current_stream_capturing())):
        if not bool(((mask >= 0) & (mask <= 1)).all()):
            bad = mask[~((mask >= 0) & (mask <= 1))][0].item()
            raise ArgumentError(f"mask must be in [0, 1] (1 = regenerate, 0 = keep x_orig), got a value {bad}")
    return mask.to(x_t.dtype).contiguous()


def masked_project(x_t, x_orig, mask, noise, alphas_cumprod, t: Timestep, *, out=None, backend: str = "auto"):
    """Inpainting projection (SPEC A1.7.2): ``mask x_t + (1 - mask) add_noise(x_orig, noise, t)``."""
    x_t = _check_image("x_t", x_t)
    x_orig = _check_image("x_orig", x_orig, x_t)
    noise = _check_image("noise", noise, x_t)
    mask = _check_mask(mask, x_t)
    abar = _check_abar(alphas_cumprod, x_t.device)
    tt = _check_t("t", t, x_t.shape[0], abar.numel(), x_t.device, allow_final=False)
    out = _check_out(out, x_t, x_t=x_t, x_orig=x_orig, mask=mask, noise=noise, alphas_cumprod=abar)
    _get_backend(backend, x_t.device).masked_project(x_t, x_orig, mask, noise, abar, tt, out)
    return out


def flow_interpolate(x0, x1, t, *, out=None):
    """Flow matching path (SPEC Part B, newer edition): ``x_t = (1 - t) x0 + t x1`` (x0 noise, x1 data).

    ``t`` is a float tensor with one entry per sample in [0, 1]. Plain PyTorch (memory-bound
    and tiny at MNIST size; no fused kernel).
    """
    x0 = _check_image("x0", x0)
    x1 = _check_image("x1", x1, x0)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() != x0.shape[0]:
        raise ValueError(f"t must be a float tensor with one entry per sample ({x0.shape[0]}), got {t!r:.80}")
    res = ref.flow_interpolate(x0, x1, t)
    return res if out is None else _check_out(out, x0, x0=x0, x1=x1).copy_(res)


def euler_step(x, velocity, dt: float, *, out=None):
    """Euler step of the flow ODE, ``x + dt * u`` (flow-matching sampling)."""
    x = _check_image("x", x, ndim4=False)
    velocity = _check_image("velocity", velocity, x, ndim4=False)
    dt = _check_scalar("dt", dt)
    out = _check_out(out, x, x=x, velocity=velocity)
    return torch.add(x, velocity, alpha=dt, out=out)


def add_gaussian_noise(x, noise, sigma: float, *, out=None):
    """SPEC B1.2: ``z = x + sigma * eps``."""
    x = _check_image("x", x, ndim4=False)
    noise = _check_image("noise", noise, x, ndim4=False)
    sigma = _check_scalar("sigma", sigma)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    out = _check_out(out, x, x=x, noise=noise)
    return torch.add(x, noise, alpha=sigma, out=out)


# ----------------------------------------------------------------------------- multistep solvers
def _check_history(name: str, x, x_t: torch.Tensor, t_name: str, t, abar: torch.Tensor, tt: torch.Tensor,
                   t_value: Timestep):
    """A history tensor (x0 or a sample of an earlier step) and its timestep, both or neither."""
    if (x is None) != (t is None):
        given, missing = (name, t_name) if t is None else (t_name, name)
        raise ArgumentError(f"{given} needs {missing} (a history entry is a tensor and its timestep)")
    if x is None:
        return None, None
    x = _check_image(name, x, x_t)
    tl = _check_t(t_name, t, x_t.shape[0], abar.numel(), x_t.device, allow_final=False)
    _check_order("t", t_value, tt, t_name, t, tl)
    return x, tl


def _check_outputs(x_t: torch.Tensor, inputs: dict, **outs) -> list:
    """Allocated or checked ``out=`` buffers: each may be exactly an input, must not partially
    overlap one, and no two of them may share memory."""
    res = [(k, _check_out(v, x_t, k, **inputs) if v is not None else None) for k, v in outs.items()]
    for i, (ka, a) in enumerate(res):
        for kb, b in res[i + 1:]:
            if a is not None and b is not None and a.numel() > 0 and not _unreadable(a):
                a0, a1 = _byte_range(a)
                b0, b1 = _byte_range(b)
                if a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a0 < b1 and b0 < a1:
                    raise ArgumentError(
                        f"{ka} and {kb} must be different tensors that share no memory (both are written)")
    return [v if v is not None else torch.empty_like(x_t, memory_format=torch.contiguous_format) for _, v in res]


def _check_cfg_pair(scale, eps_cond) -> float:
    """A multistep ``cfg_*`` step's guidance: ``scale`` a number and ``eps_cond`` given."""
    if eps_cond is None:
        raise ArgumentTypeError("eps_cond must be a torch.Tensor, got NoneType")
    return _check_scalar("scale", scale)


def _dpmpp_2m(x_t, eps_u, eps_c, scale, alphas_cumprod, t, t_prev, x0_prev, t_last, clip_x0, dynamic_threshold,
              out, x0_out, backend, noise=None):
    x_t, abar, tt, tp, noise = _step_common(x_t, alphas_cumprod, t, t_prev, noise)
    eps_u = _check_image("eps" if eps_c is None else "eps_uncond", eps_u, x_t)
    if eps_c is not None:
        eps_c = _check_image("eps_cond", eps_c, x_t)
    x0_prev, tl = _check_history("x0_prev", x0_prev, x_t, "t_last", t_last, abar, tt, t)
    clip, ratio, max_value = _check_threshold(clip_x0, dynamic_threshold)
    out, x0_out = _check_outputs(x_t, {"x_t": x_t, ("eps" if eps_c is None else "eps_uncond"): eps_u, "eps_cond": eps_c,
                                             "x0_prev": x0_prev, "noise": noise, "alphas_cumprod": abar},
                                  out=out, x0_out=x0_out)
    op = _get_op(backend, x_t.device, "dpmpp_2m_step")
    if noise is None:  # the ODE form: the call every build has (an older one lacks the noise argument)
        op(x_t, eps_u, eps_c, scale, abar, tt, tp, x0_prev, tl, clip, ratio, max_value, out, x0_out)
    else:
        op(x_t, eps_u, eps_c, scale, abar, tt, tp, x0_prev, tl, clip, ratio, max_value, out, x0_out, noise)
    return out, x0_out


def dpmpp_2m_step(x_t, eps, alphas_cumprod, t: Timestep, t_prev: Timestep, *, x0_prev=None,
                  t_last: Optional[Timestep] = None, clip_x0: Optional[float] = None,
                  dynamic_threshold: Optional[Tuple[float, float]] = None, out=None, x0_out=None,
                  backend: str = "auto"):
    """DPM-Solver++(2M) step t -> t_prev (Lu et al. 2022, Alg. 2, midpoint form; diffusers'
    ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``).

    First order without ``x0_prev`` (the thresholded x0 of the previous step, at ``t_last > t``)
    and at the final step (``t_prev = -1``), second order otherwise; ``clip_x0`` /
    ``dynamic_threshold`` as in :func:`ddpm_step`. Returns ``(x_prev, x0)``; ``x0`` (written into
    ``x0_out`` if given, which may alias ``x0_prev``) is the next step's ``x0_prev``. See
    :func:`reference.dpmpp_2m_step`.
    """
    return _dpmpp_2m(x_t, eps, None, 1.0, alphas_cumprod, t, t_prev, x0_prev, t_last, clip_x0, dynamic_threshold,
                     out, x0_out, backend)


def cfg_dpmpp_2m_step(x_t, eps_uncond, eps_cond, scale: float, alphas_cumprod, t: Timestep, t_prev: Timestep, *,
                      x0_prev=None, t_last: Optional[Timestep] = None, clip_x0: Optional[float] = None,
                      dynamic_threshold: Optional[Tuple[float, float]] = None, out=None, x0_out=None,
                      backend: str = "auto"):
    """CFG combine (``eps_u + scale (eps_c - eps_u)``, kept in float32) and :func:`dpmpp_2m_step` in one pass."""
    scale = _check_cfg_pair(scale, eps_cond)
    return _dpmpp_2m(x_t, eps_uncond, eps_cond, scale, alphas_cumprod, t, t_prev, x0_prev, t_last, clip_x0,
                     dynamic_threshold, out, x0_out, backend)


def _check_sde_noise(noise):
    if not isinstance(noise, torch.Tensor):
        raise ArgumentTypeError("noise must be a torch.Tensor (an N(0, I) draw shaped like x_t; at the final "
                                "step, t_prev = -1, the ODE step dpmpp_2m_step is the same update), got "
                                f"{type(noise).__name__}")
    return noise


def dpmpp_2m_sde_step(x_t, eps, alphas_cumprod, t: Timestep, t_prev: Timestep, noise, *, x0_prev=None,
                      t_last: Optional[Timestep] = None, clip_x0: Optional[float] = None,
                      dynamic_threshold: Optional[Tuple[float, float]] = None, out=None, x0_out=None,
                      backend: str = "auto"):
    """SDE-DPM-Solver++(2M) step t -> t_prev (Lu et al. 2022; diffusers'
    ``DPMSolverMultistepScheduler`` with ``algorithm_type="sde-dpmsolver++"``, midpoint), one pass.

    The data-prediction multistep step of the diffusion SDE: the second-order ``D`` of
    :func:`dpmpp_2m_step` in ``x_prev = (s(t_prev)/s(t)) e^-h x_t - a(t_prev) expm1(-2h) D +
    s(t_prev) sqrt(-expm1(-2h)) noise`` (first order: the DDPM posterior step with x0 = D), so the
    solver keeps the stochastic sampler's quality at few steps where the ODE solvers level off.
    ``noise`` is an N(0, I) draw like ``x_t`` (may be ``out``); the rest as :func:`dpmpp_2m_step`.
    See :func:`reference.dpmpp_2m_step`.
    """
    return _dpmpp_2m(x_t, eps, None, 1.0, alphas_cumprod, t, t_prev, x0_prev, t_last, clip_x0, dynamic_threshold,
                     out, x0_out, backend, _check_sde_noise(noise))


def cfg_dpmpp_2m_sde_step(x_t, eps_uncond, eps_cond, scale: float, alphas_cumprod, t: Timestep, t_prev: Timestep,
                          noise, *, x0_prev=None, t_last: Optional[Timestep] = None, clip_x0: Optional[float] = None,
                          dynamic_threshold: Optional[Tuple[float, float]] = None, out=None, x0_out=None,
                          backend: str = "auto"):
    """CFG combine (``eps_u + scale (eps_c - eps_u)``, kept in float32) and :func:`dpmpp_2m_sde_step` in one pass."""
    scale = _check_cfg_pair(scale, eps_cond)
    return _dpmpp_2m(x_t, eps_uncond, eps_cond, scale, alphas_cumprod, t, t_prev, x0_prev, t_last, clip_x0,
                     dynamic_threshold, out, x0_out, backend, _check_sde_noise(noise))


def _unipc(x_t, eps_u, eps_c, scale, alphas_cumprod, t, t_prev, x0_prev, t_last, x_last, x0_prev2, t_last2,
           predictor_order, clip_x0, dynamic_threshold, out, x0_out, x_corr_out, backend):
    x_t, abar, tt, tp, _ = _step_common(x_t, alphas_cumprod, t, t_prev, None)
    eps_u = _check_image("eps" if eps_c is None else "eps_uncond", eps_u, x_t)
    if eps_c is not None:
        eps_c = _check_image("eps_cond", eps_c, x_t)
    x0_prev, tl = _check_history("x0_prev", x0_prev, x_t, "t_last", t_last, abar, tt, t)
    if x_last is not None:
        if x0_prev is None:
            raise ArgumentError("x_last needs x0_prev and t_last (the corrector uses the previous step's x0)")
        x_last = _check_image("x_last", x_last, x_t)
    x0_prev2, tl2 = _check_history("x0_prev2", x0_prev2, x_t, "t_last2", t_last2, abar, tt, t)
    if x0_prev2 is not None:
        if x_last is None:
            raise ArgumentError("x0_prev2 is only used by the corrector, which needs x_last")
        _check_order("t_last", t_last, tl, "t_last2", t_last2, tl2)
    if isinstance(predictor_order, bool) or predictor_order not in (1, 2):
        raise ArgumentError(f"predictor_order must be 1 or 2, got {predictor_order!r}")
    clip, ratio, max_value = _check_threshold(clip_x0, dynamic_threshold)
    out, x0_out, x_corr_out = _check_outputs(
        x_t, {"x_t": x_t, ("eps" if eps_c is None else "eps_uncond"): eps_u, "eps_cond": eps_c, "x0_prev": x0_prev,
                  "x_last": x_last, "x0_prev2": x0_prev2, "alphas_cumprod": abar}, out=out, x0_out=x0_out, x_corr_out=x_corr_out)
    _get_op(backend, x_t.device, "unipc_step")(
        x_t, eps_u, eps_c, scale, abar, tt, tp, x0_prev, tl, x_last, x0_prev2, tl2, int(predictor_order),
        clip, ratio, max_value, out, x0_out, x_corr_out)
    return out, x0_out, x_corr_out


def unipc_step(x_t, eps, alphas_cumprod, t: Timestep, t_prev: Timestep, *, x0_prev=None,
               t_last: Optional[Timestep] = None, x_last=None, x0_prev2=None, t_last2: Optional[Timestep] = None,
               predictor_order: int = 2, clip_x0: Optional[float] = None,
               dynamic_threshold: Optional[Tuple[float, float]] = None, out=None, x0_out=None, x_corr_out=None,
               backend: str = "auto"):
    """UniPC step t -> t_prev, B(h) = expm1(-h) ("bh2"), data prediction (Zhao et al. 2023;
    diffusers' ``UniPCMultistepScheduler`` with ``predict_x0=True``, ``solver_type="bh2"``).

    ``x0`` is the (thresholded) model output at ``x_t``. With ``x_last`` (the previous step's
    sample, at ``t_last``, whose x0 was ``x0_prev``) the corrector UniC first corrects ``x_t``
    (order 2 with ``x0_prev2`` at ``t_last2``, else order 1); the predictor UniP then steps the
    corrected sample to ``t_prev`` (order ``predictor_order`` when ``x0_prev`` is given, first
    order at ``t_prev = -1``). Returns ``(x_prev, x0, x_corr)``: ``x0`` and ``x_corr`` are the next
    step's ``x0_prev`` and ``x_last``. Every ``*_out`` buffer may alias an input. See
    :func:`reference.unipc_step`.
    """
    return _unipc(x_t, eps, None, 1.0, alphas_cumprod, t, t_prev, x0_prev, t_last, x_last, x0_prev2, t_last2,
                  predictor_order, clip_x0, dynamic_threshold, out, x0_out, x_corr_out, backend)


def cfg_unipc_step(x_t, eps_uncond, eps_cond, scale: float, alphas_cumprod, t: Timestep, t_prev: Timestep, *,
                   x0_prev=None, t_last: Optional[Timestep] = None, x_last=None, x0_prev2=None,
                   t_last2: Optional[Timestep] = None, predictor_order: int = 2, clip_x0: Optional[float] = None,
                   dynamic_threshold: Optional[Tuple[float, float]] = None, out=None, x0_out=None,
                   x_corr_out=None, backend: str = "auto"):
    """CFG combine (kept in float32) and :func:`unipc_step` in one pass."""
    scale = _check_cfg_pair(scale, eps_cond)
    return _unipc(x_t, eps_uncond, eps_cond, scale, alphas_cumprod, t, t_prev, x0_prev, t_last, x_last, x0_prev2,
                  t_last2, predictor_order, clip_x0, dynamic_threshold, out, x0_out, x_corr_out, backend)


def heun_step(x, v, v_next, dt: float, *, out=None, backend: str = "auto"):
    """Second-order Heun step of the flow ODE: ``x + dt/2 (v + v_next)``.

    ``v`` is the velocity at ``(x, t)``, ``v_next`` the velocity at the Euler point
    ``(euler_step(x, v, dt), t + dt)``. ``out`` may alias ``x``.
    """
    x = _check_image("x", x, ndim4=False)
    v = _check_image("v", v, x, ndim4=False)
    v_next = _check_image("v_next", v_next, x, ndim4=False)
    dt = _check_scalar("dt", dt)
    out = _check_out(out, x, x=x, v=v, v_next=v_next)
    _get_op(backend, x.device, "heun_step")(x, v, v_next, dt, out)
    return out


__all__ = [
    "flow_interpolate", "euler_step", "add_gaussian_noise",
    "add_noise", "predict_x0", "cfg_combine", "ddpm_step", "cfg_ddpm_step", "ddim_step", "cfg_ddim_step",
    "gaussian_blur", "highpass", "hybrid_combine", "masked_project", "available_backends",
    "dpmpp_2m_step", "cfg_dpmpp_2m_step", "dpmpp_2m_sde_step", "cfg_dpmpp_2m_sde_step", "unipc_step",
    "cfg_unipc_step", "heun_step",
]
