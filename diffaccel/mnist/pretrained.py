"""Shipped MNIST models: ``list_pretrained()`` and ``load_pretrained(name)``.

Weights live in ``diffaccel/weights/mnist/<name>.safetensors`` with ``<name>.json`` (the
training config and measured numbers) and ``<name>.md`` (the model card with the command
that made them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from .._checks import check_optional_int
from ..errors import ArgumentError, ArgumentTypeError, FileFormatError, MissingFileError
from ..schedules import ddpm_linear_schedule
from .checkpoint import load_json, load_tensors
from .models import UNet, UNetConfig, load_weights

import os

#: The shipped weights; ``DIFFACCEL_WEIGHTS_DIR`` points elsewhere (tests, freshly trained sets).
WEIGHTS_DIR = Path(os.environ.get("DIFFACCEL_WEIGHTS_DIR") or Path(__file__).resolve().parent.parent / "weights" / "mnist")
KINDS = ("ddpm", "flow", "denoiser", "pure_noise")


@dataclass
class MNISTDiffusion:
    """A trained Part B model and what is needed to run it.

    ``kind``: "ddpm" (eps-prediction, ``alphas_cumprod`` of T steps), "flow" (velocity),
    "denoiser" / "pure_noise" (one-shot denoisers, B1). ``conditioning``: "none", "time", "class".
    """

    name: str
    model: UNet
    kind: str
    num_timesteps: int = 300
    alphas_cumprod: Optional[torch.Tensor] = None
    info: dict = field(default_factory=dict)
    _fast: dict = field(default_factory=dict, repr=False, compare=False)
    _graphs: dict = field(default_factory=dict, repr=False, compare=False)  # sampling.sample(cuda_graph=True)

    def inference_model(self, compile: bool = False) -> torch.nn.Module:
        """The UNet with BatchNorm folded and channels-last (cached; a snapshot of the current weights)."""
        from .inference import optimize_for_inference

        if compile not in self._fast:
            self._fast[compile] = optimize_for_inference(self.model, compile=compile)
        return self._fast[compile]

    def guided_model(self, compile: bool = False) -> torch.nn.Module:
        """The class-conditioned UNet as one CFG forward, ``net(x, t, c, scale)`` ->
        ``eps_u + scale * (eps_c - eps_u)``, sharing the class-independent work
        (:class:`~diffaccel.mnist.inference.GuidedUNet`; cached, a snapshot of the current weights)."""
        from .inference import guided_unet

        key = ("guided", compile)
        if key not in self._fast:
            self._fast[key] = guided_unet(self.model, compile=compile)
        return self._fast[key]

    @property
    def conditioning(self) -> str:
        return self.model.config.conditioning

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        """What the UNet sees as time: ``t / T`` for a DDPM timestep index, t itself for flow."""
        if self.kind == "ddpm":
            return t.to(torch.float32) / self.num_timesteps
        return t.to(torch.float32)

    def clear_cuda_graphs(self) -> None:
        """Free the CUDA graphs (and their buffers) that ``sample(..., cuda_graph=True)`` keeps."""
        self._graphs.clear()

    def to(self, device) -> "MNISTDiffusion":
        self.model.to(device)
        self._fast.clear()
        self._graphs.clear()
        if self.alphas_cumprod is not None:
            self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    @classmethod
    def from_train_dir(cls, path: Union[str, Path], name: Optional[str] = None,
                       weights: Optional[Union[str, Path]] = None) -> "MNISTDiffusion":
        """Load a training output folder (``config.json`` + ``model.safetensors`` or ``weights``)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise MissingFileError(f"{path} is not a training output folder: it has no config.json "
                                   "(written when `diffaccel mnist train --out` starts)")
        cfg = load_json(path / "config.json")
        return _build(name or path.name, cfg, Path(weights) if weights else path / "model.safetensors")


def _build(name: str, cfg: dict, weights: Path) -> "MNISTDiffusion":
    if not isinstance(cfg, dict) or "train_config" not in cfg or "model_config" not in cfg:
        raise FileFormatError(f"the config of MNIST model {name!r} has no train_config/model_config "
                         "(expected the config.json a training run writes)")
    tcfg, mcfg = cfg["train_config"], cfg["model_config"]
    try:
        model = UNet(UNetConfig(**mcfg))
    except (TypeError, ValueError) as e:
        raise FileFormatError(f"the model_config of MNIST model {name!r} is not valid: {e}") from e
    load_weights(model, load_tensors(weights), weights)
    model.eval()
    kind = tcfg["task"]
    T = int(tcfg.get("num_timesteps", 300))
    abar = ddpm_linear_schedule(T)[2] if kind == "ddpm" else None
    return MNISTDiffusion(name=name, model=model, kind=kind, num_timesteps=T, alphas_cumprod=abar,
                          info=cfg.get("info", {}))


def list_pretrained() -> list:
    """Names of the shipped MNIST models (those whose weights are in the package)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors")
                  if (WEIGHTS_DIR / f"{p.stem}.json").exists() and p.stem != "classifier")


def pretrained_epochs(name: str) -> list:
    """Epochs for which an intermediate snapshot of ``name`` is shipped (``<name>.epoch<k>.safetensors``)."""
    return sorted(int(p.name[len(name) + 6:-12]) for p in WEIGHTS_DIR.glob(f"{name}.epoch*.safetensors"))


def _check_load_args(name, device, epoch) -> None:
    if not isinstance(name, (str, os.PathLike)):
        raise ArgumentTypeError(f"name must be a shipped model's name {list_pretrained()} or a training output "
                                f"folder (a str or path), got {type(name).__name__}")
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise ArgumentTypeError(f"device must be a str, int or torch.device such as 'cpu' or 'cuda', "
                                f"got {type(device).__name__}")
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ArgumentError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from e
    check_optional_int("epoch", epoch, min=1, what=" (the snapshot after that epoch)")


def load_pretrained(name: str, device: Union[str, torch.device] = "cpu", epoch: Optional[int] = None) -> MNISTDiffusion:
    """Load a shipped model by name (see :func:`list_pretrained`) or a training output folder.

    ``epoch=k`` loads the snapshot taken after epoch k (shipped for the figures "after epoch 1
    / 5"; for a training folder, ``epochs/epoch_00k.safetensors``). ``name`` is a string or a
    path, ``device`` anything ``torch.device`` takes, ``epoch`` None or an int >= 1.
    """
    _check_load_args(name, device, epoch)
    p = Path(name)
    if p.is_dir():
        weights = p / "epochs" / f"epoch_{epoch:03d}.safetensors" if epoch else None
        return MNISTDiffusion.from_train_dir(p, weights=weights).to(device)
    names = list_pretrained()
    if name not in names:
        raise ArgumentError(f"unknown pretrained MNIST model {name!r}; shipped: {names} "
                         "(or pass a training output folder)")
    cfg = load_json(WEIGHTS_DIR / f"{name}.json")
    weights = WEIGHTS_DIR / f"{name}.safetensors"
    if epoch is not None:
        if epoch not in pretrained_epochs(name):
            raise ArgumentError(f"no snapshot of {name!r} after epoch {epoch}; shipped: {pretrained_epochs(name)}")
        weights = WEIGHTS_DIR / f"{name}.epoch{epoch}.safetensors"
    return _build(name, cfg, weights).to(device)
