"""The CPU Winograd convolution vs oneDNN's direct convolution, per layer of the MNIST UNet.

    python benchmarks/bench_winograd.py [--threads 1] [--batch 128] [--json out.json]

Each 3x3, stride-1 layer shape of the course UNet at D = 64 (28x28x64, 14x14x64, 7x7x128,
channels-last float32, bias), timed side by side in one process: ``F.conv2d`` (oneDNN) and
``torch.ops.diffaccel.conv3x3_winograd`` with the filter transformed once beforehand (as
``WinogradConv3x3`` does). Minimum over repeats; also the max error of each against a float64
convolution, relative to the output's scale.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import diffaccel  # noqa: E402,F401
from diffaccel import _cpp_ops  # noqa: E402,F401  (registers torch.ops.diffaccel.*)
from diffaccel._sysinfo import cpu_model  # noqa: E402

LAYERS = [(28, 64), (14, 64), (7, 128)]  # (side, channels in = out)


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128, help="images per call (the guided step's 2 x 64)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ops = torch.ops.diffaccel
    rows = []
    for side, ch in LAYERS:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, ch, side, side, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(ch, ch, 3, 3, generator=g) / (3 * ch ** 0.5)
        b = torch.randn(ch, generator=g)
        u = ops.winograd_weight(w)
        direct = best_of(lambda: torch.nn.functional.conv2d(x, w, b, padding=1), args.repeats)
        wino = best_of(lambda: ops.conv3x3_winograd(x, u, b), args.repeats)
        exact = torch.nn.functional.conv2d(x[:8].double(), w.double(), b.double(), padding=1)
        scale = exact.abs().max().item()
        err = lambda y: (y[:8].double() - exact).abs().max().item() / scale  # noqa: E731
        rows.append({
            "layer": f"{side}x{side}x{ch}", "batch": args.batch,
            "gmac": args.batch * side * side * ch * ch * 9 / 1e9,
            "direct_ms": direct * 1e3, "winograd_ms": wino * 1e3, "speedup": direct / wino,
            "direct_rel_err": err(torch.nn.functional.conv2d(x, w, b, padding=1)),
            "winograd_rel_err": err(ops.conv3x3_winograd(x, u, b)),
        })
    print(f"3x3 convolutions, batch {args.batch}, {args.threads} thread(s), {cpu_model()}, torch {torch.__version__}")
    print("| layer | GMAC | oneDNN direct ms | Winograd ms | speed-up | rel. error direct / Winograd |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['gmac']:.2f} | {r['direct_ms']:.1f} | {r['winograd_ms']:.1f} | "
              f"{r['speedup']:.2f}x | {r['direct_rel_err']:.1e} / {r['winograd_rel_err']:.1e} |")
    if args.json:
        machine = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__}
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
