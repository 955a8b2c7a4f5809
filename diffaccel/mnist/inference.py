"""Inference-time rewrites of the course UNet: fold BatchNorm into the preceding (transposed)
convolution, channels-last memory format, and optionally ``torch.compile``.

Folding is exact algebra on eval-mode BatchNorm (``y = gamma (conv(x) - mu) / sqrt(var + eps) + beta``
is a convolution with rescaled weights and bias), so the folded model computes the same function
with one pass over each activation fewer.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    if isinstance(conv, nn.ConvTranspose2d):  # weight [in, out, kh, kw]
        conv.weight.mul_(scale[None, :, None, None])
    else:  # weight [out, in, kh, kw]
        conv.weight.mul_(scale[:, None, None, None])
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) where every ``Sequential(conv, BatchNorm2d, ...)`` has the BN folded."""
    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        if isinstance(mod, nn.Sequential):
            for i in range(len(mod) - 1):
                a, b = mod[i], mod[i + 1]
                if isinstance(a, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(b, nn.BatchNorm2d):
                    _fold(a, b)
                    mod[i + 1] = nn.Identity()
    return model


def optimize_for_inference(model: nn.Module, channels_last: bool = True, compile: bool = False) -> nn.Module:
    """Fold BN, switch to channels-last (oneDNN's preferred layout on CPU) and optionally compile."""
    fast = fold_batchnorm(model)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    if compile:
        fast = torch.compile(fast, dynamic=False)
    return fast
