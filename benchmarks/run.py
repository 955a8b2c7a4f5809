#!/usr/bin/env python
"""Time every diffaccel op x backend against the eager and the compiled reference, in one run.

    python benchmarks/run.py                       # CPU, fp32, 16M elements, 2 threads
    python benchmarks/run.py --quick               # 1M elements, fewer repeats, a smoke test
    python benchmarks/run.py --device cuda --json bench-h100.json
    python benchmarks/run.py --ops ddpm_step gaussian_blur_8x3x256 --backends cpp
    python benchmarks/run.py --cpu-capability avx2 avx512 --backends cpp   # the C++ CPU kernels' ISA levels side by side

For each op it times, side by side:

* ``eager``    — the reference (:mod:`diffaccel.reference`) as plain PyTorch;
* ``compiled`` — ``torch.compile`` of that same reference function;
* ``op``       — ``diffaccel.functional.<op>(..., backend=b)``, output allocated per call;
* ``op out=``  — the same with a preallocated ``out=`` (what a sampling loop does).

Times are medians of repeated calls after warm-up (CUDA: 20 calls captured as one CUDA graph and
replayed between CUDA events, i.e. the kernels alone, without Python overhead). Achieved bandwidth
counts the op's *minimal* memory traffic (each input read once, the output written once),
and is shown next to the bandwidth of ``dst.copy_(src)`` into an existing tensor on the same
device, the practical ceiling for a memory-bound op. ``gaussian_blur_8x3x256`` (33 taps,
sigma 2, the SPEC A1.9 hybrid filter) is also compared with a direct 2-D convolution
(:func:`diffaccel.reference.gaussian_blur_conv2d`): the "baseline" column.

Prints a markdown table and writes JSON (``--json``) with the machine description.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import diffaccel  # noqa: E402
from diffaccel import functional as F  # noqa: E402
from diffaccel import reference as ref  # noqa: E402
from diffaccel.schedules import ddpm_linear_schedule  # noqa: E402

T = 1000
SCALE = 7.5
THRESHOLD = (0.95, 1.5)  # DeepFloyd IF's dynamic thresholding


# ----------------------------------------------------------------------------- op specs
@dataclasses.dataclass
class Spec:
    """One benchmark case: how to call the reference and the API on the same inputs."""

    name: str
    inputs: Callable[[tuple, torch.dtype, torch.device], Dict[str, object]]
    ref: Callable[..., torch.Tensor]  # reference(**inputs), also what torch.compile compiles
    api: Callable[..., torch.Tensor]  # api(backend, out, **inputs)
    tensors_moved: int  # full-size tensors read + written, at minimum
    shape: Optional[tuple] = None  # a fixed shape, else derived from --numel
    baseline: Optional[Callable[..., torch.Tensor]] = None
    baseline_name: str = ""
    outputs: int = 1  # results written; api gets ``out`` as a list of this many when > 1


def _images(*names, mask=False, pv=False):
    def make(shape, dtype, device):
        g = torch.Generator().manual_seed(0)
        n = shape[0]
        d: Dict[str, object] = {k: torch.randn(*shape, generator=g).to(device, dtype) for k in names}
        if pv:
            d["pv"] = (torch.rand(*shape, generator=g) * 2 - 1).to(device, dtype)
        if mask:
            d["mask"] = (torch.rand(n, 1, *shape[2:], generator=g) > 0.5).to(device, dtype)
        d["abar"] = ddpm_linear_schedule(T, 1e-4, 0.02)[2].to(device)
        # Per-sample timesteps spread over the schedule; a strided step back of 30 (SPEC A1.4).
        t = torch.linspace(30, T - 1, n).long()
        d["t"], d["t_prev"] = t.to(device), (t - 30).to(device)
        return d

    return make


def _solver_images(*names):
    """Inputs of a multistep solver step: images + history timesteps t_last = t + 30, t_last2 = t + 60."""
    base = _images(*names)

    def make(shape, dtype, device):
        d = base(shape, dtype, device)
        t = torch.linspace(30, T - 61, shape[0]).long().to(device)
        d["t"], d["t_prev"], d["t_last"], d["t_last2"] = t, t - 30, t + 30, t + 60
        return d

    return make


def _solver_specs() -> List[Spec]:
    """DPM-Solver++(2M) and UniPC steps with their full history (second order, corrector of order 2)."""
    th = dict(dynamic_threshold=THRESHOLD)
    hist = lambda d: dict(x0_prev=d["x0p"], t_last=d["t_last"])  # noqa: E731
    hist2 = lambda d: dict(x0_prev=d["x0p"], t_last=d["t_last"], x_last=d["xl"], x0_prev2=d["x0p2"],  # noqa: E731
                           t_last2=d["t_last2"])
    outs = lambda out, *names: {} if out is None else dict(zip(names, out))  # noqa: E731
    dpm_out, uni_out = ("out", "x0_out"), ("out", "x0_out", "x_corr_out")
    return [
        Spec("dpmpp_2m_step", _solver_images("x", "eps", "x0p"),
             lambda **d: ref.dpmpp_2m_step(d["x"], d["eps"], d["abar"], d["t"], d["t_prev"], **hist(d)),
             lambda b, out, **d: F.dpmpp_2m_step(d["x"], d["eps"], d["abar"], d["t"], d["t_prev"], **hist(d),
                                                 backend=b, **outs(out, *dpm_out)), 5, outputs=2),
        Spec("dpmpp_2m_sde_step", _solver_images("x", "eps", "x0p", "z"),
             lambda **d: ref.dpmpp_2m_step(d["x"], d["eps"], d["abar"], d["t"], d["t_prev"], **hist(d), noise=d["z"]),
             lambda b, out, **d: F.dpmpp_2m_sde_step(d["x"], d["eps"], d["abar"], d["t"], d["t_prev"], d["z"],
                                                     **hist(d), backend=b, **outs(out, *dpm_out)), 6, outputs=2),
        Spec("cfg_dpmpp_2m_step_if", _solver_images("x", "eu", "ec", "x0p"),
             lambda **d: ref.dpmpp_2m_step(d["x"], ref.cfg_combine(d["eu"], d["ec"], SCALE), d["abar"], d["t"],
                                           d["t_prev"], **hist(d), **th),
             lambda b, out, **d: F.cfg_dpmpp_2m_step(d["x"], d["eu"], d["ec"], SCALE, d["abar"], d["t"], d["t_prev"],
                                                     **hist(d), **th, backend=b, **outs(out, *dpm_out)), 6, outputs=2),
        Spec("unipc_step", _solver_images("x", "eps", "x0p", "xl", "x0p2"),
             lambda **d: ref.unipc_step(d["x"], d["eps"], d["abar"], d["t"], d["t_prev"], **hist2(d)),
             lambda b, out, **d: F.unipc_step(d["x"], d["eps"], d["abar"], d["t"], d["t_prev"], **hist2(d),
                                              backend=b, **outs(out, *uni_out)), 8, outputs=3),
        Spec("cfg_unipc_step_if", _solver_images("x", "eu", "ec", "x0p", "xl", "x0p2"),
             lambda **d: ref.unipc_step(d["x"], ref.cfg_combine(d["eu"], d["ec"], SCALE), d["abar"], d["t"],
                                        d["t_prev"], **hist2(d), **th),
             lambda b, out, **d: F.cfg_unipc_step(d["x"], d["eu"], d["ec"], SCALE, d["abar"], d["t"], d["t_prev"],
                                                  **hist2(d), **th, backend=b, **outs(out, *uni_out)), 9, outputs=3),
        Spec("heun_step", _images("x", "v", "w"),
             lambda x, v, w, abar, t, t_prev: ref.heun_step(x, v, w, 0.05),
             lambda b, out, x, v, w, abar, t, t_prev: F.heun_step(x, v, w, 0.05, out=out, backend=b), 4),
    ]


def _blur_inputs(shape, dtype, device):
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(*shape, generator=g).to(device, dtype),
            "y": torch.randn(*shape, generator=g).to(device, dtype)}


def _specs() -> List[Spec]:
    step_kw = dict(variance="learned_range", dynamic_threshold=THRESHOLD)
    return [
        Spec("add_noise", _images("x0", "noise"),
             lambda x0, noise, abar, t, t_prev: ref.add_noise(x0, noise, abar, t),
             lambda b, out, x0, noise, abar, t, t_prev: F.add_noise(x0, noise, abar, t, out=out, backend=b), 3),
        Spec("predict_x0", _images("x", "eps"),
             lambda x, eps, abar, t, t_prev: ref.predict_x0(x, eps, abar, t),
             lambda b, out, x, eps, abar, t, t_prev: F.predict_x0(x, eps, abar, t, out=out, backend=b), 3),
        Spec("cfg_combine", _images("eu", "ec"),
             lambda eu, ec, abar, t, t_prev: ref.cfg_combine(eu, ec, SCALE),
             lambda b, out, eu, ec, abar, t, t_prev: F.cfg_combine(eu, ec, SCALE, out=out, backend=b), 3),
        Spec("ddpm_step", _images("x", "eps", "noise"),
             lambda x, eps, noise, abar, t, t_prev: ref.ddpm_step(x, eps, abar, t, t_prev, noise=noise),
             lambda b, out, x, eps, noise, abar, t, t_prev: F.ddpm_step(
                 x, eps, abar, t, t_prev, noise=noise, out=out, backend=b), 4),
        Spec("ddpm_step_if", _images("x", "eps", "noise", pv=True),  # learned range + dynamic threshold
             lambda x, eps, noise, pv, abar, t, t_prev: ref.ddpm_step(
                 x, eps, abar, t, t_prev, noise=noise, predicted_variance=pv, **step_kw),
             lambda b, out, x, eps, noise, pv, abar, t, t_prev: F.ddpm_step(
                 x, eps, abar, t, t_prev, noise=noise, predicted_variance=pv, out=out, backend=b, **step_kw), 5),
        Spec("cfg_ddpm_step", _images("x", "eu", "ec", "noise"),
             lambda x, eu, ec, noise, abar, t, t_prev: ref.ddpm_step(
                 x, ref.cfg_combine(eu, ec, SCALE), abar, t, t_prev, noise=noise),
             lambda b, out, x, eu, ec, noise, abar, t, t_prev: F.cfg_ddpm_step(
                 x, eu, ec, SCALE, abar, t, t_prev, noise=noise, out=out, backend=b), 5),
        Spec("cfg_ddpm_step_if", _images("x", "eu", "ec", "noise", pv=True),
             lambda x, eu, ec, noise, pv, abar, t, t_prev: ref.ddpm_step(
                 x, ref.cfg_combine(eu, ec, SCALE), abar, t, t_prev, noise=noise, predicted_variance=pv,
                 **step_kw),
             lambda b, out, x, eu, ec, noise, pv, abar, t, t_prev: F.cfg_ddpm_step(
                 x, eu, ec, SCALE, abar, t, t_prev, noise=noise, predicted_variance=pv, out=out, backend=b,
                 **step_kw), 6),
        Spec("ddim_step", _images("x", "eps"),
             lambda x, eps, abar, t, t_prev: ref.ddim_step(x, eps, abar, t, t_prev),
             lambda b, out, x, eps, abar, t, t_prev: F.ddim_step(x, eps, abar, t, t_prev, out=out, backend=b), 3),
        Spec("cfg_ddim_step", _images("x", "eu", "ec"),
             lambda x, eu, ec, abar, t, t_prev: ref.ddim_step(x, ref.cfg_combine(eu, ec, SCALE), abar, t, t_prev),
             lambda b, out, x, eu, ec, abar, t, t_prev: F.cfg_ddim_step(
                 x, eu, ec, SCALE, abar, t, t_prev, out=out, backend=b), 4),
        Spec("masked_project", _images("x", "x_orig", "noise", mask=True),  # + an (N, 1, H, W) mask
             lambda x, x_orig, noise, mask, abar, t, t_prev: ref.masked_project(x, x_orig, mask, noise, abar, t),
             lambda b, out, x, x_orig, noise, mask, abar, t, t_prev: F.masked_project(
                 x, x_orig, mask, noise, abar, t, out=out, backend=b), 4),
        Spec("gaussian_blur", _blur_inputs,
             lambda x, y: ref.gaussian_blur(x, 33, 2.0),
             lambda b, out, x, y: F.gaussian_blur(x, 33, 2.0, out=out, backend=b), 2),
        Spec("highpass", _blur_inputs,
             lambda x, y: ref.highpass(x, 33, 2.0),
             lambda b, out, x, y: F.highpass(x, 33, 2.0, out=out, backend=b), 2),
        Spec("hybrid_combine", _blur_inputs,
             lambda x, y: ref.hybrid_combine(x, y, 33, 2.0),
             lambda b, out, x, y: F.hybrid_combine(x, y, 33, 2.0, out=out, backend=b), 3),
        Spec("gaussian_blur_8x3x256", _blur_inputs,
             lambda x, y: ref.gaussian_blur(x, 33, 2.0),
             lambda b, out, x, y: F.gaussian_blur(x, 33, 2.0, out=out, backend=b), 2,
             shape=(8, 3, 256, 256),
             baseline=lambda x, y: ref.gaussian_blur_conv2d(x, 33, 2.0), baseline_name="conv2d 33x33"),
    ] + _solver_specs()


SPECS = {s.name: s for s in _specs()}


def image_shape(numel: int) -> tuple:
    """An NCHW shape with ``numel`` elements: 4 channels of square images, as large as divides it."""
    for side in (512, 256, 128, 64, 32, 16, 8):
        if numel % (4 * side * side) == 0:
            return (numel // (4 * side * side), 4, side, side)
    raise SystemExit(f"--numel {numel} must be a multiple of 4 * 8 * 8")


# ----------------------------------------------------------------------------- timing
class Timer:
    """Median (or min) wall time of ``fn()`` after warm-up: perf_counter on CPU, CUDA events on GPU.

    The number of repeats adapts to the op's duration (about ``budget_s`` of repeats, at least
    ``min_reps``). ``min`` is for shared, noisy machines, where the median measures the neighbours.
    """

    def __init__(self, device: torch.device, quick: bool, stat: str = "median"):
        self.cuda = device.type == "cuda"
        self.stat = statistics.median if stat == "median" else min
        self.min_reps, self.max_reps = (3, 10) if quick else (7, 100)
        self.budget_s = 0.3 if quick else 1.0  # time spent on the repeats of one measurement

    def _once(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def _graph(self, fn, reps: int = 20) -> float:
        """GPU time per call: ``reps`` calls captured as one CUDA graph, replayed between two events.
        This is the kernels' time alone; Python and launch overhead (what a captured sampling loop
        never pays) is left out — benchmarks/gpu_launches.py measures that per call."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (lazy inits, Triton JIT)
            fn()
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        graph.replay()
        times = []
        for _ in range(self.min_reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / reps)
        del graph
        return self.stat(times)

    def __call__(self, fn) -> float:
        if self.cuda:
            try:
                return self._graph(fn)
            except Exception as e:  # noqa: BLE001 - not capturable: time calls one by one
                print(f"  (CUDA graph capture failed: {type(e).__name__}: {str(e)[:120]}; timing eagerly)",
                      file=sys.stderr)
                torch.cuda.synchronize()
        first = self._once(fn)  # warm-up (and page-in of freshly allocated memory pools)
        second = self._once(fn)
        reps = max(self.min_reps, min(self.max_reps, int(self.budget_s / max(min(first, second), 1e-6))))
        self._once(fn)
        return self.stat([self._once(fn) for _ in range(reps)])


