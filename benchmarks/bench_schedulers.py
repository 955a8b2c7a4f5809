#!/usr/bin/env python
"""diffaccel's drop-in schedulers against diffusers' own, side by side in one run (SPEC: the step targets).

    python benchmarks/bench_schedulers.py                 # CPU
    python benchmarks/bench_schedulers.py --device cuda --json sched-h100.json
    python benchmarks/bench_schedulers.py --quick         # fewer repeats, a smoke test

(a) ``DDPMScheduler.step`` alone with IF stage I's config (learned range + dynamic
    thresholding 0.95 / 1.5), 64x64 and 256x256, batch 1 and 8: diffusers' vs ours as a
    pipeline uses it (``prev_sample`` read; ``pred_original_sample`` is computed only when read)
    and ours with ``pred_original_sample`` read too (diffusers always computes both).
(c) ``DPMSolverMultistepScheduler.step`` / ``UniPCMultistepScheduler.step`` alone with IF stage I's
    config (dynamic thresholding 0.95 / 1.5; DPM-Solver++ with the learned-range channels),
    second order (UniPC: corrector + predictor), same sizes: diffusers' vs ours (fused op).
    ``--only-solvers`` runs just this part.
(b) A 30-step CFG sampling loop (guidance 7, learned variance) at 64x64, batch 1, with a model
    that costs nothing (it returns fixed precomputed tensors):
    diffusers' ``IFPipeline.__call__`` with its scheduler, the same pipeline with ours, and
    diffaccel's own loop (``cfg_ddpm_step`` writing into the sample, noise drawn into a buffer).

Times are minima over repeats after warm-up (CUDA: synchronised). Prints a markdown table and
writes JSON with the machine description.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import diffusers  # noqa: E402
from diffusers import ConfigMixin, ModelMixin  # noqa: E402
from diffusers.configuration_utils import register_to_config  # noqa: E402

import diffaccel  # noqa: E402
from diffaccel import functional as F  # noqa: E402
from diffaccel import schedulers as S  # noqa: E402

IF_CONFIG = dict(beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000,
                 prediction_type="epsilon", variance_type="learned_range", thresholding=True,
                 dynamic_thresholding_ratio=0.95, sample_max_value=1.5, clip_sample=True, clip_sample_range=1.0)
GUIDANCE = 7.0
STEPS = 30


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, min_time=0.4, min_reps=5, max_reps=200):
    """Seconds per call of ``fn`` after two warm-up calls: the minimum over repeats, the least
    disturbed call (these shared machines preempt; a median mixes in other jobs' load)."""
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


# ----------------------------------------------------------------------------- (a) step alone
def bench_step(device, size, batch, quick):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device, generator=g)
    mo = torch.cat([torch.randn(batch, 3, size, size, device=device, generator=g),
                    torch.rand(batch, 3, size, size, device=device, generator=g) * 2 - 1], 1)
    rows = {}
    variants = [("diffusers", diffusers.DDPMScheduler, True), ("diffaccel", S.DDPMScheduler, False),
                ("diffaccel, + pred_original_sample", S.DDPMScheduler, True)]
    for name, cls, read_x0 in variants:
        s = cls(**IF_CONFIG)
        s.set_timesteps(STEPS, device=device)
        ts = list(s.timesteps[:-1])  # t > 0: every step draws noise
        state = {"i": 0}

        def one(s=s, ts=ts, state=state, read_x0=read_x0):
            t = ts[state["i"] % len(ts)]
            state["i"] += 1
            out = s.step(mo, t, x, generator=g)
            if read_x0:
                out.pred_original_sample

        rows[name] = timeit(one, device, min_time=0.15 if quick else 0.5)
    return rows


# ----------------------------------------------------------------------------- (c) multistep solvers
#: IF's stage-I scheduler config as diffusers' multistep solvers load it (``from_config``)
SOLVER_CONFIG = {k: IF_CONFIG[k] for k in ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps",
                                           "prediction_type", "thresholding", "dynamic_thresholding_ratio",
                                           "sample_max_value")}
SOLVERS = {
    "DPMSolverMultistepScheduler": (diffusers.DPMSolverMultistepScheduler, S.DPMSolverMultistepScheduler,
                                    dict(SOLVER_CONFIG, variance_type="learned_range", solver_order=2)),
    "UniPCMultistepScheduler": (diffusers.UniPCMultistepScheduler, S.UniPCMultistepScheduler,
                                dict(SOLVER_CONFIG, solver_order=2)),
}


