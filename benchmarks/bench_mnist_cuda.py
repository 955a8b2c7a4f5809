"""Part B on an NVIDIA GPU: CFG sampling, course loop vs diffaccel (eager, CUDA graph, bf16).

    python benchmarks/bench_mnist_cuda.py [--model ddpm_class | RUN_DIR] [--n 64] [--json out.json]

All variants run in one process, side by side, timed with ``torch.cuda.synchronize()`` around
each call: (a) the course-style loop (two eager UNet calls per step, unfused update), (b)
``diffaccel.mnist.sample`` (one batched forward, BN folded, channels-last, fused in-place
update, no host sync per step), (c) the same captured as one CUDA graph (first call: capture +
replay; second call: replay), (d) bf16 autocast + CUDA graph; (e) the few-step solvers
(DPM-Solver++(2M) and UniPC at 5 steps, DPM-Solver++ and DDIM at 10): eager, capture call and
replay-only call; then the throughput of a 2,000-digit run (``--big-n``; the eval workload) in
batches of 1000.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffaccel.mnist import load_pretrained  # noqa: E402
from diffaccel.mnist.sampling import sample, sample_naive  # noqa: E402


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ddpm_class", help="shipped name or a training output folder")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--big-n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    m = load_pretrained(args.model, device="cuda")
    labels = torch.arange(args.n) % 10
    kw = dict(labels=labels, guidance_scale=5.0, seed=args.seed)
    sample(m, labels=labels[:2], num_steps=3)  # warm-up: CUDA context, cuDNN, lazy inits
    sample_naive(m, labels[:2], seed=args.seed)
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
           "hidden": m.model.config.hidden, "n": args.n, "steps": m.num_timesteps}
    def note(key):
        print(f"{key}: {res[key]}", flush=True)

    naive, res["naive_s"] = timed(lambda: sample_naive(m, labels, guidance_scale=5.0, seed=args.seed))
    note("naive_s")
    fast, res["diffaccel_s"] = timed(lambda: sample(m, **kw))
    note("diffaccel_s")
    g1, res["cuda_graph_first_call_s"] = timed(lambda: sample(m, **kw, cuda_graph=True))
    g2, res["cuda_graph_s"] = timed(lambda: sample(m, **kw, cuda_graph=True))
    note("cuda_graph_first_call_s")
    note("cuda_graph_s")
    bf, res["bf16_cuda_graph_s"] = timed(lambda: sample(m, **kw, cuda_graph=True, precision="bf16"))
    bf, res["bf16_cuda_graph_s"] = timed(lambda: sample(m, **kw, cuda_graph=True, precision="bf16"))
    res["max_abs_diff_vs_naive"] = float((fast - naive).abs().max())
    res["mean_abs_diff_vs_naive"] = float((fast - naive).abs().mean())
    res["max_abs_diff_graph_vs_eager"] = float((g2 - fast).abs().max())
    res["mean_abs_diff_bf16_vs_naive"] = float((bf - naive).abs().mean())
    for k in ("diffaccel_s", "cuda_graph_s", "bf16_cuda_graph_s"):
        res["speedup_" + k[:-2]] = res["naive_s"] / res[k]
    # The few-step solvers (benchmarks/bench_samplers.py measures their quality): eager, the
    # capture call, and a replay-only call from the model's graph cache, same digits.
    res["solvers"] = []
    for sampler, steps in (("dpmpp_2m", 5), ("unipc", 5), ("dpmpp_2m", 10), ("dpmpp_2m_sde", 10), ("ddim", 10)):
        skw = dict(kw, sampler=sampler, num_steps=steps)
        e, te = timed(lambda: sample(m, **skw))
        _, tc = timed(lambda: sample(m, **skw, cuda_graph=True))
        r, tr = timed(lambda: sample(m, **skw, cuda_graph=True))
        row = {"sampler": sampler, "num_steps": steps, "eager_s": te, "capture_call_s": tc, "replay_s": tr,
               "speedup_replay_vs_naive": res["naive_s"] / tr, "max_abs_diff_replay_vs_eager": float((r - e).abs().max())}
        res["solvers"].append(row)
        print(json.dumps(row), flush=True)
    big = torch.arange(args.big_n) % 10
    for prec in ("fp32", "bf16"):
        _, s = timed(lambda: sample(m, labels=big, seed=1, batch_size=1000, cuda_graph=True, precision=prec))
        res[f"digits_per_s_{prec}_{args.big_n}"] = args.big_n / s
        note(f"digits_per_s_{prec}_{args.big_n}")
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
