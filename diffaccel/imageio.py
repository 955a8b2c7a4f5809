"""Writing images: grids, PNG, GIF and frame recording — the one place images leave the package.

The CLI, the pipelines (denoising and view animations) and the report all write through here,
so one tensor gives the same picture wherever it is shown.

Conventions
-----------
* **Layout.** An image is a tensor ``[C, H, W]`` with C = 1 (grayscale) or 3 (RGB); a batch
  ``[N, C, H, W]`` is laid out as a grid, row-major, ``nrow`` images per row (default: about
  square), with ``pad`` pixels of ``pad_value`` between images and in unused cells.
* **Value range.** Every function takes ``value_range=(lo, hi)``, default ``(0, 1)`` (MNIST's
  range, SPEC Part B). Callers holding the canonical ``[-1, 1]`` of Part A (SPEC Part A) pass
  ``value_range=(-1, 1)``. Pixels map to ``round(255 * (x - lo) / (hi - lo))``, clamped to
  0..255; NaN shows as ``lo`` (black), so a diverged sample is visible instead of an error.
* **Upscaling.** Nearest neighbour by an integer factor only, so every displayed pixel is one
  model pixel: ``scale=None`` picks :func:`display_scale` of one image's smaller side
  (``max(1, 128 // size)``: 28 -> x4, 64 -> x2, 256 -> x1). Grid gaps scale with the images.
* **Determinism.** Files are written by Pillow with no metadata (no timestamps): the same
  tensors always give the same bytes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import ArgumentError, ArgumentTypeError

__all__ = ["DISPLAY_SIZE", "display_scale", "to_uint8", "save_png", "save_gif", "FrameRecorder"]

PathLike = Union[str, os.PathLike]
ValueRange = Tuple[float, float]

#: The about-this-many-pixels target of :func:`display_scale`.
DISPLAY_SIZE = 128


def display_scale(size: int, target: int = DISPLAY_SIZE) -> int:
    """The integer nearest-neighbour factor for a ``size``-pixel image: ``max(1, target // size)``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ArgumentError(f"size must be a positive int, got {size!r}")
    return max(1, target // size)


def _check_range(value_range) -> Tuple[float, float]:
    try:
        if isinstance(value_range, (str, bytes)) or any(isinstance(v, (str, bytes, bool)) for v in value_range):
            raise TypeError
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"value_range must be a pair (lo, hi) of numbers, got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ArgumentError(f"value_range must be finite with lo < hi, got {value_range!r}")
    return lo, hi


def _as_batch(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    x = x.detach().to("cpu", torch.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ArgumentError(f"x must be [C, H, W] or [N, C, H, W] with C in (1, 3) and N >= 1, "
                            f"got {tuple(x.shape)}")
    return x


def to_uint8(x: torch.Tensor, value_range: ValueRange = (0.0, 1.0), nrow: Optional[int] = None, pad: int = 0,
             pad_value: Optional[float] = None, scale: int = 1) -> np.ndarray:
    """``[C, H, W]`` or ``[N, C, H, W]`` in ``value_range`` -> an ``HxW`` (C = 1) or ``HxWx3`` uint8 array.

    A batch becomes a grid (``nrow`` per row, ``pad`` pixels of ``pad_value`` between images,
    ``pad_value`` default: ``hi``, white); ``scale`` enlarges by nearest neighbour.
    """
    lo, hi = _check_range(value_range)
    single = isinstance(x, torch.Tensor) and x.ndim == 3
    x = _as_batch(x)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ArgumentError(f"scale must be an int >= 1, got {scale!r}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ArgumentError(f"pad must be an int >= 0, got {pad!r}")
    pad = 0 if single else pad
    n, c, h, w = x.shape
    if nrow is not None and (isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1):
        raise ArgumentError(f"nrow must be a positive int, got {nrow!r}")
    nrow = max(1, min(n, nrow or math.ceil(math.sqrt(n))))
    rows = math.ceil(n / nrow)
    fill = (float(hi if pad_value is None else pad_value) - lo) / (hi - lo)
    canvas = torch.full((c, rows * h + (rows - 1) * pad, nrow * w + (nrow - 1) * pad), fill)
    unit = (x - lo) / (hi - lo)
    for k in range(n):
        r, q = divmod(k, nrow)
        canvas[:, r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = unit[k]
    arr = torch.nan_to_num(canvas, nan=0.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    if scale > 1:
        arr = arr.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    arr = arr.permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr


def _auto_scale(x: torch.Tensor, scale: Optional[int]) -> int:
    if scale is not None:
        return scale
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        _as_batch(x)  # raises the argument error
    return display_scale(int(min(x.shape[-2:])))


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(arr), mode="L" if arr.ndim == 2 else "RGB")


def save_png(x: torch.Tensor, path: PathLike, value_range: ValueRange = (0.0, 1.0), nrow: Optional[int] = None,
             scale: Optional[int] = None, pad: int = 0, pad_value: Optional[float] = None) -> Path:
    """Write ``x`` (one image or a grid, in ``value_range``) as a PNG; returns the path.

    ``scale=None``: :func:`display_scale` of one image's smaller side. Parent folders are created.
    """
    arr = to_uint8(x, value_range, nrow=nrow, pad=pad, pad_value=pad_value, scale=_auto_scale(x, scale))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil(arr).save(path, format="PNG")
    return path


def save_gif(frames: Sequence[torch.Tensor], path: PathLike, value_range: ValueRange = (0.0, 1.0),
             nrow: Optional[int] = None, scale: Optional[int] = None, pad: int = 0,
             pad_value: Optional[float] = None, duration_ms: int = 80, hold_last_ms: int = 1200,
             loop: int = 0) -> Path:
    """Write ``frames`` (each one image or a batch laid out as a grid, in ``value_range``) as a GIF.

    Every frame shows ``duration_ms``, the last ``max(duration_ms, hold_last_ms)`` so the result
    can be seen before the loop restarts; ``loop=0`` loops forever. Returns the path.
    """
    frames = list(frames)
    if not frames:
        raise ArgumentError("save_gif needs at least one frame, got none")
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or duration_ms < 1:
        raise ArgumentError(f"duration_ms must be a positive int, got {duration_ms!r}")
    s = _auto_scale(frames[0], scale)
    # GIFs are palette images: grayscale frames map exactly onto a 256-gray palette.
    imgs = [_pil(to_uint8(f, value_range, nrow=nrow, pad=pad, pad_value=pad_value, scale=s)) for f in frames]
    if len({im.size for im in imgs}) != 1:
        raise ArgumentError(f"frames must all have the same size, got {sorted({im.size for im in imgs})}")
    durations = [duration_ms] * (len(imgs) - 1) + [max(duration_ms, hold_last_ms)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, format="GIF", save_all=True, append_images=imgs[1:], duration=durations, loop=loop,
                 optimize=False, disposal=1)
    return path


class FrameRecorder:
    """A sampler/technique ``callback`` that keeps snapshots of ``info[key]`` for a GIF.

    Step ``i`` is kept when ``i % every == 0`` or ``i == last_step``; calls with the same ``i``
    (one per batch of a batched run) are joined along the batch axis, so ``frames[j]`` is the
    whole grid at one step. ``transform`` maps the tensor to the range the frames are written in
    (e.g. a Part A denoiser's ``from_model_range`` gives [-1, 1]); frames are kept on the CPU,
    clamped to ``value_range``::

        rec = FrameRecorder(den.from_model_range, value_range=(-1, 1))
        techniques.sample(den, ..., callback=rec)
        save_gif(rec.frames, "run.gif", value_range=(-1, 1))
    """

    def __init__(self, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, key: str = "x",
                 every: int = 1, last_step: Optional[int] = None, value_range: ValueRange = (0.0, 1.0)):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ArgumentError(f"every must be a positive int, got {every!r}")
        self.transform, self.key, self.every, self.last_step = transform, key, every, last_step
        self.value_range = _check_range(value_range)
        self._steps: Dict[int, List[torch.Tensor]] = {}

    @classmethod
    def spaced(cls, total_steps: int, max_frames: int = 60, **kw) -> "FrameRecorder":
        """About ``max_frames`` evenly spaced snapshots of a ``total_steps``-step run, the last step included."""
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ArgumentError(f"total_steps must be a positive int, got {total_steps!r}")
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise ArgumentError(f"max_frames must be a positive int, got {max_frames!r}")
        return cls(every=-(-total_steps // max_frames), last_step=total_steps - 1, **kw)

    def __call__(self, info: dict) -> None:
        i = int(info["i"])
        if i % self.every == 0 or i == self.last_step:
            x = info[self.key].detach()
            x = self.transform(x) if self.transform is not None else x
            self._steps.setdefault(i, []).append(x.float().cpu().clamp(*self.value_range))

    @property
    def frames(self) -> List[torch.Tensor]:
        """The kept snapshots in step order, each ``[N, C, H, W]``."""
        return [v[0] if len(v) == 1 else torch.cat(v) for _, v in sorted(self._steps.items())]
