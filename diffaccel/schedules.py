"""Noise schedules: the one place the betas / alphas_cumprod / sigma spacings are defined.

Two families live here:

* the course's own schedule (SPEC B2.2), :func:`ddpm_linear_schedule`, built in float64 and
  stored as float32 (the MNIST models are trained and sampled with it);
* diffusers' schedules, bit for bit as diffusers 0.42 builds them (its ``beta_schedule``
  names, float32 ``linspace`` where diffusers uses float32, float64 Python arithmetic for the
  ``alpha_bar`` discretisations where diffusers uses it), so the drop-in schedulers in
  :mod:`diffaccel.schedulers` reproduce diffusers' tables exactly, and the sigma spacings
  of its multistep solvers (Karras et al. 2022, uniform log-SNR of Lu et al. 2022,
  exponential, beta spacing of Lee et al. 2024).

Everything here is host-side table construction, computed once per schedule.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import ArgumentError

#: diffusers' ``beta_schedule`` names (which of them a scheduler accepts is its own choice).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def ddpm_linear_schedule(num_timesteps: int = 300, beta_start: float = 1e-4, beta_end: float = 0.02):
    """SPEC B2.2: ``betas = linspace(beta_start, beta_end, T)``, ``abar = cumprod(1 - betas)``.

    Computed in float64; returns ``(betas, alphas, alphas_cumprod)`` as float32 tensors of length T.
    """
    if num_timesteps < 2:
        raise ArgumentError(f"num_timesteps must be >= 2, got {num_timesteps}")
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, dim=0)
    return betas.float(), alphas.float(), abar.float()


# ----------------------------------------------------------------------------- diffusers' betas
def _alpha_bar_fn(kind: str):
    if kind == "cosine":  # Nichol & Dhariwal 2021, eq. 17
        return lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    if kind == "laplace":  # Hang et al. 2024: log-SNR with a Laplace density
        def laplace(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))
        return laplace
    if kind == "exp":
        return lambda t: math.exp(t * -12.0)
    raise ArgumentError(f"alpha_transform_type must be 'cosine', 'laplace' or 'exp', got {kind!r}")


def betas_for_alpha_bar(num_timesteps: int, max_beta: float = 0.999, alpha_transform_type: str = "cosine") -> torch.Tensor:
    """Betas discretising a continuous ``abar(t)``, t in [0, 1]: ``beta_i = min(1 - abar(t_{i+1}) / abar(t_i), max_beta)``.

    Python float64 arithmetic, stored as float32 (as diffusers' helper of the same name).
    """
    f = _alpha_bar_fn(alpha_transform_type)
    betas = [min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta) for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale ``sqrt(abar)`` so the last step has SNR 0."""
    abar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt ** 2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def diffusers_betas(beta_schedule: str, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                    beta_end: float = 0.02, trained_betas: Optional[Sequence[float]] = None,
                    rescale_betas_zero_snr: bool = False, allowed: Sequence[str] = BETA_SCHEDULES,
                    owner: str = "this scheduler") -> torch.Tensor:
    """diffusers' betas for a scheduler config, as float32 (``trained_betas`` win over the schedule).

    ``allowed`` is the subset of :data:`BETA_SCHEDULES` the calling scheduler supports; others
    raise ``NotImplementedError`` as diffusers does.
    """
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule not in allowed:
        raise NotImplementedError(f"beta_schedule {beta_schedule!r} is not implemented for {owner} "
                                  f"(choose one of {tuple(allowed)})")
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":  # the latent-diffusion schedule
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(num_train_timesteps)
    elif beta_schedule == "laplace":
        betas = betas_for_alpha_bar(num_train_timesteps, alpha_transform_type="laplace")
    else:  # sigmoid (GeoDiff)
        betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``abar = cumprod(1 - betas)`` in the betas' dtype (float32 for diffusers' tables)."""
    return torch.cumprod(1.0 - betas, dim=0)


def posterior_variance(abar_t: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """DDPM posterior variance for a (strided) step t -> t_prev (Ho et al. 2020, eq. 7):
    ``(1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)``, the ``fixed_small`` variance."""
    return (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)


# ----------------------------------------------------------------------------- timesteps / sigmas
def spaced_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0,
                     *, solver_grid: bool = False, last_timestep: Optional[int] = None) -> np.ndarray:
    """diffusers' ``timestep_spacing`` rules (Lin et al. 2023, table 2), int64, descending.

    ``solver_grid=False`` is DDPM/DDIM's grid of ``n`` points; ``solver_grid=True`` is the
    multistep solvers' (DPM-Solver, UniPC): ``n + 1`` points with the last (t = 0) dropped,
    up to ``last_timestep`` (DPM-Solver's ``lambda_min_clipped``; default T).
    """
    T, n = num_train_timesteps, num_inference_steps
    last = T if last_timestep is None else last_timestep
    if spacing == "linspace":
        if solver_grid:
            return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        if solver_grid:
            ratio = last // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        else:
            ratio = T // n
            ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
        return ts + steps_offset
    if spacing == "trailing":
        ratio = T / n
        return np.arange(last if solver_grid else T, 0, -ratio).round().astype(np.int64) - 1
    raise ArgumentError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")


def sigmas_from_alphas_cumprod(abar: torch.Tensor) -> np.ndarray:
    """The variance-exploding noise levels ``sigma = sqrt((1 - abar) / abar)``, in abar's dtype."""
    return np.array(((1 - abar) / abar) ** 0.5)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of a noise level: linear interpolation in log sigma."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def lu_lambdas(lambda_min: float, lambda_max: float, n: int) -> np.ndarray:
    """Uniform steps in ``log(sigma)`` between the two ends (Lu et al. 2022's uniform log-SNR)."""
    return lambda_max + np.linspace(0, 1, n) * (lambda_min - lambda_max)


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Geometric spacing of the noise levels."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Lee et al. 2024 ("Beta sampling is all you need"): sigmas at Beta(alpha, beta) quantiles."""
    import scipy.stats  # optional dependency, as in diffusers

    return np.array([sigma_min + ppf * (sigma_max - sigma_min)
                     for ppf in (scipy.stats.beta.ppf(u, alpha, beta) for u in 1 - np.linspace(0, 1, n))])


def sigma_to_alpha_sigma(sigma: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A variance-exploding sigma as the variance-preserving pair ``(alpha_t, sigma_t)``:
    ``alpha_t = 1 / sqrt(sigma^2 + 1)``, ``sigma_t = sigma * alpha_t`` (so ``abar = alpha_t^2``)."""
    alpha = 1 / ((sigma ** 2 + 1) ** 0.5)
    return alpha, sigma * alpha
