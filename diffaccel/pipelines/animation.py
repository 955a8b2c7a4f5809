"""Animations (SPEC A "animations"): an anagram view turning into its other reading.

Frames are image tensors in the canonical range [-1, 1] (``[C, H, W]``, or ``[N, C, H, W]``
laid out as a grid), written by :func:`diffaccel.imageio.save_gif`; a denoising run is recorded
with :class:`diffaccel.imageio.FrameRecorder`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..imageio import FrameRecorder, save_gif

__all__ = ["make_gif", "view_transition_frames", "animate_view", "FrameRecorder"]


def make_gif(frames: Sequence[torch.Tensor], path, **kw) -> Path:
    """:func:`diffaccel.imageio.save_gif` with this module's defaults (canonical ``value_range=(-1, 1)``,
    ``scale=1``); kept so ``pipelines.make_gif`` keeps working."""
    kw.setdefault("value_range", (-1.0, 1.0))
    kw.setdefault("scale", 1)
    return save_gif(frames, path, **kw)


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate counter-clockwise by ``degrees`` (on screen, H pointing down), zero fill."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta[None].expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def _moving_pixels(x: torch.Tensor, view, s: float) -> torch.Tensor:
    """Each pixel travels in a straight line from where it is to where the view puts it (splatted)."""
    n, c, h, w = x.shape
    perm, _ = view.perm(h, w)
    dst = torch.arange(h * w)
    src = perm
    ys = (1 - s) * (src // w).float() + s * (dst // w).float()
    xs = (1 - s) * (src % w).float() + s * (dst % w).float()
    idx = ys.round().long().clamp(0, h - 1) * w + xs.round().long().clamp(0, w - 1)
    out = torch.full((n, c, h * w), -1.0, dtype=x.dtype)
    out[:, :, idx] = x.reshape(n, c, h * w)[:, :, src]
    return out.reshape(n, c, h, w)


def view_transition_frames(image: torch.Tensor, view, num_frames: int = 30) -> List[torch.Tensor]:
    """Frames of ``image`` ([C, H, W] or [1, C, H, W], canonical) turning into ``view(image)``.

    Rotations turn continuously; ``flip`` squashes vertically through a card flip; ``negate``
    cross-fades; other permutations move every pixel along a straight line.
    """
    from .views import get_view, PermutationView

    v = get_view(view)
    x = image.detach().float().cpu()
    x = x[None] if x.ndim == 3 else x
    angles = {"rotate_cw": -90.0, "rotate_ccw": 90.0, "rotate_180": 180.0}
    frames = []
    for k in range(num_frames):
        s = k / max(1, num_frames - 1)
        s = 0.5 - 0.5 * math.cos(math.pi * s)  # ease in/out
        if k == num_frames - 1:
            f = v.view(x)  # land exactly on the view
        elif v.name in angles:
            f = _rotate(x, angles[v.name] * s)
        elif v.name == "flip":
            sy = math.cos(math.pi * s)
            theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0 / sy if abs(sy) > 1e-3 else 1e3, 0.0]]])
            grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
            f = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
        elif isinstance(v, PermutationView):
            f = _moving_pixels(x, v, s)
        else:
            f = (1 - s) * x + s * v.view(x)
        frames.append(f[0])
    return frames


def animate_view(image: torch.Tensor, view, path, num_frames: int = 30, duration_ms: int = 60,
                 scale: Optional[int] = None) -> Path:
    """GIF of an anagram (canonical [-1, 1]) turning into its other reading, and back; returns the path.

    ``scale=None``: the one upscaling rule of :func:`diffaccel.imageio.display_scale`.
    """
    frames = view_transition_frames(image, view, num_frames)
    frames = [frames[0]] * 8 + frames + [frames[-1]] * 8 + frames[::-1]
    return save_gif(frames, path, value_range=(-1.0, 1.0), duration_ms=duration_ms, hold_last_ms=0, scale=scale)
