"""Training for every Part B model (SPEC B1.2.1, B1.2.3, B2.2, B2.4 and flow matching).

One loop, four objectives:

* ``denoiser``   — z = x + sigma eps -> x (B1.2.1), L2;
* ``pure_noise`` — z = eps -> x (B1.2.3: learns the mean digit), L2;
* ``ddpm``       — eps-prediction at t ~ U{0..T-1} (B2.2; class-conditioned with p_uncond, B2.4);
* ``flow``       — velocity x1 - x0 along ``x_t = (1 - t) x0 + t x1`` (flow matching).

Reproducible and resumable: the data order and every noise draw of epoch ``e`` come from a
generator seeded with ``(seed, e)`` (:func:`epoch_batches`); a checkpoint is one safetensors
file (the model, optimizer, LR scheduler, loss history and that generator's state, the JSON state
and a SHA-256 in its metadata) committed by one atomic rename, so ``resume=True`` after a kill at
any instant gives the same final weights as an unbroken run, or refuses clearly. Data-parallel
under ``torchrun``: every rank draws the same global batch and noise and takes its
:func:`rank_slice`, so N processes follow the single-process trajectory (BatchNorm statistics
are synchronised).
"""
from __future__ import annotations

import csv
import io
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as nnf

from .. import functional as F
from ..schedules import ddpm_linear_schedule
from ..errors import ArgumentError, CheckpointError, FileFormatError
from .checkpoint import (atomic_save_tensors, atomic_write_bytes, atomic_write_json, load_checkpoint, load_json,
                         optimizer_from_tensors, optimizer_to_tensors, read_tensors, remove_stale_temp_files,
                         save_checkpoint)
from .data import mnist_tensors
from .distributed import rank_world as _dist_info
from .models import UNet, UNetConfig, one_hot

TASKS = ("denoiser", "pure_noise", "ddpm", "flow")


