"""Drop-in replacements for diffusers' ``DDPMScheduler``, ``DDIMScheduler``,
``DPMSolverMultistepScheduler`` and ``UniPCMultistepScheduler`` (SPEC A0 / A1.4-A1.7: the
samplers of diffusers' IF pipelines).

Same constructor, config fields and methods as diffusers 0.42.1, so::

    pipe.scheduler = diffaccel.schedulers.DDPMScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = diffaccel.schedulers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

works in any diffusers pipeline (IF stage I/II, img2img, inpainting) and gives the same images
for the same generator, to floating-point tolerance. Every schedule table (betas, ``abar``,
timestep grids, sigma spacings) comes from :mod:`diffaccel.schedules`. What differs is how a
step is computed:

* the math is :mod:`diffaccel.functional` (one fused kernel per step where the config allows:
  ``ddpm_step`` with the variance / thresholding / clipping options, ``ddim_step``,
  ``dpmpp_2m_step`` / ``dpmpp_2m_sde_step``, ``unipc_step``). Configs no kernel takes (solver order
  3, ``sde-dpmsolver`` and the other noise-prediction DPM-Solver variants, UniPC "bh1", Karras /
  Lu / exponential / beta sigma spacings, whose sigmas are not ``abar`` at integer timesteps) step
  on a general path in plain torch: the solver's update as per-step coefficients computed on the
  host in float64;
* everything that depends only on the schedule is prepared on the host in ``set_timesteps``
  (``abar`` in float32, a ``t -> t_prev`` table and an ``arange(T)`` to slice ``t`` from, all
  copied to the device once), so ``step`` issues no device-to-host copy or synchronisation and
  branches only on host values. A ``timestep`` given as a device tensor (what pipelines pass
  after ``set_timesteps(device=...)``) is used as a device index; the host never reads it
  (the multistep solvers, like diffusers', read it once at the first step unless
  ``set_begin_index`` was called, and then follow their step counter).

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
* DPM-Solver / UniPC with ``variance_type`` "learned" / "learned_range" split the model output
  at the sample's channel count (diffusers keeps the first 3 channels whatever the model), and
  diffaccel's UniPC accepts a learned-variance output (diffusers' cannot step one).
* ``DDPMScheduler`` bounds x0 on the host (then steps with the eps re-derived from it) for the
  bounds diffusers accepts but the kernels do not take: ``sample_max_value < 1``,
  ``clip_sample_range <= 0``, ``dynamic_thresholding_ratio = 0``.
* ``rescale_betas_zero_snr=True`` (DDPM / DDIM): the step from ``abar_t = 0`` (the first one with
  "trailing" spacing) takes x0 from a ``v_prediction`` / ``sample`` output directly and steps as
  diffusers does; with ``prediction_type="epsilon"`` it raises (eps says nothing about x0 at zero
  SNR: diffusers returns NaN there, or the signs of ``x_t - eps`` when clipping).
* Flow-matching options of the multistep solvers (``use_flow_sigmas``, ``flow_prediction``,
  dynamic shifting) raise ``NotImplementedError``: use diffusers' classes for flow models.
* ``DDPMScheduler.step``'s ``pred_original_sample`` is computed on first access (attribute of
  the output, or index 1 / unpacking of the ``return_dict=False`` tuple): with dynamic
  thresholding it costs a second quantile pass, and pipelines such as IF only read
  ``prev_sample``. It is computed from the step's inputs, so read it before changing those in
  place. Set ``scheduler.compute_pred_original_sample = False`` to always get None.
"""
from __future__ import annotations

import math
import warnings
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
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from . import functional as F
from . import reference as ref
from . import schedules
from .errors import ArgumentError

__all__ = ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
           "DDPMSchedulerOutput", "DDIMSchedulerOutput", "SchedulerOutput"]

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_SPACINGS = schedules.TIMESTEP_SPACINGS
#: the beta schedules diffusers' DDIM / DPM-Solver / UniPC accept (DDPM takes all of them)
_SOLVER_BETAS = ("linear", "scaled_linear", "squaredcos_cap_v2")
#: diffusers' variance types -> the kernel's. The *_log variants give the same std.
_KERNEL_VARIANCE = {
    "fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
    "learned_range": "learned_range", "learned": None,
}


