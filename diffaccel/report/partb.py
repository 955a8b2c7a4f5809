"""Part B figures (SPEC B1.2 - B2.5, flow matching, B-gif) from the shipped MNIST weights.

``write_partb_figures(out_dir, seed)`` writes PNGs/GIFs into ``out_dir`` and returns the
:class:`~diffaccel.report.html.Figure` records that describe them. Each figure draws its noise
from its own generator, seeded from ``(seed, figure key)``, so a figure does not change when
another one is added or removed, and the same seed gives byte-identical files.

Sampling here is the fewer-step kind (DDIM for the DDPM models, Euler with fewer steps for
flow matching) so the whole report renders in minutes on a CPU; captions say so.
"""
from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from .. import functional as Fn
from .html import Cell, Figure, single
from ..imageio import save_gif, save_png

__all__ = ["Budget", "write_partb_figures", "generator_for", "model_summary", "snapshots_to_show", "cpu_threads"]

SIGMAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)  # SPEC B1.2


@dataclass(frozen=True)
class Budget:
    """How much work each figure does: the full report, or ``quick`` (tests: tiny step counts)."""

    ddpm_steps: int = 50  # DDIM steps for the DDPM grids (T = 300 trained)
    flow_steps: int = 50  # Euler steps for flow matching
    per_digit: int = 4  # SPEC B2.5: 4 samples of each digit
    n_uncond: int = 40  # time-conditioned grids
    n_digits: int = 5  # test digits in the denoiser figures
    gif_frames: int = 25  # at most this many frames per sampling GIF
    parta_steps: Optional[int] = None  # Part A strided timesteps: None = the course's (34 for any T)
    parta_samples: int = 10

    @classmethod
    def for_mode(cls, quick: bool) -> "Budget":
        if quick:
            return cls(ddpm_steps=4, flow_steps=4, per_digit=1, n_uncond=10, n_digits=2, gif_frames=4,
                       parta_steps=22, parta_samples=4)  # 22 keeps i_start = 20 of the SDEdit sweep
        return cls()


