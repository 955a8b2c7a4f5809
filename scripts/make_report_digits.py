"""Cut the MNIST digits the demo report shows out of the full set, into the package.

    python scripts/make_report_digits.py --data-dir ../shared/data/mnist

Writes ``diffaccel/data/mnist_report_digits.safetensors``: the first
``diffaccel.mnist.shipped_digits.NUM_TEST_DIGITS`` test images and labels (uint8) and the mean
of the training digits, computed as the report computes it from the full set (float32), so the
report is the same with and without an MNIST folder (tests/test_shipped_digits.py checks it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from safetensors.torch import save_file  # noqa: E402

from diffaccel.mnist import shipped_digits as sd  # noqa: E402
from diffaccel.mnist.data import load_mnist  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True, help="folder with the four MNIST IDX files")
    ap.add_argument("--out", type=Path, default=sd.DIGITS_FILE)
    args = ap.parse_args()
    images, labels = load_mnist("test", args.data_dir)  # checksums verified
    mean, count = sd.train_mean(args.data_dir)
    assert count == 60000, count
    n = sd.NUM_TEST_DIGITS
    tensors = {"test_images": images[:n].contiguous(), "test_labels": labels[:n].to(dtype=images.dtype),
               "train_mean": mean.view(28, 28).contiguous()}
    meta = {"train_count": str(count), "source": "MNIST (LeCun, Cortes, Burges), standard distribution",
            "license": "CC BY-SA 3.0", "content": f"first {n} test digits + mean of the training digits"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
