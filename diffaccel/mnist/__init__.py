"""Part B: MNIST diffusion from scratch (SPEC Part B).

``list_pretrained()``, ``load_pretrained(name)`` and ``sample(model, labels=None, n=None,
guidance_scale=5.0, num_steps=None, seed=0)`` are the public entry points.
"""
from .models import UNet, UNetConfig
from .pretrained import MNISTDiffusion, list_pretrained, load_pretrained, pretrained_epochs
from .sampling import sample

__all__ = ["UNet", "UNetConfig", "MNISTDiffusion", "list_pretrained", "load_pretrained", "pretrained_epochs", "sample"]
