"""``torch.ops.diffaccel.*_triton``: the Triton kernels as ``torch.library.triton_op`` ops,
and :class:`Backend`, the ``"triton"`` backend of :mod:`diffaccel.functional`.

Each op takes exactly the arguments of the matching low-level backend call
(``functional._TorchBackend``), writes ``out`` in place (``mutates_args={"out"}``) and
launches its kernels through ``wrap_triton``, so ``torch.compile`` sees the kernels
themselves and traces a sampling step without graph breaks.

Triton's interpreter (``TRITON_INTERPRET=1``, the CPU test path) runs the ops eagerly but
cannot run them on fake tensors (the interpreter reads real data pointers), so there
:class:`Backend` calls the launchers directly; on CUDA it calls the registered ops.
"""
from __future__ import annotations

from typing import Optional

import torch

try:
    import triton  # noqa: F401
except ImportError as e:  # the loader in diffaccel._backends treats this as "no triton backend"
    raise ImportError(
        "diffaccel's Triton backend needs the `triton` package (`pip install triton`); "
        f"it could not be imported: {e}") from e

from torch.library import triton_op, wrap_triton

from . import kernels
from .kernels import INTERPRETED

Tensor = torch.Tensor


@triton_op("diffaccel::add_noise_triton", mutates_args={"out"})
def add_noise_triton(x0: Tensor, noise: Tensor, abar: Tensor, t: Tensor, out: Tensor) -> None:
    """SPEC A1.1: ``out = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) noise``."""
    kernels.add_noise(x0, noise, abar, t, out, wrap=wrap_triton)


@triton_op("diffaccel::predict_x0_triton", mutates_args={"out"})
def predict_x0_triton(x_t: Tensor, eps: Tensor, abar: Tensor, t: Tensor, out: Tensor) -> None:
    """SPEC A1.3: ``out = (x_t - sqrt(1 - abar[t]) eps) / sqrt(abar[t])``."""
    kernels.predict_x0(x_t, eps, abar, t, out, wrap=wrap_triton)


@triton_op("diffaccel::cfg_combine_triton", mutates_args={"out"})
def cfg_combine_triton(eps_u: Tensor, eps_c: Tensor, scale: float, out: Tensor) -> None:
    """SPEC A1.6: ``out = eps_u + scale (eps_c - eps_u)``."""
    kernels.cfg_combine(eps_u, eps_c, scale, out, wrap=wrap_triton)


@triton_op("diffaccel::ddpm_step_triton", mutates_args={"out"})
def ddpm_step_triton(x_t: Tensor, eps_u: Tensor, eps_c: Optional[Tensor], scale: float, abar: Tensor,
                     t: Tensor, t_prev: Tensor, noise: Optional[Tensor], variance_code: int,
                     predicted_variance: Optional[Tensor], clip_x0: float, th_ratio: float, th_max: float,
                     out: Tensor) -> None:
    """SPEC A1.4 / B2.3 (+ A1.6): the (guided) strided DDPM step; see :func:`reference.ddpm_step`."""
    kernels.ddpm_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, noise, variance_code, predicted_variance,
                      clip_x0, th_ratio, th_max, out, wrap=wrap_triton)


@triton_op("diffaccel::ddim_step_triton", mutates_args={"out"})
def ddim_step_triton(x_t: Tensor, eps_u: Tensor, eps_c: Optional[Tensor], scale: float, abar: Tensor,
                     t: Tensor, t_prev: Tensor, eta: float, noise: Optional[Tensor], out: Tensor) -> None:
    """The (guided) DDIM step; see :func:`reference.ddim_step`."""
    kernels.ddim_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, eta, noise, out, wrap=wrap_triton)


@triton_op("diffaccel::gaussian_filter_triton", mutates_args={"out"})
def gaussian_filter_triton(low: Optional[Tensor], high: Optional[Tensor], kernel_size: int, sigma: float,
                           out: Tensor) -> None:
    """SPEC A1.2 / A1.9: ``out = blur(low) + (high - blur(high))`` (separable, reflect padding)."""
    kernels.gaussian_filter(low, high, kernel_size, sigma, out, wrap=wrap_triton)


