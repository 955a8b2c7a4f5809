"""Image helpers for the report: tensors -> PNG / GIF files, grids, and a hand-drawn digit.

Everything here takes images in [0, 1] (MNIST's range; Part A results are converted from the
canonical [-1, 1] with :func:`from_canonical` first) as ``[C, H, W]`` or ``[N, C, H, W]``
tensors. Small images are enlarged with nearest-neighbour only, so every displayed pixel is a
model pixel. Files are written with Pillow and no metadata (no timestamps), so the same tensors
always give the same bytes — the report's determinism rests on that.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["from_canonical", "to_uint8_grid", "save_png", "save_gif", "draw_digit", "display_scale"]

PathLike = Union[str, os.PathLike]


def from_canonical(x: torch.Tensor) -> torch.Tensor:
    """Canonical [-1, 1] (the Part-A techniques' range) -> [0, 1]."""
    return (x + 1) / 2


def display_scale(size: int, target: int = 112) -> int:
    """The integer nearest-neighbour factor that brings a ``size``-pixel image to about ``target`` pixels."""
    return max(1, round(target / max(1, size)))


def to_uint8_grid(x: torch.Tensor, nrow: Optional[int] = None, pad: int = 1, pad_value: float = 1.0,
                  scale: int = 1) -> np.ndarray:
    """``[C, H, W]`` or ``[N, C, H, W]`` in [0, 1] -> ``HxW`` (C = 1) or ``HxWx3`` uint8.

    A batch is laid out row-major, ``nrow`` images per row (default: about square), with
    ``pad`` pixels of ``pad_value`` between images (before upscaling, so the gaps scale too).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    x = x.detach().to("cpu", torch.float32)
    if x.ndim == 3:
        x = x[None]
        pad = 0
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must be [C, H, W] or [N, C, H, W] with C in (1, 3), got {tuple(x.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    n, c, h, w = x.shape
    nrow = max(1, min(n, nrow or math.ceil(math.sqrt(n))))
    rows = math.ceil(n / nrow)
    canvas = torch.full((c, rows * h + (rows - 1) * pad, nrow * w + (nrow - 1) * pad), float(pad_value))
    for k in range(n):
        r, q = divmod(k, nrow)
        canvas[:, r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = x[k]
    # NaN -> 0 so a diverged sample shows as black instead of raising in the uint8 cast
    arr = torch.nan_to_num(canvas, nan=0.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    if scale > 1:
        arr = arr.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    arr = arr.permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr


def _image(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(arr), mode="L" if arr.ndim == 2 else "RGB")


def save_png(x: torch.Tensor, path: PathLike, nrow: Optional[int] = None, scale: int = 4, pad: int = 1) -> Path:
    """Write ``x`` ([0, 1], one image or a grid) as a PNG, enlarged ``scale`` times (nearest neighbour)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(to_uint8_grid(x, nrow=nrow, pad=pad, scale=scale)).save(path, format="PNG")
    return path


def save_gif(frames: Sequence[torch.Tensor], path: PathLike, nrow: Optional[int] = None, scale: int = 4,
             duration_ms: int = 80, hold_last_ms: int = 1200, pad: int = 1) -> Path:
    """Write ``frames`` (each one image or a batch laid out as a grid, in [0, 1]) as a looping GIF.

    The last frame is held ``hold_last_ms`` so the result can be seen before the loop restarts.
    Needs at least two frames (a one-frame "animation" is a bug in the caller).
    """
    if len(frames) < 2:
        raise ValueError(f"a GIF needs at least 2 frames, got {len(frames)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # GIFs are palette images: grayscale frames map exactly onto a 256-gray palette.
    imgs = [_image(to_uint8_grid(f, nrow=nrow, pad=pad, scale=scale)) for f in frames]
    durations = [duration_ms] * (len(imgs) - 1) + [max(duration_ms, hold_last_ms)]
    imgs[0].save(path, format="GIF", save_all=True, append_images=imgs[1:], duration=durations, loop=0,
                 optimize=False, disposal=1)
    return path


def draw_digit(digit: int = 2, size: int = 28, seed: int = 0) -> torch.Tensor:
    """A "hand-drawn" digit made programmatically with PIL pen strokes (SPEC A1.7.1 drawings).

    White strokes on black like MNIST, drawn on a 4x canvas and box-filtered down (anti-aliased
    like a pen on a tablet); ``seed`` jitters the stroke points a little. Returns ``[1, 1, size,
    size]`` in [0, 1]. Supported digits: 1, 2, 3, 4, 7 (strokes given below).
    """
    from PIL import Image, ImageDraw

    strokes = {
        # polylines in a 28x28 box, MNIST-like margins (digit in the central ~20x20)
        1: [[(15, 5), (14, 12), (13.5, 18), (13, 23)]],
        2: [[(8, 9), (10, 6), (14, 5), (18, 6), (19.5, 9), (18.5, 13), (14, 17), (9, 22), (8, 23), (14, 22.5),
             (20, 22.5)]],
        3: [[(8, 7), (12, 5), (17, 5.5), (19, 8), (17, 12), (13, 13.5)],
            [(13, 13.5), (18, 15), (19.5, 18.5), (17, 22), (12, 23), (8, 21.5)]],
        4: [[(16, 5), (8, 17), (20, 17)], [(17, 10), (16.5, 23)]],
        7: [[(8, 6), (20, 6), (16, 13), (13, 23)]],
    }
    if digit not in strokes:
        raise ValueError(f"draw_digit can draw {sorted(strokes)}, got {digit!r}")
    k = 4  # supersampling
    g = torch.Generator().manual_seed(seed)
    im = Image.new("L", (size * k, size * k), 0)
    d = ImageDraw.Draw(im)
    s = size / 28 * k
    for line in strokes[digit]:
        jitter = (torch.rand(len(line), 2, generator=g) - 0.5) * 1.0
        pts = [((x + float(jx)) * s, (y + float(jy)) * s) for (x, y), (jx, jy) in zip(line, jitter.tolist())]
        d.line(pts, fill=255, width=int(2.6 * s), joint="curve")
        r = 1.3 * s  # round caps at the stroke ends
        for px, py in (pts[0], pts[-1]):
            d.ellipse([px - r, py - r, px + r, py + r], fill=255)
    im = im.resize((size, size), Image.BOX)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    return x[None, None].contiguous()


def draw_scene(size: int = 64, channels: int = 3) -> torch.Tensor:
    """A simple synthetic picture (sky, sun, hills, a house) for the IF sections when no photo is
    given; ``[1, channels, size, size]`` in [0, 1]."""
    from PIL import Image, ImageDraw

    k = 4
    n = size * k
    im = Image.new("RGB", (n, n), (120, 170, 230))
    d = ImageDraw.Draw(im)
    d.ellipse([0.65 * n, 0.08 * n, 0.88 * n, 0.31 * n], fill=(250, 220, 80))
    d.ellipse([-0.3 * n, 0.55 * n, 0.7 * n, 1.4 * n], fill=(70, 150, 70))
    d.ellipse([0.3 * n, 0.62 * n, 1.3 * n, 1.5 * n], fill=(50, 125, 55))
    d.rectangle([0.2 * n, 0.5 * n, 0.48 * n, 0.75 * n], fill=(200, 80, 60))
    d.polygon([(0.16 * n, 0.5 * n), (0.34 * n, 0.34 * n), (0.52 * n, 0.5 * n)], fill=(110, 60, 40))
    d.rectangle([0.3 * n, 0.62 * n, 0.38 * n, 0.75 * n], fill=(80, 50, 30))
    im = im.resize((size, size), Image.BOX)
    if channels == 1:
        im = im.convert("L")
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return x[None].contiguous()


def image_size(path: PathLike) -> Tuple[int, int]:
    """(width, height) of an image file."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size
