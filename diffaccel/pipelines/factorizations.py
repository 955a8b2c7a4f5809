"""Factorized diffusion (SPEC A1.9 and "beyond the course"; Geng et al., "Factorized Diffusion", 2024).

An image is split into components that sum back to it, ``x = f_1(x) + ... + f_k(x)``; the
sampler asks for each component under its own prompt: ``eps = sum_i f_i(eps_i)`` where
``eps_i`` is the noise estimate under condition i. A :class:`Factorization` is that linear
combine; since ``combine([e, ..., e]) == e`` and it is linear, CFG commutes with it
(``combine(cfg(u, c_i)) = cfg(u, combine(c_i))``), which the sampler uses to make a single
unconditional pass.

The Gaussian filters are :mod:`diffaccel.functional` ops (the fused kernels).

**Sizes.** The filters are set for IF's stage-I size (64 px). In stage II (256 px) the same
factorization acts on the noise estimate with its filters scaled by the upsampling factor
``f`` (:meth:`Factorization.scaled`), as the reference code of Geng et al. does with
``f = H // 64``: a kernel of ``k f + ((f + 1) mod 2)`` (odd; 33 -> 133) and ``sigma f``
(2 -> 8), so the stage-II bands are the stage-I ones seen at four times the resolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

from .. import functional as Fn
from ..errors import ArgumentError

__all__ = [
    "Factorization", "HighLow", "TripleBand", "ColorGray", "MotionBlur", "get_factorization",
    "FACTORIZATIONS", "grayscale", "motion_blur", "scale_kernel",
]


def scale_kernel(kernel_size: int, factor: int) -> int:
    """An odd kernel size ``kernel_size`` at ``factor`` times the resolution: ``k f + ((f + 1) mod 2)``
    (the reference's rule; odd for odd ``k``)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ArgumentError(f"factor must be a positive int (the upsampling factor), got {factor!r}")
    return kernel_size * factor + (factor + 1) % 2


class Factorization:
    """``combine(eps_list) -> eps``; ``components(x)`` gives the parts (for figures and tests)."""

    num_components: int = 2
    name = "factorization"

    def components(self, x: torch.Tensor) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def combine(self, eps: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(eps) != self.num_components:
            raise ValueError(f"{self.name} combines {self.num_components} estimates (one per condition), got {len(eps)}")
        return sum(self.components(e)[i] for i, e in enumerate(eps))

    def __call__(self, eps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.combine(eps)

    def scaled(self, factor: int) -> "Factorization":
        """The same factorization at ``factor`` times the resolution (filters scaled; see Sizes)."""
        scale_kernel(1, factor)  # checks factor
        return self


@dataclass
class HighLow(Factorization):
    """SPEC A1.9 hybrid images: ``lowpass(eps_1) + highpass(eps_2)``, Gaussian kernel 33, sigma 2."""

    kernel_size: int = 33
    sigma: float = 2.0
    name = "high_low"

    def components(self, x):
        low = Fn.gaussian_blur(x, self.kernel_size, self.sigma)
        return [low, x - low]

    def combine(self, eps):
        if len(eps) != 2:
            raise ValueError(f"high_low combines 2 estimates (low-pass cond, high-pass cond), got {len(eps)}")
        return Fn.hybrid_combine(eps[0], eps[1], self.kernel_size, self.sigma)

    def scaled(self, factor):
        return HighLow(scale_kernel(self.kernel_size, factor), self.sigma * factor)


@dataclass
class TripleBand(Factorization):
    """Low / medium / high bands: ``blur_L(e1) + (blur_H(e2) - blur_L(e2)) + highpass_H(e3)``.

    ``sigma_low > sigma_high``; the medium band is the difference of the two Gaussians.
    """

    kernel_size: int = 33
    sigma_low: float = 3.0
    sigma_high: float = 1.0
    num_components = 3
    name = "triple"

    def __post_init__(self):
        if not self.sigma_low > self.sigma_high > 0:
            raise ValueError(f"need sigma_low > sigma_high > 0, got {self.sigma_low}, {self.sigma_high}")

    def components(self, x):
        low = Fn.gaussian_blur(x, self.kernel_size, self.sigma_low)
        mid_hi = Fn.gaussian_blur(x, self.kernel_size, self.sigma_high)
        return [low, mid_hi - low, x - mid_hi]

    def combine(self, eps):
        if len(eps) != 3:
            raise ValueError(f"triple combines 3 estimates (low, medium, high), got {len(eps)}")
        low = Fn.gaussian_blur(eps[0], self.kernel_size, self.sigma_low)
        mid = Fn.gaussian_blur(eps[1], self.kernel_size, self.sigma_high) - Fn.gaussian_blur(
            eps[1], self.kernel_size, self.sigma_low)
        return low + mid + Fn.highpass(eps[2], self.kernel_size, self.sigma_high)

    def scaled(self, factor):
        return TripleBand(scale_kernel(self.kernel_size, factor), self.sigma_low * factor, self.sigma_high * factor)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Channel mean, broadcast back to every channel (an orthogonal projection)."""
    return x.mean(dim=1, keepdim=True).expand_as(x)


@dataclass
class ColorGray(Factorization):
    """Grayscale vs colour: ``gray(eps_1) + (eps_2 - gray(eps_2))``."""

    name = "color_gray"

    def components(self, x):
        if x.shape[1] < 2:
            raise ValueError("color_gray needs images with more than one channel")
        g = grayscale(x)
        return [g, x - g]


def motion_blur(x: torch.Tensor, kernel_size: int = 9, angle: float = 0.0) -> torch.Tensor:
    """Linear motion blur: the mean along a ``kernel_size``-pixel line at ``angle`` degrees (zero padding)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size}")
    import math

    k = torch.zeros(kernel_size, kernel_size, dtype=torch.float32)
    c = kernel_size // 2
    dy, dx = -math.sin(math.radians(angle)), math.cos(math.radians(angle))
    for s in torch.linspace(-c, c, 4 * kernel_size).tolist():
        k[int(round(c + s * dy)), int(round(c + s * dx))] = 1.0
    k = (k / k.sum()).to(device=x.device)
    n, ch, h, w = x.shape
    y = F.conv2d(x.float().reshape(n * ch, 1, h, w), k[None, None], padding=c)
    return y.reshape(n, ch, h, w).to(x.dtype)


@dataclass
class MotionBlur(Factorization):
    """Motion-blurred part vs residual: ``mb(eps_1) + (eps_2 - mb(eps_2))``."""

    kernel_size: int = 9
    angle: float = 45.0
    name = "motion_blur"

    def components(self, x):
        b = motion_blur(x, self.kernel_size, self.angle)
        return [b, x - b]

    def scaled(self, factor):
        """The blur line scaled like the Gaussian kernels (ours; the line keeps its angle)."""
        return MotionBlur(scale_kernel(self.kernel_size, factor), self.angle)


FACTORIZATIONS: Dict[str, type] = {
    "high_low": HighLow, "hybrid": HighLow, "triple": TripleBand, "color_gray": ColorGray,
    "motion_blur": MotionBlur,
}


def get_factorization(name, **kwargs) -> Factorization:
    """The factorization called ``name`` (an instance is passed through)."""
    if isinstance(name, Factorization):
        return name
    if not isinstance(name, str) or name not in FACTORIZATIONS:
        raise ValueError(f"unknown factorization {name!r}; choose one of {sorted(FACTORIZATIONS)}")
    return FACTORIZATIONS[name](**kwargs)
