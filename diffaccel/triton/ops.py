"""``torch.ops.diffaccel.*_triton``: the Triton kernels as ``torch.library.triton_op`` ops,
and :class:`Backend`, the ``"triton"`` backend of :mod:`diffaccel.functional`.

Each op takes exactly the arguments of the matching low-level backend call
(``functional._TorchBackend``), as its launcher in :mod:`.kernels` declares them (the one place
they are written: :func:`_triton_op` turns the launcher's signature into the op's schema), writes
``out`` in place (``mutates_args={"out"}``) and launches its kernels through ``wrap_triton``, so
``torch.compile`` sees the kernels themselves and traces a sampling step without graph breaks.

Triton's interpreter (``TRITON_INTERPRET=1``, the CPU test path) runs the ops eagerly but
cannot run them on fake tensors (the interpreter reads real data pointers), so there
:class:`Backend` calls the launchers directly; on CUDA it calls the registered ops.
"""
from __future__ import annotations

import inspect
import typing

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


def _triton_op(launcher, mutates_args=("out",)):
    """``torch.ops.diffaccel.<launcher>_triton``: the launcher with ``wrap=wrap_triton``, its
    signature less ``wrap`` (arguments and their annotations) the op's schema. So an op's argument
    list is written once, at its launcher in :mod:`.kernels`; the op passes the dispatcher's
    positional arguments straight through (no per-call cost beyond the one call)."""
    sig = inspect.signature(launcher)
    hints = typing.get_type_hints(launcher)  # the annotations are strings (PEP 563): evaluated in .kernels

    def op(*args) -> None:
        launcher(*args, wrap=wrap_triton)

    op.__signature__ = sig.replace(
        parameters=[p.replace(annotation=hints[p.name]) for p in sig.parameters.values() if p.name != "wrap"],
        return_annotation=None)
    op.__name__ = op.__qualname__ = f"{launcher.__name__}_triton"
    op.__doc__ = launcher.__doc__
    return triton_op(f"diffaccel::{launcher.__name__}_triton", op, mutates_args=set(mutates_args))


add_noise_triton = _triton_op(kernels.add_noise)
predict_x0_triton = _triton_op(kernels.predict_x0)
cfg_combine_triton = _triton_op(kernels.cfg_combine)
ddpm_step_triton = _triton_op(kernels.ddpm_step)
ddim_step_triton = _triton_op(kernels.ddim_step)
gaussian_filter_triton = _triton_op(kernels.gaussian_filter)
masked_project_triton = _triton_op(kernels.masked_project)
dpmpp_2m_step_triton = _triton_op(kernels.dpmpp_2m_step, ("out", "x0_out"))
unipc_step_triton = _triton_op(kernels.unipc_step, ("out", "x0_out", "x_corr_out"))
heun_step_triton = _triton_op(kernels.heun_step)


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
