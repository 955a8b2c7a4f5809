"""Kernel launches and time of one CFG sampling step at 64x64, batch 1, on CUDA (issue 2's GPU
target: one launch, two with dynamic thresholding).

    python benchmarks/gpu_launches.py [--json out.json]

Counts the CUDA kernels that torch.profiler sees for one call of ``cfg_ddpm_step`` (IF stage-I
shape 1x3x64x64) per backend, with ``t``/``t_prev`` given as device tensors (what a scheduler or
a captured loop holds) and as Python ints (each int becomes a small fill kernel), and times it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffaccel  # noqa: E402
from diffaccel import functional as F  # noqa: E402
from diffaccel.schedules import ddpm_linear_schedule  # noqa: E402


def count_kernels(fn) -> list:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
             and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    return names


def time_us(fn, reps: int = 200) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) * 1e3 / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    abar = ddpm_linear_schedule(1000)[2].to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 3, 64, 64, device=dev, generator=g)
    eu, ec, z = (torch.randn(1, 3, 64, 64, device=dev, generator=g) for _ in range(3))
    pv = torch.rand(1, 3, 64, 64, device=dev, generator=g) * 2 - 1
    out = torch.empty_like(x)
    tt, tp = torch.tensor([500], device=dev), torch.tensor([480], device=dev)
    configs = {
        "cfg_ddpm_step": dict(),
        "cfg_ddpm_step, IF config (learned range + dynamic threshold)":
            dict(variance="learned_range", predicted_variance=pv, dynamic_threshold=(0.995, 1.5)),
    }
    rows = []
    for b in diffaccel.available_backends(dev):
        for cname, opts in configs.items():
            for tkind, (t, t_prev) in (("tensor t", (tt, tp)), ("int t", (500, 480))):
                def step():
                    F.cfg_ddpm_step(x, eu, ec, 7.0, abar, t, t_prev, noise=z, out=out, backend=b, **opts)
                names = count_kernels(step)
                rows.append({"backend": b, "op": cname, "t": tkind, "launches": len(names),
                             "kernels": sorted(set(names)), "us_per_step": round(time_us(step), 2)})
                print(f"{b:7s} {cname:62s} {tkind:9s} launches={len(names)} {rows[-1]['us_per_step']:8.2f} us")
    if "triton" in diffaccel.available_backends(dev):
        # Triton's two dynamic-thresholding designs on the same IF-shaped step: one program per
        # sample with the sample in registers (the default up to THRESHOLD_FUSED_MAX values) and the
        # grid-wide radix select (histogram passes + a finishing pass, the path of larger samples).
        # The single-program one stays only if it wins here.
        from diffaccel.triton import kernels

        opts = configs["cfg_ddpm_step, IF config (learned range + dynamic threshold)"]
        fused_max = kernels.THRESHOLD_FUSED_MAX
        for variant, cap in (("single-program select", fused_max), ("grid-wide radix select", 0)):
            kernels.THRESHOLD_FUSED_MAX = cap

            def step():
                F.cfg_ddpm_step(x, eu, ec, 7.0, abar, tt, tp, noise=z, out=out, backend="triton", **opts)
            names = count_kernels(step)
            rows.append({"backend": "triton", "op": f"IF config, {variant}", "t": "tensor t",
                         "launches": len(names), "kernels": sorted(set(names)), "us_per_step": round(time_us(step), 2)})
            print(f"triton  IF config, {variant:46s} tensor t  launches={len(names)} {rows[-1]['us_per_step']:8.2f} us")
        kernels.THRESHOLD_FUSED_MAX = fused_max
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