def bench_solver_step(device, size, batch, quick, name):
    """One second-order step (UniPC: corrector + predictor) in the middle of a 20-step schedule.

    The multistep history is warmed by two real steps; each timed call then rewinds the step
    counter to the same step, so every call is the same steady-state update (the history
    buffers rotate but keep their shapes). Returns seconds per step for diffusers' class and ours.
    """
    theirs_cls, ours_cls, cfg = SOLVERS[name]
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device, generator=g)
    eps = torch.randn(batch, 3, size, size, device=device, generator=g)
    mo = torch.cat([eps, torch.rand(batch, 3, size, size, device=device, generator=g) * 2 - 1], 1) \
        if cfg.get("variance_type") == "learned_range" else eps
    rows = {}
    for label, cls in (("diffusers", theirs_cls), ("diffaccel", ours_cls)):
        s = cls.from_config(cfg)
        s.set_timesteps(20, device=device)
        for t in s.timesteps[:2]:  # warm the history: the next steps are second order
            s.step(mo, t, x)
        k, t = 2, s.timesteps[2]

        def one(s=s, t=t, k=k):
            s._step_index = k
            s.step(mo, t, x)

        rows[label] = timeit(one, device, min_time=0.15 if quick else 0.5)
    return rows


# ----------------------------------------------------------------------------- (b) sampling loop
class FixedUNet(ModelMixin, ConfigMixin):
    """A "UNet" that costs nothing: returns one precomputed ``[2N, 6, H, W]`` output."""

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 6, sample_size: int = 64):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the pipeline a device and dtype
        self.output = None

    def forward(self, sample, timestep, encoder_hidden_states=None, cross_attention_kwargs=None, return_dict=False):
        return (self.output,)


def bench_loop(device, size, batch, quick):
    g = torch.Generator(device=device).manual_seed(0)
    out = torch.cat([torch.randn(2 * batch, 3, size, size, device=device, generator=g) * 0.5,
                     torch.rand(2 * batch, 3, size, size, device=device, generator=g) * 2 - 1], 1)
    unet = FixedUNet(sample_size=size).to(device)
    unet.output = out
    emb = torch.randn(batch, 4, 8, device=device)

    def pipeline(scheduler):
        pipe = diffusers.IFPipeline(tokenizer=None, text_encoder=None, unet=unet, scheduler=scheduler,
                                    safety_checker=None, feature_extractor=None, watermarker=None,
                                    requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)

        def run():
            with torch.no_grad():
                return pipe(prompt_embeds=emb, negative_prompt_embeds=emb, num_inference_steps=STEPS,
                            guidance_scale=GUIDANCE, height=size, width=size, output_type="pt",
                            generator=torch.Generator(device=device).manual_seed(1)).images
        return run

    # diffaccel's own loop: the model's outputs are views (no copies), one fused kernel per step
    # (CFG + x0 + thresholding + posterior + learned-range noise), written into x in place.
    sched = S.DDPMScheduler(**IF_CONFIG)
    sched.set_timesteps(STEPS, device=device)
    abar = sched.alphas_cumprod.to(device=device, dtype=torch.float32)
    ts = sched.timesteps.tolist()
    t_dev = [torch.full((batch,), t, dtype=torch.int64, device=device) for t in ts]
    tp_dev = [torch.full((batch,), p, dtype=torch.int64, device=device) for p in ts[1:] + [-1]]
    eps_u, eps_c, var = out[:batch, :3], out[batch:, :3], out[batch:, 3:]
    eps_u, eps_c, var = eps_u.contiguous(), eps_c.contiguous(), var.contiguous()
    x = torch.empty(batch, 3, size, size, device=device)
    noise = torch.empty_like(x)

    def fused_loop():
        gen = torch.Generator(device=device).manual_seed(1)
        torch.randn(x.shape, generator=gen, out=x)
        for i in range(STEPS):
            has_noise = ts[i] > 0
            if has_noise:
                torch.randn(x.shape, generator=gen, out=noise)
            F.cfg_ddpm_step(x, eps_u, eps_c, GUIDANCE, abar, t_dev[i], tp_dev[i], noise=noise if has_noise else None,
                            variance="learned_range", predicted_variance=var,
                            dynamic_threshold=(IF_CONFIG["dynamic_thresholding_ratio"], IF_CONFIG["sample_max_value"]),
                            out=x)
        return x

    mt = 0.3 if quick else 1.5
    rows = {
        "diffusers IFPipeline + diffusers DDPMScheduler": timeit(pipeline(diffusers.DDPMScheduler(**IF_CONFIG)), device, mt, 3),
        "diffusers IFPipeline + diffaccel DDPMScheduler": timeit(pipeline(S.DDPMScheduler(**IF_CONFIG)), device, mt, 3),
        "diffaccel loop (cfg_ddpm_step, out=)": timeit(fused_loop, device, mt, 3),
    }
    # the fused loop must produce the pipeline's image (same generator, same noise draws)
    ref_img = pipeline(diffusers.DDPMScheduler(**IF_CONFIG))()
    ours_img = fused_loop()  # output_type="pt" returns the raw sample
    check = float((ref_img - ours_img).abs().max())
    return rows, check


