"""Argument checks for the high-level entry points (MNIST sampling and evaluation, the Part-A
techniques, model loading): a wrong type raises :class:`~diffaccel.errors.ArgumentTypeError`, a
value out of range :class:`~diffaccel.errors.ArgumentError`, each naming the argument and what is
expected, before any work starts (not an error from deep inside torch, and never a silent
truncation: ``2.5`` steps is not 2, ``True`` is not 1, ``NaN`` is not a guidance scale).

The functional ops check their own arguments (:mod:`diffaccel.functional`).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

from .errors import ArgumentError, ArgumentTypeError

#: Seeds are 64-bit: ``0 <= seed < SEED_LIMIT`` (what ``torch.Generator.manual_seed`` takes).
SEED_LIMIT = 2 ** 64


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_int(name: str, v, *, min: Optional[int] = None, max: Optional[int] = None, what: str = "") -> int:
    """``v`` as an int (bool and floats refused, numpy integers accepted) in ``[min, max]``."""
    if not _is_int(v):
        raise ArgumentTypeError(f"{name} must be an int{what}, got {type(v).__name__} {v!r}")
    v = int(v)
    if (min is not None and v < min) or (max is not None and v > max):
        lo = "" if min is None else f">= {min}"
        hi = "" if max is None else f"<= {max}"
        raise ArgumentError(f"{name} must be an int {' and '.join(s for s in (lo, hi) if s)}{what}, got {v}")
    return v


def check_optional_int(name: str, v, **kw) -> Optional[int]:
    return None if v is None else check_int(name, v, **kw)


def check_finite(name: str, v, what: str = "") -> float:
    """``v`` as a finite float (bool refused; NaN or Inf would silently give black or noise images)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number{what}, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ArgumentError(f"{name} must be a finite number{what}, got {v}")
    return v


def check_optional_finite(name: str, v, what: str = "") -> Optional[float]:
    return None if v is None else check_finite(name, v, what)


def check_seed(seed, name: str = "seed") -> int:
    """A seed: an int in ``[0, 2**64)``."""
    seed = check_int(name, seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ArgumentError(f"{name} must be an int in [0, 2**64), got {seed}")
    return seed


def check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {type(v).__name__} {v!r}")
    return v


def check_callable(name: str, v) -> None:
    if v is not None and not callable(v):
        raise ArgumentTypeError(f"{name} must be None or a function, got {type(v).__name__}")
