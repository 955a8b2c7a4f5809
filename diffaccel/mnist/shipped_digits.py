"""The few MNIST digits the demo report shows, shipped inside the package.

The report (``diffaccel demo``, ``diffaccel mnist figures``) needs only the first test digits
(SPEC B1.2, B1.2.1, B1.2.2, and the Part-A sources: the first 7, 2 and 3) and the mean of the
training digits (SPEC B1.2.3). ``diffaccel/data/mnist_report_digits.safetensors`` holds exactly
those, cut from the standard MNIST distribution by ``scripts/make_report_digits.py``, so the
report renders with no network and no MNIST folder. Training and evaluation still read (or
download) the full set through :mod:`diffaccel.mnist.data`.

MNIST: Yann LeCun, Corinna Cortes, Christopher J. C. Burges, licensed CC BY-SA 3.0 (see
``diffaccel/data/README.md``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from ..errors import FileFormatError, MissingFileError

__all__ = ["DIGITS_FILE", "NUM_TEST_DIGITS", "shipped_digits", "test_digits", "train_mean"]

DIGITS_FILE = Path(__file__).resolve().parents[1] / "data" / "mnist_report_digits.safetensors"
#: How many leading test digits ship (the report needs the first 5 and the first 3, test #18).
NUM_TEST_DIGITS = 32

_shipped: Optional[dict] = None


def shipped_digits(path: Optional[Path] = None) -> dict:
    """The shipped file as ``{"test_images": uint8 [N, 28, 28], "test_labels": uint8 [N],
    "train_mean": float32 [28, 28], "train_count": int}`` (read once, then cached)."""
    global _shipped
    if path is None and _shipped is not None:
        return _shipped
    from safetensors import SafetensorError, safe_open

    p = Path(path) if path is not None else DIGITS_FILE
    if not p.is_file():
        raise MissingFileError(f"{p}: the MNIST digits shipped with diffaccel are missing; reinstall the "
                               "package, or pass the MNIST folder (data_dir / --data-dir)")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            out = {k: f.get_tensor(k) for k in ("test_images", "test_labels", "train_mean")}
        out["train_count"] = int(meta["train_count"])
    except (SafetensorError, KeyError, ValueError, OSError) as e:
        raise FileFormatError(f"{p}: not a valid shipped-digits file ({e}); reinstall the package") from e
    if path is None:
        _shipped = out
    return out


def test_digits(root=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Leading MNIST test digits as ``(x [N, 1, 28, 28] float32 in [0, 1], y long [N])``.

    ``root=None``: the shipped digits (the first :data:`NUM_TEST_DIGITS`), offline. A folder:
    the whole test split read from it (:func:`diffaccel.mnist.data.mnist_tensors`, checksums
    verified); its leading digits are the same.
    """
    if root is not None:
        from .data import mnist_tensors

        return mnist_tensors("test", root=root)
    d = shipped_digits()
    return d["test_images"].unsqueeze(1).float().div_(255), d["test_labels"].long()


def train_mean(root=None) -> Tuple[torch.Tensor, int]:
    """The mean training digit ``[1, 1, 28, 28]`` (SPEC B1.2.3) and the number of digits averaged.

    ``root=None``: the shipped mean of the 60,000 training digits; a folder: computed from it.
    """
    if root is not None:
        from .data import mnist_tensors

        x, _ = mnist_tensors("train", root=root)
        return x.mean(0, keepdim=True), x.shape[0]
    d = shipped_digits()
    return d["train_mean"].view(1, 1, 28, 28).clone(), d["train_count"]