# ----------------------------------------------------------------------------- main
def machine(device):
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "diffaccel": diffaccel.__version__, "device": str(device),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "backends": diffaccel.available_backends(device), "processor": platform.processor()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only-solvers", action="store_true", help="run only (c), the multistep solvers' step")
    ap.add_argument("--json", default=None, help="where to write results (default benchmarks/results/schedulers-<device>.json)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"machine": machine(device), "step": [], "loop": {}}

    print(f"# diffaccel schedulers vs diffusers on {device} ({results['machine']['backends']})\n")
    if not args.only_solvers:
        print("## (a) DDPMScheduler.step, IF stage I config (learned range + dynamic thresholding)\n")
        print("| size | batch | diffusers (ms) | diffaccel (ms) | speed-up | diffaccel + pred_original_sample read (ms) | speed-up |")
        print("|---|---|---|---|---|---|---|")
    for size in (64, 256) if not args.only_solvers else ():
        for batch in (1, 8):
            r = bench_step(device, size, batch, args.quick)
            d, o, lite = r["diffusers"], r["diffaccel"], r["diffaccel, + pred_original_sample"]
            print(f"| {size}x{size} | {batch} | {d * 1e3:.3f} | {o * 1e3:.3f} | {d / o:.1f}x | {lite * 1e3:.3f} | {d / lite:.1f}x |",
                  flush=True)
            results["step"].append({"size": size, "batch": batch, **{k: v for k, v in r.items()}})

    print("\n## (c) multistep solvers' step, IF stage I config (dynamic thresholding 0.95 / 1.5), second order\n")
    print("| scheduler | size | batch | diffusers (ms) | diffaccel (ms) | speed-up |")
    print("|---|---|---|---|---|---|")
    results["solver_step"] = []
    for name in SOLVERS:
        for size in (64, 256):
            for batch in (1, 8):
                r = bench_solver_step(device, size, batch, args.quick, name)
                d, o = r["diffusers"], r["diffaccel"]
                print(f"| {name} | {size}x{size} | {batch} | {d * 1e3:.3f} | {o * 1e3:.3f} | {d / o:.1f}x |", flush=True)
                results["solver_step"].append({"scheduler": name, "size": size, "batch": batch, **r})
    if args.only_solvers:
        return _write(results, args, device)

    print(f"\n## (b) {STEPS}-step CFG loop (guidance {GUIDANCE}, learned range), 64x64, batch 1, zero-cost model\n")
    rows, check = bench_loop(device, 64, 1, args.quick)
    base = rows["diffusers IFPipeline + diffusers DDPMScheduler"]
    print("| loop | total (ms) | per step (ms) | speed-up |")
    print("|---|---|---|---|")
    for name, sec in rows.items():
        print(f"| {name} | {sec * 1e3:.2f} | {sec * 1e3 / STEPS:.3f} | {base / sec:.1f}x |")
    print(f"\nmax |image difference| fused loop vs diffusers pipeline: {check:.2e}")
    results["loop"] = {"seconds": rows, "max_abs_image_diff_fused_vs_diffusers": check}

    _write(results, args, device)


def _write(results, args, device):
    path = Path(args.json) if args.json else Path(__file__).resolve().parent / "results" / f"schedulers-{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