def copy_bandwidth(timer: Timer, numel: int, dtype: torch.dtype, device: torch.device) -> float:
    """GB/s of ``dst.copy_(src)`` into an existing tensor (read + write)."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    secs = timer(lambda: dst.copy_(src))
    return 2 * numel * src.element_size() / secs / 1e9


def machine_info(device: torch.device, threads: int) -> Dict[str, object]:
    from diffaccel._sysinfo import cpu_model

    cpu = cpu_model()
    info = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads, "torch": torch.__version__,
        "python": platform.python_version(), "diffaccel": diffaccel.__version__, "device": str(device),
        "backends": diffaccel.available_backends(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------- runner
def run_spec(spec: Spec, backends: List[str], shape: tuple, dtype: torch.dtype, device: torch.device,
             timer: Timer, compile_ref: bool) -> List[Dict[str, object]]:
    shape = spec.shape or shape
    numel = math.prod(shape)
    # The ceiling is measured right before the op, at its size: caches and a shared machine's
    # load change between ops, and a 1.5M-element blur is not compared with a 16M-element copy.
    copy_gbps = copy_bandwidth(timer, numel, dtype, device)
    inputs = spec.inputs(shape, dtype, device)
    moved = spec.tensors_moved * numel * torch.empty((), dtype=dtype).element_size()
    if "mask" in inputs:
        moved += inputs["mask"].numel() * inputs["mask"].element_size()

    eager = timer(lambda: spec.ref(**inputs))
    compiled = None
    if compile_ref:
        try:
            cfn = torch.compile(spec.ref, dynamic=False)
            compiled = timer(lambda: cfn(**inputs))
        except Exception as e:  # noqa: BLE001 - report, keep benchmarking the rest
            print(f"  [{spec.name}] torch.compile of the reference failed: {type(e).__name__}: {e}", file=sys.stderr)
    baseline = timer(lambda: spec.baseline(**inputs)) if spec.baseline else None

    rows = []
    for b in backends:
        out = torch.empty(shape, dtype=dtype, device=device)
        if spec.outputs > 1:
            out = [out] + [torch.empty(shape, dtype=dtype, device=device) for _ in range(spec.outputs - 1)]
        op = timer(lambda: spec.api(b, None, **inputs))
        op_out = timer(lambda: spec.api(b, out, **inputs))
        gbps = moved / op_out / 1e9
        rows.append({
            "op": spec.name, "backend": b, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
            "bytes": moved, "eager_ms": eager * 1e3, "compiled_ms": None if compiled is None else compiled * 1e3,
            "op_ms": op * 1e3, "op_out_ms": op_out * 1e3,
            "copy_gbps": copy_gbps, "gbps_out": gbps, "pct_copy_out": 100 * gbps / copy_gbps,
            "speedup_vs_eager": eager / op, "speedup_vs_compiled": None if compiled is None else compiled / op,
            "speedup_out_vs_eager": eager / op_out,
            "speedup_out_vs_compiled": None if compiled is None else compiled / op_out,
            "baseline": spec.baseline_name or None,
            "baseline_ms": None if baseline is None else baseline * 1e3,
            "speedup_vs_baseline": None if baseline is None else baseline / op,
        })
        print(f"  {spec.name:>22} {b:>6}: eager {eager * 1e3:8.2f} ms  op {op * 1e3:8.2f} ms  "
              f"out= {op_out * 1e3:8.2f} ms  {gbps:6.1f} GB/s (copy_ {copy_gbps:.1f})", file=sys.stderr)
    return rows


def _fmt(v, spec="{:.2f}", suffix=""):
    return "—" if v is None else spec.format(v) + suffix


def markdown(rows: List[Dict[str, object]], info: Dict[str, object]) -> str:
    head = (f"device: {info['device']} ({info.get('gpu', info['cpu'])}), threads: {info['threads']}, "
            f"torch {info['torch']}, {info['stat']} of repeats, load average {info.get('loadavg_1min', 0):.1f}\n\n")
    cols = ["op", "backend", "eager ms", "compiled ms", "op ms", "op out= ms", "GB/s (out=)", "copy_ GB/s", "% of copy",
            "x eager", "x compiled", "x baseline"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["op"], r["backend"], _fmt(r["eager_ms"]), _fmt(r["compiled_ms"]), _fmt(r["op_ms"]),
            _fmt(r["op_out_ms"]), _fmt(r["gbps_out"], "{:.1f}"), _fmt(r["copy_gbps"], "{:.1f}"),
            _fmt(r["pct_copy_out"], "{:.0f}", "%"),
            _fmt(r["speedup_vs_eager"], suffix="x"), _fmt(r["speedup_vs_compiled"], suffix="x"),
            _fmt(r["speedup_vs_baseline"], suffix="x")]) + " |")
    notes = ("\n\nx eager / x compiled: reference time / op time (both allocate their output). "
             "GB/s counts the minimal traffic (inputs read once, output written once) of the out= call; "
             "copy_ GB/s is `dst.copy_(src)` into an existing tensor of the op's size, measured just before it. "
             "x baseline: for gaussian_blur_8x3x256, a direct 33x33 2-D convolution "
             "(reference.gaussian_blur_conv2d).")
    return head + "\n".join(lines) + notes


def _without_options(argv: List[str], names) -> List[str]:
    """argv without the options ``names`` and their values."""
    out, skip = [], False
    for a in argv:
        if a.split("=", 1)[0] in names:
            skip = "=" not in a
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


def run_levels(args, argv: List[str]) -> int:
    """``--cpu-capability``: this benchmark once per ISA level, in a fresh process each, merged."""
    import subprocess
    import tempfile

    child_argv = _without_options(argv, ("--cpu-capability", "--json"))
    rows, info = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.cpu_capability:
            out = Path(tmp) / f"{level}.json"
            env = {**os.environ, "DIFFACCEL_CPU_CAPABILITY": level}
            subprocess.run([sys.executable, __file__, *child_argv, "--json", str(out)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            res = json.loads(out.read_text())
            got = res["machine"].get("cpu_capability")
            if got != level:
                raise SystemExit(f"--cpu-capability {level}: the C++ kernels ran at level {got} "
                                 "(not built, or this CPU lacks it)")
            for r in res["rows"]:
                r["cpu_capability"] = level
                if r["backend"] == "cpp":
                    r["backend"] = f"cpp [{level}]"
            rows.append(res["rows"])
            info = res["machine"]
    # op by op, the levels next to each other (the reference rows of each level are kept: they
    # show how much the machine's load moved between the runs)
    merged = [r for i in range(max(map(len, rows))) for level_rows in rows if i < len(level_rows)
              for r in [level_rows[i]]]
    info["cpu_capability"] = "+".join(args.cpu_capability)
    print(markdown(merged, info))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "levels": args.cpu_capability, "rows": merged}, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--numel", type=int, default=None,
                   help="elements per image tensor (default 16M = 16x4x512x512; 1M with --quick)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--ops", nargs="+", choices=list(SPECS), default=list(SPECS))
    p.add_argument("--backends", nargs="+", default=None,
                   help="default: every available backend except the plain 'torch' one (that is the eager "
                        "reference plus a copy); Triton's interpreter is never timed")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="statistic over the repeats (min on a busy shared machine)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--quick", action="store_true", help="1M elements (unless --numel), few repeats")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--cpu-capability", nargs="+", choices=["generic", "avx2", "avx512"], default=None,
                   help="time the C++ CPU kernels under each of these ISA levels (one fresh process per level, "
                        "DIFFACCEL_CPU_CAPABILITY set, since the level is chosen when the extension loads); "
                        "rows side by side, the backend column naming the level")
    args = p.parse_args(argv)
    if args.cpu_capability:
        return run_levels(args, list(sys.argv[1:] if argv is None else argv))

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this PyTorch sees no CUDA device")
    torch.set_num_threads(args.threads)
    numel = args.numel or (1 if args.quick else 16) * 1024 * 1024
    dtype = getattr(torch, args.dtype)
    available = diffaccel.available_backends(device)
    if args.backends is None:
        backends = [b for b in available if b != "torch"] or ["torch"]
    else:
        missing = [b for b in args.backends if b not in available]
        if missing:
            raise SystemExit(f"backends {missing} are not available on {device} (available: {available})")
        backends = args.backends
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        backends = [b for b in backends if b != "triton"]  # the interpreter is a test tool, not a speed

    timer = Timer(device, args.quick, args.stat)
    info = machine_info(device, args.threads)
    info["stat"] = args.stat
    info["cpu_capability"] = diffaccel.cpu_capability()  # the C++ CPU kernels' ISA level
    if hasattr(os, "getloadavg"):
        info["loadavg_1min"] = os.getloadavg()[0]  # > threads: the machine was shared, numbers are noisy
    print(f"{info['cpu'] if device.type == 'cpu' else info['gpu']}: backends {backends}; "
          f"{numel} elements, {args.dtype}", file=sys.stderr)
    rows = []
    for name in args.ops:
        rows += run_spec(SPECS[name], backends, image_shape(numel), dtype, device, timer,
                         compile_ref=not args.no_compile)
    table = markdown(rows, info)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "numel": numel, "dtype": args.dtype, "rows": rows}, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