@triton_op("diffaccel::masked_project_triton", mutates_args={"out"})
def masked_project_triton(x_t: Tensor, x_orig: Tensor, mask: Tensor, noise: Tensor, abar: Tensor, t: Tensor,
                          out: Tensor) -> None:
    """SPEC A1.7.2: ``out = mask x_t + (1 - mask) add_noise(x_orig, noise, abar, t)``."""
    kernels.masked_project(x_t, x_orig, mask, noise, abar, t, out, wrap=wrap_triton)


@triton_op("diffaccel::dpmpp_2m_step_triton", mutates_args={"out", "x0_out"})
def dpmpp_2m_step_triton(x_t: Tensor, eps_u: Tensor, eps_c: Optional[Tensor], scale: float, abar: Tensor, t: Tensor,
                         t_prev: Tensor, x0_prev: Optional[Tensor], t_last: Optional[Tensor], clip_x0: float,
                         th_ratio: float, th_max: float, out: Tensor, x0_out: Tensor) -> None:
    """DPM-Solver++(2M); see :func:`reference.dpmpp_2m_step`."""
    kernels.dpmpp_2m_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, clip_x0, th_ratio, th_max,
                          out, x0_out, wrap=wrap_triton)


@triton_op("diffaccel::unipc_step_triton", mutates_args={"out", "x0_out", "x_corr_out"})
def unipc_step_triton(x_t: Tensor, eps_u: Tensor, eps_c: Optional[Tensor], scale: float, abar: Tensor, t: Tensor,
                      t_prev: Tensor, x0_prev: Optional[Tensor], t_last: Optional[Tensor], x_last: Optional[Tensor],
                      x0_prev2: Optional[Tensor], t_last2: Optional[Tensor], predictor_order: int, clip_x0: float,
                      th_ratio: float, th_max: float, out: Tensor, x0_out: Tensor, x_corr_out: Tensor) -> None:
    """UniPC bh2 (corrector + predictor); see :func:`reference.unipc_step`."""
    kernels.unipc_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, x_last, x0_prev2, t_last2,
                       predictor_order, clip_x0, th_ratio, th_max, out, x0_out, x_corr_out, wrap=wrap_triton)


@triton_op("diffaccel::heun_step_triton", mutates_args={"out"})
def heun_step_triton(x: Tensor, v: Tensor, v_next: Tensor, dt: float, out: Tensor) -> None:
    """Flow matching, second-order Heun: ``out = x + dt/2 (v + v_next)``."""
    kernels.heun_step(x, v, v_next, dt, out, wrap=wrap_triton)


def _impl(name: str):
    # The interpreter cannot trace (see the module docstring): call its launcher directly.
    return getattr(kernels, name) if INTERPRETED else getattr(torch.ops.diffaccel, f"{name}_triton").default


class Backend:
    """The ``"triton"`` backend: the low-level calls of ``functional._TorchBackend``, each
    writing ``out``. Runs on CUDA, or anywhere under Triton's interpreter."""

    name = "triton"
    interpreted = INTERPRETED

    add_noise = staticmethod(_impl("add_noise"))
    predict_x0 = staticmethod(_impl("predict_x0"))
    cfg_combine = staticmethod(_impl("cfg_combine"))
    ddpm_step = staticmethod(_impl("ddpm_step"))
    ddim_step = staticmethod(_impl("ddim_step"))
    gaussian_filter = staticmethod(_impl("gaussian_filter"))
    masked_project = staticmethod(_impl("masked_project"))
    dpmpp_2m_step = staticmethod(_impl("dpmpp_2m_step"))
    unipc_step = staticmethod(_impl("unipc_step"))
    heun_step = staticmethod(_impl("heun_step"))

    @staticmethod
    def supports(device: torch.device) -> bool:
        return torch.device(device).type == "cuda" or INTERPRETED


__all__ = [
    "Backend", "add_noise_triton", "predict_x0_triton", "cfg_combine_triton", "ddpm_step_triton",
    "ddim_step_triton", "gaussian_filter_triton", "masked_project_triton", "dpmpp_2m_step_triton",
    "unipc_step_triton", "heun_step_triton",
]
