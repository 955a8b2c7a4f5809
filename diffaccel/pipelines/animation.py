"""GIFs: a denoising run (SPEC B-gif, A "animations") and an anagram view turning into its other reading.

Frames are image tensors in the canonical range [-1, 1] (``[C, H, W]``, or ``[N, C, H, W]``
laid out as a grid). GIFs are written with Pillow.
"""
from __future__ import annotations

import math
import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["to_uint8", "make_gif", "denoising_gif", "view_transition_frames", "animate_view", "FrameRecorder"]


def to_uint8(x: torch.Tensor, value_range: Tuple[float, float] = (-1.0, 1.0), nrow: Optional[int] = None):
    """[C, H, W] or [N, C, H, W] (grid, ``nrow`` per row) -> HxWx3 (or HxW) uint8 numpy array."""
    x = x.detach().float().cpu()
    if x.ndim == 4:
        n, c, h, w = x.shape
        nrow = nrow or math.ceil(math.sqrt(n))
        rows = math.ceil(n / nrow)
        pad = torch.full((rows * nrow - n, c, h, w), value_range[0])
        x = torch.cat([x, pad]).reshape(rows, nrow, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, nrow * w)
    if x.ndim != 3:
        raise ValueError(f"a frame must be [C, H, W] or [N, C, H, W], got {tuple(x.shape)}")
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    arr = x.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def make_gif(frames: Sequence[torch.Tensor], path: Union[str, os.PathLike], duration_ms: int = 100,
             value_range: Tuple[float, float] = (-1.0, 1.0), loop: int = 0, hold_last: int = 5,
             scale: int = 1) -> str:
    """Write ``frames`` as an animated GIF (the last frame shown ``1 + hold_last`` times as long); returns the path."""
    from PIL import Image

    if len(frames) == 0:
        raise ValueError("make_gif needs at least one frame")
    imgs = [Image.fromarray(to_uint8(f, value_range)) for f in frames]
    if scale != 1:
        imgs = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in imgs]
    # Hold the last frame by lengthening its duration (Pillow merges repeated identical frames).
    durations = [duration_ms] * (len(imgs) - 1) + [duration_ms * (1 + hold_last)]
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=durations, loop=loop)
    return path


class FrameRecorder:
    """A technique ``callback`` that keeps ``info[key]`` (canonical range) every ``every`` steps.

    ``rec = FrameRecorder(denoiser.from_model_range); sample(..., callback=rec); make_gif(rec.frames, p)``
    """

    def __init__(self, to_canonical: Callable[[torch.Tensor], torch.Tensor] = lambda x: x, key: str = "x",
                 every: int = 1):
        self.to_canonical, self.key, self.every = to_canonical, key, every
        self.frames: List[torch.Tensor] = []

    def __call__(self, info: dict) -> None:
        if info["i"] % self.every == 0:
            x = info[self.key]
            self.frames.append((x if self.key == "x0_hat" else self.to_canonical(x)).detach().cpu().clamp(-1, 1))


def denoising_gif(frames: Sequence[torch.Tensor], path, duration_ms: int = 80, **kw) -> str:
    """A GIF of a denoising run (frames from :class:`FrameRecorder` or ``DenoiseResult.intermediates``)."""
    return make_gif(frames, path, duration_ms=duration_ms, **kw)


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
                 scale: int = 1) -> str:
    """GIF of an anagram turning into its other reading, and back."""
    frames = view_transition_frames(image, view, num_frames)
    frames = [frames[0]] * 8 + frames + [frames[-1]] * 8 + frames[::-1]
    return make_gif(frames, path, duration_ms=duration_ms, hold_last=0, scale=scale)