@dataclass
class TrainConfig:
    """Defaults are the course's DDPM settings (B2.2); see :data:`PRESETS` for every model."""

    task: str = "ddpm"
    conditioning: str = "class"
    hidden: int = 64
    batch_size: int = 128
    lr: float = 1e-3
    epochs: int = 20
    lr_decay: bool = True  # ExponentialLR, gamma = 0.1 ** (1 / epochs), stepped per epoch
    sigma: float = 0.5  # denoiser noise level (B1.2.1)
    num_timesteps: int = 300  # T (B2.2)
    p_uncond: float = 0.1  # class dropout (B2.4)
    injection: Optional[str] = None  # None: "add" for ddpm and class flow, "mul" for time flow
    seed: int = 0
    train_subset: int = 0  # > 0: only the first n training digits (tests)
    max_steps_per_epoch: int = 0  # > 0: cut epochs short (tests)
    checkpoint_every: int = 0  # > 0: also checkpoint every n steps (mid-epoch resume)
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.task not in TASKS:
            raise ArgumentError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task in ("denoiser", "pure_noise"):
            self.conditioning = "none"
        elif self.conditioning not in ("time", "class"):
            raise ArgumentError(f"a {self.task} model is conditioned on 'time' or 'class', got {self.conditioning!r}")
        for name in ("batch_size", "epochs", "hidden", "num_timesteps"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ArgumentError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.p_uncond < 1:
            raise ArgumentError(f"p_uncond must be in [0, 1), got {self.p_uncond}")

    def model_config(self) -> UNetConfig:
        injection = self.injection
        if injection is None:
            injection = "mul" if (self.task == "flow" and self.conditioning == "time") else "add"
        return UNetConfig(hidden=self.hidden, conditioning=self.conditioning, injection=injection)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: The course's configurations (SPEC Part B). Every field can be overridden.
PRESETS = {
    "denoiser": dict(task="denoiser", hidden=128, batch_size=256, lr=1e-4, epochs=5, lr_decay=False, sigma=0.5),
    "pure_noise": dict(task="pure_noise", hidden=128, batch_size=256, lr=1e-4, epochs=5, lr_decay=False),
    "ddpm_time": dict(task="ddpm", conditioning="time", hidden=64, batch_size=128, lr=1e-3, epochs=20),
    "ddpm_class": dict(task="ddpm", conditioning="class", hidden=64, batch_size=128, lr=1e-3, epochs=20),
    "flow_time": dict(task="flow", conditioning="time", hidden=64, batch_size=64, lr=1e-2, epochs=10),
    "flow_class": dict(task="flow", conditioning="class", hidden=64, batch_size=64, lr=1e-2, epochs=10),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ArgumentError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------- objectives
def training_loss(model, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                  abar: Optional[torch.Tensor], rank_slice: slice = slice(None)) -> torch.Tensor:
    """The loss of one global batch; noise is drawn for the whole batch (same on every rank)
    and then sliced, so the data-parallel run draws exactly what one process draws."""
    n = x.shape[0]
    noise = torch.randn(x.shape, generator=gen)
    if cfg.task in ("ddpm", "flow"):
        if cfg.task == "ddpm":
            t = torch.randint(0, cfg.num_timesteps, (n,), generator=gen)
        else:
            t = torch.rand(n, generator=gen)
        drop = torch.rand(n, generator=gen) < cfg.p_uncond
    x, y, noise = x[rank_slice], y[rank_slice], noise[rank_slice]
    dev = next(model.parameters()).device
    x, noise = x.to(dev, non_blocking=True), noise.to(dev, non_blocking=True)  # pageable: safe, no stream sync
    if cfg.task == "denoiser":
        return nnf.mse_loss(model(F.add_gaussian_noise(x, noise, cfg.sigma)), x)
    if cfg.task == "pure_noise":
        return nnf.mse_loss(model(noise), x)
    c = None
    if cfg.conditioning == "class":
        c = one_hot(torch.where(drop[rank_slice], torch.full_like(y, -1), y), x.shape[0], device=dev)
    t = t[rank_slice].to(dev, non_blocking=True)
    if cfg.task == "ddpm":
        x_t = F.add_noise(x, noise, abar, t)
        return nnf.mse_loss(model(x_t, t.float() / cfg.num_timesteps, c), noise)
    x_t = F.flow_interpolate(noise, x, t)
    return nnf.mse_loss(model(x_t, t, c), x - noise)


# ----------------------------------------------------------------------------- helpers
def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> Tuple[torch.Generator, torch.Tensor]:
    """The data order of one epoch: ``(generator, index batches [n // batch_size, batch_size])``.

    The one batching rule of training: a generator seeded with ``seed * 100_003 + epoch`` draws
    one ``randperm(n)``; step ``k`` takes row ``k`` (the short tail is dropped, so every step sees
    a full batch). The same generator then draws the step's noise, so the order and every draw
    depend on ``(seed, epoch)`` only: a resumed run replays what an unbroken run saw. A
    data-parallel rank calls it with the *global* batch size and keeps its :func:`rank_slice`.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(n, int) or n < 0:
        raise ArgumentError(f"n must be a non-negative int, got {n!r}")
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    steps = n // batch_size
    return gen, perm[: steps * batch_size].view(steps, batch_size)


def rank_slice(rank: int, world: int, batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` that data-parallel rank ``rank`` of ``world``
    trains on: disjoint, equal, and together the whole batch (what one process would see)."""
    if not (isinstance(world, int) and isinstance(rank, int) and world >= 1 and 0 <= rank < world):
        raise ArgumentError(f"rank/world must satisfy 0 <= rank < world, got rank={rank!r}, world={world!r}")
    if batch_size % world:
        raise ArgumentError(f"batch_size {batch_size} must be divisible by the number of processes {world}")
    per_rank = batch_size // world
    return slice(rank * per_rank, (rank + 1) * per_rank)


def _write_losses(out: Path, losses: list) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["step", "epoch", "loss"])
    w.writerows(losses)
    atomic_write_bytes(out / "loss.csv", buf.getvalue().encode())


def plot_losses(csv_path: Path, png_path: Path, title: str = "training loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, loss, lw=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are all-reduced over the process group.

    ``torch.nn.SyncBatchNorm`` is GPU-only; this is the CPU (gloo) equivalent, so a
    data-parallel run normalises with the statistics of the global batch, as one process would.
    State-dict compatible with ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        n_local = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n_local])
        stats = all_reduce(stats)
        c = x.shape[1]
        count = stats[2 * c]
        mean = stats[:c] / count
        var = stats[c:2 * c] / count - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def _use_global_batchnorm(model: torch.nn.Module) -> None:
    for name, child in model.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            child.__class__ = GlobalBatchNorm2d
        else:
            _use_global_batchnorm(child)


