"""Plots of the samplers' quality / steps frontier (``benchmarks/bench_samplers.py`` writes the numbers).

The frontier itself takes hours of CPU (thousands of digits per point), so the report does not
recompute it: it plots the measured JSON shipped beside this module (``frontier-cpu.json``,
a copy of ``benchmarks/results/samplers-cpu.json``) and samples a small grid live.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

SHIPPED = Path(__file__).with_name("frontier-cpu.json")
#: one colour and marker per sampler, the same in every plot
STYLE = {"ddpm": ("tab:gray", "o"), "ddim": ("tab:blue", "s"), "dpmpp_2m": ("tab:red", "^"),
         "dpmpp_2m_sde": ("tab:brown", "v"), "unipc": ("tab:green", "D"), "euler": ("tab:purple", "o"), "heun": ("tab:orange", "^")}


def load_shipped() -> Optional[dict]:
    """The measured frontier shipped with the package, or None."""
    if not SHIPPED.exists():
        return None
    return json.loads(SHIPPED.read_text())


def _points(res: dict, n: Optional[int], model: Optional[str] = None) -> tuple:
    """The points measured with ``n`` digits (of ``model`` if given), and ``n``; ``n=None``: the most
    complete frontier (the n with the most points, the larger on a tie). Fréchet distances at
    different n do not compare."""
    pts = [p for p in res.get("points", []) if model is None or p["model"] == model]
    if n is None and pts:
        counts = {}
        for p in pts:
            counts[p["n"]] = counts.get(p["n"], 0) + 1
        n = max(counts, key=lambda k: (counts[k], k))
    return [p for p in pts if p["n"] == n], n


def _models(res: dict) -> list:
    """The models with measured points, DDPM ones first."""
    return sorted({p["model"] for p in res.get("points", [])}, key=lambda m: (not m.startswith("ddpm"), m))


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (the report needs no screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    """Writes ``fig`` as a PNG at ``path`` (folders made) and frees it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_frontier(res: dict, path, n: Optional[int] = None) -> Path:
    """Fréchet distance against NFE (log-log), a panel per model, a line per sampler; the floor
    (training digits vs test set, same n) dashed, the course loop (DDPM, all 300 steps) dotted.
    ``n=None``: each panel takes its model's most complete n (distances compare within a panel)."""
    plt = _pyplot()

    panels = [(m, *_points(res, n, m)) for m in _models(res)]
    panels = [(m, pts, k) for m, pts, k in panels if pts]
    if not panels:
        raise ValueError("the frontier JSON has no points" + (f" with n = {n}" if n else ""))
    cols = min(2, len(panels))  # two panels a row: the report page stays narrower than a laptop screen
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.remove()
    axes = axes.flat[:len(panels)]
    for ax, (model, mp, k) in zip(axes, panels):
        fl = res.get("floor", {}).get(str(k))
        for sampler in sorted({p["sampler"] for p in mp}, key=list(STYLE).index):
            sp = sorted((p for p in mp if p["sampler"] == sampler), key=lambda p: p["nfe"])
            color, marker = STYLE.get(sampler, ("k", "x"))
            nfes = [p.get("nfe_actual", p["nfe"]) for p in sp]  # Heun spends 2n - 1 of a budget of 2n
            ax.plot(nfes, [p["frechet_distance"] for p in sp], marker=marker, color=color, label=sampler)
        course = [p for p in mp if p["sampler"] in ("ddpm", "euler") and p["nfe"] == 300]
        if course:
            ax.axhline(course[0]["frechet_distance"], color="k", ls=":", lw=1,
                       label=f"course loop ({course[0]['sampler']}, 300)")
        if fl is not None:
            ax.axhline(fl, color="k", ls="--", lw=1, label="floor (train vs test)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model evaluations per digit (NFE)")
        ax.set_ylabel(f"Fréchet distance to the test set ({k} digits)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes:  # each panel has its own samplers
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_guidance_sweep(res: dict, path) -> Optional[Path]:
    """Label accuracy and Fréchet distance against the guidance scale (ddpm_class, 10 NFE)."""
    rows = sorted(res.get("guidance_sweep", []), key=lambda r: r["guidance_scale"])
    if not rows:
        return None
    plt = _pyplot()

    g = [r["guidance_scale"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ax.plot(g, [r["frechet_distance"] for r in rows], "o-", color="tab:red")
    ax.set_xlabel("guidance scale g")
    ax.set_ylabel("Fréchet distance", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(g, [100 * r["label_accuracy"] for r in rows], "s--", color="tab:blue")
    ax2.set_ylabel("label accuracy (%)", color="tab:blue")
    ax.set_title(f"ddpm_class, {rows[0]['sampler']}, {rows[0]['nfe']} NFE, {rows[0]['n']} digits")
    return _save(fig, path)


def write_sampler_figures(out_dir, seed: int = 0, quick: bool = False) -> list:
    """The report's samplers section: the same digits (same starting noise, g = 5) from every
    sampler at a few model evaluations, for ``ddpm_class`` and ``flow_class``; then the measured
    frontier and guidance sweep shipped with the package (``frontier-cpu.json``), plotted."""
    import torch

    from ..imageio import save_png
    from ..mnist import list_pretrained, load_pretrained
    from ..mnist.sampling import sample
    from ..samplers import DDPM_SAMPLERS, FLOW_SAMPLERS, nfe
    from .html import Cell, Figure

    out = Path(out_dir)
    figs = []
    budgets = (2,) if quick else (5, 10, 20)
    labels = torch.arange(4 if quick else 10)
    have = set(list_pretrained())
    # ddpm_time: the unconditional model, where the ODE solvers level off and the SDE solver does not
    for name, samplers in (("ddpm_class", DDPM_SAMPLERS), ("ddpm_time", DDPM_SAMPLERS), ("flow_class", FLOW_SAMPLERS)):
        if name not in have or (quick and name == "ddpm_time"):
            continue
        model = load_pretrained(name)
        conditional = model.conditioning == "class"
        rows = []
        for sampler in samplers:
            row = []
            for budget in budgets:
                steps = max(1, (budget + 1) // 2) if sampler == "heun" else budget
                who = dict(labels=labels) if conditional else dict(n=len(labels))
                x = sample(model, **who, guidance_scale=5.0, num_steps=steps, sampler=sampler, seed=seed)
                fname = f"s_{name}_{sampler}_{budget}.png"
                save_png(x, out / fname, nrow=10, scale=2)
                row.append(Cell(fname, f"{nfe(sampler, steps)} NFE"))
            rows.append(row)
        figs.append(Figure(
            "B-samplers", f"{name}: every sampler at {', '.join(map(str, budgets))} model evaluations",
            (f"Digits 0-{len(labels) - 1} from the shipped {name} with classifier-free guidance g = 5"
             if conditional else f"{len(labels)} unconditional digits from the shipped {name}")
            + f", the same starting noise (seed {seed}) in every cell; rows: samplers (diffaccel.samplers), columns: "
            "model evaluations per digit (NFE; Heun spends two a step, one on its last). The DPM-Solvers and UniPC "
            "step on diffusers' linspace timesteps, DDPM and DDIM on the course's strided ones; DDPM and "
            "SDE-DPM-Solver++ (dpmpp_2m_sde) draw fresh noise every step. 2x nearest-neighbour.",
            rows, col_headers=[f"budget {b}" for b in budgets], row_headers=list(samplers)))
    res = load_shipped()
    if res is None or not res.get("points"):  # nothing measured ships with this build
        return figs
    plot_frontier(res, out / "s_frontier.png")
    sizes = ", ".join(f"{m} {_points(res, None, m)[1]}" for m in _models(res))
    figs.append(Figure(
        "B-samplers", "Fréchet distance against model evaluations (measured)",
        f"Measured by benchmarks/bench_samplers.py on {res.get('machine', {}).get('cpu', 'a CPU')} (digits a "
        f"point: {sizes}; seed 0, g = 5 for the class models, the project classifier's feature space, against "
        "the test set); dashed: the floor "
        "(training digits vs the test set, same n); dotted: the course loop (all 300 steps).",
        [[Cell("s_frontier.png")]]))
    if plot_guidance_sweep(res, out / "s_guidance.png") is not None:
        figs.append(Figure("B-samplers", "Guidance sweep (measured)",
                           "Label accuracy and Fréchet distance of ddpm_class against the guidance scale g (seed 0).",
                           [[Cell("s_guidance.png")]]))
    return figs
