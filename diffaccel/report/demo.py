"""``diffaccel demo --out DIR``: every deliverable of the project rendered into one browsable report.

Writes the Part A techniques on the shipped MNIST class-conditional DDPM (and on DeepFloyd IF
when its weights and prompt embeddings are given), every Part B figure, and ``DIR/index.html``
laid out like the project write-up. The same seed gives the same files, byte for byte.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List

from .html import Figure, render_index
from .parta import IF_NEEDS, write_parta_if_figures, write_parta_mnist_figures
from .partb import Budget, cpu_threads, write_partb_figures

__all__ = ["run_demo"]


def run_demo(out_dir, seed: int = 0, quick: bool = False, if_stage1=None, if_stage2=None, embeds=None,
             device: str = "cpu", progress: bool = True, data_dir=None, if_image=None) -> Path:
    """Render the whole report into ``out_dir``; returns the path of ``index.html``.

    ``quick``: a reduced-size run (tiny step counts, few samples) that still writes every figure.
    ``if_stage1`` / ``if_stage2`` / ``embeds``: DeepFloyd IF stage directories or hub ids and a
    prompt-embeddings file; with stage I and the embeddings the Part-A techniques are also
    rendered with IF on ``device`` (a GPU in practice), otherwise the report says what is needed.
    ``if_image``: the image (path) the IF sections edit (SDEdit, inpainting, img2img); default
    a synthetic scene.
    ``data_dir``: an MNIST folder to take the shown digits from; by default they come with the
    package (:mod:`diffaccel.mnist.shipped_digits`: the same digits), so the demo needs no MNIST
    folder and no network.
    """
    import torch

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if if_stage2 is not None and if_stage1 is None:
        raise ValueError("if_stage2 (--if-stage2) needs if_stage1 (--if-stage1) too")
    if if_stage1 is not None and embeds is None:
        raise ValueError("DeepFloyd IF needs prompt embeddings: pass embeds (--embeds FILE.pth)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    budget = Budget.for_mode(quick)
    figs: List[Figure] = []
    with cpu_threads():
        figs += write_parta_mnist_figures(out, seed=seed, quick=quick, data_dir=data_dir, progress=progress,
                                          device=device)
    notes = {}
    if if_stage1 is not None:
        figs += write_parta_if_figures(out, if_stage1, embeds, if_stage2=if_stage2, device=device, seed=seed,
                                       quick=quick, progress=progress, image=if_image)
    else:
        notes["A-IF"] = IF_NEEDS
    figs += write_partb_figures(out, seed=seed, quick=quick, data_dir=data_dir, progress=progress)
    mode = ("quick mode (tiny step counts, for tests)" if quick else
            f"Part B grids with {budget.ddpm_steps}-step DDIM / {budget.flow_steps}-step Euler sampling")
    intro = [
        "Every deliverable of the project (SPEC Part A and Part B), made by `diffaccel demo` from the shipped MNIST "
        "weights. Part A's techniques, written for DeepFloyd IF, run here on the class-conditional MNIST DDPM, "
        "where the class label plays the prompt.",
        f"Seed {seed}; {mode}; device {device}; torch {torch.__version__}. The same seed gives the same images.",
    ]
    path = render_index(figs, out, "diffaccel — fun with diffusion models, rendered", intro, notes)
    if progress:
        n = sum(len(f.files) for f in figs)
        print(f"wrote {path} ({len(figs)} figures, {n} images) in {time.time() - t0:.1f} s", flush=True)
    return path
