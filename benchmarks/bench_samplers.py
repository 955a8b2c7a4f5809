"""The quality / steps / time frontier of the samplers on the shipped MNIST models.

    python benchmarks/bench_samplers.py [--models ddpm_class flow_class ...] [--nfe 5 10 20 50 300]
        [--n 5000] [--time-n 64] [--threads 2] [--json benchmarks/results/samplers-cpu.json]
        [--plot docs/samplers-frontier.png] [--guidance-sweep] [--course-loop]

For every model and every sampler that applies (DDPM models: ddpm, ddim, dpmpp_2m, unipc; flow
models: euler, heun) and every NFE (model evaluations per digit): label accuracy of the
class-conditional models (g = 5) and the Fréchet distance against the test set in the project
classifier's feature space (``diffaccel.mnist.evaluate``), beside the floor (training digits vs
test set); and the wall time of 64 digits at that point. ``--course-loop`` also times the course
loop (``sample_naive``: two eager UNet calls per step, unfused update, all 300 steps) on the same
64 digits, side by side. ``--guidance-sweep`` evaluates ``ddpm_class`` at g = 1, 2, 3, 5, 7 with
the best 10-NFE sampler. Results are appended to the JSON as each point finishes (a rerun skips
the points already there with the same ``n``), so a long run can be stopped and resumed. Runs in
parallel write one file each; ``--merge A.json B.json --json all.json`` joins them.
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
from diffaccel.mnist.classifier import features, frechet_distance, load_classifier  # noqa: E402
from diffaccel.mnist.data import mnist_tensors  # noqa: E402
from diffaccel.mnist.evaluate import evaluate_generator  # noqa: E402
from diffaccel.mnist.sampling import sample, sample_naive  # noqa: E402
from diffaccel.report.frontier import _models  # noqa: E402
from diffaccel.samplers import DDPM_SAMPLERS, FLOW_SAMPLERS, nfe  # noqa: E402


def samplers_for(model) -> tuple:
    """The samplers that apply to a model: DDPM ones for noise predictors, flow ones for velocity models."""
    return DDPM_SAMPLERS if model.kind == "ddpm" else FLOW_SAMPLERS


def nfe_to_steps(model, sampler: str, nfe_target: int):
    """``num_steps`` for at most ``nfe_target`` model evaluations per digit (Heun: 2n - 1 for n
    steps); ``None`` (the full DDPM chain) for T evaluations."""
    if model.kind == "ddpm" and nfe_target >= model.num_timesteps:
        return None
    return max(1, (nfe_target + 1) // 2) if sampler == "heun" else nfe_target

GUIDANCE = 5.0


def _load(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"points": [], "timing": [], "course_loop": {}, "guidance_sweep": [], "floor": {}}


def _save(path: Path, res: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, path)


def _have(rows, **key) -> bool:
    return any(all(r.get(k) == v for k, v in key.items()) for r in rows)


#: what identifies a row of each list: the same key measured twice must give the same numbers
_KEYS = {"points": ("model", "sampler", "nfe", "n", "seed", "guidance_scale"),
         "timing": ("model", "sampler", "nfe", "n", "threads"),
         "guidance_sweep": ("model", "sampler", "nfe", "n", "seed", "guidance_scale")}


def merge(paths, into: Path) -> dict:
    """Merges result files written by separate runs (concurrent runs must each write their own
    file: every save rewrites the whole file) into ``into``. Rows are matched by their key (model,
    sampler, NFE, n, ...): a new key is appended; a key already there keeps the row there, and a
    quality point whose Fréchet distance differs (seeded runs are deterministic) is an error.
    Timing rows keep the load they ran under (``load_avg_at_start`` of their file)."""
    res = _load(into)
    for src in map(Path, paths):
        other = json.loads(src.read_text())
        load = other.get("machine", {}).get("load_avg_at_start")
        for name, key in _KEYS.items():
            rows = res.setdefault(name, [])
            index = {tuple(r.get(k) for k in key): r for r in rows}
            for r in other.get(name, []):
                k = tuple(r.get(f) for f in key)
                if k not in index:
                    r = dict(r, **({"load_avg_at_start": load} if name == "timing" and load is not None else {}))
                    rows.append(r)
                    index[k] = r
                elif name != "timing" and abs(index[k]["frechet_distance"] - r["frechet_distance"]) > 1e-3:
                    raise ValueError(f"{src}: {dict(zip(key, k))} has FD {r['frechet_distance']} here and "
                                     f"{index[k]['frechet_distance']} in {into}: not the same measurement")
        for n, fl in other.get("floor", {}).items():
            if n in res.setdefault("floor", {}) and abs(res["floor"][n] - fl) > 1e-3:
                raise ValueError(f"{src}: floor at n = {n} is {fl} here and {res['floor'][n]} in {into}")
            res["floor"][n] = fl
        for model, t in other.get("course_loop", {}).items():
            res.setdefault("course_loop", {}).setdefault(model, t)
    _save(into, res)
    return res


def markdown(res: dict) -> str:
    """The quality points as one markdown table per model and n: a row per sampler, a column per
    NFE budget, the Fréchet distance (label accuracy beside it where it is below 100%; the NFE
    spent in brackets where it is below the budget, as Heun's 2n - 1), the floor in the header."""
    lines = []
    for model in _models(res):  # the report's order: DDPM models first
        for n in sorted({p["n"] for p in res["points"] if p["model"] == model}):
            pts = [p for p in res["points"] if p["model"] == model and p["n"] == n]
            nfes = sorted({p["nfe"] for p in pts})
            fl = res.get("floor", {}).get(str(n))
            lines += ["", f"| `{model}`, n = {n:,} (floor {fl}) | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                      "|---" * (len(nfes) + 1) + "|"]
            for sampler in [s for s in DDPM_SAMPLERS + FLOW_SAMPLERS if any(p["sampler"] == s for p in pts)]:
                cells = []
                for k in nfes:
                    p = next((p for p in pts if p["sampler"] == sampler and p["nfe"] == k), None)
                    acc = p.get("label_accuracy") if p else None
                    real = p.get("nfe_actual", k) if p else k  # Heun: 2n - 1 of a budget of 2n
                    cells.append("" if p is None else f"{p['frechet_distance']:.1f}"
                                 + (f" ({100 * acc:.1f}%)" if acc is not None and acc < 1 else "")
                                 + (f" [{real}]" if real != k else ""))
                lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floor(clf, data_dir, n: int) -> float:
    """FD between ``n`` training digits and the test set (the same n as the samples: FD is biased by n)."""
    x, _ = mnist_tensors("train", root=data_dir)
    xt, _ = mnist_tensors("test", root=data_dir)
    return frechet_distance(features(clf, x[:n]), features(clf, xt))


def time_point(model, sampler: str, nfe_: int, n: int, seed: int = 0) -> float:
    labels = torch.arange(n) % 10 if model.conditioning == "class" else None
    kw = dict(labels=labels, n=None if labels is not None else n, guidance_scale=GUIDANCE,
              num_steps=nfe_to_steps(model, sampler, nfe_), sampler=sampler, seed=seed, compile=True)
    t0 = time.perf_counter()
    sample(model, **kw)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ddpm_class", "ddpm_time", "flow_class", "flow_time"])
    ap.add_argument("--samplers", nargs="+", default=None, help="default: every sampler that applies")
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20, 50, 300])
    ap.add_argument("--n", type=int, default=5000, help="digits per quality point")
    ap.add_argument("--time-n", type=int, default=64, help="digits per timing point (0: no timing)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("DIFFACCEL_MNIST_DIR"))
    ap.add_argument("--json", default="benchmarks/results/samplers-cpu.json")
    ap.add_argument("--plot", default=None, help="write the Fréchet-distance-vs-NFE plot here (PNG)")
    ap.add_argument("--course-loop", action="store_true", help="also time sample_naive on --time-n digits")
    ap.add_argument("--guidance-sweep", action="store_true")
    ap.add_argument("--sweep-sampler", default=None, help="sampler of the guidance sweep (default: best at 10 NFE)")
    ap.add_argument("--no-quality", action="store_true", help="timing only")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="merge these result files (from concurrent runs) into --json, and stop")
    ap.add_argument("--markdown", action="store_true", help="print --json's quality points as tables, and stop")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(_load(Path(args.json))))
        return
    if args.merge:
        res = merge(args.merge, Path(args.json))
        print(f"{args.json}: {len(res['points'])} points, {len(res['timing'])} timings")
        if args.plot:
            from diffaccel.report.frontier import plot_frontier

            print("plot:", plot_frontier(res, args.plot))
        return

    torch.set_num_threads(args.threads)
    path = Path(args.json)
    res = _load(path)
    res["machine"] = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                      "load_avg_at_start": os.getloadavg()[0]}
    clf = load_classifier()
    key = str(args.n)
    if key not in res["floor"] and not args.no_quality:
        res["floor"][key] = round(floor(clf, args.data_dir, args.n), 3)
        _save(path, res)
    for name in args.models:
        model = load_pretrained(name)
        samplers = [s for s in (args.samplers or samplers_for(model))
                    if s in samplers_for(model)]
        if args.time_n and args.course_loop and model.kind == "ddpm" and name not in res["course_loop"]:
            who = dict(labels=torch.arange(args.time_n) % 10) if model.conditioning == "class" else dict(n=args.time_n)
            t0 = time.perf_counter()
            sample_naive(model, **who, guidance_scale=GUIDANCE, seed=0)
            res["course_loop"][name] = {"n": args.time_n, "seconds": round(time.perf_counter() - t0, 2)}
            _save(path, res)
            print(name, "course loop", res["course_loop"][name], flush=True)
        if args.time_n:  # warm the compiled guided model once, at the timed batch: timings below are warm
            sample(model, labels=torch.arange(args.time_n) % 10 if model.conditioning == "class" else None,
                   n=None if model.conditioning == "class" else args.time_n, num_steps=2,
                   sampler=samplers_for(model)[0], compile=True)
        for sampler in samplers:
            for nfe_ in args.nfe:
                if not args.no_quality and not _have(res["points"], model=name, sampler=sampler, nfe=nfe_, n=args.n):
                    r = evaluate_generator(model, n=args.n, guidance_scale=GUIDANCE,
                                           num_steps=nfe_to_steps(model, sampler, nfe_), sampler=sampler,
                                           data_dir=args.data_dir, classifier=clf, progress=False)
                    r.update(model=name, sampler=sampler, nfe=nfe_, n=args.n,
                             nfe_actual=nfe(sampler, nfe_to_steps(model, sampler, nfe_) or model.num_timesteps))
                    res["points"].append(r)
                    _save(path, res)
                    print(json.dumps(r), flush=True)
                if args.time_n and not _have(res["timing"], model=name, sampler=sampler, nfe=nfe_, n=args.time_n):
                    s = time_point(model, sampler, nfe_, args.time_n)
                    res["timing"].append({"model": name, "sampler": sampler, "nfe": nfe_, "n": args.time_n,
                                          "seconds": round(s, 3), "threads": args.threads})
                    _save(path, res)
                    print(name, sampler, nfe_, f"{s:.2f} s for {args.time_n} digits", flush=True)
    if args.guidance_sweep:
        model = load_pretrained("ddpm_class")
        best = args.sweep_sampler or min(
            (r for r in res["points"] if r["model"] == "ddpm_class" and r["nfe"] == 10 and r["n"] == args.n),
            key=lambda r: r["frechet_distance"])["sampler"]
        for g in (1.0, 2.0, 3.0, 5.0, 7.0):
            if _have(res["guidance_sweep"], sampler=best, guidance_scale=g, n=args.n):
                continue
            r = evaluate_generator(model, n=args.n, guidance_scale=g, num_steps=nfe_to_steps(model, best, 10),
                                   sampler=best, data_dir=args.data_dir, classifier=clf, progress=False)
            r.update(model="ddpm_class", sampler=best, nfe=10, n=args.n)
            res["guidance_sweep"].append(r)
            _save(path, res)
            print(json.dumps(r), flush=True)
    if args.plot:
        from diffaccel.report.frontier import plot_frontier

        plot_frontier(res, args.plot, n=args.n)
        print("plot:", args.plot)


if __name__ == "__main__":
    main()
