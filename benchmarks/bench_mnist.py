"""Part B speed: CFG sampling and training throughput, diffaccel vs the course-style loop.

    python benchmarks/bench_mnist.py [--model ddpm_class] [--n 64] [--threads 2] [--json out.json]

Sampling: 64 class-conditional digits with CFG (g = 5) over all T = 300 steps, same model and
seed, (a) the straightforward loop (two eager UNet calls per step, unfused update, fresh tensors;
``diffaccel.mnist.sampling.sample_naive``), (b) ``diffaccel.mnist.sample`` as called by default
(one guided forward per step sharing the class-independent work, BN folded, channels-last, the
3x3 convolutions by the C++ Winograd kernel, chunks of 16 samples, compiled with inductor
freezing; the first call's compile time is reported separately), (c) the same eager
(``compile=False``), (c') eager with oneDNN's direct convolutions instead of Winograd, (d) with
the UNet under bf16 autocast.
Training: images/s of the DDPM training
step, eager vs channels-last vs compiled vs bf16 autocast (mixed precision).
Everything runs in one process, side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffaccel._sysinfo import cpu_model  # noqa: E402
from diffaccel.mnist import load_pretrained  # noqa: E402
from diffaccel.mnist.sampling import sample, sample_naive  # noqa: E402
from diffaccel.mnist.train import build_model, preset, training_loss  # noqa: E402
from diffaccel.schedules import ddpm_linear_schedule  # noqa: E402


def bench_sampling(model, n: int, seed: int, steps=None) -> dict:
    labels = torch.arange(n) % 10
    res = {}

    def timed(key, **kw):
        t0 = time.perf_counter()
        out = sample(model, labels=labels, guidance_scale=5.0, seed=seed, **kw)
        res[key] = time.perf_counter() - t0
        return out

    t0 = time.perf_counter()
    naive = sample_naive(model, labels, guidance_scale=5.0, seed=seed)
    res["naive_s"] = time.perf_counter() - t0
    # the default (compile=None: this 64 x 300 job compiles the guided UNet); first call = compile + run
    fast = timed("diffaccel_first_call_s")
    res["max_abs_diff_vs_naive"] = float((fast - naive).abs().max())
    res["compiled_ok"] = bool(getattr(model.guided_model(compile=True), "compiled_ok", False))
    fast = timed("diffaccel_s")  # warm: the compiled model is cached on `model`
    res["max_abs_diff_warm_vs_naive"] = float((fast - naive).abs().max())
    res["compile_warmup_s"] = res["diffaccel_first_call_s"] - res["diffaccel_s"]
    eager = timed("diffaccel_eager_s", compile=False)
    res["max_abs_diff_eager_vs_naive"] = float((eager - naive).abs().max())
    # The same eager, with oneDNN's direct convolutions instead of the Winograd kernel.
    os.environ["DIFFACCEL_DISABLE_WINOGRAD"] = "1"
    model._fast.pop(("guided", False), None)
    try:
        direct = timed("diffaccel_direct_eager_s", compile=False)
    finally:
        del os.environ["DIFFACCEL_DISABLE_WINOGRAD"]
        model._fast.pop(("guided", False), None)
    res["max_abs_diff_direct_eager_vs_naive"] = float((direct - naive).abs().max())
    t0 = time.perf_counter()
    sample(model, labels=labels, guidance_scale=5.0, seed=seed, num_steps=2, precision="bf16",
           compile=True)  # compiles the bf16-autocast variant of the cached guided UNet
    res["bf16_warmup_s"] = time.perf_counter() - t0
    bf = timed("diffaccel_bf16_s", precision="bf16")
    res["max_abs_diff_bf16_vs_naive"] = float((bf - naive).abs().max())
    res["mean_abs_diff_bf16_vs_naive"] = float((bf - naive).abs().mean())
    for k in ("", "_eager", "_direct_eager", "_bf16", "_first_call"):
        res["speedup" + k] = res["naive_s"] / res[f"diffaccel{k}_s"]
    return res


def bench_training(hidden: int, batch: int, steps: int, data) -> dict:
    x, y = data
    cfg = preset("ddpm_class", hidden=hidden, batch_size=batch)
    abar = ddpm_linear_schedule(cfg.num_timesteps)[2]
    res = {}
    for mode in ("eager", "channels_last", "compile", "bf16_autocast"):
        torch.manual_seed(0)
        model = build_model(cfg)
        if mode == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        run = torch.compile(model) if mode == "compile" else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)

        def step(i):
            xb = x[i * batch:(i + 1) * batch]
            if mode == "channels_last":
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16_autocast"):
                loss = training_loss(run, cfg, xb, y[i * batch:(i + 1) * batch], gen, abar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        step(0)  # warm-up (compiles in "compile" mode)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(1, steps + 1):
            step(i)
        dt = (time.perf_counter() - t0) / steps
        res[mode] = {"step_s": dt, "images_per_s": batch / dt, "warmup_s": warm}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ddpm_class")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_pretrained(args.model)
    out = {"machine": {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__},
           "model": args.model, "hidden": model.model.config.hidden, "n": args.n}
    out["sampling"] = s = bench_sampling(model, args.n, args.seed)
    print(f"\nCFG sampling, {args.n} digits, T={model.num_timesteps}, D={out['hidden']}, "
          f"{args.threads} threads, {out['machine']['cpu']}")
    print("| loop | time (s) | speed-up | max abs diff vs naive |\n|---|---|---|---|")
    print(f"| course-style (2 UNet calls/step, unfused) | {s['naive_s']:.1f} | 1.00x | - |")
    print(f"| diffaccel.mnist.sample (default: guided UNet, compiled{'' if s['compiled_ok'] else ' -> FELL BACK TO EAGER'}) | "
          f"{s['diffaccel_s']:.1f} | {s['speedup']:.2f}x | {s['max_abs_diff_warm_vs_naive']:.1e} |")
    print(f"| the same, first call (+{s['compile_warmup_s']:.0f} s compile) | {s['diffaccel_first_call_s']:.1f} | "
          f"{s['speedup_first_call']:.2f}x | {s['max_abs_diff_vs_naive']:.1e} |")
    print(f"| diffaccel.mnist.sample(compile=False) (guided UNet, eager) | {s['diffaccel_eager_s']:.1f} | "
          f"{s['speedup_eager']:.2f}x | {s['max_abs_diff_eager_vs_naive']:.1e} |")
    print(f"| the same eager, direct convolutions (`DIFFACCEL_DISABLE_WINOGRAD=1`) | {s['diffaccel_direct_eager_s']:.1f} | "
          f"{s['speedup_direct_eager']:.2f}x | {s['max_abs_diff_direct_eager_vs_naive']:.1e} |")
    print(f"| diffaccel.mnist.sample(precision='bf16') (+{s['bf16_warmup_s']:.0f} s compile) | {s['diffaccel_bf16_s']:.1f} | "
          f"{s['speedup_bf16']:.2f}x | {s['max_abs_diff_bf16_vs_naive']:.1e} (mean {s['mean_abs_diff_bf16_vs_naive']:.1e}) |")
    if not args.skip_train:
        from diffaccel.mnist.data import mnist_tensors

        data = mnist_tensors("train")
        out["training"] = tr = bench_training(out["hidden"], 128, args.train_steps, data)
        print(f"\nDDPM training step, D={out['hidden']}, batch 128")
        print("| mode | s/step | images/s | vs eager |\n|---|---|---|---|")
        for mode, r in tr.items():
            print(f"| {mode} | {r['step_s']:.3f} | {r['images_per_s']:.0f} | "
                  f"{r['images_per_s'] / tr['eager']['images_per_s']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
