"""``diffaccel mnist eval``: (a) label accuracy of class-conditional samples, (b) Fréchet distance
in the project classifier's feature space against the test set, beside the train-vs-test floor,
(c) denoiser PSNR on the test set for each sigma (SPEC B1.2)."""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import torch

from .. import functional as F
from .._checks import check_bool, check_int
from .classifier import accuracy, features, frechet_distance, load_classifier
from .data import mnist_tensors
from .pretrained import MNISTDiffusion
from ..samplers import nfe
from .sampling import check_sample_args, sample

SIGMAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for images in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


@torch.inference_mode()
def denoiser_psnr(model: MNISTDiffusion, x: torch.Tensor, sigmas: Sequence[float] = SIGMAS, seed: int = 0,
                  batch_size: int = 1000) -> dict:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    res = {}
    for s in sigmas:
        outs = [model.model(F.add_gaussian_noise(x[i:i + batch_size], noise[i:i + batch_size], s))
                for i in range(0, x.shape[0], batch_size)]
        res[f"{s:g}"] = round(psnr(torch.cat(outs).clamp(0, 1), x), 3)
    return res


def fd_floor(data_dir=None, n: int = 10000, classifier=None) -> float:
    """Fréchet distance between ``n`` training digits and the test set: the best a generator can expect."""
    clf = classifier or load_classifier()
    x, _ = mnist_tensors("train", root=data_dir)
    xt, _ = mnist_tensors("test", root=data_dir)
    return frechet_distance(features(clf, x[:n]), features(clf, xt))


def evaluate_generator(model: MNISTDiffusion, n: int = 10000, guidance_scale: float = 5.0,
                       num_steps: Optional[int] = None, sampler: Optional[str] = None, seed: int = 0, data_dir=None,
                       classifier=None, progress: bool = True) -> dict:
    """Sample ``n`` digits (``sampler``: see :func:`~diffaccel.mnist.sampling.sample`; ``None`` is the
    model's default, "ddpm" or "euler") and score them: label accuracy and Fréchet distance.
    The arguments are checked as :func:`~diffaccel.mnist.sampling.sample` checks them, before the
    classifier and the test set are loaded."""
    guidance_scale, num_steps, seed, sampler = check_sample_args(model, guidance_scale, num_steps, seed, sampler)
    n = check_int("n", n, min=1, what=" (how many digits to sample)")
    check_bool("progress", progress)
    clf = classifier or load_classifier()
    xt, _ = mnist_tensors("test", root=data_dir)
    t0 = time.time()
    labels = torch.arange(n) % 10 if model.conditioning == "class" else None
    cuda = model.device.type == "cuda"  # CUDA: big batches, each loop replayed as one CUDA graph
    x = sample(model, labels=labels, n=None if labels is not None else n, guidance_scale=guidance_scale,
               num_steps=num_steps, seed=seed, sampler=sampler, progress=progress,
               batch_size=1000 if cuda else 512, cuda_graph=cuda).cpu()
    steps = num_steps or (model.num_timesteps if model.kind == "ddpm" else 300)
    res = {"model": model.name, "n": n, "num_steps": steps, "sampler": sampler, "nfe": nfe(sampler, steps), "seed": seed,
           "sampling_time_s": round(time.time() - t0, 1)}
    if labels is not None:
        res["guidance_scale"] = guidance_scale
        res["label_accuracy"] = round(accuracy(clf, x, labels), 4)
    res["frechet_distance"] = round(frechet_distance(features(clf, x), features(clf, xt)), 3)
    return res
