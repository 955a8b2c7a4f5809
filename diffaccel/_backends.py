"""Which compiled backends this install has, loaded lazily and guarded.

``import diffaccel`` never fails because of a missing extension: without the C++ build the
reference is used (with one warning), without Triton the ``triton`` backend is absent.
"""
from __future__ import annotations

import os
import warnings

import torch


# Loaded once, at first use (plain module globals rather than functools.lru_cache, which
# torch.compile would have to trace through on every call).
_UNSET = object()
_cpp = _UNSET
_triton = _UNSET


def cpp_ops():
    """The C++ backend object (``diffaccel._cpp_ops``), or None with the reason warned once."""
    global _cpp
    if _cpp is _UNSET:
        _cpp = None
        if os.environ.get("DIFFACCEL_DISABLE_CPP") != "1":
            try:
                from . import _cpp_ops

                _cpp = _cpp_ops.Backend
            except (ImportError, OSError) as e:  # extension not built / ABI or ISA mismatch
                warnings.warn(f"diffaccel: the C++ extension is not available ({e}); "
                              "using the PyTorch reference", RuntimeWarning, stacklevel=3)
    return _cpp


def cpu_capability():
    """The instruction-set level of the C++ CPU kernels in use: ``"generic"``, ``"avx2"`` or
    ``"avx512"``, or None without the C++ extension.

    The extension holds the kernels once per level and picks the highest one the CPU has when it
    loads; the environment variable ``DIFFACCEL_CPU_CAPABILITY=generic|avx2|avx512``, read at that
    moment, forces a level (one the CPU lacks is refused with a warning, and the highest available
    level below it is used), as ``ATEN_CPU_CAPABILITY`` does for PyTorch's own kernels.
    """
    if cpp_ops() is None:
        return None
    try:
        return torch.ops.diffaccel.cpu_capability()
    except (AttributeError, RuntimeError):  # built before runtime dispatch existed
        return None


def triton_ops():
    """The Triton backend object, or None if Triton is not installed / unusable."""
    global _triton
    if _triton is _UNSET:
        _triton = None
        if os.environ.get("DIFFACCEL_DISABLE_TRITON") != "1":
            try:
                from .triton import ops

                _triton = ops.Backend
            except Exception:  # noqa: BLE001 - triton missing or broken: the backend is just absent
                _triton = None
    return _triton


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> list:
    names = ["torch"]
    cpp = cpp_ops()
    if cpp is not None and cpp.supports(device):
        names.append("cpp")
    tri = triton_ops()
    if tri is not None and (device.type == "cuda" or _interpreted()):
        names.append("triton")
    return names


def auto_backend(device: torch.device) -> str:
    """cpp where built for the device (lowest launch overhead), else triton on CUDA, else torch."""
    names = available(device)
    if "cpp" in names:
        return "cpp"
    if device.type == "cuda" and "triton" in names:
        return "triton"
    return "torch"


def get(name: str, device: torch.device):
    names = available(device)
    if name not in names:
        raise ValueError(
            f"backend {name!r} is not available on {device} in this install (available: {names})")
    return cpp_ops() if name == "cpp" else triton_ops()
