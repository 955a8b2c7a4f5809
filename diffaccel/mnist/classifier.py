"""A small MNIST classifier, trained by the project, used to evaluate generated digits:
label accuracy of class-conditional samples and a Fréchet distance in its feature space."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as nnf
from torch import nn

from .checkpoint import atomic_save_tensors, atomic_write_json, load_json, load_tensors
from .data import mnist_tensors
from .models import load_weights
from . import pretrained


def _conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class DigitClassifier(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-fc128-fc10; ``features`` is the 128-d embedding."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(_conv(1, 32), _conv(32, 32), nn.MaxPool2d(2),
                                  _conv(32, 64), _conv(64, 64), nn.MaxPool2d(2), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(64 * 7 * 7, self.feature_dim), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.features(x)))


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (same for the whole batch: cheap, enough)."""
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.inference_mode()
def accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for s in range(0, x.shape[0], batch_size):
        correct += (model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).sum().item()
    return correct / x.shape[0]


def train_classifier(out: Optional[Path] = None, data_dir=None, epochs: int = 3, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, progress: bool = True) -> tuple:
    """Train and (optionally) save ``classifier.safetensors`` + ``classifier.json``; returns (model, test acc)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    x, y = mnist_tensors("train", root=data_dir)
    xt, yt = mnist_tensors("test", root=data_dir)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr * 3, total_steps=epochs * (x.shape[0] // batch_size))
    t0 = time.time()
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        perm = torch.randperm(x.shape[0], generator=gen)
        model.train()
        for s in tqdm(range(x.shape[0] // batch_size), desc=f"classifier epoch {epoch + 1}/{epochs}",
                      disable=not progress, leave=False):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            loss = nnf.cross_entropy(model(_shift(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    acc = accuracy(model, xt, yt)
    if out is not None:
        out = Path(out)
        atomic_save_tensors(out.with_suffix(".safetensors"), model.state_dict())
        atomic_write_json(out.with_suffix(".json"), {"test_accuracy": acc, "epochs": epochs, "batch_size": batch_size,
                                                     "lr": lr, "seed": seed, "wall_time_s": round(time.time() - t0, 1)})
    return model.eval(), acc


def load_classifier(path: Optional[Path] = None) -> DigitClassifier:
    path = Path(path) if path else pretrained.WEIGHTS_DIR / "classifier.safetensors"
    return load_weights(DigitClassifier(), load_tensors(path), path).eval()


def classifier_info(path: Optional[Path] = None) -> dict:
    path = Path(path) if path else pretrained.WEIGHTS_DIR / "classifier.safetensors"
    return load_json(path.with_suffix(".json"))


@torch.inference_mode()
def features(model: DigitClassifier, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(x[s:s + batch_size]) for s in range(0, x.shape[0], batch_size)]).double()


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` (the FID formula), in float64."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)
    w, v = torch.linalg.eigh(s1)
    r1 = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * cross)
