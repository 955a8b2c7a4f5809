"""Every Part-A technique (SPEC A0-A1.9) as a short function over a :mod:`denoiser <.denoisers>`.

Conventions:

* Clean images in and out are in the canonical range [-1, 1] (``denoiser.to_model_range``
  converts); *noisy* images ``x_t`` live in the model's own space (for IF the same; for
  MNIST [0, 1]-based) — pass what :func:`forward` returns to :func:`iterative_denoise`.
* Every stochastic function takes a ``torch.Generator`` and draws all its noise from it, in a
  fixed order: the same seed gives the same image.
* ``callback(info: dict)`` is called after every step (k-diffusion style) with ``i``, ``t``,
  ``t_prev``, ``x`` (the new ``x_{t_prev}``, the loop's buffer: copy what you keep), ``x0_hat``
  (canonical range) and, for the DDPM update, ``noise``.
* The loop is :mod:`diffaccel.samplers` (``sampler="ddpm"`` by default, or ``"ddim"``,
  ``"dpmpp_2m"``, ``"dpmpp_2m_sde"``, ``"unipc"``); each technique is a model wrapper (CFG, views, factorizations)
  or a per-step hook (inpainting's projection) plus one call into it. Every formula is a
  :mod:`diffaccel.functional` call (the fused kernels): ``add_noise``, ``predict_x0``,
  ``ddpm_step`` / ``cfg_ddpm_step`` (with the learned-range variance when the model predicts one,
  else ``fixed_small``), ``gaussian_blur``, ``hybrid_combine``, ``masked_project``.
* CFG, anagrams and hybrids make ONE batched model call per step.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import functional as Fn
from .. import samplers
from .._checks import check_finite, check_int
from ..errors import ArgumentError, ArgumentTypeError
from ..samplers import Guided, ModelFn, Output
from .animation import make_gif
from .denoisers import Denoiser
from .factorizations import Factorization, HighLow, get_factorization
from .views import View, combine_estimates, get_view

__all__ = [
    "DenoiseResult", "strided_timesteps", "inference_timesteps", "default_timesteps", "forward",
    "blur_params", "blur_denoise", "one_step_denoise", "iterative_denoise", "iterative_denoise_cfg", "sample", "sdedit",
    "img2img", "inpaint", "visual_anagram", "hybrid", "factorized", "upsample_stage2", "make_gif",
    "default_prompt",
]

Callback = Optional[Callable[[dict], None]]


class DenoiseResult(NamedTuple):
    """``image``: final clean image (canonical [-1, 1]); ``intermediates``: every ``every``-th step."""

    image: torch.Tensor
    intermediates: List[torch.Tensor]


# ----------------------------------------------------------------------------- timesteps
def strided_timesteps(start: Optional[int] = None, stride: Optional[int] = None,
                      num_train_timesteps: int = 1000) -> List[int]:
    """SPEC A1.4: ``[start, start - stride, ..., 0]`` (990, 960, ..., 0 for T = 1000).

    Defaults scale the course's choice to any T: ``stride = round(30 T / 1000)`` (>= 1) and
    ``start`` the largest multiple of the stride below T — the same 34 steps for every T
    (T = 300, the MNIST models: 297, 288, ..., 0).
    """
    T = int(num_train_timesteps)
    if stride is None:
        stride = max(1, round(30 * T / 1000))
    if start is None:
        start = stride * ((T - 1) // stride)
    stride = check_int("stride", stride, min=1)
    start = check_int("start", start, min=0, max=T - 1)
    return list(range(start, -1, -stride))


def inference_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000) -> List[int]:
    """diffusers' DDPMScheduler "leading" spacing, then ``-1`` (the last step lands on x_0 exactly).

    ``[(n-1) k, ..., k, 0, -1]`` with ``k = T // n``: the timesteps ``IFPipeline`` uses (SPEC A0).
    """
    T = int(num_train_timesteps)
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, min=1, max=T)
    k = T // num_inference_steps
    return [i * k for i in range(num_inference_steps - 1, -1, -1)] + [-1]


def default_timesteps(denoiser: Denoiser) -> List[int]:
    """:func:`strided_timesteps` for the denoiser's T."""
    return strided_timesteps(num_train_timesteps=denoiser.num_train_timesteps)