def build_model(cfg: TrainConfig) -> UNet:
    return UNet(cfg.model_config())


# ----------------------------------------------------------------------------- the run folder
CHECKPOINT = "checkpoint.safetensors"
#: What a run writes into its folder (``overwrite=True`` deletes exactly these, and ``epochs/``).
RUN_FILES = (CHECKPOINT, "checkpoint.json", "model.safetensors", "config.json", "loss.csv", "loss.png",
             "train_info.json")


def _run_contents(out: Path) -> List[str]:
    found = [name for name in RUN_FILES if (out / name).exists()]
    if (out / "epochs").is_dir() and any((out / "epochs").iterdir()):
        found.append("epochs/")
    return found


def _clear_run(out: Path) -> None:
    # The checkpoint first: a folder cleared halfway (killed) can no longer be resumed.
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "epochs", ignore_errors=True)


def _check_same_config(saved: dict, cfg: TrainConfig, where: Path) -> None:
    try:
        saved_cfg = TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the saved train_config is not valid: {e}") from e
    if asdict(saved_cfg) != asdict(cfg):
        raise CheckpointError(f"resume: {where.parent} was trained with a different config {asdict(saved_cfg)}; "
                              "use the same options, another output folder, or overwrite=True (--overwrite)")


def _resuming(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> bool:
    """Whether to continue the run in ``out``; refuses (CheckpointError) whatever would mix two runs,
    lose one silently, or restart one silently. Reads only."""
    found = _run_contents(out)
    if not found or overwrite:
        return False  # a new run (resume=True on an empty folder starts one: a job may always pass it)
    if not resume:
        raise CheckpointError(
            f"{out} already holds a training run ({', '.join(found)}); pass resume=True (--resume) to "
            "continue it, or overwrite=True (--overwrite) to delete those files and start again")
    if (out / CHECKPOINT).exists():
        return True
    if (out / "checkpoint.json").exists():
        raise CheckpointError(f"{out} holds a checkpoint.json from an older diffaccel, which cannot be "
                              "resumed safely; pass overwrite=True (--overwrite) to start again")
    if found == ["config.json"]:  # stopped before its first checkpoint: nothing trained yet
        _check_same_config(_need(load_json(out / "config.json"), "train_config", out / "config.json"), cfg,
                           out / "config.json")
        return False
    raise CheckpointError(
        f"resume: {out} holds files of a run ({', '.join(found)}) but no {CHECKPOINT} to continue "
        "from; pass overwrite=True (--overwrite) to delete them and start again")


def _need(state: dict, key: str, where: Path):
    if not isinstance(state, dict) or key not in state:
        raise CheckpointError(f"{where} lacks {key!r}: not a complete diffaccel training checkpoint")
    return state[key]


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, out_dir, data_dir=None, resume: bool = False, progress: bool = True,
          device: str = "cpu", download: bool = False, overwrite: bool = False) -> Path:
    """Train ``cfg`` into ``out_dir``; returns the path of the final ``model.safetensors``.

    The folder holds one run. A folder that already holds one is refused
    (:class:`~diffaccel.errors.CheckpointError`) unless ``resume=True`` (continue from its
    checkpoint: the same final weights as an unbroken run) or ``overwrite=True`` (delete that
    run's files, ``epochs/`` included, and start again). A checkpoint is one file committed by
    one rename and verified by its SHA-256 on resume, so a kill at any instant leaves the
    previous checkpoint or the new one; a corrupt, foreign or incomplete one is refused.
    """
    if resume and overwrite:
        raise ArgumentError("resume=True and overwrite=True contradict each other: pick one")
    out = Path(out_dir)
    rank, world = _dist_info()
    rank_slice(rank, world, cfg.batch_size)  # checks the batch splits over the processes
    dev = torch.device(device)
    # Fixed shapes: let cuDNN pick the fastest kernels, for this run only (a process-wide flag).
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or dev.type == "cuda"
    try:
        return _train(cfg, out, rank, world, dev, data_dir, resume, overwrite, progress, download)
    finally:
        torch.backends.cudnn.benchmark = before