def _is_int(value) -> bool:
    """A Python / numpy integer, not a bool (what a step count or a host timestep must be)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class _DropInScheduler(SchedulerMixin, ConfigMixin):
    """What all four drop-ins share: the config checks, diffusers' beta / alpha tables, the step
    counter, the per-device table cache, the argument checks of ``set_timesteps`` / ``step``,
    dynamic thresholding, and the unscaled model input.

    A subclass calls :meth:`_check_config` and :meth:`_init_tables` from its ``__init__`` and
    builds what ``step`` needs on a device in :meth:`_build_tables` (read through :meth:`_tables`).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    # ------------------------------------------------------------------ config and tables
    def _check_config(self) -> None:
        """The config values every drop-in checks: ``prediction_type`` and ``timestep_spacing``."""
        c = self.config
        if c.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {_PREDICTION_TYPES}, got {c.prediction_type!r}")
        if c.timestep_spacing not in _SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {_SPACINGS}, got {c.timestep_spacing!r}")

    def _config_betas(self, allowed: Tuple[str, ...] = schedules.BETA_SCHEDULES) -> torch.Tensor:
        """diffusers' betas for this config (``allowed``: the beta schedules this class takes)."""
        c = self.config
        return schedules.diffusers_betas(c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end,
                                         c.trained_betas, c.rescale_betas_zero_snr, allowed=allowed,
                                         owner=type(self).__name__)

    def _init_tables(self, betas: torch.Tensor) -> None:
        """diffusers' public tables and the state before ``set_timesteps``."""
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = schedules.alphas_cumprod(betas)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self._begin_index: Optional[int] = None
        self._step_index: Optional[int] = None
        self._device_tables: Dict[torch.device, object] = {}

    def _build_tables(self, device: torch.device):
        """What ``step`` reads on ``device``, built from the host schedule (one host->device copy)."""
        raise NotImplementedError

    def _tables(self, device: torch.device):
        """:meth:`_build_tables` for ``device``, once per device (and schedule, where ``set_timesteps``
        clears ``_device_tables``)."""
        if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" must share one entry
            device = torch.device("cuda", torch.cuda.current_device())
        tab = self._device_tables.get(device)
        if tab is None:
            tab = self._device_tables[device] = self._build_tables(device)
        return tab

    def _spaced_timesteps(self, num_inference_steps: int, **grid) -> np.ndarray:
        """The config's ``timestep_spacing`` grid (``grid``: the keywords of :func:`schedules.spaced_timesteps`)."""
        c = self.config
        return schedules.spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, num_inference_steps,
                                          c.steps_offset, **grid)

    # ------------------------------------------------------------------ step counter
    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Where in ``self.timesteps`` the loop starts (img2img pipelines call this)."""
        self._begin_index = int(begin_index)

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """These schedulers do not scale the model input."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------ argument checks
    @staticmethod
    def _check_steps_or_timesteps(num_inference_steps, timesteps) -> None:
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")

    def _check_scheduled(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler")

    @staticmethod
    def _check_step_tensors(model_output, sample) -> None:
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise TypeError("model_output and sample must be torch.Tensors")

    # ------------------------------------------------------------------ dynamic thresholding
    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding of x0 (Saharia et al. 2022) with the config's ratio and bound, on the host path."""
        c = self.config
        return ref.dynamic_threshold_(x0.float(), c.dynamic_thresholding_ratio, c.sample_max_value).to(x0.dtype)

    def _fused_threshold(self) -> Optional[dict]:
        """The fused ops' ``dynamic_threshold`` argument for the config's thresholding, or None where
        they cannot take it (diffusers accepts more: ``sample_max_value < 1`` makes the bound that
        value for every sample; a ratio of 0)."""
        c = self.config
        if 0 < c.dynamic_thresholding_ratio <= 1 and c.sample_max_value >= 1:
            return {"dynamic_threshold": (c.dynamic_thresholding_ratio, c.sample_max_value)}
        return None


class _Tables(NamedTuple):
    """Schedule tables on one device, built once so ``step`` only slices and gathers them."""

    abar: torch.Tensor         # float32 [T]
    one_minus_abar: torch.Tensor  # float32 [T] (for eps <-> x0 conversions via the functional API)
    t: torch.Tensor            # int64 [T]: arange, so ``t[k:k+1]`` is a device tensor holding k
    prev: torch.Tensor         # int64 [T]: t -> t_prev (-1 = final step, abar_prev = 1)
    abar_ext: torch.Tensor     # float32 [T + 1]: abar with abar[T] = 1, so the final step is an index
    prev_ext: torch.Tensor     # int64 [T]: ``prev`` with -1 -> T (for ops that take no -1, e.g. add_noise)


class _FusedScheduler(_DropInScheduler):
    """What DDPM and DDIM share: the ``t -> t_prev`` schedule and its device tables, timestep
    resolution, add_noise and the model-output conversions of the fused step."""

    def _init_common(self, betas: torch.Tensor) -> None:
        self._check_config()
        T = self.config.num_train_timesteps
        if betas.ndim != 1 or betas.numel() != T:
            raise ArgumentError(f"trained_betas must hold one beta per training timestep, num_train_timesteps = {T}; "
                                f"got shape {tuple(betas.shape)} (pass num_train_timesteps={betas.numel()} "
                                "with them, or other betas)")
        if not torch.isfinite(betas).all():
            raise ArgumentError("trained_betas must be finite numbers, got NaN or Inf")
        self._init_tables(betas)
        # Zero-terminal-SNR schedules (rescale_betas_zero_snr) end at abar = 0, where no eps-form op
        # applies (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)): the steps from there take x0 from
        # the model output directly, as diffusers does (host set: no device read per step).
        self._zero_snr = {int(i) for i in (self.alphas_cumprod.to(torch.float32) == 0).nonzero().reshape(-1)}
        self.one = torch.tensor(1.0)
        self.compute_pred_original_sample = True
        # before set_timesteps diffusers steps t -> t - 1
        self._set_schedule(np.arange(0, T)[::-1].copy(), np.arange(T) - 1, None)

    # ------------------------------------------------------------------ schedule state
    def _inference_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """DDPM/DDIM's timestep grid for ``num_inference_steps`` (checked), descending int64."""
        T = self.config.num_train_timesteps
        if not _is_int(num_inference_steps):
            raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"`num_inference_steps`: {num_inference_steps} cannot be larger than "
                             f"`self.config.train_timesteps`: {T} (and must be >= 1)")
        return self._spaced_timesteps(num_inference_steps)

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

    def _build_tables(self, device: torch.device) -> _Tables:
        abar = self.alphas_cumprod.to(torch.float32)
        prev = torch.from_numpy(self._prev_host)
        return _Tables(abar.to(device), (1 - abar).to(device),
                       torch.arange(len(abar), dtype=torch.int64, device=device), prev.to(device),
                       torch.cat([abar, abar.new_ones(1)]).to(device),
                       torch.where(prev < 0, len(abar), prev).to(device))

    def _abar_pair(self, t, prev_t, final_abar: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(abar[t], abar[prev_t])`` from the float32 table; a negative ``prev_t`` (past the final step)
        is ``final_abar``."""
        return self.alphas_cumprod[t], self.alphas_cumprod[prev_t] if prev_t >= 0 else final_abar

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Where in ``self.timesteps`` the loop starts (img2img pipelines call this)."""
        super().set_begin_index(begin_index)
        self._step_index = self._begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """DDPM/DDIM do not scale the model input (diffusers' signature for these two)."""
        return super().scale_model_input(sample, timestep)

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
        if not _is_int(timestep):
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

    # ------------------------------------------------------------------ forward process
    def _per_sample_call(self, fn, a: torch.Tensor, b: torch.Tensor, timesteps) -> torch.Tensor:
        """Run a per-sample functional op on any-rank tensors by viewing them as ``[N, M, 1, 1]``."""
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.as_tensor(timesteps)
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            # diffusers indexes alphas_cumprod with them (an IndexError for floats): never truncate 5.7 to 5
            raise TypeError(f"timesteps must be integers (an int, a list of ints or an integer tensor), "
                            f"got {timesteps.dtype}")
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
            return self._threshold(x0)
        if c.clip_sample:
            return x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        return x0

    def _fused_bounds(self) -> Optional[dict]:
        """The fused kernels' bound arguments for the configured bound, or None where they cannot take
        it (diffusers accepts more: see :meth:`_fused_threshold`; ``clip_sample_range <= 0`` clamps
        everything to it); those bound x0 on the host, see ``_bounded_eps``."""
        c = self.config
        if c.thresholding:
            return self._fused_threshold()
        if c.clip_sample:
            return {"clip_x0": c.clip_sample_range} if c.clip_sample_range > 0 else None
        return {}

    def _bounded_eps(self, sample, eps, t, tab: "_Tables") -> torch.Tensor:
        """For bounds the kernels do not take: ``eps`` re-derived from the bounded x0, so the
        unbounded step of it is the bounded step (``eps' = (x_t - sqrt(abar) x0_b) / sqrt(1 - abar)``)."""
        x0 = self._bound_x0(F.predict_x0(sample, eps, tab.abar, t))
        return F.predict_x0(sample, x0, tab.one_minus_abar, t)

    def _x0(self, model_output, eps, sample, t, tab: _Tables) -> torch.Tensor:
        """The model's x0, as diffusers computes it: ``v``-prediction ``sqrt(abar) x_t - sqrt(1 - abar) v``
        (``add_noise(x_t, -v)``: no division, finite where abar = 0), ``sample`` the output itself,
        ``epsilon`` ``predict_x0`` (refused where abar = 0: eps says nothing about x0 there)."""
        kind = self.config.prediction_type
        if kind == "sample":
            return model_output
        if kind == "v_prediction":
            return F.add_noise(sample, -model_output, tab.abar, t)
        return F.predict_x0(sample, eps, tab.abar, t)

    def _check_zero_snr(self, t_host: Optional[int]) -> bool:
        """Whether the step is from ``abar_t = 0`` (decided on the host, as every branch of ``step``);
        refused for eps prediction there, also for a device timestep (whose ops are not checked)."""
        if t_host is None or t_host not in self._zero_snr:
            return False
        if self.config.prediction_type == "epsilon":
            raise ArgumentError(
                f"timestep must index alphas_cumprod above 0 with prediction_type='epsilon': alphas_cumprod[{t_host}] "
                "= 0 (rescale_betas_zero_snr: zero terminal SNR), where eps says nothing about x0 (diffusers "
                f"returns NaN); use a v_prediction or sample model there, or start below timestep {t_host}")
        return True

    def _pred_x0(self, model_output, eps, sample, t, tab: _Tables) -> Optional[torch.Tensor]:
        if not self.compute_pred_original_sample:
            return None
        return self._bound_x0(self._x0(model_output, eps, sample, t, tab))

    def _noise_like(self, model_output: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """The step's noise, drawn as diffusers draws it (the model output's shape, dtype and device)."""
        return randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                            dtype=model_output.dtype)


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


# Why lazy: with dynamic thresholding, x0 needs its own per-sample quantile pass, as costly as
# the fused step itself; diffusers' pipelines read only prev_sample. Computing x0 eagerly makes
# the step about as slow as diffusers' (bench_schedulers.py: 0.9-1.1x instead of 6-11x), so
# pred_original_sample is computed on first read, in the tuple form and in the dataclass form.
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
        if variance_type not in _KERNEL_VARIANCE:  # diffusers steps any other string as fixed_small
            warnings.warn(f"variance_type {variance_type!r} is not one of {tuple(_KERNEL_VARIANCE)}: "
                          "stepping with the 'fixed_small' variance, as diffusers does", UserWarning, stacklevel=2)
        self._init_common(self._config_betas())
        self.variance_type = variance_type
        self.custom_timesteps = False

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      timesteps: Optional[List[int]] = None) -> None:
        """Choose the inference timesteps (``timestep_spacing`` rules or custom) and build the tables."""
        self._check_steps_or_timesteps(num_inference_steps, timesteps)
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
            ts = self._inference_timesteps(num_inference_steps)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
        # diffusers: the next entry of the schedule, -1 after the last one; t - 1 off the schedule
        table = np.arange(self.config.num_train_timesteps, dtype=np.int64) - 1
        table[ts] = np.append(ts[1:], -1)
        self._set_schedule(ts, table, device)

    def _get_variance(self, t, predicted_variance: Optional[torch.Tensor] = None,
                      variance_type: Optional[str] = None) -> torch.Tensor:
        """diffusers' per-step variance helper (its LEDITS++ and CycleDiffusion pipelines call it),
        with diffusers' return conventions per ``variance_type`` (default: the config's):
        the variance for ``fixed_small`` / ``fixed_large`` (and any unknown type: ``fixed_small``),
        the std for ``fixed_small_log``, ``log(beta)`` for ``fixed_large_log``, the log-variance
        for ``learned_range`` and ``predicted_variance`` itself for ``learned``. float32 tables."""
        abar_t, abar_prev = self._abar_pair(t, self.previous_timestep(t), self.one)
        beta = 1 - abar_t / abar_prev
        small = torch.clamp(schedules.posterior_variance(abar_t, abar_prev), min=1e-20)  # logs are taken below
        kind = self.config.variance_type if variance_type is None else variance_type
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(small))
        if kind == "fixed_large":
            return beta
        if kind == "fixed_large_log":
            return torch.log(beta)
        if kind == "learned":
            return predicted_variance
        if kind == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(beta) + (1 - frac) * torch.log(small)
        return small

    def _step_from_zero_snr(self, model_output, eps, sample, t, t_host: int, tab: _Tables, kernel_vt: Optional[str],
                            predicted_variance, noise) -> torch.Tensor:
        """The step from ``abar_t = 0`` (the first step of a zero-terminal-SNR schedule), as diffusers
        computes it: there ``alpha_t = 0`` and ``beta_t = 1``, so the posterior mean is
        ``sqrt(abar_prev) x0`` (x0 from the model output without dividing by ``sqrt(abar_t)``: v or
        sample prediction; eps prediction is refused, where diffusers returns NaN) and the std is
        the configured variance type's (as the kernel's: ``*_log`` types give the same std)."""
        x0 = self._bound_x0(self._x0(model_output, eps, sample, t, tab))
        prev = int(self._prev_host[t_host])
        abar_prev = float(self.alphas_cumprod[prev].to(torch.float32)) if prev >= 0 else 1.0
        out = x0 * math.sqrt(abar_prev)
        if noise is None:
            return out
        if kernel_vt is None:  # "learned": the model's variance
            std = predicted_variance.sqrt()
        elif kernel_vt == "learned_range":
            std = torch.exp(0.5 * self._get_variance(t_host, predicted_variance, "learned_range"))
        else:
            std = self._get_variance(t_host, None, kernel_vt).sqrt()
        return out + (std * noise).to(out.dtype)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        """One reverse step ``x_t -> x_{t_prev}`` (SPEC A1.4) in one fused kernel.

        ``model_output`` has ``2 C`` channels for the learned variance types (eps, then the
        variance channels, as diffusers splits them). Returns ``DDPMSchedulerOutput(prev_sample,
        pred_original_sample)`` or the tuple.
        """
        self._check_step_tensors(model_output, sample)
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
            noise = self._noise_like(model_output, generator)
        kernel_vt = _KERNEL_VARIANCE.get(vt, "fixed_small")
        if self._check_zero_snr(t_host):  # abar_t = 0: no eps-form kernel applies
            prev_sample = self._step_from_zero_snr(model_output, eps, sample, t, t_host, tab, kernel_vt,
                                                   predicted_variance, noise)
        else:
            step_eps, bounds = eps, self._fused_bounds()
            if bounds is None:
                step_eps, bounds = self._bounded_eps(sample, eps, t, tab), {}
            if kernel_vt is None:  # "learned": std = sqrt(predicted variance), no kernel for it
                prev_sample = F.ddpm_step(sample, step_eps, tab.abar, t, t_prev, **bounds)
                if noise is not None:
                    gate = (t > 0).to(sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
                    prev_sample = prev_sample + gate * predicted_variance.sqrt() * noise
            else:
                prev_sample = F.ddpm_step(
                    sample, step_eps, tab.abar, t, t_prev, noise=noise, variance=kernel_vt,
                    predicted_variance=predicted_variance if kernel_vt == "learned_range" else None,
                    **bounds)
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
        self._init_common(self._config_betas(_SOLVER_BETAS))
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None) -> None:
        """Choose the inference timesteps and build the tables.

        diffusers' DDIM always steps to ``t - T // num_inference_steps`` whatever the spacing;
        below 0 it lands on ``final_alpha_cumprod`` (1, or ``abar[0]`` without
        ``set_alpha_to_one``: table entry -1 or 0).
        """
        ts = self._inference_timesteps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        T = self.config.num_train_timesteps
        table = np.arange(T, dtype=np.int64) - T // num_inference_steps
        table[table < 0] = -1 if self.config.set_alpha_to_one else 0
        self._set_schedule(ts, table, device)

    def _get_variance(self, timestep, prev_timestep) -> torch.Tensor:
        """diffusers' DDIM variance helper (LEDITS++ / CycleDiffusion call it): the posterior
        variance of the step ``timestep -> prev_timestep`` (eq. 16 of Song et al. 2020 at eta = 1);
        a negative ``prev_timestep`` lands on ``final_alpha_cumprod``."""
        abar_t, abar_prev = self._abar_pair(timestep, prev_timestep, self.final_alpha_cumprod)
        return schedules.posterior_variance(abar_t, abar_prev)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: Optional[torch.Generator] = None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True):
        """One DDIM step ``x_t -> x_{t - T/n}`` with stochasticity ``eta``."""
        self._check_scheduled()
        self._check_step_tensors(model_output, sample)
        t, t_host, exact = self._resolve(timestep, sample.device)
        tab = self._tables(sample.device)
        t_prev = self._at(tab.prev, t, t_host, exact)
        eps = self._to_eps(model_output, sample, t, tab)
        bounded = self.config.thresholding or self.config.clip_sample
        # Two steps ddim_step does not take (t_host: the host's t, or the step counter's guess for a
        # device timestep), both computed from x0 as diffusers does:
        # * t -> t: without set_alpha_to_one diffusers' last step goes from t = 0 to
        #   final_alpha_cumprod = abar[0]. The functional ops require t_prev < t (one rule for ints
        #   and tensors: t -> t is no step, and the solvers' formulas divide by its h = 0); its
        #   update, sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps (the variance is 0), is taken here.
        # * from abar_t = 0 (zero-terminal-SNR schedules): x0 from the model output without dividing
        #   by sqrt(abar_t) (v / sample prediction; eps prediction is refused there, where
        #   diffusers returns NaN), and the variance is eta^2 (1 - abar_prev).
        to_self = t_host is not None and int(self._prev_host[t_host]) == t_host
        snr0 = self._check_zero_snr(t_host)
        x0 = None
        if bounded or self.compute_pred_original_sample or to_self or snr0:
            x0 = self._bound_x0(self._x0(model_output, eps, sample, t, tab))
        if bounded and use_clipped_model_output:  # eps re-derived from the bounded x0, as diffusers
            eps = F.predict_x0(sample, x0, tab.one_minus_abar, t)
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError(
                    "Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                    " `variance_noise` stays `None`.")
            noise = variance_noise if variance_noise is not None else self._noise_like(model_output, generator)
        if (bounded and eta == 0) or to_self or snr0:
            # x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps + std noise is the forward
            # process at t_prev of x0 and a unit-variance mix of eps and noise: std^2 = 0 (eta = 0 or
            # t -> t), or std^2 = eta^2 (1 - abar_prev) (abar_t = 0). Taking x0 directly also avoids
            # re-deriving it from x_t where abar_t ~ 0.
            mix = eps
            if snr0 and not to_self and noise is not None:
                mix = math.sqrt(max(1.0 - eta * eta, 0.0)) * eps + eta * noise
            prev_sample = F.add_noise(x0, mix, tab.abar_ext, self._at(tab.prev_ext, t, t_host, exact))
        else:
            x_in = F.add_noise(x0, eps, tab.abar, t) if bounded else sample
            prev_sample = F.ddim_step(x_in, eps, tab.abar, t, t_prev, eta=float(eta), noise=noise)
        if not self.compute_pred_original_sample:
            x0 = None
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


# =============================================================================== multistep solvers
#: sigma spacings other than "at the grid's integer timesteps" (their sigmas are not abar[t])
_SIGMA_SPACINGS = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas")


def _check_index_step(k: int, n: int) -> None:
    if k >= n:
        raise IndexError(f"step {k} past the end of the {n}-step schedule: call set_timesteps (or set_begin_index) again")


class _MultistepScheduler(_DropInScheduler):
    """What DPM-Solver++ and UniPC share: diffusers' tables, the sigma schedule, the step counter,
    the model-output conversion and ``add_noise``.

    The schedule is held twice: diffusers' float32 ``sigmas`` (its public attribute) and, per
    step, the variance-preserving ``(alpha, sigma, lambda)`` in float64 on the host, from which
    the general path's coefficients come. Where the schedule's sigmas are ``abar`` at integer
    timesteps (no Karras / Lu / exponential / beta spacing), ``_grid`` holds those timesteps
    (plus the final one: -1 for sigma 0, 0 for ``sigma_min``) and the common configs step
    through the fused ops, which take ``abar`` and integer t.
    """

    def _init_common(self) -> None:
        c = self.config
        if c.prediction_type == "flow_prediction":
            raise NotImplementedError(f"prediction_type='flow_prediction' is not supported by diffaccel's "
                                      f"{type(self).__name__}; use diffusers' class for flow models")
        self._check_config()
        if c.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {c.final_sigmas_type!r}")
        if sum(bool(getattr(c, k, False)) for k in ("use_beta_sigmas", "use_exponential_sigmas", "use_karras_sigmas")) > 1:
            raise ValueError("Only one of `config.use_beta_sigmas`, `config.use_exponential_sigmas`, "
                             "`config.use_karras_sigmas` can be used.")
        if c.use_flow_sigmas or c.use_dynamic_shifting:
            raise NotImplementedError(f"use_flow_sigmas / use_dynamic_shifting are not supported by diffaccel's "
                                      f"{type(self).__name__}; use diffusers' class for flow models")
        if c.thresholding and not 0 <= c.dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio must be in [0, 1], got {c.dynamic_thresholding_ratio}")
        self._init_tables(self._config_betas(_SOLVER_BETAS))
        if c.rescale_betas_zero_snr:  # abar = 0 would make sigma infinite at the first step
            self.alphas_cumprod[-1] = 2 ** -24
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = torch.from_numpy(schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod))
        T = c.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=np.float32)[::-1].copy())
        self._grid: Optional[List[int]] = None
        #: False forces the general path (plain torch) for every config: for comparisons and debugging
        self.use_fused_ops = True
        self._reset_state()

    def _reset_state(self) -> None:
        self.model_outputs: List[Optional[torch.Tensor]] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index: Optional[int] = None

    # ------------------------------------------------------------------ schedule
    def _spaced_sigmas(self, timesteps: np.ndarray, n: int, round_karras: bool, sigma_min_last: bool):
        """``(timesteps, sigmas)`` for the config's sigma spacing, diffusers' rules.

        ``round_karras``: whether Karras / Lu timesteps are rounded (DPM-Solver keeps the cosine
        schedule's fractional timesteps); ``sigma_min_last``: whether ``final_sigmas_type=
        "sigma_min"`` means the spacing's own last sigma (UniPC) rather than ``abar[0]``'s.
        """
        c = self.config
        table = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        log_sigmas = np.log(table)
        cfg_min = getattr(c, "sigma_min", None)
        cfg_max = getattr(c, "sigma_max", None)
        lo = cfg_min if cfg_min is not None else table[0].item()
        hi = cfg_max if cfg_max is not None else table[-1].item()
        spaced = True
        if c.use_karras_sigmas:
            sigmas = schedules.karras_sigmas(lo, hi, n)
            timesteps = schedules.sigma_to_t(sigmas, log_sigmas)
            if round_karras:
                timesteps = timesteps.round()
        elif getattr(c, "use_lu_lambdas", False):
            lambdas = schedules.lu_lambdas(log_sigmas[0].item(), log_sigmas[-1].item(), n)
            sigmas = np.exp(lambdas)
            timesteps = schedules.sigma_to_t(sigmas, log_sigmas)
            if round_karras:
                timesteps = timesteps.round()
        elif c.use_exponential_sigmas:
            sigmas = schedules.exponential_sigmas(lo, hi, n)
            timesteps = schedules.sigma_to_t(sigmas, log_sigmas)
        elif c.use_beta_sigmas:
            sigmas = schedules.beta_sigmas(lo, hi, n)
            timesteps = schedules.sigma_to_t(sigmas, log_sigmas)
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(table)), table)
            spaced = False
        if c.final_sigmas_type == "zero":
            last = 0.0
        elif sigma_min_last and spaced:
            last = float(sigmas[-1])
        else:
            last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        return timesteps, np.concatenate([sigmas, [last]]).astype(np.float32), spaced

    def _install(self, timesteps: np.ndarray, sigmas: np.ndarray, spaced: bool, device) -> None:
        """Install diffusers' attributes and the host step tables; decide whether the fused ops apply."""
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        # read here, not in __init__: from_config adds a foreign config's variance_type after it
        self._learned_variance = getattr(self.config, "variance_type", None) in ("learned", "learned_range")
        sig = sigmas.astype(np.float64)
        alpha, sigma = schedules.sigma_to_alpha_sigma(sig)
        with np.errstate(divide="ignore"):
            lam = np.log(alpha) - np.log(sigma)  # +inf at sigma = 0
        self._alpha, self._sigma, self._lambda = alpha, sigma, lam
        self._grid = None
        ts = self.timesteps.cpu().numpy()
        if not spaced and np.all(ts >= 0) and np.all(ts < self.config.num_train_timesteps):
            table = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)
            if np.array_equal(sigmas[:-1], table[ts].astype(np.float32)):
                final = -1 if sigmas[-1] == 0 else 0  # sigma_min: abar[0]'s sigma
                self._grid = [int(t) for t in ts] + [final]
        self._reset_state()
        self._begin_index = None

    def _build_tables(self, device: torch.device) -> torch.Tensor:
        """The fused ops' abar table (it does not depend on the schedule: built once per device)."""
        return self.alphas_cumprod.to(device=device, dtype=torch.float32)

    @staticmethod
    def _checked_steps(num_inference_steps) -> int:
        if not _is_int(num_inference_steps) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        return int(num_inference_steps)

    # ------------------------------------------------------------------ step counter
    def index_for_timestep(self, timestep, schedule_timesteps: Optional[torch.Tensor] = None) -> int:
        """The step index of ``timestep`` in the schedule: diffusers' rule (the second match
        when it appears twice, the last step when it does not appear). Reads ``timestep`` on the host."""
        sched = self.timesteps if schedule_timesteps is None else schedule_timesteps
        hits = np.flatnonzero(sched.cpu().numpy() == int(timestep))
        if len(hits) == 0:
            return len(self.timesteps) - 1
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _init_step_index(self, timestep) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _begin_step(self, timestep) -> int:
        self._check_scheduled()
        if self._step_index is None:  # after the first step the timestep is not read again (no host sync)
            self._init_step_index(timestep)
        _check_index_step(self._step_index, self.num_inference_steps)
        return self._step_index

    def _end_step(self, prev_sample: torch.Tensor, return_dict: bool):
        """Advance the warm-up count and the step counter; the step's output."""
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    # ------------------------------------------------------------------ forward process
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Forward process at the schedule's own sigma for each timestep (``alpha x0 + sigma noise``),
        indexed as diffusers does (``begin_index`` / ``step_index`` win over the given timesteps)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in timesteps.tolist()]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * timesteps.shape[0]
        sigma = sigmas[idx].flatten()
        sigma = sigma.reshape(-1, *([1] * (original_samples.ndim - 1)))
        alpha_t, sigma_t = schedules.sigma_to_alpha_sigma(sigma)
        return alpha_t * original_samples + sigma_t * noise

    # ------------------------------------------------------------------ model output
    def _split_eps(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The noise channels of a learned-variance output (eps first, as IF's UNet emits them)."""
        c = sample.shape[1]
        if self._learned_variance and model_output.shape[1] == 2 * c:
            return model_output[:, :c]
        return model_output

    def _fused_bounds(self) -> Optional[dict]:
        """The fused ops' bound for this config, or None when they cannot take it."""
        return self._fused_threshold() if self.config.thresholding else {}

    def _data_prediction(self, model_output: torch.Tensor, sample: torch.Tensor, k: int) -> torch.Tensor:
        """x0 from the model output at step k (thresholded when configured): DPM-Solver++'s and UniPC's
        data prediction (Lu et al. 2022, eq. 9)."""
        a, s = float(self._alpha[k]), float(self._sigma[k])
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0 = (sample - s * self._split_eps(model_output, sample)) / a
        elif kind == "sample":
            x0 = model_output
        else:  # v_prediction: x0 = alpha x_t - sigma v
            x0 = a * sample - s * model_output
        return self._threshold(x0) if self.config.thresholding else x0

    def _noise_prediction(self, model_output: torch.Tensor, sample: torch.Tensor, k: int,
                          threshold: bool = True) -> torch.Tensor:
        """eps from the model output at step k (the noise-prediction solvers' model output); with
        thresholding (and ``threshold``: UniPC never thresholds eps), eps is re-derived from the
        thresholded x0."""
        a, s = float(self._alpha[k]), float(self._sigma[k])
        kind = self.config.prediction_type
        if kind == "epsilon":
            eps = self._split_eps(model_output, sample)
        elif kind == "sample":
            eps = (sample - a * model_output) / s
        else:
            eps = a * model_output + s * sample
        if self.config.thresholding and threshold:
            x0 = self._threshold((sample - s * eps) / a)
            eps = (sample - a * x0) / s
        return eps

    def _push(self, m: torch.Tensor) -> None:
        self.model_outputs = self.model_outputs[1:] + [m]

    @staticmethod
    def _combine(terms, dtype) -> torch.Tensor:
        """``sum c_i x_i`` in float32 over (coefficient, tensor) pairs, zero coefficients skipped."""
        out = None
        for c, x in terms:
            if c == 0 or x is None:
                continue
            out = x.float() * float(c) if out is None else out.add(x.float(), alpha=float(c))
        return out.to(dtype)


class DPMSolverMultistepScheduler(_MultistepScheduler):
    """diffusers' ``DPMSolverMultistepScheduler`` (DPM-Solver and DPM-Solver++, Lu et al. 2022a/b).

    Same arguments and config as diffusers 0.42.1. DPM-Solver++ and SDE-DPM-Solver++ (data
    prediction, "midpoint"), orders 1-2, ``prediction_type="epsilon"`` (learned-variance outputs
    included), with or without dynamic thresholding, on a schedule whose sigmas sit at integer
    timesteps (no Karras / Lu / exponential / beta spacing) steps as one
    :func:`diffaccel.functional.dpmpp_2m_step` (Lu et al. 2022b, Alg. 2) or
    :func:`~diffaccel.functional.dpmpp_2m_sde_step` (the noise drawn where diffusers draws it).
    Every other config (order 3, "heun", "sde-dpmsolver", the noise-prediction "dpmsolver" types, other prediction types and spacings) steps on the general
    path: the solver's update as per-step coefficients computed on the host in float64, applied in
    float32 with plain torch. Not supported (raise): flow sigmas / flow prediction / dynamic shifting.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Optional[str] = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        if algorithm_type == "deis":  # diffusers maps it to dpmsolver++
            self.register_to_config(algorithm_type="dpmsolver++")
        elif algorithm_type not in ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"):
            raise NotImplementedError(f"algorithm_type {algorithm_type!r} is not implemented for {type(self).__name__}")
        if solver_type in ("logrho", "bh1", "bh2"):  # UniPC / DEIS names, mapped as diffusers does
            self.register_to_config(solver_type="midpoint")
        elif solver_type not in ("midpoint", "heun"):
            raise NotImplementedError(f"solver_type {solver_type!r} is not implemented for {type(self).__name__}")
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` "
                             f"{algorithm_type}. Please choose `sigma_min` instead.")
        self._init_common()

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      mu: Optional[float] = None, timesteps: Optional[List[int]] = None) -> None:
        """The inference timesteps and sigmas (``timestep_spacing`` / sigma spacing rules, or custom timesteps)."""
        c = self.config
        if mu is not None:
            raise NotImplementedError("mu (dynamic shifting) is for flow models: use diffusers' class")
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        self._check_steps_or_timesteps(num_inference_steps, timesteps)
        if timesteps is not None:
            for flag in _SIGMA_SPACINGS:
                if getattr(c, flag):
                    raise ValueError(f"Cannot use `timesteps` with `config.{flag} = True`")
            ts = np.array(timesteps).astype(np.int64)
            n = len(ts)
        else:
            n = self._checked_steps(num_inference_steps)
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), c.lambda_min_clipped))
            ts = self._spaced_timesteps(n, solver_grid=True, last_timestep=c.num_train_timesteps - clipped)
        round_ts = c.beta_schedule != "squaredcos_cap_v2"
        ts, sigmas, spaced = self._spaced_sigmas(ts, n, round_karras=round_ts, sigma_min_last=False)
        self._install(ts, sigmas, spaced, device)

    # ------------------------------------------------------------------ the update
    def _order(self, k: int) -> int:
        c, n = self.config, self.num_inference_steps
        final = k == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero")
        second = k == n - 2 and c.lower_order_final and n < 15
        if c.solver_order == 1 or self.lower_order_nums < 1 or final:
            return 1
        if c.solver_order == 2 or self.lower_order_nums < 2 or second:
            return 2
        return 3

    def _coefficients(self, k: int, order: int):
        """``x_prev = cx x + cm[0] m_k + cm[1] m_{k-1} + cm[2] m_{k-2} + cn noise`` for step k.

        DPM-Solver++ (Lu et al. 2022b, eqs. 8-9 and its multistep / SDE variants) with the model
        outputs m = x0; DPM-Solver (Lu et al. 2022a) with m = eps; "midpoint" / "heun" second
        order and the third-order multistep update, as diffusers writes them, in float64.
        """
        alg, mid = self.config.algorithm_type, self.config.solver_type == "midpoint"
        lam, a, s = self._lambda, self._alpha, self._sigma
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            h = lam[k + 1] - lam[k]
            m = np.zeros((3, 3))  # rows: D0, D1, D2 as combinations of (m_k, m_{k-1}, m_{k-2})
            m[0, 0] = 1
            if order >= 2:
                r0 = (lam[k] - lam[k - 1]) / h
                d10 = np.array([1 / r0, -1 / r0, 0])
                m[1] = d10
            if order == 3:
                r1 = (lam[k - 1] - lam[k - 2]) / h
                d11 = np.array([0, 1 / r1, -1 / r1])
                m[1] = d10 + r0 / (r0 + r1) * (d10 - d11)
                m[2] = (d10 - d11) / (r0 + r1)
            at, st = a[k + 1], s[k + 1]
            em, ep = np.expm1(-h), np.expm1(h)
            e2 = -np.expm1(-2.0 * h)  # 1 - exp(-2h)
            cn = 0.0
            if alg == "dpmsolver++":
                cx, k0 = st / s[k], -at * em
                k1 = -0.5 * at * em if (order == 2 and mid) else at * (em / h + 1.0)
                k2 = -at * ((em + h) / h ** 2 - 0.5)
            elif alg == "sde-dpmsolver++":
                cx, k0 = st / s[k] * np.exp(-h), at * e2
                k1 = 0.5 * at * e2 if (order == 2 and mid) else at * (e2 / (-2.0 * h) + 1.0)
                k2 = at * ((e2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
                cn = st * np.sqrt(e2)
            elif alg == "dpmsolver":
                cx, k0 = at / a[k], -st * ep
                k1 = -0.5 * st * ep if (order == 2 and mid) else -st * (ep / h - 1.0)
                k2 = -st * ((ep - h) / h ** 2 - 0.5)
            else:  # sde-dpmsolver
                if order == 3:
                    raise NotImplementedError("algorithm_type='sde-dpmsolver' has no third-order update (diffusers neither)")
                cx, k0 = at / a[k], -2.0 * st * ep
                k1 = -st * ep if mid else -2.0 * st * (ep / h - 1.0)
                k2 = 0.0
                cn = st * np.sqrt(np.expm1(2 * h))
            ks = np.array([k0, k1 if order >= 2 else 0.0, k2 if order == 3 else 0.0])
            cm = ks @ m
        return float(cx), [float(v) for v in cm], float(cn)

    def _fused_ok(self, order: int, sample: torch.Tensor) -> Optional[dict]:
        c = self.config
        if (not self.use_fused_ops or self._grid is None or order > 2
                or c.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") or c.solver_type != "midpoint"
                or c.prediction_type != "epsilon" or sample.ndim != 4):
            return None
        return self._fused_bounds()

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator: Optional[torch.Generator] = None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True):
        """One multistep DPM-Solver step from the current step's timestep to the next (diffusers' semantics:
        the step counter, not ``timestep``, says where in the schedule the step is after the first call)."""
        self._check_step_tensors(model_output, sample)
        k = self._begin_step(timestep)
        order = self._order(k)
        bounds = self._fused_ok(order, sample)
        sde = self.config.algorithm_type.startswith("sde")
        noise = None
        if sde:  # drawn where diffusers draws it (every step, float32), so a generator gives its samples
            noise = variance_noise.to(device=sample.device, dtype=torch.float32) if variance_noise is not None else \
                randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        if bounds is not None:
            grid, abar = self._grid, self._tables(sample.device)
            second = order == 2
            kw = dict(x0_prev=self.model_outputs[-1] if second else None, t_last=grid[k - 1] if second else None,
                      **bounds)
            eps = self._split_eps(model_output, sample)
            if sde:
                prev_sample, x0 = F.dpmpp_2m_sde_step(sample, eps, abar, grid[k], grid[k + 1],
                                                      noise.to(sample.dtype), **kw)
            else:
                prev_sample, x0 = F.dpmpp_2m_step(sample, eps, abar, grid[k], grid[k + 1], **kw)
            self._push(x0)
        else:
            if self.config.algorithm_type.endswith("++"):
                m = self._data_prediction(model_output, sample, k)
            else:
                m = self._noise_prediction(model_output, sample, k)
            self._push(m)
            cx, cm, cn = self._coefficients(k, order)
            hist = self.model_outputs[::-1]  # m_k, m_{k-1}, m_{k-2}
            prev_sample = self._combine([(cx, sample)] + list(zip(cm, hist)) + [(cn, noise)], m.dtype)
        return self._end_step(prev_sample, return_dict)


class UniPCMultistepScheduler(_MultistepScheduler):
    """diffusers' ``UniPCMultistepScheduler`` (UniPC, Zhao et al. 2023: the UniC corrector after each
    model evaluation, then the UniP predictor).

    Same arguments and config as diffusers 0.42.1. Data prediction with B(h) = expm1(-h) ("bh2"),
    predictor and corrector orders 1-2, ``prediction_type="epsilon"``, with or without dynamic
    thresholding, on a schedule at integer timesteps, steps as one :func:`diffaccel.functional.unipc_step`
    (corrector, then predictor). Everything else (order 3, "bh1", noise prediction, other prediction
    types and spacings, ``solver_p``) steps on the general path: the UniP / UniC coefficients (the
    small linear system for rho solved on the host in float64), applied in float32 with plain torch.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: List[int] = [],  # noqa: B006 - diffusers' signature (and config value)
        solver_p: SchedulerMixin = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        shift_terminal: Optional[float] = None,
    ):
        if isinstance(solver_order, bool) or not isinstance(solver_order, int) or solver_order < 1:
            raise ValueError(f"solver_order must be a positive int, got {solver_order!r}")
        if solver_type in ("midpoint", "heun", "logrho"):  # DPM-Solver / DEIS names, mapped as diffusers does
            self.register_to_config(solver_type="bh2")
        elif solver_type not in ("bh1", "bh2"):
            raise NotImplementedError(f"solver_type {solver_type!r} is not implemented for {type(self).__name__}")
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("`shift_terminal` is only supported when `use_flow_sigmas=True`.")
        self.predict_x0 = predict_x0
        self.disable_corrector = disable_corrector
        self.solver_p = solver_p
        self._init_common()

    def _reset_state(self) -> None:
        super()._reset_state()
        self.timestep_list = [None] * self.config.solver_order
        self.last_sample: Optional[torch.Tensor] = None
        self.this_order = 0

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      sigmas: Optional[List[float]] = None, mu: Optional[float] = None) -> None:
        """The inference timesteps and sigmas (``timestep_spacing`` / sigma spacing rules)."""
        if sigmas is not None:
            raise ValueError("Passing `sigmas` is only supported when `use_flow_sigmas=True` "
                             "(flow models: use diffusers' class).")
        n = self._checked_steps(num_inference_steps)
        ts = self._spaced_timesteps(n, solver_grid=True)
        ts, sig, spaced = self._spaced_sigmas(ts, n, round_karras=True, sigma_min_last=True)
        self._install(ts, sig, spaced, device)
        if self.solver_p:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)

    # ------------------------------------------------------------------ the update
    def _rhos(self, h: float, rks: np.ndarray, order: int, corrector: bool):
        """UniPC's B(h), h phi_1(h) and the rho weights (Zhao et al. 2023, Alg. 2 / eq. 9)."""
        hh = -h if self.predict_x0 else h
        h_phi_1 = np.expm1(hh)
        b_h = hh if self.config.solver_type == "bh1" else np.expm1(hh)
        h_phi_k, fact = h_phi_1 / hh - 1, 1
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(rks ** (i - 1))
            b.append(h_phi_k * fact / b_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        R, b = np.stack(rows), np.array(b)
        if corrector:
            rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        elif order == 2:
            rhos = np.array([0.5])
        elif order > 2:
            rhos = np.linalg.solve(R[:-1, :-1], b[:-1])
        else:
            rhos = np.zeros(0)
        return h_phi_1, b_h, rhos

    def _uni_coefficients(self, t_idx: int, s_idx: int, order: int, corrector: bool):
        """UniP (``corrector=False``: from step s to s + 1) or UniC (from the last sample at step s to t = s + 1,
        with the new model output) as ``(cx, [c_m0, c_m1, ...], c_model_t)``; m_j = the model output j steps back."""
        lam = self._lambda
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            h = lam[t_idx] - lam[s_idx]
            rks = np.array([(lam[s_idx - i] - lam[s_idx]) / h for i in range(1, order)] + [1.0])
            h_phi_1, b_h, rhos = self._rhos(h, rks, order, corrector)
            scale = self._alpha[t_idx] if self.predict_x0 else self._sigma[t_idx]
            cx = (self._sigma[t_idx] / self._sigma[s_idx]) if self.predict_x0 else (self._alpha[t_idx] / self._alpha[s_idx])
            n_hist = order - 1
            cm = np.zeros(max(n_hist, 0) + 1)
            cm[0] = -scale * h_phi_1
            for i in range(n_hist):  # D1_i = (m_{i+1} - m_0) / r_i, weighted by rho_i
                w = -scale * b_h * rhos[i] / rks[i]
                cm[i + 1] += w
                cm[0] -= w
            c_t = 0.0
            if corrector:  # D1_t = model_t - m_0, weighted by the last rho
                c_t = -scale * b_h * rhos[-1]
                cm[0] -= c_t
        return float(cx), [float(v) for v in cm], float(c_t)

    def _fused_ok(self, order: int, corr_order: int, sample: torch.Tensor) -> Optional[dict]:
        c = self.config
        if (not self.use_fused_ops or self._grid is None or order > 2 or corr_order > 2 or not self.predict_x0 or c.solver_type != "bh2"
                or c.prediction_type != "epsilon" or self.solver_p is not None or sample.ndim != 4):
            return None
        return self._fused_bounds()

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """One UniPC step: correct the current sample with the new model output (UniC), then predict
        the next one (UniP), as diffusers' ``step``."""
        self._check_step_tensors(model_output, sample)
        k = self._begin_step(timestep)
        n = self.num_inference_steps
        use_corrector = k > 0 and (k - 1) not in self.disable_corrector and self.last_sample is not None
        order = min(self.config.solver_order, n - k) if self.config.lower_order_final else self.config.solver_order
        order = min(order, self.lower_order_nums + 1)  # warm-up of the multistep history
        corr_order = self.this_order if use_corrector else 0
        bounds = self._fused_ok(order, corr_order, sample)
        if bounds is not None:
            grid, abar = self._grid, self._tables(sample.device)
            need_prev = use_corrector or order == 2
            prev_sample, x0, x_corr = F.unipc_step(
                sample, self._split_eps(model_output, sample), abar, grid[k], grid[k + 1],
                x0_prev=self.model_outputs[-1] if need_prev else None, t_last=grid[k - 1] if need_prev else None,
                x_last=self.last_sample if use_corrector else None,
                x0_prev2=self.model_outputs[-2] if corr_order == 2 else None,
                t_last2=grid[k - 2] if corr_order == 2 else None, predictor_order=order, **bounds)
            self._push(x0)
            self.last_sample = x_corr
        else:
            if self.predict_x0:
                m = self._data_prediction(model_output, sample, k)
            else:
                m = self._noise_prediction(model_output, sample, k, threshold=False)
            if use_corrector:  # UniC: the last sample, corrected with this model output
                cx, cm, c_t = self._uni_coefficients(k, k - 1, corr_order, corrector=True)
                hist = self.model_outputs[::-1]
                sample = self._combine([(cx, self.last_sample)] + list(zip(cm, hist)) + [(c_t, m)], sample.dtype)
            self._push(m)
            self.last_sample = sample
            if self.solver_p:
                prev_sample = self.solver_p.step(model_output, timestep, sample).prev_sample
            else:  # UniP from this step to the next
                cx, cm, _ = self._uni_coefficients(k + 1, k, order, corrector=False)
                hist = self.model_outputs[::-1]
                prev_sample = self._combine([(cx, sample)] + list(zip(cm, hist)), sample.dtype)
        self.timestep_list = self.timestep_list[1:] + [timestep]
        self.this_order = order
        return self._end_step(prev_sample, return_dict)
