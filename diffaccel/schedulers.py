"""Drop-in replacements for diffusers' ``DDPMScheduler`` and ``DDIMScheduler`` (issue 4, SPEC B).

Same constructor, config fields and methods as diffusers 0.42.1, so::

    pipe.scheduler = diffaccel.schedulers.DDPMScheduler.from_config(pipe.scheduler.config)

works in any diffusers pipeline (IF stage I/II, img2img, inpainting) and gives the same images
for the same generator, to floating-point tolerance. What differs is how a step is computed:

* the math is :mod:`diffaccel.functional` (one fused kernel per step where the config allows:
  ``ddpm_step`` with the variance / thresholding / clipping options, ``ddim_step``), never a
  formula written here;
* everything that depends only on the schedule is prepared on the host in ``set_timesteps``
  (``abar`` in float32, a ``t -> t_prev`` table and an ``arange(T)`` to slice ``t`` from, all
  copied to the device once), so ``step`` issues no device-to-host copy or synchronisation and
  branches only on host values. A ``timestep`` given as a device tensor (what pipelines pass
  after ``set_timesteps(device=...)``) is used as a device index; the host never reads it.

Known, documented differences from diffusers:

* ``variance_type="fixed_large_log"``: diffusers takes ``sqrt(log(beta))`` (NaN) in ``step``;
  here it is the standard deviation ``sqrt(beta)`` it is meant to be, the same as ``fixed_large``.
* ``variance_type="learned"`` (the model predicts the variance itself) has no kernel: the step
  runs the fused mean and adds ``sqrt(predicted_variance) * noise`` as diffusers does.
* ``prediction_type`` ``"sample"`` / ``"v_prediction"`` are turned into ``eps`` first with the
  functional API (``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)`` is ``predict_x0`` on the
  table ``1 - abar``; ``eps = sqrt(abar) v + sqrt(1 - abar) x_t`` is ``add_noise(v, x_t)``), so
  they cost one extra pass and round differently where ``abar`` is close to 0 or 1.
* Coefficients are float32 whatever the image dtype (diffusers mixes in the image dtype).
* Noise is drawn exactly where diffusers draws it (same shape, dtype, device and generator
  calls), decided on the host from the step's position in the schedule. With a *device*
  ``timestep`` that position is the step counter (pipelines step through ``self.timesteps`` in
  order, after ``set_begin_index`` for img2img); the math itself always uses the given ``t``.
* ``step`` returns a new tensor each call (pipelines keep references to earlier samples); the
  zero-allocation loop is the functional API with ``out=`` (see ``benchmarks/bench_schedulers.py``).
* ``DDPMScheduler.step``'s ``pred_original_sample`` is computed on first access (attribute of
  the output, or index 1 / unpacking of the ``return_dict=False`` tuple): with dynamic
  thresholding it costs a second quantile pass, and pipelines such as IF only read
  ``prev_sample``. It is computed from the step's inputs, so read it before changing those in
  place. Set ``scheduler.compute_pred_original_sample = False`` to always get None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

try:
    import diffusers  # noqa: F401  (the base classes and output types below are diffusers')
except ModuleNotFoundError as e:
    raise ModuleNotFoundError('diffaccel.schedulers needs diffusers: pip install "diffaccel[diffusers]"',
                              name=e.name) from e
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_ddpm import (
    DDPMSchedulerOutput,
    betas_for_alpha_bar,
    rescale_zero_terminal_snr,
)
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from . import functional as F
from . import reference as ref
from .errors import ArgumentError

__all__ = ["DDPMScheduler", "DDIMScheduler", "DDPMSchedulerOutput", "DDIMSchedulerOutput"]

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_SPACINGS = ("linspace", "leading", "trailing")
#: diffusers' variance types -> the kernel's. The *_log variants give the same std.
_KERNEL_VARIANCE = {
    "fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
    "learned_range": "learned_range", "learned": None,
}


def _make_betas(cls_name: str, allowed: Tuple[str, ...], num_train_timesteps, beta_start, beta_end,
                beta_schedule, trained_betas, rescale_betas_zero_snr) -> torch.Tensor:
    """The betas exactly as diffusers builds them (its own helpers, bit for bit)."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule not in allowed:
        raise NotImplementedError(f"{beta_schedule} is not implemented for {cls_name} (choose one of {allowed})")
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(num_train_timesteps)
    elif beta_schedule == "laplace":
        betas = betas_for_alpha_bar(num_train_timesteps, alpha_transform_type="laplace")
    else:  # sigmoid
        betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def _spaced_timesteps(config, num_inference_steps: int) -> np.ndarray:
    """diffusers' ``timestep_spacing`` rules (Lin et al. 2023, table 2), as int64, descending."""
    T = config.num_train_timesteps
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    if not 1 <= num_inference_steps <= T:
        raise ValueError(
            f"`num_inference_steps`: {num_inference_steps} cannot be larger than `self.config.train_timesteps`: {T} "
            f"(and must be >= 1)")
    spacing = config.timestep_spacing
    if spacing == "linspace":
        return np.linspace(0, T - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = T // num_inference_steps
        ts = (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)
        return ts + config.steps_offset
    if spacing == "trailing":
        ratio = T / num_inference_steps
        return np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing must be one of {_SPACINGS}, got {spacing!r}")


class _Tables(NamedTuple):
    """Schedule tables on one device, built once so ``step`` only slices and gathers them."""

    abar: torch.Tensor         # float32 [T]
    one_minus_abar: torch.Tensor  # float32 [T] (for eps <-> x0 conversions via the functional API)
    t: torch.Tensor            # int64 [T]: arange, so ``t[k:k+1]`` is a device tensor holding k
    prev: torch.Tensor         # int64 [T]: t -> t_prev (-1 = final step, abar_prev = 1)
    abar_ext: torch.Tensor     # float32 [T + 1]: abar with abar[T] = 1, so the final step is an index
    prev_ext: torch.Tensor     # int64 [T]: ``prev`` with -1 -> T (for ops that take no -1, e.g. add_noise)


class _FusedScheduler(SchedulerMixin, ConfigMixin):
    """What both schedulers share: tables, timestep resolution, step counter, add_noise."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    def _init_common(self, betas: torch.Tensor) -> None:
        if self.config.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {_PREDICTION_TYPES}, got {self.config.prediction_type!r}")
        if self.config.timestep_spacing not in _SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {_SPACINGS}, got {self.config.timestep_spacing!r}")
        T = self.config.num_train_timesteps
        if betas.ndim != 1 or betas.numel() != T:
            raise ArgumentError(f"trained_betas must hold one beta per training timestep, num_train_timesteps = {T}; "
                                f"got shape {tuple(betas.shape)} (pass num_train_timesteps={betas.numel()} "
                                "with them, or other betas)")
        if not torch.isfinite(betas).all():
            raise ArgumentError("trained_betas must be finite numbers, got NaN or Inf")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.compute_pred_original_sample = True
        self._begin_index: Optional[int] = None
        self._step_index: Optional[int] = None
        self._device_tables: Dict[torch.device, _Tables] = {}

    # ------------------------------------------------------------------ schedule state
    def _set_schedule(self, timesteps: np.ndarray, prev_table: np.ndarray, device) -> None:
        """Install the host schedule and its ``t -> t_prev`` table; pre-build the device tables."""
        self._timesteps_host: List[int] = [int(t) for t in timesteps]
        self._index_of = {t: i for i, t in enumerate(self._timesteps_host)}
        self._prev_host = prev_table
        self._device_tables = {}
        self.timesteps = torch.from_numpy(np.ascontiguousarray(timesteps)).to(device)
        self._step_index = self._begin_index = None
        if device is not None:
            self._tables(torch.device(device))

    def _tables(self, device: torch.device) -> _Tables:
        if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" must share one entry
            device = torch.device("cuda", torch.cuda.current_device())
        tab = self._device_tables.get(device)
        if tab is None:  # once per device and schedule: the only host->device copies
            abar = self.alphas_cumprod.to(torch.float32)
            prev = torch.from_numpy(self._prev_host)
            tab = _Tables(abar.to(device), (1 - abar).to(device),
                          torch.arange(len(abar), dtype=torch.int64, device=device), prev.to(device),
                          torch.cat([abar, abar.new_ones(1)]).to(device),
                          torch.where(prev < 0, len(abar), prev).to(device))
            self._device_tables[device] = tab
        return tab

    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Where in ``self.timesteps`` the loop starts (img2img pipelines call this)."""
        self._begin_index = int(begin_index)
        self._step_index = int(begin_index)

    def _resolve(self, timestep, device: torch.device) -> Tuple[torch.Tensor, Optional[int], bool]:
        """``timestep`` -> (t as a device tensor [1], host value of t if known, whether it is exact).

        Host ints / CPU tensors are read on the host; a device tensor is only indexed on the
        device, and its host value is taken from the step counter (a guess: ``exact`` False).
        """
        tab = self._tables(device)
        T = self.config.num_train_timesteps
        if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
            if timestep.numel() != 1:
                raise ValueError(f"timestep must hold one value, got shape {tuple(timestep.shape)}")
            if timestep.dtype.is_floating_point:
                raise TypeError(f"timestep must be an integer tensor, got {timestep.dtype}")
            t = timestep.reshape(1).to(device=device, dtype=torch.int64)
            k = self._step_index if self._step_index is not None else 0
            t_host = self._timesteps_host[k] if k < len(self._timesteps_host) else None
            self._step_index = k + 1
            return t, t_host, False
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must hold one value, got shape {tuple(timestep.shape)}")
            timestep = timestep.item()  # CPU tensor: a host read, no device involved
        if isinstance(timestep, float) and timestep.is_integer():
            timestep = int(timestep)
        if isinstance(timestep, bool) or not isinstance(timestep, (int, np.integer)):
            raise TypeError(f"timestep must be an int or an integer tensor, got {type(timestep).__name__}")
        t_host = int(timestep)
        if not 0 <= t_host < T:
            raise ValueError(f"timestep must be in [0, {T - 1}], got {t_host}")
        i = self._index_of.get(t_host)
        self._step_index = None if i is None else i + 1
        return tab.t[t_host:t_host + 1], t_host, True

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, t_host: Optional[int], exact: bool) -> torch.Tensor:
        """``table[t]`` as a [1] device tensor: a view when t is known on the host, else a device gather."""
        return table[t_host:t_host + 1] if exact else torch.index_select(table, 0, t)

    def previous_timestep(self, timestep):
        """The step's target timestep (-1 = the final step), as diffusers computes it."""
        if isinstance(timestep, torch.Tensor):
            return torch.from_numpy(self._prev_host).to(timestep.device)[timestep.long()]
        return int(self._prev_host[int(timestep)])

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """DDPM/DDIM do not scale the model input."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------ forward process
    def _per_sample_call(self, fn, a: torch.Tensor, b: torch.Tensor, timesteps) -> torch.Tensor:
        """Run a per-sample functional op on any-rank tensors by viewing them as ``[N, M, 1, 1]``."""
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.as_tensor(timesteps)
        tab = self._tables(a.device)
        n = a.shape[0] if a.ndim else 1
        shape = a.shape
        a4 = a.reshape(n, -1, 1, 1)
        b4 = b.reshape(n, -1, 1, 1)
        out = fn(a4, b4, tab.abar, timesteps.to(device=a.device, dtype=torch.int64).reshape(-1))
        return out.reshape(shape)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Forward process (SPEC A1.1): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``, one fused pass."""
        return self._per_sample_call(F.add_noise, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``v = sqrt(abar_t) noise - sqrt(1 - abar_t) sample`` = ``add_noise(noise, -sample)``."""
        return self._per_sample_call(F.add_noise, noise, -sample, timesteps)

    # ------------------------------------------------------------------ step helpers
    def _to_eps(self, model_output, sample, t, tab: _Tables):
        """The model output as ``eps`` (the kernels' input), for any ``prediction_type``."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return model_output
        if kind == "sample":  # eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar): predict_x0 on 1 - abar
            return F.predict_x0(sample, model_output, tab.one_minus_abar, t)
        # v_prediction: eps = sqrt(abar) v + sqrt(1 - abar) x_t
        return F.add_noise(model_output, sample, tab.abar, t)

    def _bound_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding, else clipping, as configured (thresholding wins, as in diffusers)."""
        c = self.config
        if c.thresholding:
            return ref.dynamic_threshold_(x0.float(), c.dynamic_thresholding_ratio, c.sample_max_value).to(x0.dtype)
        if c.clip_sample:
            return x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        return x0

    def _bounds(self) -> dict:
        c = self.config
        if c.thresholding:
            return {"dynamic_threshold": (c.dynamic_thresholding_ratio, c.sample_max_value)}
        if c.clip_sample:
            return {"clip_x0": c.clip_sample_range}
        return {}

    def _pred_x0(self, model_output, eps, sample, t, tab: _Tables) -> Optional[torch.Tensor]:
        if not self.compute_pred_original_sample:
            return None
        x0 = model_output if self.config.prediction_type == "sample" else F.predict_x0(sample, eps, tab.abar, t)
        return self._bound_x0(x0)


_PENDING = object()


class _LazyX0:
    """Computes ``pred_original_sample`` once, on first access."""

    __slots__ = ("fn", "value")

    def __init__(self, fn):
        self.fn, self.value = fn, _PENDING

    def get(self):
        if self.value is _PENDING:
            self.value, self.fn = self.fn(), None
        return self.value


class _LazyStepTuple(tuple):
    """``(prev_sample, pred_original_sample)`` with the second item computed when first read."""

    def __new__(cls, prev_sample, lazy: _LazyX0):
        obj = super().__new__(cls, (prev_sample, None))
        obj._lazy = lazy
        return obj

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self)[i]
        return self._lazy.get() if i in (1, -1) else super().__getitem__(i)

    def __iter__(self):
        yield super().__getitem__(0)
        yield self._lazy.get()


@dataclass
class _LazyDDPMSchedulerOutput(DDPMSchedulerOutput):
    """``DDPMSchedulerOutput`` whose ``pred_original_sample`` is computed when first read."""

    def __getattribute__(self, name):
        if name == "pred_original_sample":
            lazy = object.__getattribute__(self, "__dict__").get("_lazy")
            return lazy.get() if lazy is not None else None
        return super().__getattribute__(name)


class DDPMScheduler(_FusedScheduler):
    """diffusers' ``DDPMScheduler`` (Ho et al. 2020) with the step as one fused kernel (SPEC A1.4).

    Same arguments and config as ``diffusers.DDPMScheduler`` 0.42.1. IF's stage I/II config
    (``squaredcos_cap_v2``, ``learned_range``, dynamic thresholding 0.95 / 1.5) runs as a single
    :func:`diffaccel.functional.ddpm_step` per step. See the module docstring for differences.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        if variance_type not in _KERNEL_VARIANCE:
            raise ValueError(f"variance_type must be one of {tuple(_KERNEL_VARIANCE)}, got {variance_type!r}")
        betas = _make_betas(type(self).__name__, ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid"),
                            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                            rescale_betas_zero_snr)
        self._init_common(betas)
        self.variance_type = variance_type
        self.custom_timesteps = False
        # before set_timesteps diffusers steps t -> t - 1
        self._set_schedule(np.arange(0, num_train_timesteps)[::-1].copy(), np.arange(num_train_timesteps) - 1, None)

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      timesteps: Optional[List[int]] = None) -> None:
        """Choose the inference timesteps (``timestep_spacing`` rules or custom) and build the tables."""
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            ts = np.asarray(list(timesteps), dtype=np.int64)
            if ts.ndim != 1 or ts.size == 0:
                raise ValueError("`timesteps` must be a non-empty list of ints")
            if np.any(ts[1:] >= ts[:-1]):
                raise ValueError("`custom_timesteps` must be in descending order.")
            if ts[0] >= self.config.num_train_timesteps or ts[-1] < 0:
                raise ValueError(
                    f"`timesteps` must start before `self.config.train_timesteps`: {self.config.num_train_timesteps} "
                    "and be >= 0.")
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps or timesteps")
            ts = _spaced_timesteps(self.config, num_inference_steps)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
        # diffusers: the next entry of the schedule, -1 after the last one; t - 1 off the schedule
        table = np.arange(self.config.num_train_timesteps, dtype=np.int64) - 1
        table[ts] = np.append(ts[1:], -1)
        self._set_schedule(ts, table, device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        """One reverse step ``x_t -> x_{t_prev}`` (SPEC A1.4) in one fused kernel.

        ``model_output`` has ``2 C`` channels for the learned variance types (eps, then the
        variance channels, as diffusers splits them). Returns ``DDPMSchedulerOutput(prev_sample,
        pred_original_sample)`` or the tuple.
        """
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise TypeError("model_output and sample must be torch.Tensors")
        if model_output.ndim < 2 or sample.ndim < 2:
            raise ValueError(f"model_output and sample must be NCHW, got {tuple(model_output.shape)}, {tuple(sample.shape)}")
        vt = self.variance_type
        c = sample.shape[1]
        predicted_variance = None
        if vt in ("learned", "learned_range"):
            if model_output.shape[1] != 2 * c:
                raise ValueError(
                    f"variance_type={vt!r} needs model_output with 2 x {c} channels (eps, variance), "
                    f"got {model_output.shape[1]}")
            model_output, predicted_variance = torch.split(model_output, c, dim=1)
        t, t_host, exact = self._resolve(timestep, sample.device)
        tab = self._tables(sample.device)
        t_prev = self._at(tab.prev, t, t_host, exact)
        eps = self._to_eps(model_output, sample, t, tab)

        noise = None
        if t_host is None or t_host > 0:  # diffusers draws only where t > 0; the kernel masks t == 0
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
        kernel_vt = _KERNEL_VARIANCE[vt]
        if kernel_vt is None:  # "learned": std = sqrt(predicted variance), no kernel for it
            prev_sample = F.ddpm_step(sample, eps, tab.abar, t, t_prev, **self._bounds())
            if noise is not None:
                gate = (t > 0).to(sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
                prev_sample = prev_sample + gate * predicted_variance.sqrt() * noise
        else:
            prev_sample = F.ddpm_step(
                sample, eps, tab.abar, t, t_prev, noise=noise, variance=kernel_vt,
                predicted_variance=predicted_variance if kernel_vt == "learned_range" else None,
                **self._bounds())
        lazy = _LazyX0(lambda: self._pred_x0(model_output, eps, sample, t, tab))
        if not return_dict:
            return _LazyStepTuple(prev_sample, lazy)
        out = _LazyDDPMSchedulerOutput(prev_sample=prev_sample)
        out.__dict__["_lazy"] = lazy
        return out


class DDIMScheduler(_FusedScheduler):
    """diffusers' ``DDIMScheduler`` (Song et al. 2020, eq. 12) on :func:`diffaccel.functional.ddim_step`.

    With clipping or thresholding, diffusers bounds ``x0_hat`` but keeps the model's ``eps``
    in the direction term. With ``eta = 0`` that step is the forward process at ``t_prev``,
    ``add_noise(x0_bounded, eps, t_prev)``; with ``eta > 0`` it is ``ddim_step`` applied to the
    re-noised bounded estimate ``add_noise(x0_bounded, eps, t)`` (exact in real arithmetic, but
    it re-derives x0 from it, losing digits where ``abar_t`` ~ 0). ``use_clipped_model_output``
    re-derives eps from the bounded x0 first, as diffusers does.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        betas = _make_betas(type(self).__name__, ("linear", "scaled_linear", "squaredcos_cap_v2"),
                            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                            rescale_betas_zero_snr)
        self._init_common(betas)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self._set_schedule(np.arange(0, num_train_timesteps)[::-1].copy(), np.arange(num_train_timesteps) - 1, None)

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None) -> None:
        """Choose the inference timesteps and build the tables.

        diffusers' DDIM always steps to ``t - T // num_inference_steps`` whatever the spacing;
        below 0 it lands on ``final_alpha_cumprod`` (1, or ``abar[0]`` without
        ``set_alpha_to_one``: table entry -1 or 0).
        """
        ts = _spaced_timesteps(self.config, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        T = self.config.num_train_timesteps
        table = np.arange(T, dtype=np.int64) - T // num_inference_steps
        table[table < 0] = -1 if self.config.set_alpha_to_one else 0
        self._set_schedule(ts, table, device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: Optional[torch.Generator] = None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True):
        """One DDIM step ``x_t -> x_{t - T/n}`` with stochasticity ``eta``."""
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler")
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise TypeError("model_output and sample must be torch.Tensors")
        t, t_host, exact = self._resolve(timestep, sample.device)
        tab = self._tables(sample.device)
        t_prev = self._at(tab.prev, t, t_host, exact)
        eps = self._to_eps(model_output, sample, t, tab)
        x0 = None
        bounded = self.config.thresholding or self.config.clip_sample
        if bounded or self.compute_pred_original_sample:
            x0 = model_output if self.config.prediction_type == "sample" else F.predict_x0(sample, eps, tab.abar, t)
            x0 = self._bound_x0(x0)
        if bounded and use_clipped_model_output:  # eps re-derived from the bounded x0, as diffusers
            eps = F.predict_x0(sample, x0, tab.one_minus_abar, t)
        if bounded and eta == 0:
            # eta = 0: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps is the forward process
            # at t_prev; taking x0 directly avoids re-deriving it from x_t where abar_t ~ 0.
            prev_sample = F.add_noise(x0, eps, tab.abar_ext, self._at(tab.prev_ext, t, t_host, exact))
            if not self.compute_pred_original_sample:
                x0 = None
            return (prev_sample, x0) if not return_dict else DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
        x_in = F.add_noise(x0, eps, tab.abar, t) if bounded else sample
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError(
                    "Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                    " `variance_noise` stays `None`.")
            noise = variance_noise if variance_noise is not None else randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        prev_sample = F.ddim_step(x_in, eps, tab.abar, t, t_prev, eta=float(eta), noise=noise)
        if not self.compute_pred_original_sample:
            x0 = None
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
