"""The sampling loops: one short function per solver, in k-diffusion's shape.

Every sampler takes a *model function* ``model(x, t)`` and a starting sample, walks a timestep
schedule and returns the final sample. Every update is one :mod:`diffaccel.functional` call (the
fused kernels); the loop itself only chooses which call and keeps the solver's history.

Model functions. ``model(x, t)`` gets the current sample and a timestep (an int DDPM index, or a
float time in [0, 1] for flow matching) and returns one of

* a tensor: the noise estimate eps (the velocity for flow models);
* :class:`Output` ``(eps, variance)``: eps and learned-range variance channels in [-1, 1]
  (DeepFloyd IF; ``sample_ddpm`` then steps with ``variance="learned_range"``);
* :class:`Guided` ``(uncond, cond, scale, variance)``: the two classifier-free-guidance estimates
  (SPEC A1.6 / B2.5); the sampler hands them to the fused ``cfg_*`` op, so the combine
  ``uncond + scale (cond - uncond)`` happens inside the update pass.

Guidance, visual anagrams, factorized diffusion and the like are therefore *wrappers* around a
model (see :func:`cfg`), never branches in a loop. A model function may reuse its output buffers
but must leave a tensor it returned intact through its next call (Heun keeps two).

Timesteps. DDPM-model samplers take descending DDPM indices, ``timesteps[0]`` the start (x is
``x_t`` there) and ``timesteps[-1]`` where the loop lands (``-1`` = the clean image, abar = 1):
the model is evaluated at ``timesteps[:-1]``. SDEdit / inpainting start from ``timesteps[i:]``.
Flow samplers take ascending times from ``times[0]`` (noise, usually 0) to ``times[-1]`` (data, 1).

Noise (``sample_ddpm``, ``sample_ddim`` with ``eta > 0``, ``sample_dpmpp_2m_sde``): one N(0, I)
draw per step with ``t > 0`` (SDE-DPM-Solver++: per step landing at ``t_prev >= 0``) from
``noise``, which is a ``torch.Generator``, a tensor ``[k, *x.shape]`` of pre-drawn draws (a CUDA
loop draws up front so it never waits on the host), or a per-sample source with ``draw(out)``
such as :class:`diffaccel.mnist.sampling.PerSampleNoise` (a sample then never depends on its
batch).

Per step, ``callback(info)`` gets ``i``, ``t``, ``t_prev``, ``x`` (the new sample) and ``x0_hat``
(the data prediction at ``t``; ``noise`` too where one was drawn). ``hook(info)`` runs before
it and may change ``info["x"]`` in place (inpainting's projection, SPEC A1.7.2). The tensors in
``info`` are the loop's own buffers, overwritten by the next step: copy what you keep.

Buffers. The loop runs in place in ``out`` (default: one copy of ``x``; pass ``out=x`` to
overwrite the start sample); the solver history lives in a few buffers made once per call, so
no image-sized tensor is allocated per step beyond what the model function allocates.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from . import functional as F
from .errors import ArgumentError, ArgumentTypeError

__all__ = [
    "Output", "Guided", "cfg", "sample_ddpm", "sample_ddim", "sample_dpmpp_2m", "sample_dpmpp_2m_sde",
    "sample_unipc",
    "sample_euler", "sample_heun", "DDPM_SAMPLERS", "FLOW_SAMPLERS", "SAMPLERS", "nfe", "flow_times",
    "replay_cuda_graph", "get_sampler",
]

#: Samplers for noise-predicting (DDPM) models and for flow-matching (velocity) models.
DDPM_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc")
FLOW_SAMPLERS = ("euler", "heun")
SAMPLERS = DDPM_SAMPLERS + FLOW_SAMPLERS

Tensor = torch.Tensor
Callback = Optional[Callable[[dict], None]]


class Output(NamedTuple):
    """A model's noise estimate and its learned-range variance channels (in [-1, 1]) or None."""

    eps: Tensor
    variance: Optional[Tensor] = None