def _restore(out: Path, cfg: TrainConfig, model, opt, sched, steps_per_epoch: int):
    """Load the checkpoint of ``out`` into model/optimizer/scheduler; returns
    ``(epoch, step_in_epoch, losses, generator_state)``. Every inconsistency is a CheckpointError."""
    path = out / CHECKPOINT
    tensors, state = load_checkpoint(path)
    _check_same_config(_need(state, "train_config", path), cfg, path)
    epoch, step = _need(state, "epoch", path), _need(state, "step_in_epoch", path)
    global_step = _need(state, "global_step", path)
    if not all(isinstance(v, int) for v in (epoch, step, global_step)) or not (
            0 <= epoch <= cfg.epochs and 0 <= step < steps_per_epoch and (step == 0 or epoch < cfg.epochs)):
        raise CheckpointError(f"{path}: position epoch={epoch!r}, step_in_epoch={step!r} is outside this run "
                              f"({cfg.epochs} epochs of {steps_per_epoch} steps)")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise CheckpointError(f"{path} holds the weights of another model: {e}") from e
    optimizer_from_tensors(opt, tensors, _need(state, "optimizer", path), require_state=global_step > 0)
    if sched is not None:
        sched_state = _need(state, "lr_scheduler", path)
        if not isinstance(sched_state, dict):
            raise CheckpointError(f"{path} has no learning-rate scheduler state; resuming would reset the decay")
        sched.load_state_dict(sched_state)
    values, epochs = tensors.get("loss.values"), tensors.get("loss.epochs")
    if values is None or epochs is None or values.shape != epochs.shape or values.numel() != global_step:
        raise CheckpointError(f"{path}: its loss history does not have the {global_step} entries of its position")
    losses = [(i, e, v) for i, (e, v) in enumerate(zip(epochs.tolist(), values.tolist()))]
    gen_state = tensors.get("generator_state")
    if step and gen_state is None:
        raise CheckpointError(f"{path}: a mid-epoch checkpoint without the random generator's state")
    return epoch, step, losses, gen_state