def default_prompt(denoiser: Denoiser):
    """IF: "a high quality photo" (SPEC A1.3); other models: their null condition."""
    return getattr(denoiser, "default_prompt", denoiser.null_cond)


def _check_timesteps(denoiser: Denoiser, timesteps) -> List[int]:
    ts = default_timesteps(denoiser) if timesteps is None else [int(t) for t in timesteps]
    T = denoiser.num_train_timesteps
    if len(ts) < 2:
        raise ValueError(f"timesteps needs at least 2 entries, got {ts}")
    if any(not -1 <= t < T for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])) or -1 in ts[:-1]:
        raise ValueError(f"timesteps must strictly decrease within [{T - 1}, 0] (optionally ending in -1), got {ts}")
    return ts


def _check_i_start(i_start, ts: List[int]) -> int:
    return check_int("i_start", i_start, min=0, max=len(ts) - 2,
                     what=f" (an index into the {len(ts)} timesteps)")


def _check_guidance(guidance_scale, optional: bool = True) -> None:
    """``guidance_scale`` finite (NaN or Inf give black images); None (no guidance) where ``optional``."""
    if guidance_scale is None and optional:
        return
    check_finite("guidance_scale", guidance_scale, " (the CFG scale g)" + (", or None" if optional else ""))


# ----------------------------------------------------------------------------- helpers
def _randn(like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """N(0, I) like ``like``, drawn on the generator's device (so a CPU seed is portable)."""
    dev = generator.device if generator is not None else like.device
    z = torch.randn(like.shape, generator=generator, device=dev, dtype=torch.float32)
    return z.to(device=like.device, dtype=like.dtype)


def _check_clean(denoiser: Denoiser, image, name: str = "image") -> torch.Tensor:
    denoiser.check_sample(image, name)
    return denoiser.to_model_range(image.to(device=denoiser.device, dtype=torch.float32))


def _plain(denoiser: Denoiser, cond) -> ModelFn:
    enc = denoiser.encode(cond)

    def model(x, t):
        out = denoiser(x, t, enc)
        return Output(out.eps, out.variance)
    return model


def _cfg(denoiser: Denoiser, cond, guidance_scale: float) -> ModelFn:
    """One forward of ``[uncond, cond]``; the variance comes from the conditional pass (SPEC A1.6)."""
    both = denoiser.batch_conds([denoiser.null_cond, cond])
    return samplers.cfg(lambda x2, t: denoiser(x2, t, both), guidance_scale)


def _model(denoiser: Denoiser, cond, guidance_scale: Optional[float]) -> ModelFn:
    return _plain(denoiser, cond) if guidance_scale is None else _cfg(denoiser, cond, guidance_scale)


def _check_sampler(sampler: str, step_kwargs: dict) -> str:
    if sampler not in samplers.DDPM_SAMPLERS:
        raise ArgumentError(f"sampler must be one of {samplers.DDPM_SAMPLERS} (a noise-predicting model), "
                            f"got {sampler!r}")
    allowed = _STEP_KWARGS[sampler]
    extra = sorted(k for k, v in step_kwargs.items() if k not in allowed and v is not None)
    if extra:
        raise ArgumentError(f"sampler {sampler!r} takes no {', '.join(extra)} (it accepts {sorted(allowed) or 'none'}); "
                            "drop it or choose another sampler")
    return sampler


#: The step options each sampler takes (``**step_kwargs`` of the techniques).
_STEP_KWARGS = {"ddpm": {"clip_x0", "dynamic_threshold"}, "ddim": {"eta"},
                "dpmpp_2m": {"clip_x0", "dynamic_threshold"}, "dpmpp_2m_sde": {"clip_x0", "dynamic_threshold"},
                "unipc": {"clip_x0", "dynamic_threshold"}}


def _run(denoiser: Denoiser, x: torch.Tensor, timesteps: List[int], i_start: int, model: ModelFn,
         generator, callback: Callback, project=None, every: int = 5, progress: bool = False,
         sampler: str = "ddpm", **step_kwargs) -> DenoiseResult:
    """One call into :mod:`diffaccel.samplers` over ``timesteps[i_start:]``.

    ``sampler="ddpm"``: ``x_{t'} = ddpm_step(x_t, eps, t -> t')`` with the learned-range variance
    when the model predicts one, else ``fixed_small``; ``"ddim"``, ``"dpmpp_2m"``, ``"unipc"``:
    the deterministic solvers, ``"dpmpp_2m_sde"`` the stochastic one (the model's variance is
    not used). ``project(x, t_prev, info)``
    changes ``x`` in place after every step that does not land on the clean image.
    """
    _check_sampler(sampler, step_kwargs)
    check_int("every", every, min=1, what=" (keep every k-th step)")
    step_kwargs = {k: v for k, v in step_kwargs.items() if v is not None}
    abar = denoiser.alphas_cumprod
    inter: List[torch.Tensor] = []

    def hook(info):
        info["i"] += i_start
        if project is not None and info["t_prev"] >= 0:
            project(info["x"], info["t_prev"], info)
        if info["i"] % every == 0:
            inter.append(denoiser.from_model_range(info["x"]).clone())

    def report(info):
        info["x0_hat"] = denoiser.from_model_range(info["x0_hat"])
        callback(info)

    kw = dict(callback=None if callback is None else report, hook=hook, progress=progress, **step_kwargs)
    ts = timesteps[i_start:]
    if sampler == "ddpm":
        x = samplers.sample_ddpm(model, x, ts, abar, noise=generator, **kw)
    elif sampler in ("ddim", "dpmpp_2m_sde"):
        x = samplers.get_sampler(sampler)(model, x, ts, abar, noise=generator, **kw)
    else:
        x = samplers.get_sampler(sampler)(model, x, ts, abar, **kw)
    return DenoiseResult(denoiser.from_model_range(x), inter)


# ----------------------------------------------------------------------------- A1.1 - A1.3
def forward(denoiser: Denoiser, x0: torch.Tensor, t: int, generator: Optional[torch.Generator] = None,
            noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SPEC A1.1: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (x0 canonical; x_t in model space)."""
    x0 = _check_clean(denoiser, x0, "x0")
    noise = _randn(x0, generator) if noise is None else noise.to(x0)
    return Fn.add_noise(x0, noise, denoiser.alphas_cumprod, t)


def blur_params(t: int, num_train_timesteps: int = 1000, size: int = 64) -> Tuple[int, float]:
    """A (kernel_size, sigma) for blurring noise of level ``t`` (SPEC A1.2 "chosen per t").

    More noise, wider blur: ``sigma = 0.5 + 3 t / T`` (1.25, 2, 2.75 at t = 250, 500, 750 of
    1000) and a kernel of about ``6 sigma``, odd, kept below the image size.
    """
    sigma = 0.5 + 3.0 * t / num_train_timesteps
    k = 2 * math.ceil(3 * sigma) + 1
    return min(k, 2 * ((size - 1) // 2) - 1 if size > 2 else 1), sigma


def blur_denoise(x_t: torch.Tensor, kernel_size: Optional[int] = None, sigma: Optional[float] = None,
                 t: Optional[int] = None, num_train_timesteps: int = 1000) -> torch.Tensor:
    """SPEC A1.2: classical denoising, a Gaussian blur of the noisy image.

    Give ``kernel_size`` and ``sigma``, or ``t`` for :func:`blur_params`.
    """
    if kernel_size is None or sigma is None:
        if t is None:
            raise ValueError("give kernel_size and sigma, or the noise level t to choose them")
        k, s = blur_params(t, num_train_timesteps, min(x_t.shape[-2:]))
        kernel_size = k if kernel_size is None else kernel_size
        sigma = s if sigma is None else sigma
    return Fn.gaussian_blur(x_t, kernel_size, sigma)


def one_step_denoise(denoiser: Denoiser, x_t: torch.Tensor, t: int, cond=None) -> torch.Tensor:
    """SPEC A1.3: ``x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``; canonical range.

    ``cond`` defaults to :func:`default_prompt` ("a high quality photo" for IF).
    """
    denoiser.check_sample(x_t, "x_t")
    cond = default_prompt(denoiser) if cond is None else cond
    x_t = x_t.to(denoiser.device)
    eps = denoiser(x_t, t, cond).eps
    return denoiser.from_model_range(Fn.predict_x0(x_t, eps, denoiser.alphas_cumprod, t))


# ----------------------------------------------------------------------------- A1.4 - A1.6
def iterative_denoise(denoiser: Denoiser, x_t: torch.Tensor, i_start: int = 10, timesteps=None, cond=None,
                      generator: Optional[torch.Generator] = None, callback: Callback = None, every: int = 5,
                      progress: bool = False, sampler: str = "ddpm", **step_kwargs) -> DenoiseResult:
    """SPEC A1.4: denoise ``x_t`` (at ``timesteps[i_start]``) step by step down the strided timesteps.

    ``x_t' = sqrt(abar_t') beta / (1 - abar_t) x0_hat + sqrt(alpha) (1 - abar_t') / (1 - abar_t) x_t + v``
    with ``alpha = abar_t / abar_t'``; ``v`` has the learned-range variance when the model
    predicts it, else the posterior ("fixed_small") variance. ``step_kwargs`` go to
    :func:`functional.ddpm_step` (``clip_x0``, ``dynamic_threshold``). No guidance.
    ``sampler``: ``"ddpm"`` (this update), ``"ddim"`` (takes ``eta``), ``"dpmpp_2m"`` or ``"unipc"``
    (deterministic solvers that need far fewer steps), ``"dpmpp_2m_sde"`` (few steps, stochastic,
    noise from ``generator``); see :mod:`diffaccel.samplers`.
    """
    denoiser.check_sample(x_t, "x_t")
    ts = _check_timesteps(denoiser, timesteps)
    i_start = _check_i_start(i_start, ts)
    cond = default_prompt(denoiser) if cond is None else cond
    return _run(denoiser, x_t.to(denoiser.device), ts, i_start, _plain(denoiser, cond), generator,
                callback, every=every, progress=progress, sampler=sampler, **step_kwargs)


def iterative_denoise_cfg(denoiser: Denoiser, x_t: torch.Tensor, i_start: int = 10, timesteps=None, cond=None,
                          guidance_scale: float = 7.0, generator: Optional[torch.Generator] = None,
                          callback: Callback = None, every: int = 5, progress: bool = False,
                          sampler: str = "ddpm", **step_kwargs) -> DenoiseResult:
    """SPEC A1.6: iterative denoising with classifier-free guidance.

    ``eps = eps_u + g (eps_c - eps_u)`` from ONE forward of ``[uncond, cond]``; the variance
    comes from the conditional pass. g = 7 for IF (use 5 for the MNIST models). ``sampler`` as
    :func:`iterative_denoise`.
    """
    _check_guidance(guidance_scale, optional=False)
    denoiser.check_sample(x_t, "x_t")
    ts = _check_timesteps(denoiser, timesteps)
    i_start = _check_i_start(i_start, ts)
    cond = default_prompt(denoiser) if cond is None else cond
    return _run(denoiser, x_t.to(denoiser.device), ts, i_start, _cfg(denoiser, cond, guidance_scale), generator,
                callback, every=every, progress=progress, sampler=sampler, **step_kwargs)


def _pure_noise(denoiser: Denoiser, num_samples: int, generator) -> torch.Tensor:
    num_samples = check_int("num_samples", num_samples, min=1)
    like = torch.empty((num_samples, *denoiser.sample_shape), device=denoiser.device)
    return _randn(like, generator)


def sample(denoiser: Denoiser, cond=None, num_samples: int = 1, timesteps=None,
           num_inference_steps: Optional[int] = None, guidance_scale: Optional[float] = None,
           generator: Optional[torch.Generator] = None, callback: Callback = None, every: int = 5,
           progress: bool = False, sampler: str = "ddpm", **step_kwargs) -> DenoiseResult:
    """SPEC A1.5 / A1.6 / A0: iterative denoising from pure noise (``i_start = 0``).

    ``guidance_scale=None`` samples without guidance (A1.5), a number uses CFG (A1.6).
    ``num_inference_steps`` uses diffusers' timesteps (as ``IFPipeline``, A0); otherwise
    ``timesteps`` (default: the strided 990..0). For IF's own behaviour pass
    ``dynamic_threshold=(0.95, 1.5)``. ``sampler`` as :func:`iterative_denoise`.
    """
    _check_guidance(guidance_scale)
    if num_inference_steps is not None:
        if timesteps is not None:
            raise ValueError("give timesteps or num_inference_steps, not both")
        timesteps = inference_timesteps(num_inference_steps, denoiser.num_train_timesteps)
    ts = _check_timesteps(denoiser, timesteps)
    x = _pure_noise(denoiser, num_samples, generator)
    cond = default_prompt(denoiser) if cond is None else cond
    return _run(denoiser, x, ts, 0, _model(denoiser, cond, guidance_scale), generator, callback, every=every,
                progress=progress, sampler=sampler, **step_kwargs)


# ----------------------------------------------------------------------------- A1.7
def img2img(denoiser: Denoiser, image: torch.Tensor, cond=None, i_start: int = 10, timesteps=None,
            guidance_scale: float = 7.0, generator: Optional[torch.Generator] = None, callback: Callback = None,
            progress: bool = False, sampler: str = "ddpm", **step_kwargs) -> torch.Tensor:
    """SPEC A1.7 / A1.7.3: noise a clean image to ``timesteps[i_start]``, denoise it with CFG toward ``cond``.

    ``sampler`` as :func:`iterative_denoise`: a 10-step ``"dpmpp_2m"`` / ``"unipc"`` edit starts from
    ``timesteps[i_start]`` of a 10-step schedule (e.g. ``strided_timesteps(stride=T // 10)``)."""
    _check_guidance(guidance_scale, optional=False)
    ts = _check_timesteps(denoiser, timesteps)
    i_start = _check_i_start(i_start, ts)
    x_t = forward(denoiser, image, ts[i_start], generator)
    return iterative_denoise_cfg(denoiser, x_t, i_start, ts, cond, guidance_scale, generator, callback,
                                 progress=progress, sampler=sampler, **step_kwargs).image


def sdedit(denoiser: Denoiser, image: torch.Tensor, i_start_list: Sequence[int] = (1, 3, 5, 7, 10, 20),
           cond=None, timesteps=None, guidance_scale: float = 7.0, generator: Optional[torch.Generator] = None,
           progress: bool = False, sampler: str = "ddpm", **step_kwargs) -> Dict[int, torch.Tensor]:
    """SPEC A1.7 / A1.7.1: the SDEdit sweep; ``{i_start: edited image}`` (canonical range); ``sampler``
    as :func:`img2img`."""
    _check_guidance(guidance_scale, optional=False)
    if isinstance(i_start_list, (str, bytes)) or not isinstance(i_start_list, Sequence) or not i_start_list:
        raise ArgumentTypeError(f"i_start_list must be a non-empty sequence of ints such as (1, 3, 5, 7, 10, 20), "
                                f"got {i_start_list!r}")
    ts = _check_timesteps(denoiser, timesteps)
    for i in i_start_list:
        _check_i_start(i, ts)
    return {i: img2img(denoiser, image, cond, i, ts, guidance_scale, generator, progress=progress, sampler=sampler,
                       **step_kwargs)
            for i in i_start_list}


def _check_mask(denoiser: Denoiser, mask, n: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor (1 = regenerate), got {type(mask).__name__}; see load_mask")
    c, h, w = denoiser.sample_shape
    m = mask
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[None]
    if m.ndim != 4 or tuple(m.shape[-2:]) != (h, w) or m.shape[0] not in (1, n) or m.shape[1] not in (1, c):
        raise ValueError(f"mask must be (H, W) = ({h}, {w}) or broadcast as (N or 1, 1 or {c}, {h}, {w}) "
                         f"for this model, got {tuple(mask.shape)}")
    return m.to(device=denoiser.device, dtype=torch.float32)


def inpaint(denoiser: Denoiser, image: torch.Tensor, mask: torch.Tensor, cond=None, i_start: int = 0,
            timesteps=None, guidance_scale: Optional[float] = 7.0, generator: Optional[torch.Generator] = None,
            callback: Callback = None, every: int = 5, progress: bool = False, sampler: str = "ddpm",
            **step_kwargs) -> DenoiseResult:
    """SPEC A1.7.2: after every step ``x_t = m x_t + (1 - m) forward(x_orig, t)``; m = 1 is regenerated.

    Starts from pure noise at ``timesteps[i_start]`` (``i_start > 0``: from the noised image).
    The callback's ``info["projection_noise"]`` is the noise the projection used. The projection
    is a hook the sampler runs after each update, so every ``sampler`` of :func:`iterative_denoise`
    inpaints (multistep solvers keep their history of x0 predictions across it).
    """
    _check_guidance(guidance_scale)
    x_orig = _check_clean(denoiser, image)
    m = _check_mask(denoiser, mask, x_orig.shape[0])
    ts = _check_timesteps(denoiser, timesteps)
    i_start = _check_i_start(i_start, ts)
    x = _randn(x_orig, generator) if i_start == 0 else forward(denoiser, image, ts[i_start], generator)
    abar = denoiser.alphas_cumprod

    def project(x_prev, t_prev, info):
        info["projection_noise"] = z = _randn(x_prev, generator)
        Fn.masked_project(x_prev, x_orig, m, z, abar, t_prev, out=x_prev)

    cond = default_prompt(denoiser) if cond is None else cond
    return _run(denoiser, x, ts, i_start, _model(denoiser, cond, guidance_scale), generator, callback,
                project=project, every=every, progress=progress, sampler=sampler, **step_kwargs)


# ----------------------------------------------------------------------------- A1.8 - A1.9
def _anagram_model(denoiser: Denoiser, conds: Sequence, views: Sequence[View],
                   guidance_scale: Optional[float]) -> ModelFn:
    """The anagram wrapper: every view of ``x_t`` (and, guided, the unconditional passes) in ONE
    forward, combined by :func:`views.combine_estimates` — noise estimates mapped back by the
    views' inverses, a learned variance by their spatial part only (the channel rule), averaged."""
    guided = guidance_scale is not None
    k = len(conds)
    blocks = ([denoiser.null_cond] * k if guided else []) + list(conds)
    enc = denoiser.batch_conds(blocks)

    def model(x, t):
        viewed = [v.view(x) for v in views]
        out = denoiser(torch.cat(viewed * (2 if guided else 1)), t, enc)
        eps = out.eps.chunk(len(blocks))
        var = None if out.variance is None else out.variance.chunk(len(blocks))[-k:]
        eps_c, var_c = combine_estimates(views, eps[-k:], var)
        if guided:
            return Guided(combine_estimates(views, eps[:k])[0], eps_c, guidance_scale, var_c)
        return Output(eps_c, var_c)
    return model


def visual_anagram(denoiser: Denoiser, conds: Sequence, views: Sequence = ("identity", "flip"),
                   num_samples: int = 1, timesteps=None, guidance_scale: Optional[float] = 7.0,
                   generator: Optional[torch.Generator] = None, callback: Callback = None, every: int = 5,
                   progress: bool = False, sampler: str = "ddpm", **step_kwargs) -> DenoiseResult:
    """SPEC A1.8 (and 3-/4-view illusions): ``eps = mean_i inverse_i(eps(view_i(x_t), cond_i))``.

    With two conditions and ``("identity", "flip")`` this is the course's
    ``(eps1 + flip(eps2(flip(x_t)))) / 2``. All views (and the unconditional passes, since CFG
    is linear the guided estimate is the mean of the per-view guided estimates) go through ONE
    forward per step. ``views`` are names (see :func:`views.get_view`) or :class:`View` objects.
    """
    _check_guidance(guidance_scale)
    if isinstance(conds, (str, int)) or len(conds) < 1:
        raise ValueError("conds must be a list with one condition per view")
    vs = [get_view(v) for v in views]
    if len(vs) != len(conds):
        raise ValueError(f"need one view per condition: {len(conds)} conds but {len(vs)} views")
    ts = _check_timesteps(denoiser, timesteps)
    x = _pure_noise(denoiser, num_samples, generator)
    for v in vs:  # fail early (e.g. a square-only view on a non-square model)
        v.view(x[:1])
    return _run(denoiser, x, ts, 0, _anagram_model(denoiser, conds, vs, guidance_scale), generator, callback,
                every=every, progress=progress, sampler=sampler, **step_kwargs)


def factorized(denoiser: Denoiser, conds: Sequence, factorization="high_low", num_samples: int = 1,
               timesteps=None, guidance_scale: Optional[float] = 7.0, generator: Optional[torch.Generator] = None,
               callback: Callback = None, every: int = 5, progress: bool = False, sampler: str = "ddpm",
               **step_kwargs) -> DenoiseResult:
    """Factorized diffusion: ``eps = factorization.combine([eps(x_t, cond_i)])`` (SPEC A1.9 and beyond).

    One forward per step over ``[uncond, cond_1, ..., cond_k]``: a factorization is linear and
    recombines k copies of one estimate into itself, so CFG of the combine equals the combine
    of the per-condition CFGs with a single unconditional pass. The variance is the mean of
    the conditional ones.
    """
    _check_guidance(guidance_scale)
    fac: Factorization = get_factorization(factorization)
    _check_components(fac, conds)
    ts = _check_timesteps(denoiser, timesteps)
    x = _pure_noise(denoiser, num_samples, generator)
    return _run(denoiser, x, ts, 0, _factorized_model(denoiser, conds, fac, guidance_scale), generator, callback,
                every=every, progress=progress, sampler=sampler, **step_kwargs)


def _check_components(fac: Factorization, conds) -> None:
    if isinstance(conds, (str, int)) or conds is None or len(conds) != fac.num_components:
        raise ArgumentError(f"conds: the {fac.name} factorization needs a list of {fac.num_components} conditions "
                            f"(one per component), got {conds!r}")


def _factorized_model(denoiser: Denoiser, conds: Sequence, fac: Factorization,
                      guidance_scale: Optional[float]) -> ModelFn:
    """The factorization wrapper: ``x_t`` unchanged under every condition (and, guided, one
    unconditional pass) in ONE forward; the noise estimates go through ``fac.combine``, the
    learned variance is the mean of the conditional ones."""
    guided = guidance_scale is not None
    k = len(conds)
    enc = denoiser.batch_conds(([denoiser.null_cond] if guided else []) + list(conds))

    def model(x_t, t):
        out = denoiser(torch.cat([x_t] * (k + guided)), t, enc)
        eps = out.eps.chunk(k + guided)
        var = None if out.variance is None else sum(out.variance.chunk(k + guided)[-k:]) / k
        eps_c = fac.combine(list(eps[-k:]))
        return Guided(eps[0], eps_c, guidance_scale, var) if guided else Output(eps_c, var)
    return model


def hybrid(denoiser: Denoiser, cond_low, cond_high, kernel_size: int = 33, sigma: float = 2.0,
           num_samples: int = 1, timesteps=None, guidance_scale: Optional[float] = 7.0,
           generator: Optional[torch.Generator] = None, callback: Callback = None, every: int = 5,
           progress: bool = False, sampler: str = "ddpm", **step_kwargs) -> DenoiseResult:
    """SPEC A1.9: ``eps = lowpass(eps_1) + highpass(eps_2)`` (``functional.hybrid_combine``), kernel 33, sigma 2.

    ``cond_low`` is seen from far away, ``cond_high`` up close.
    """
    return factorized(denoiser, [cond_low, cond_high], HighLow(kernel_size, sigma), num_samples, timesteps,
                      guidance_scale, generator, callback, every, progress, sampler, **step_kwargs)


# ----------------------------------------------------------------------------- A0 stage II
def upsample_stage2(denoiser, images: torch.Tensor, cond=None, num_inference_steps: int = 50,
                    noise_level: int = 250, guidance_scale: Optional[float] = 4.0,
                    generator: Optional[torch.Generator] = None, callback: Callback = None,
                    dynamic_threshold: Optional[Tuple[float, float]] = (0.95, 1.5), progress: bool = False,
                    sampler: str = "ddpm", views: Optional[Sequence] = None, factorization=None,
                    **step_kwargs) -> DenoiseResult:
    """SPEC A0: IF stage II — upsample stage-I images (canonical range) guided by ``cond``.

    As diffusers' ``IFSuperResolutionPipeline``: bilinear upscale to the stage-II size, noise
    it to ``noise_level`` with the image-noising schedule, and sample from pure noise with the
    UNet seeing ``cat([x_t, upscaled])``; defaults are the pipeline's (g = 4, 50 steps,
    noise level 250, dynamic thresholding 0.95 / 1.5). ``sampler`` as :func:`iterative_denoise`
    (``"ddim"`` has no thresholding: pass ``dynamic_threshold=None`` with it).

    Illusions carry on into stage II, as in the reference code of Geng et al. (Visual
    Anagrams, CVPR 2024; Factorized Diffusion, 2024):

    * ``views`` (names or :class:`View` objects) with ``cond`` one prompt per view: the anagram
      wrapper of :func:`visual_anagram`, each view seeing the whole 6-channel input (its view of
      ``x_t`` next to its view of the upscaled image; a 64-px permutation view acts on 4x4
      blocks at 256 px, the arrangement stage I made), combined with the channel rule.
    * ``factorization`` (a name or :class:`Factorization`, as given to :func:`factorized` for
      stage I) with ``cond`` one prompt per component: the model input is unchanged, the noise
      estimates are combined with the filters scaled by the upsampling factor
      ``f = H // h`` (:meth:`Factorization.scaled`; 4 for IF's 64 -> 256, kernel 33 -> 133,
      sigma 2 -> 8). The combine is our plain sum of components (SPEC A1.9).
    """
    if not hasattr(denoiser, "with_low_res"):
        raise TypeError("upsample_stage2 needs an IF stage-II denoiser (load_if_stage(..., stage=2))")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != denoiser.sample_shape[0]:
        raise ValueError(f"images must be [N, {denoiser.sample_shape[0]}, h, w] stage-I outputs, "
                         f"got {getattr(images, 'shape', type(images).__name__)}")
    if views is not None and factorization is not None:
        raise ArgumentError("give views (an anagram) or factorization, not both")
    _, h, w = denoiser.sample_shape
    vs = fac = None
    if views is not None:
        if isinstance(cond, (str, int)) or cond is None or isinstance(views, (str, View)):
            raise ArgumentError("views: give a list of views and cond as a list with one prompt per view, "
                                f"got views={views!r}, cond={cond!r}")
        vs = [get_view(v) for v in views]
        if len(vs) != len(cond):
            raise ArgumentError(f"need one view per prompt: {len(cond)} prompts in cond but {len(vs)} views")
    elif factorization is not None:
        factor = h // images.shape[-2]
        if factor < 1 or h % images.shape[-2]:
            raise ArgumentError(f"factorization: the stage-II size {h} must be a multiple of the images' "
                                f"{images.shape[-2]} (the filters scale by the upsampling factor)")
        fac = get_factorization(factorization).scaled(factor)
        _check_components(fac, cond)
    low = images.to(device=denoiser.device, dtype=torch.float32)
    up = F.interpolate(low, (h, w), mode="bilinear", align_corners=True)
    up = Fn.add_noise(up, _randn(up, generator), denoiser.noising_alphas_cumprod, int(noise_level))
    ts = inference_timesteps(num_inference_steps, denoiser.num_train_timesteps)
    x = _randn(up, generator)
    if vs is not None:
        # one low-res block per view, in the order the anagram wrapper stacks its views
        bound = denoiser.with_low_res(torch.cat([v.view(up) for v in vs]), noise_level)
        model = _anagram_model(bound, cond, vs, guidance_scale)
    else:
        bound = denoiser.with_low_res(up, noise_level)
        if fac is not None:
            model = _factorized_model(bound, cond, fac, guidance_scale)
        else:
            model = _model(bound, default_prompt(denoiser) if cond is None else cond, guidance_scale)
    return _run(bound, x, ts, 0, model, generator, callback, progress=progress,
                sampler=sampler, dynamic_threshold=dynamic_threshold, **step_kwargs)