class Guided(NamedTuple):
    """What a classifier-free-guidance wrapper returns: ``eps = uncond + scale (cond - uncond)``
    is formed inside the fused update (``F.cfg_ddpm_step`` and friends), not by the wrapper.
    ``variance`` (learned range) comes from the conditional pass (SPEC A1.6)."""

    uncond: Tensor
    cond: Tensor
    scale: float
    variance: Optional[Tensor] = None


ModelOutput = Union[Tensor, Output, Guided]
ModelFn = Callable[[Tensor, Union[int, float]], ModelOutput]


def cfg(forward: Callable[[Tensor, Any], Union[Tensor, Output]], scale: float) -> ModelFn:
    """Classifier-free guidance as a model wrapper, one batched pass per step (SPEC A1.6, B2.5).

    ``forward(cat([x, x]), t)`` evaluates the unconditional block first, then the conditional one
    (a tensor, or :class:`Output` with the variance); the wrapper hands the sampler
    ``Guided(eps_u, eps_c, scale, variance of the conditional block)``.
    """
    scale = float(scale)

    def model(x: Tensor, t) -> Guided:
        out = forward(torch.cat([x, x]), t)
        eps, var = (out, None) if isinstance(out, Tensor) else (out[0], out[1])
        u, c = eps.chunk(2)
        return Guided(u, c, scale, None if var is None else var.chunk(2)[1])
    return model


def _unpack(out: ModelOutput) -> Tuple[Tensor, Optional[Tensor], float, Optional[Tensor]]:
    """``(eps or eps_uncond, eps_cond or None, scale, variance or None)``."""
    if isinstance(out, Guided):
        return out.uncond, out.cond, float(out.scale), out.variance
    if isinstance(out, Output):
        return out.eps, None, 1.0, out.variance
    if isinstance(out, Tensor):
        return out, None, 1.0, None
    raise ArgumentTypeError(f"the model function must return a tensor, samplers.Output or samplers.Guided, "
                            f"got {type(out).__name__}")


def _combined(eps: Tensor, eps_c: Optional[Tensor], scale: float, backend: str) -> Tensor:
    return eps if eps_c is None else F.cfg_combine(eps, eps_c, scale, backend=backend)