def _train(cfg: TrainConfig, out: Path, rank: int, world: int, dev: torch.device, data_dir, resume: bool,
           overwrite: bool, progress: bool, download: bool) -> Path:
    from tqdm.auto import tqdm

    resuming = _resuming(out, cfg, resume, overwrite)  # every rank decides before rank 0 writes
    if world > 1:
        dist.barrier()
    if rank == 0:
        if resume and not resuming:  # said, not silent: a job may always pass --resume
            print(f"resume: no checkpoint in {out} yet: starting a new run", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        if not resuming:
            _clear_run(out)
        for name in RUN_FILES:  # what a killed write left; never anything else in the folder
            remove_stale_temp_files(out, name)
        remove_stale_temp_files(out / "epochs", "epoch_*.safetensors")
        if not resuming:
            atomic_write_json(out / "config.json", {"train_config": asdict(cfg),
                                                    "model_config": cfg.model_config().to_dict()})
    local = rank_slice(rank, world, cfg.batch_size)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / cfg.epochs)) if cfg.lr_decay else None
    _, _, abar = ddpm_linear_schedule(cfg.num_timesteps)
    abar = abar.to(dev)

    x_all, y_all = mnist_tensors("train", root=data_dir, download=download)
    if cfg.train_subset:
        x_all, y_all = x_all[: cfg.train_subset], y_all[: cfg.train_subset]
    n = x_all.shape[0]
    steps_per_epoch = n // cfg.batch_size  # drop_last: every step sees a full batch
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ArgumentError(f"batch_size {cfg.batch_size} is larger than the {n} training digits")

    start_epoch, start_step, losses, gen_state = 0, 0, [], None
    if resuming:
        start_epoch, start_step, losses, gen_state = _restore(out, cfg, model, opt, sched, steps_per_epoch)

    train_model = model
    if world > 1:
        if dev.type == "cuda":
            train_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            _use_global_batchnorm(model)
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)
    if cfg.compile:
        train_model = torch.compile(train_model)

    def checkpoint(epoch: int, step_in_epoch: int, gen: Optional[torch.Generator]):
        if rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        opt_t, opt_meta = optimizer_to_tensors(opt)
        tensors.update(opt_t)
        tensors["loss.values"] = torch.tensor([v for _, _, v in losses], dtype=torch.float64)
        tensors["loss.epochs"] = torch.tensor([e for _, e, _ in losses], dtype=torch.int64)
        if gen is not None:
            tensors["generator_state"] = gen.get_state()
        save_checkpoint(out / CHECKPOINT, tensors, {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": len(losses),
            "train_config": asdict(cfg), "optimizer": opt_meta,
            "lr_scheduler": sched.state_dict() if sched is not None else None,
        })
        _write_losses(out, losses)  # an export: the checkpoint holds the history

    # Losses stay on the device and are copied to the host in blocks: a float() per step would
    # make the CPU wait for the GPU every step (no overlap of launch and compute).
    pending: list = []
    flush_every = 1 if dev.type == "cpu" else 50

    def flush(epoch: int) -> None:
        if pending:
            vals = torch.stack(pending).float().cpu().tolist()
            losses.extend((len(losses) + i, epoch, v) for i, v in enumerate(vals))
            pending.clear()

    t_start = time.time()
    train_model.train()
    for epoch in range(start_epoch, cfg.epochs):
        gen, batches = epoch_batches(n, cfg.batch_size, cfg.seed, epoch)
        first = 0
        if epoch == start_epoch and start_step:
            first = start_step
            gen.set_state(gen_state)
        bar = tqdm(range(first, steps_per_epoch), desc=f"{cfg.task}/{cfg.conditioning} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress or rank != 0, leave=False, dynamic_ncols=True)
        for step in bar:
            idx = batches[step]
            xb = x_all[idx]
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = training_loss(train_model, cfg, xb, y_all[idx], gen, abar, local)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            val = loss.detach()
            if world > 1:
                dist.all_reduce(val, op=dist.ReduceOp.AVG)
            pending.append(val)
            if len(pending) >= flush_every:  # one device->host copy per flush_every steps
                flush(epoch)
                bar.set_postfix(loss=f"{losses[-1][2]:.4f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                flush(epoch)
                checkpoint(epoch, step + 1, gen)
        flush(epoch)
        if sched is not None:
            sched.step()
        if rank == 0:
            atomic_save_tensors(out / "epochs" / f"epoch_{epoch + 1:03d}.safetensors", model.state_dict())
        checkpoint(epoch + 1, 0, None)
        if rank == 0 and progress:
            mean = sum(v for _, e, v in losses if e == epoch) / max(1, sum(1 for _, e, _v in losses if e == epoch))
            print(f"epoch {epoch + 1}/{cfg.epochs}: mean loss {mean:.5f} ({time.time() - t_start:.0f} s)", flush=True)

    final = out / "model.safetensors"
    if rank == 0:
        atomic_save_tensors(final, model.state_dict(), metadata={"config": json.dumps(cfg.model_config().to_dict())})
        _write_losses(out, losses)
        plot_losses(out / "loss.csv", out / "loss.png", title=f"{cfg.task} ({cfg.conditioning}) D={cfg.hidden}")
        info = {"wall_time_s": round(time.time() - t_start, 1), "final_loss": losses[-1][2] if losses else None,
                "final_epoch_mean_loss": (sum(v for _, e, v in losses if e == cfg.epochs - 1)
                                          / max(1, sum(1 for _, e, _v in losses if e == cfg.epochs - 1))),
                "steps": len(losses), "machine": f"{platform.processor() or platform.machine()}, "
                f"{torch.get_num_threads()} threads, torch {torch.__version__}", "world_size": world}
        atomic_write_json(out / "train_info.json", info)
    return final


def load_trained(path) -> UNet:
    """Load ``model.safetensors`` (+ ``config.json`` beside it, or the file's metadata), verified."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    state, meta = read_tensors(path)
    if "config" in meta:
        mcfg = UNetConfig(**json.loads(meta["config"]))
    else:
        mcfg = UNetConfig(**load_json(path.parent / "config.json")["model_config"])
    model = UNet(mcfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise FileFormatError(f"{path} holds the weights of another model than {mcfg}: {e}") from e
    return model.eval()
