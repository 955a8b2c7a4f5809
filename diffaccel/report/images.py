"""Pictures the report draws itself: a "hand-drawn" digit and a simple scene.

Writing images (grids, PNG, GIF) is :mod:`diffaccel.imageio`'s job; these return tensors in
[0, 1] like MNIST.
"""
from __future__ import annotations

import os
from typing import Tuple, Union

import numpy as np
import torch

__all__ = ["draw_digit", "draw_scene", "image_size"]

PathLike = Union[str, os.PathLike]


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