# ----------------------------------------------------------------------------- checks and plumbing
def _check_x(x) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ArgumentTypeError(f"x must be a floating torch.Tensor (the starting sample), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ArgumentError(f"x must be a batch [N, ...] with N >= 1, got shape {tuple(x.shape)}")
    return x


def _check_timesteps(timesteps, num_train_timesteps: int) -> List[int]:
    if isinstance(timesteps, Tensor):
        timesteps = timesteps.tolist()
    if isinstance(timesteps, (str, bytes)) or not isinstance(timesteps, Sequence):
        raise ArgumentTypeError(f"timesteps must be a sequence of ints, got {type(timesteps).__name__}")
    if any(isinstance(t, bool) or not isinstance(t, int) for t in timesteps):
        raise ArgumentTypeError(f"timesteps must be ints (DDPM indices), got {list(timesteps)[:8]}")
    ts = [int(t) for t in timesteps]
    T = num_train_timesteps
    if len(ts) < 2:
        raise ArgumentError(f"timesteps needs at least 2 entries (a start and where to land), got {ts}")
    if any(not -1 <= t < T for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ArgumentError(f"timesteps must strictly decrease within [{T - 1}, -1] (-1 = the clean image), got {ts}")
    return ts


def _check_times(times) -> List[float]:
    if isinstance(times, Tensor):
        times = times.tolist()
    if isinstance(times, (str, bytes)) or not isinstance(times, Sequence):
        raise ArgumentTypeError(f"times must be a sequence of floats in [0, 1], got {type(times).__name__}")
    ts = [float(t) for t in times]
    if len(ts) < 2 or any(not 0.0 <= t <= 1.0 for t in ts) or any(a >= b for a, b in zip(ts, ts[1:])):
        raise ArgumentError(f"times must strictly increase within [0, 1] (at least 2 entries), got {ts[:8]}")
    return ts


def _buffer(x: Tensor, out: Optional[Tensor]) -> Tensor:
    """The tensor the loop runs in: a contiguous copy of ``x``, or ``out`` holding ``x``."""
    if out is None:
        return x.clone(memory_format=torch.contiguous_format)
    if not isinstance(out, Tensor) or out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ArgumentError(f"out must be a tensor like x (shape {tuple(x.shape)}, {x.dtype}, {x.device})")
    if not out.is_contiguous():
        raise ArgumentError("out must be contiguous")
    if out.data_ptr() != x.data_ptr():
        out.copy_(x)
    return out


def _steps(n: int, progress: bool, desc: str) -> Iterator[int]:
    if not progress:
        return iter(range(n))
    from tqdm.auto import tqdm

    return iter(tqdm(range(n), desc=desc, leave=False))


class _Noise:
    """The step noise of a loop, from a generator, a pre-drawn block or a ``draw(out)`` source."""

    def __init__(self, noise, like: Tensor):
        self.like, self.j, self.buf = like, 0, None
        if noise is None or isinstance(noise, torch.Generator) or hasattr(noise, "draw"):
            self.source = noise
        elif isinstance(noise, Tensor):
            if noise.ndim != like.ndim + 1 or tuple(noise.shape[1:]) != tuple(like.shape):
                raise ArgumentError(f"pre-drawn noise must have shape [k, {', '.join(map(str, like.shape))}] "
                                    f"(one draw per noisy step), got {tuple(noise.shape)}")
            self.source = noise
        else:
            raise ArgumentTypeError("noise must be None, a torch.Generator, a [k, *x.shape] tensor of draws or an "
                                    f"object with draw(out), got {type(noise).__name__}")

    def __call__(self) -> Optional[Tensor]:
        src = self.source
        if src is None:
            return None
        if isinstance(src, Tensor):
            if self.j >= src.shape[0]:
                raise ArgumentError(f"pre-drawn noise has {src.shape[0]} draws; the schedule needs more")
            self.j += 1
            return src[self.j - 1]
        if self.buf is None:
            self.buf = torch.empty_like(self.like, memory_format=torch.contiguous_format)
        if isinstance(src, torch.Generator):
            # Drawn in float32 on the generator's device, so a CPU seed gives the same image anywhere.
            if src.device == self.buf.device and self.buf.dtype == torch.float32:
                return torch.randn(self.buf.shape, generator=src, out=self.buf)
            z = torch.randn(self.buf.shape, generator=src, device=src.device, dtype=torch.float32)
            return self.buf.copy_(z)
        return src.draw(self.buf)


def _eps_x0_hat(x: Tensor, eps: Tensor, eps_c: Optional[Tensor], scale: float, alphas_cumprod: Tensor, t: int,
                backend: str, callback: Callback) -> Callable[[], Tensor]:
    """The step's x0 estimate, computed only if a callback asks (``x`` snapshotted before the step
    overwrites it; nothing is copied without a callback)."""
    x_t = x.clone() if callback is not None else None
    return lambda: F.predict_x0(x_t, _combined(eps, eps_c, scale, backend), alphas_cumprod, t, backend=backend)


def _flow_x0_hat(x: Tensor, v: Tensor, t: float, callback: Callback) -> Callable[[], Tensor]:
    """A flow step's x0 estimate for a callback: the data the current velocity points at."""
    x_t = x.clone() if callback is not None else None
    return lambda: F.euler_step(x_t, v, 1.0 - t)


def _report(callback: Callback, hook: Callback, info: dict, x0_hat: Optional[Callable[[], Tensor]] = None) -> None:
    if hook is not None:
        hook(info)
    if callback is not None:
        if x0_hat is not None and "x0_hat" not in info:
            info["x0_hat"] = x0_hat()
        callback(info)


def _thr_kwargs(clip_x0, dynamic_threshold) -> dict:
    return {"clip_x0": clip_x0, "dynamic_threshold": dynamic_threshold}


# ----------------------------------------------------------------------------- DDPM-model samplers
def sample_ddpm(model: ModelFn, x: Tensor, timesteps: Sequence[int], alphas_cumprod: Tensor, *, noise=None,
                variance: str = "fixed_small", clip_x0: Optional[float] = None,
                dynamic_threshold: Optional[Tuple[float, float]] = None, callback: Callback = None,
                hook: Callback = None, progress: bool = False, backend: str = "auto",
                out: Optional[Tensor] = None) -> Tensor:
    """Ancestral DDPM sampling down a (strided) schedule (Ho et al. 2020; SPEC A1.4, B2.3).

    Each step is ``F.ddpm_step`` (``F.cfg_ddpm_step`` for :class:`Guided` outputs): the posterior
    mean from ``x0_hat`` and ``x_t`` plus noise of the given ``variance``, or the model's
    learned-range variance when it returns one.
    """
    x = _buffer(_check_x(x), out)
    ts = _check_timesteps(timesteps, alphas_cumprod.numel())
    draw = _Noise(noise, x)
    for i in _steps(len(ts) - 1, progress, "ddpm"):
        t, t_prev = ts[i], ts[i + 1]
        eps, eps_c, scale, var = _unpack(model(x, t))
        z = draw() if t > 0 else None
        info = {"i": i, "t": t, "t_prev": t_prev, "noise": z}
        x0_hat = _eps_x0_hat(x, eps, eps_c, scale, alphas_cumprod, t, backend, callback)
        kw = dict(noise=z, variance=variance if var is None else "learned_range", predicted_variance=var,
                  clip_x0=clip_x0, dynamic_threshold=dynamic_threshold, out=x, backend=backend)
        if eps_c is None:
            F.ddpm_step(x, eps, alphas_cumprod, t, t_prev, **kw)
        else:
            F.cfg_ddpm_step(x, eps, eps_c, scale, alphas_cumprod, t, t_prev, **kw)
        info["x"] = x
        _report(callback, hook, info, x0_hat)
    return x


def sample_ddim(model: ModelFn, x: Tensor, timesteps: Sequence[int], alphas_cumprod: Tensor, *, eta: float = 0.0,
                noise=None, callback: Callback = None, hook: Callback = None, progress: bool = False,
                backend: str = "auto", out: Optional[Tensor] = None) -> Tensor:
    """DDIM (Song et al. 2020, eq. 12): ``F.ddim_step`` / ``F.cfg_ddim_step`` per step; ``eta > 0``
    adds ``eta``-scaled posterior noise (drawn on steps with ``t > 0``)."""
    x = _buffer(_check_x(x), out)
    ts = _check_timesteps(timesteps, alphas_cumprod.numel())
    draw = _Noise(noise if eta > 0 else None, x)
    for i in _steps(len(ts) - 1, progress, "ddim"):
        t, t_prev = ts[i], ts[i + 1]
        eps, eps_c, scale, _ = _unpack(model(x, t))
        z = draw() if t > 0 else None
        info = {"i": i, "t": t, "t_prev": t_prev, "noise": z}
        x0_hat = _eps_x0_hat(x, eps, eps_c, scale, alphas_cumprod, t, backend, callback)
        if eps_c is None:
            F.ddim_step(x, eps, alphas_cumprod, t, t_prev, eta=eta, noise=z, out=x, backend=backend)
        else:
            F.cfg_ddim_step(x, eps, eps_c, scale, alphas_cumprod, t, t_prev, eta=eta, noise=z, out=x,
                            backend=backend)
        info["x"] = x
        _report(callback, hook, info, x0_hat)
    return x


def sample_dpmpp_2m(model: ModelFn, x: Tensor, timesteps: Sequence[int], alphas_cumprod: Tensor, *,
                    clip_x0: Optional[float] = None, dynamic_threshold: Optional[Tuple[float, float]] = None,
                    callback: Callback = None, hook: Callback = None, progress: bool = False,
                    backend: str = "auto", out: Optional[Tensor] = None) -> Tensor:
    """DPM-Solver++(2M), data prediction (Lu et al. 2022, Algorithm 2; diffusers'
    ``DPMSolverMultistepScheduler``, ``dpmsolver++``, midpoint).

    The first step is first order (no history yet), every later one second order from the
    previous x0; a step that lands on the clean image (``t_prev = -1``) is first order (it
    returns the thresholded x0). ``clip_x0`` / ``dynamic_threshold`` bound x0 as ``ddpm_step``.
    """
    x = _buffer(_check_x(x), out)
    ts = _check_timesteps(timesteps, alphas_cumprod.numel())
    x0s = [torch.empty_like(x), torch.empty_like(x)]  # this step's x0 and the previous one, swapped
    x0_prev, t_last = None, None
    for i in _steps(len(ts) - 1, progress, "dpmpp_2m"):
        t, t_prev = ts[i], ts[i + 1]
        eps, eps_c, scale, _ = _unpack(model(x, t))
        kw = dict(x0_prev=x0_prev, t_last=t_last, out=x, x0_out=x0s[i % 2], backend=backend,
                  **_thr_kwargs(clip_x0, dynamic_threshold))
        if eps_c is None:
            _, x0 = F.dpmpp_2m_step(x, eps, alphas_cumprod, t, t_prev, **kw)
        else:
            _, x0 = F.cfg_dpmpp_2m_step(x, eps, eps_c, scale, alphas_cumprod, t, t_prev, **kw)
        x0_prev, t_last = x0, t
        _report(callback, hook, {"i": i, "t": t, "t_prev": t_prev, "x": x, "x0_hat": x0})
    return x


def sample_dpmpp_2m_sde(model: ModelFn, x: Tensor, timesteps: Sequence[int], alphas_cumprod: Tensor, *,
                        noise=None, clip_x0: Optional[float] = None,
                        dynamic_threshold: Optional[Tuple[float, float]] = None, callback: Callback = None,
                        hook: Callback = None, progress: bool = False, backend: str = "auto",
                        out: Optional[Tensor] = None) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022; diffusers' ``DPMSolverMultistepScheduler`` with
    ``algorithm_type="sde-dpmsolver++"``): :func:`sample_dpmpp_2m`'s history and orders on the
    diffusion SDE, one ``F.dpmpp_2m_sde_step`` a step with a fresh N(0, I) draw (``noise`` as
    :func:`sample_ddpm`; None: torch's global generator) on every step that lands at ``t_prev >= 0``.
    The last step (onto the clean image) is the same update in both forms and draws nothing.

    Why it exists: on a model whose probability-flow ODE is poorer than its SDE (the unconditional
    MNIST model, README "Samplers"), the ODE solvers level off while this keeps ancestral DDPM's
    quality at a fraction of its steps.
    """
    x = _buffer(_check_x(x), out)
    ts = _check_timesteps(timesteps, alphas_cumprod.numel())
    draw = _Noise(noise, x)
    x0s = [torch.empty_like(x), torch.empty_like(x)]
    x0_prev, t_last = None, None
    for i in _steps(len(ts) - 1, progress, "dpmpp_2m_sde"):
        t, t_prev = ts[i], ts[i + 1]
        eps, eps_c, scale, _ = _unpack(model(x, t))
        z = None
        if t_prev >= 0:
            z = draw()
            if z is None:
                z = torch.randn_like(x)
        kw = dict(x0_prev=x0_prev, t_last=t_last, out=x, x0_out=x0s[i % 2], backend=backend,
                  **_thr_kwargs(clip_x0, dynamic_threshold))
        if z is None:  # t_prev = -1: the SDE and ODE steps coincide (x_prev = x0)
            _, x0 = (F.dpmpp_2m_step(x, eps, alphas_cumprod, t, t_prev, **kw) if eps_c is None else
                     F.cfg_dpmpp_2m_step(x, eps, eps_c, scale, alphas_cumprod, t, t_prev, **kw))
        elif eps_c is None:
            _, x0 = F.dpmpp_2m_sde_step(x, eps, alphas_cumprod, t, t_prev, z, **kw)
        else:
            _, x0 = F.cfg_dpmpp_2m_sde_step(x, eps, eps_c, scale, alphas_cumprod, t, t_prev, z, **kw)
        x0_prev, t_last = x0, t
        _report(callback, hook, {"i": i, "t": t, "t_prev": t_prev, "x": x, "x0_hat": x0, "noise": z})
    return x


def sample_unipc(model: ModelFn, x: Tensor, timesteps: Sequence[int], alphas_cumprod: Tensor, *,
                 lower_order_final: bool = True, clip_x0: Optional[float] = None,
                 dynamic_threshold: Optional[Tuple[float, float]] = None, callback: Callback = None,
                 hook: Callback = None, progress: bool = False, backend: str = "auto",
                 out: Optional[Tensor] = None) -> Tensor:
    """UniPC, order 2, B(h) = expm1(-h) ("bh2"), data prediction (Zhao et al. 2023; diffusers'
    ``UniPCMultistepScheduler`` with ``solver_order=2``).

    Each model evaluation at ``x_t`` first corrects ``x_t`` with the corrector UniC (of the order
    of the previous predictor, using the previous sample and x0s), then predicts ``x_{t_prev}``
    with UniP (order 1 on the first step, 2 afterwards; 1 on the last step when
    ``lower_order_final``, as diffusers does). No extra model evaluation: NFE = number of steps.
    """
    x = _buffer(_check_x(x), out)
    ts = _check_timesteps(timesteps, alphas_cumprod.numel())
    n = len(ts) - 1
    x0s = [torch.empty_like(x) for _ in range(3)]  # x0 at t, t_last, t_last2 (rotating)
    corr = [torch.empty_like(x), torch.empty_like(x)]  # x_corr at t (-> the next x_last), rotating
    x0_prev = x0_prev2 = x_last = None
    t_last = t_last2 = None
    for i in _steps(n, progress, "unipc"):
        t, t_prev = ts[i], ts[i + 1]
        eps, eps_c, scale, _ = _unpack(model(x, t))
        order = 1 if i == 0 or (lower_order_final and i == n - 1) else 2
        kw = dict(x0_prev=x0_prev, t_last=t_last, x_last=x_last, x0_prev2=x0_prev2, t_last2=t_last2,
                  predictor_order=order, out=x, x0_out=x0s[i % 3], x_corr_out=corr[i % 2], backend=backend,
                  **_thr_kwargs(clip_x0, dynamic_threshold))
        if eps_c is None:
            _, x0, x_corr = F.unipc_step(x, eps, alphas_cumprod, t, t_prev, **kw)
        else:
            _, x0, x_corr = F.cfg_unipc_step(x, eps, eps_c, scale, alphas_cumprod, t, t_prev, **kw)
        # The corrector of the next step is of this predictor's order: order 2 needs two x0s back.
        x0_prev2, t_last2 = (x0_prev, t_last) if order == 2 else (None, None)
        x0_prev, t_last, x_last = x0, t, x_corr
        _report(callback, hook, {"i": i, "t": t, "t_prev": t_prev, "x": x, "x0_hat": x0})
    return x


# ----------------------------------------------------------------------------- flow matching
def flow_times(num_steps: int) -> List[float]:
    """``num_steps + 1`` uniform times ``0, 1/n, ..., 1`` (the flow ODE from noise to data)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ArgumentError(f"num_steps must be an int >= 1, got {num_steps!r}")
    dt = 1.0 / num_steps
    return [i * dt for i in range(num_steps)] + [1.0]


def _velocity(out: ModelOutput, buf: Tensor, backend: str) -> Tensor:
    u, u_c, scale, _ = _unpack(out)
    if u_c is None:
        return u
    return F.cfg_combine(u, u_c, scale, out=buf, backend=backend)


def sample_euler(model: ModelFn, x: Tensor, times: Sequence[float], *, callback: Callback = None,
                 hook: Callback = None, progress: bool = False, backend: str = "auto",
                 out: Optional[Tensor] = None) -> Tensor:
    """Flow matching, Euler: ``x += (t_next - t) u(x, t)`` (SPEC Part B, newer edition)."""
    x = _buffer(_check_x(x), out)
    ts = _check_times(times)
    v_buf = torch.empty_like(x)
    for i in _steps(len(ts) - 1, progress, "euler"):
        t, t_next = ts[i], ts[i + 1]
        v = _velocity(model(x, t), v_buf, backend)
        info = {"i": i, "t": t, "t_prev": t_next}
        x0_hat = _flow_x0_hat(x, v, t, callback)
        F.euler_step(x, v, t_next - t, out=x)
        info["x"] = x
        _report(callback, hook, info, x0_hat)
    return x


def sample_heun(model: ModelFn, x: Tensor, times: Sequence[float], *, callback: Callback = None,
                hook: Callback = None, progress: bool = False, backend: str = "auto",
                out: Optional[Tensor] = None) -> Tensor:
    """Flow matching, Heun (2nd order; Karras et al. 2022, Alg. 1 without churn): an Euler
    predictor ``x' = x + dt u(x, t)``, then ``x += dt/2 (u(x, t) + u(x', t + dt))``. As in Alg. 1
    the step that lands on the data end (``t + dt = 1``, where sigma would be 0) is a plain Euler
    step: at t = 1 the velocity is not identifiable from x alone (the model can only return
    ``x - E[x0]``), and averaging it in over a long final step brightens few-step samples. A run
    of ``n`` steps ending at t = 1 costs ``2n - 1`` model evaluations (:func:`nfe`).
    """
    x = _buffer(_check_x(x), out)
    ts = _check_times(times)
    x_e, v_buf, v2_buf = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    for i in _steps(len(ts) - 1, progress, "heun"):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t
        v = _velocity(model(x, t), v_buf, backend)
        info = {"i": i, "t": t, "t_prev": t_next}
        x0_hat = _flow_x0_hat(x, v, t, callback)
        if t_next >= 1.0:
            F.euler_step(x, v, dt, out=x)
        else:
            F.euler_step(x, v, dt, out=x_e)
            v_next = _velocity(model(x_e, t_next), v2_buf, backend)
            F.heun_step(x, v, v_next, dt, out=x, backend=backend)
        info["x"] = x
        _report(callback, hook, info, x0_hat)
    return x


def nfe(sampler: str, num_steps: int) -> int:
    """Model evaluations a run of ``num_steps`` steps costs (per guided batch: one per CFG pass pair;
    Heun: two a step, one for the final Euler step onto t = 1)."""
    if sampler not in SAMPLERS:
        raise ArgumentError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler function for a name of :data:`SAMPLERS`."""
    table = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m,
             "dpmpp_2m_sde": sample_dpmpp_2m_sde, "unipc": sample_unipc,
             "euler": sample_euler, "heun": sample_heun}
    if name not in table:
        raise ArgumentError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    return table[name]


# ----------------------------------------------------------------------------- CUDA graphs
def replay_cuda_graph(cache: Dict[Any, Any], key, loop: Callable[[], Tensor], inputs: Dict[str, Optional[Tensor]],
                      warmup: Optional[Callable[[], Any]] = None) -> Tensor:
    """A whole sampling loop as one CUDA graph: captured once per ``key``, then replayed.

    ``loop()`` runs a sampler on the tensors of ``inputs`` (the start sample, pre-drawn noise,
    conditions). The first call with a ``key`` captures it with these very tensors as the graph's
    inputs (capturing runs nothing, so they still hold their values when the replay starts);
    a later call copies its own ``inputs`` into them and replays. ``warmup()`` runs once on a side
    stream before the capture (cuDNN plans, lazy initialisation). Returns the graph's output
    tensor, overwritten by the next replay. The loop must not synchronise with the host (no
    callback, noise drawn up front).
    """
    if key not in cache:
        dev = next(v for v in inputs.values() if v is not None).device
        if warmup is not None:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                warmup()
            torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            result = loop()
        cache[key] = graph, dict(inputs), result
    else:
        graph, static, result = cache[key]
        for name, v in inputs.items():
            if v is not None and static[name] is not v:
                static[name].copy_(v)
    graph.replay()
    return result