@contextlib.contextmanager
def cpu_threads():
    """Run the report's CPU work on one thread unless ``$OMP_NUM_THREADS`` says otherwise.

    The report's batches are small (at most 80 digits of 28x28), where intra-op threads buy
    little, and on a busy machine they cost a lot: OpenMP threads spin while their partner is
    descheduled.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def quick_timesteps(num_train_timesteps: int, steps: int) -> List[int]:
    """About ``steps`` strided timesteps ``[k s, ..., s, 0]`` for Part A's reduced mode."""
    from ..pipelines.techniques import strided_timesteps

    return strided_timesteps(stride=-(-num_train_timesteps // steps), num_train_timesteps=num_train_timesteps)


def generator_for(seed: int, key: str) -> torch.Generator:
    """A CPU generator for figure ``key``: independent of every other figure, fixed by ``seed``."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(key.encode()))


def _weights_dir() -> Path:
    from ..mnist import pretrained

    return pretrained.WEIGHTS_DIR


def _card(name: str) -> dict:
    import json

    p = _weights_dir() / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def model_summary(name: str) -> str:
    """"ddpm_class (DDPM UNet, class-conditioned, D=32, 5 epochs, final loss 0.0381)" from the model card JSON."""
    cfg = _card(name)
    tc, info = cfg.get("train_config", {}), cfg.get("info", {})
    parts = []
    if tc:
        parts.append(f"{tc.get('task')} UNet, {tc.get('conditioning')}-conditioned" if tc.get("conditioning") != "none"
                     else f"{tc.get('task')} UNet")
        parts.append(f"D={tc.get('hidden')}")
        parts.append(f"{tc.get('epochs')} epochs of batch {tc.get('batch_size')}")
    if info.get("final_epoch_mean_loss") is not None:
        parts.append(f"last-epoch mean loss {info['final_epoch_mean_loss']:.4f}")
    return f"shipped model `{name}`" + (f" ({', '.join(parts)})" if parts else "")


def _trained_epochs(name: str) -> Optional[int]:
    return _card(name).get("train_config", {}).get("epochs")


def snapshots_to_show(name: str) -> List[Tuple[str, Optional[int]]]:
    """``[(label, epoch or None = final weights)]``: the first shipped snapshot and the final weights."""
    from ..mnist import pretrained_epochs

    eps = pretrained_epochs(name)
    last = _trained_epochs(name)
    final_label = f"after epoch {last} (final)" if last else "final weights"
    if eps and eps[0] != last:
        return [(f"after epoch {eps[0]}", eps[0]), (final_label, None)]
    return [(final_label, None)]


@dataclass
class _Ctx:
    out: Path
    seed: int
    budget: Budget
    data_dir: Optional[str] = None
    prefix: str = "b_"
    _test: Optional[Tuple[torch.Tensor, torch.Tensor]] = field(default=None, repr=False)

    def png(self, name: str, x: torch.Tensor, label: str = "", width: Optional[int] = None, **kw) -> Cell:
        fname = f"{self.prefix}{name}.png"
        save_png(x, self.out / fname, pad=1, **kw)
        return Cell(fname, label, width)

    def gif(self, name: str, frames, label: str = "", **kw) -> Cell:
        fname = f"{self.prefix}{name}.gif"
        save_gif(frames, self.out / fname, pad=1, **kw)
        return Cell(fname, label)

    def gen(self, key: str) -> torch.Generator:
        return generator_for(self.seed, key)

    def test_digits(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The leading test digits: shipped with the package, or read from ``data_dir`` if given."""
        if self._test is None:
            from ..mnist.shipped_digits import test_digits

            self._test = test_digits(self.data_dir)
        return self._test


def _available(name: str) -> bool:
    from ..mnist import list_pretrained

    return name in list_pretrained()


def _missing(section: str, title: str, name: str) -> Figure:
    return Figure(section, title, "Not rendered.",
                  note=f"The MNIST model `{name}` is not among the shipped weights in {_weights_dir()}; train and "
                       f"package it (`diffaccel mnist train --preset {name} ...`, then scripts/package_weights.py).")


def loss_figure(ctx: _Ctx, section: str, name: str) -> Figure:
    """The training loss per batch from ``<name>.loss.csv`` (shipped beside the weights)."""
    from ..mnist.train import plot_losses

    csv = _weights_dir() / f"{name}.loss.csv"
    title = f"Training loss of `{name}`"
    if not csv.is_file():
        return Figure(section, title, "Not rendered.",
                      note=f"No loss log ({csv.name}) is shipped beside the weights of `{name}`, so its loss curve "
                           "cannot be drawn; the final loss is in its model card.")
    fname = f"{ctx.prefix}loss_{name}.png"
    plot_losses(csv, ctx.out / fname, title=f"{name}: training loss per batch")
    return single(section, title, f"Loss of every training batch (log scale) of the {model_summary(name)}, "
                  f"read from {csv.name}.", fname)


# ----------------------------------------------------------------------------- B1.2
def _noising(ctx: _Ctx) -> List[Figure]:
    xt, _ = ctx.test_digits()
    x = xt[:ctx.budget.n_digits]
    noise = torch.randn(x.shape, generator=ctx.gen("B1.2"))
    rows = [[ctx.png(f"noising_d{i}_s{s:g}", Fn.add_gaussian_noise(x[i:i + 1], noise[i:i + 1], s).clamp(0, 1))
             for s in SIGMAS] for i in range(x.shape[0])]
    return [Figure("B1.2", "Noising test digits", "z = x + sigma * eps for sigma in "
                   f"{', '.join(f'{s:g}' for s in SIGMAS)} (columns); one eps ~ N(0, I) per digit (rows), so only "
                   f"sigma changes along a row. The first {x.shape[0]} MNIST test digits; noise seed {ctx.seed} "
                   "(figure key B1.2); shown clipped to [0, 1], 4x nearest-neighbour.", rows,
                   col_headers=[f"σ = {s:g}" for s in SIGMAS])]


def _denoise(model, z: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.model(z.to(model.device)).cpu().clamp(0, 1)


def _denoiser(ctx: _Ctx) -> List[Figure]:
    from ..mnist import load_pretrained

    name = "denoiser"
    if not _available(name):
        return [_missing("B1.2.1", "Single-step denoiser", name)]
    xt, _ = ctx.test_digits()
    x = xt[:ctx.budget.n_digits]
    sigma = float(_card(name).get("train_config", {}).get("sigma", 0.5))
    z = Fn.add_gaussian_noise(x, torch.randn(x.shape, generator=ctx.gen("B1.2.1")), sigma)
    snaps = snapshots_to_show(name)
    outs = [(label, _denoise(load_pretrained(name, epoch=ep), z)) for label, ep in snaps]
    rows = []
    for i in range(x.shape[0]):
        row = [ctx.png(f"denoiser_d{i}_clean", x[i:i + 1]), ctx.png(f"denoiser_d{i}_noisy", z[i:i + 1].clamp(0, 1))]
        row += [ctx.png(f"denoiser_d{i}_e{k}", o[i:i + 1]) for k, (_, o) in enumerate(outs)]
        rows.append(row)
    figs = [Figure("B1.2.1", "Denoising test digits at the training noise level",
                   f"The {model_summary(name)}, trained to map z = x + {sigma:g} eps to x, on the first "
                   f"{x.shape[0]} test digits: clean, noisy input, and the one-step output "
                   + " and ".join(label for label, _ in snaps) + f". Noise seed {ctx.seed} (figure key B1.2.1).",
                   rows, col_headers=["clean x", f"noisy z (σ = {sigma:g})"]
                   + [f"D(z) {label}" for label, _ in snaps])]
    figs.append(loss_figure(ctx, "B1.2.1", name))
    return figs


def _ood(ctx: _Ctx) -> List[Figure]:
    from ..mnist import load_pretrained

    name = "denoiser"
    if not _available(name):
        return [_missing("B1.2.2", "Out-of-distribution noise", name)]
    xt, _ = ctx.test_digits()
    x = xt[:1].expand(len(SIGMAS), -1, -1, -1)
    noise = torch.randn((1, 1, 28, 28), generator=ctx.gen("B1.2.2")).expand_as(x)
    z = torch.stack([Fn.add_gaussian_noise(x[i:i + 1], noise[i:i + 1], s)[0] for i, s in enumerate(SIGMAS)])
    d = _denoise(load_pretrained(name), z)
    rows = [[ctx.png(f"ood_noisy_s{s:g}", z[i:i + 1].clamp(0, 1)) for i, s in enumerate(SIGMAS)],
            [ctx.png(f"ood_denoised_s{s:g}", d[i:i + 1]) for i, s in enumerate(SIGMAS)]]
    return [Figure("B1.2.2", "The denoiser at noise levels it was not trained on",
                   f"The final {model_summary(name)} (trained at sigma = 0.5 only) on the first test digit noised "
                   "with the same eps at every sigma: top row noisy input, bottom row output. Away from 0.5 it "
                   f"over- or under-smooths. Noise seed {ctx.seed} (figure key B1.2.2).", rows,
                   col_headers=[f"σ = {s:g}" for s in SIGMAS], row_headers=["noisy z", "D(z)"])]


def _pure_noise(ctx: _Ctx) -> List[Figure]:
    from ..mnist import load_pretrained
    from ..mnist.shipped_digits import train_mean

    name = "pure_noise"
    if not _available(name):
        return [_missing("B1.2.3", "Denoising pure noise", name)]
    n = ctx.budget.n_digits
    z = torch.randn((n, 1, 28, 28), generator=ctx.gen("B1.2.3"))
    snaps = snapshots_to_show(name)
    outs = [_denoise(load_pretrained(name, epoch=ep), z) for _, ep in snaps]
    mean, n_train = train_mean(ctx.data_dir)
    mean_cell = ctx.png("pure_noise_train_mean", mean)
    rows = [[ctx.png(f"pure_noise_in{i}", z[i:i + 1].clamp(0, 1))]
            + [ctx.png(f"pure_noise_out{i}_e{k}", o[i:i + 1]) for k, o in enumerate(outs)]
            + [mean_cell] for i in range(n)]
    figs = [Figure("B1.2.3", "A denoiser trained on pure noise learns the mean digit",
                   f"The {model_summary(name)}, trained to map z = eps (pure noise) to x: under an L2 loss the best "
                   "such map is the mean of the training digits, whatever the input. Columns: the input noise, "
                   "the output " + " and ".join(label for label, _ in snaps)
                   + f", and the mean of the {n_train} training digits. Noise seed {ctx.seed} "
                   "(figure key B1.2.3).", rows,
                   col_headers=["input z ~ N(0, I)"] + [f"D(z) {label}" for label, _ in snaps] + ["training mean"])]
    figs.append(loss_figure(ctx, "B1.2.3", name))
    return figs


# ----------------------------------------------------------------------------- B2, flow
def _sampling(ctx: _Ctx, section: str, name: str, title: str, what: str) -> Tuple[List[Figure], List[torch.Tensor]]:
    """Grids after the first and last epoch + loss curve; returns the figures and GIF frames
    recorded while sampling with the final weights."""
    from ..mnist import load_pretrained, sample

    if not _available(name):
        return [_missing(section, title, name)], []
    b = ctx.budget
    snaps = snapshots_to_show(name)
    first = load_pretrained(name)
    cls = first.conditioning == "class"
    kind = first.kind
    steps = b.ddpm_steps if kind == "ddpm" else b.flow_steps
    labels = torch.arange(10 * b.per_digit) % 10 if cls else None
    n = 10 * b.per_digit if cls else b.n_uncond
    how = (f"DDIM (eta = 0) with {steps} of the T = {first.num_timesteps} timesteps" if kind == "ddpm"
           else f"Euler integration from t = 0 to 1 in {steps} steps")
    frames: List[torch.Tensor] = []
    cells = []
    for k, (label, ep) in enumerate(snaps):
        model = first if ep is None else load_pretrained(name, epoch=ep)
        final = ep is None
        every = max(1, steps // b.gif_frames)

        def record(info, _every=every):
            if info["i"] % _every == 0:
                frames.append(info["x"].detach().clamp(0, 1).cpu().clone())
        x = sample(model, labels=labels, n=None if cls else n, guidance_scale=5.0, num_steps=steps,
                   seed=ctx.seed, sampler="ddim" if kind == "ddpm" else None,
                   callback=record if final else None).cpu()
        if final:
            frames.append(x.clone())
        cells.append(ctx.png(f"{name}_samples_{'final' if final else f'epoch{ep}'}", x, nrow=10, scale=3))
    caption = (f"{what} from the {model_summary(name)}: {n} samples "
               + ("(columns: digits 0-9, each with classifier-free guidance g = 5, the unconditional estimate "
                  "from the all-zero class vector)" if cls else "")
               + ", " + " and ".join(label for label, _ in snaps)
               + f". Fewer-step sampling so the report renders on a CPU: {how}. Per-sample noise streams with "
                 f"seed {ctx.seed} (the same starting noise in every row of the table); 3x nearest-neighbour.")
    # one grid per row: two 10-wide grids side by side would not fit the page
    figs = [Figure(section, title, caption, [[c] for c in cells], row_headers=[label for label, _ in snaps])]
    figs.append(loss_figure(ctx, section, name))
    return figs, frames


def _ddpm_time(ctx: _Ctx):
    return _sampling(ctx, "B2.2", "ddpm_time", "Time-conditioned DDPM samples", "Unconditional digits")


def _ddpm_class(ctx: _Ctx):
    return _sampling(ctx, "B2.5", "ddpm_class", "Class-conditioned DDPM samples, 4 of each digit"
                     if ctx.budget.per_digit == 4 else "Class-conditioned DDPM samples", "Digits 0-9")


def _flow(ctx: _Ctx):
    f1, g1 = _sampling(ctx, "B-flow", "flow_time", "Time-conditioned flow matching samples", "Unconditional digits")
    f2, g2 = _sampling(ctx, "B-flow", "flow_class", "Class-conditioned flow matching samples", "Digits 0-9")
    return f1 + f2, g2 or g1


def write_partb_figures(out_dir, seed: int = 0, quick: bool = False, data_dir=None,
                        progress: bool = True) -> List[Figure]:
    """Render every Part B deliverable into ``out_dir`` (PNGs, GIFs); returns their :class:`Figure` records.

    The digits shown come with the package (:mod:`diffaccel.mnist.shipped_digits`; no MNIST
    folder, no network), or from the MNIST folder ``data_dir`` when one is given (the same
    digits). Uses the shipped weights (``$DIFFACCEL_WEIGHTS_DIR`` to use another set); a model that is not shipped gives a figure
    with a note instead of images. ``quick``: tiny step counts and sample numbers (tests).
    """
    from tqdm.auto import tqdm

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Ctx(out, seed, Budget.for_mode(quick), data_dir)
    figs: List[Figure] = []
    gifs: List[Figure] = []
    steps: List[Tuple[str, Callable]] = [("B1.2 noising", _noising), ("B1.2.1 denoiser", _denoiser),
                                         ("B1.2.2 OOD", _ood), ("B1.2.3 pure noise", _pure_noise),
                                         ("B2 time DDPM", _ddpm_time), ("B2.5 class DDPM", _ddpm_class),
                                         ("flow matching", _flow)]
    bar = tqdm(steps, desc="Part B", disable=not progress, dynamic_ncols=True)
    with cpu_threads():
        for desc, fn in bar:
            bar.set_postfix_str(desc)
            res = fn(ctx)
            if isinstance(res, tuple):  # a sampling figure: (figures, GIF frames of the final run)
                res, frames = res
                if len(frames) >= 2:
                    gifs.append(_sampling_gif(ctx, res[0].section, frames))
            figs += res
    return figs + gifs


def _sampling_gif(ctx: _Ctx, section: str, frames: List[torch.Tensor]) -> Figure:
    name = {"B2.2": "ddpm_time", "B2.5": "ddpm_class", "B-flow": "flow"}[section]
    cell = ctx.gif(f"{name}_sampling", frames, nrow=10, scale=3)
    return single("B-gif", f"Sampling a grid: {name.replace('_', ' ')}",
                  f"The denoising process of the final-weights grid of section {section}: x_t recorded "
                  f"{len(frames) - 1} times along the run, then the final samples, clipped to [0, 1]; "
                  f"seed {ctx.seed}; loops.", cell.src)
