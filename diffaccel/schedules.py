"""Noise schedules: the one place the betas / alphas_cumprod of a model are defined."""
from __future__ import annotations

import torch


def ddpm_linear_schedule(num_timesteps: int = 300, beta_start: float = 1e-4, beta_end: float = 0.02):
    """SPEC B2.2: ``betas = linspace(beta_start, beta_end, T)``, ``abar = cumprod(1 - betas)``.

    Returns ``(betas, alphas, alphas_cumprod)`` as float32 tensors of length T.
    """
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, dim=0)
    return betas.float(), alphas.float(), abar.float()
