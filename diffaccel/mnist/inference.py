"""Inference-time rewrites of the course UNet: fold BatchNorm into the preceding (transposed)
convolution, channels-last memory format, and optionally ``torch.compile``.

Folding is exact algebra on eval-mode BatchNorm (``y = gamma (conv(x) - mu) / sqrt(var + eps) + beta``
is a convolution with rescaled weights and bias), so the folded model computes the same function
with one pass over each activation fewer.
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import Optional

import torch
from torch import nn

from .. import reference as R
from .models import inject


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


def winograd_available() -> bool:
    """Whether the C++ Winograd convolution (``torch.ops.diffaccel.conv3x3_winograd``) is built
    and not switched off (``DIFFACCEL_DISABLE_WINOGRAD=1``: oneDNN's direct convolutions)."""
    from .._backends import cpp_ops

    if os.environ.get("DIFFACCEL_DISABLE_WINOGRAD") == "1":
        return False
    return cpp_ops() is not None and hasattr(torch.ops.diffaccel, "conv3x3_winograd")


class WinogradConv3x3(nn.Module):
    """An ``nn.Conv2d(k=3, stride=1, padding=1)`` evaluated on CPU float32 by the C++ Winograd
    F(4x4, 3x3) kernel (``csrc/cpu/conv_ops.cpp``): 4x fewer multiply-adds, faster than
    oneDNN's direct convolution on the course UNet's 28x28 layers, and float32 results within
    about 1e-5 of it. The filter is transformed once, here (a snapshot of ``conv``'s weights).
    Any other device or dtype, and bf16 autocast, run ``conv`` itself."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_winograd_eligible(conv):
            raise ValueError(f"WinogradConv3x3 takes a 3x3, stride 1, padding 1 Conv2d on the CPU, got {conv}")
        self.conv = conv
        with torch.no_grad():
            self.register_buffer("u", torch.ops.diffaccel.winograd_weight(conv.weight.float()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
            return torch.ops.diffaccel.conv3x3_winograd(x, self.u, self.conv.bias)
        return self.conv(x)


#: Narrower layers gain nothing from the transforms (the UNet's 1-channel input conv, say).
WINOGRAD_MIN_CHANNELS = 16


def is_winograd_eligible(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"
            and m.weight.device.type == "cpu" and min(m.in_channels, m.out_channels) >= WINOGRAD_MIN_CHANNELS)


def use_winograd(model: nn.Module) -> nn.Module:
    """Swap, in place, every eligible 3x3 convolution of ``model`` for :class:`WinogradConv3x3`
    (a no-op where the C++ extension is not built). Returns ``model``."""
    if not winograd_available():
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_winograd_eligible(child):
                setattr(parent, name, WinogradConv3x3(child))
    return model


def optimize_for_inference(model: nn.Module, channels_last: bool = True, compile: bool = False,
                           winograd: bool = True) -> nn.Module:
    """Fold BN, switch to channels-last (oneDNN's preferred layout on CPU), evaluate the 3x3
    convolutions by Winograd on CPU (``winograd``) and optionally compile."""
    fast = fold_batchnorm(model)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    if winograd:
        use_winograd(fast)
    if compile:
        fast = torch.compile(fast, dynamic=False)
    return fast


# --- classifier-free guidance with the class-independent work done once -------------------------

def _erf_rational(x: torch.Tensor) -> torch.Tensor:
    """erf(x) as an odd rational function of x on [-4, 4] (Eigen's / XLA's float32 ``erf``;
    max abs error 4e-7, a few float32 ulps). Only pointwise mul/add/div, so an inductor kernel
    evaluates it in a dozen vector FMAs, fused with the surrounding pointwise work, instead of
    the exp-based erf that ``gelu`` uses."""
    x = x.clamp(-4.0, 4.0)
    x2 = x * x
    p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08
    for a in (-2.10102402082508e-06, -5.69250639462346e-05, -7.34990630326855e-04,
              -2.95459980854025e-03, -1.60960333262415e-02):
        p = x2 * p + a
    q = x2 * -1.45660718464996e-05 + -2.13374055278905e-04
    for b in (-1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02):
        q = x2 * q + b
    return x * p / q


def gelu_rational(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU up to float32 rounding (max abs error 1.4e-6 vs float64, as ``F.gelu``'s
    1.2e-6), through :func:`_erf_rational`. Meant for compiled code; eager it is many passes."""
    return 0.5 * x * (1.0 + _erf_rational(x * 0.7071067811865476))


def _convs(mod: nn.Module) -> list:
    return [m for m in mod.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def _split_input(conv: nn.Module, k: int) -> tuple:
    """``conv(cat(a, b)) == conv_a(a) + conv_b(b)``: the layer split along its input channels
    (``a`` = the first ``k``); the bias goes with ``b``."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    parts = []
    for lo, hi, bias in ((0, k, False), (k, conv.in_channels, True)):
        p = cls(hi - lo, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=bias)
        with torch.no_grad():
            p.weight.copy_(conv.weight[lo:hi] if transposed else conv.weight[:, lo:hi])
            if bias:
                p.bias.copy_(conv.bias)
        parts.append(p.to(conv.weight.device))
    return tuple(parts)


class GuidedUNet(nn.Module):
    """The class-conditioned course UNet evaluated for classifier-free guidance:
    ``forward(x, t, c, scale) = eps_u + scale * (eps_c - eps_u)`` with ``eps_c = net(x, t, c)``
    and ``eps_u = net(x, t, 0)`` — the same function as two UNet calls, with less work:

    * the class enters only at the two injections (``u0``, ``u1``), so the encoder
      (``e0, e1, e2`` and the Flatten/Unflatten bottleneck) is run once for both branches;
    * each decoder layer that reads a skip concatenation ``cat(h, e)`` is split by input channels,
      ``W [h; e] = W_h h + W_e e``, and the ``W_e e`` half (plus bias) is shared too;
    * the head is linear, so the guidance combine happens on its 32-channel input and the head
      runs once: ``head(hu + s (hc - hu)) = eu + s (ec - eu)``.

    About 22% fewer multiply-adds than the two calls at D = 32, exact algebra (sums in another
    order, so equal up to float32 rounding). Made from a BatchNorm-folded UNet.
    """

    def __init__(self, folded: nn.Module):
        super().__init__()
        cfg = folded.config
        if cfg.conditioning != "class":
            raise ValueError("GuidedUNet needs a class-conditioned UNet")
        if any(isinstance(m, nn.BatchNorm2d) for m in folded.modules()):
            raise ValueError("fold the BatchNorms first (fold_batchnorm)")
        self.injection, d = cfg.injection, cfg.hidden
        self.enc = nn.ModuleList(_convs(folded.enc0) + _convs(folded.enc1) + _convs(folded.enc2))
        self.unflatten = folded.unflatten[0]
        self.fc1_t, self.fc2_t, self.fc1_c, self.fc2_c = folded.fc1_t, folded.fc2_t, folded.fc1_c, folded.fc2_c
        c1, c2, c3 = _convs(folded.dec1), _convs(folded.dec2), _convs(folded.dec3)
        self.up1_h, self.up1_e = _split_input(c1[0], 2 * d)
        self.up2_h, self.up2_e = _split_input(c2[0], d)
        self.cat3_h, self.cat3_e = _split_input(c3[0], d)
        self.dec1, self.dec2, self.dec3 = nn.ModuleList(c1[1:]), nn.ModuleList(c2[1:]), nn.ModuleList(c3[1:])
        self.head = folded.head
        self.rational_gelu = True  # under torch.compile only (see gelu_rational)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.rational_gelu and torch.compiler.is_compiling():
            return gelu_rational(x)
        return nn.functional.gelu(x)

    def _inject(self, h, t_emb, c_emb):
        return inject(h, t_emb, c_emb, self.injection)

    def _join(self, h2: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """act(h2 + e) for h2 = [cond; uncond] (2n) and the shared e (n)."""
        n = e.shape[0]
        return self._act((h2.unflatten(0, (2, n)) + e).flatten(0, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, scale: float) -> torch.Tensor:
        n, act = x.shape[0], self._act
        h, skips = x, []
        for i, conv in enumerate(self.enc):  # enc0: 2 convs, enc1/enc2: 3 each
            h = act(conv(h))
            if i in (1, 4, 7):
                skips.append(h)
        e0, e1, e2 = skips
        u0 = act(self.unflatten(act(nn.functional.avg_pool2d(e2, 7))))
        t = t.to(x.dtype).reshape(-1, 1)
        cc = torch.cat([c.to(x.dtype), torch.zeros_like(c, dtype=x.dtype)])  # [cond; uncond]
        t1, t2 = self.fc1_t(t).repeat(2, 1), self.fc2_t(t).repeat(2, 1)
        h = self._join(self.up1_h(self._inject(u0.repeat(2, 1, 1, 1), t1, self.fc1_c(cc))), self.up1_e(e2))
        for conv in self.dec1:
            h = act(conv(h))
        h = self._inject(h, t2, self.fc2_c(cc))
        h = self._join(self.up2_h(h), self.up2_e(e1))
        for conv in self.dec2:
            h = act(conv(h))
        h = self._join(self.cat3_h(h), self.cat3_e(e0))
        for conv in self.dec3:
            h = act(conv(h))
        h = h.float()  # under bf16 autocast: combine and head in float32, as the unfused path does
        with torch.autocast(x.device.type, enabled=False):
            # The reference's CFG formula on the head's input (a hidden state, channels-last, not
            # an eps image): plain tensor ops keep the layout and fuse under torch.compile.
            return self.head(R.cfg_combine(h[n:], h[:n], scale))


class CompiledOrEager(nn.Module):
    """``torch.compile(module)`` (inductor, ``freezing=True``: weights become constants, oneDNN
    prepacks them and fuses bias/activation epilogues) that falls back to the eager module, with
    one warning, if compiling or running the compiled code fails (no C++ compiler, a platform
    torch.compile does not support, ...). ``compiled_ok`` says which one ran last."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.compiled_ok: Optional[bool] = None
        try:
            self._compiled = torch.compile(module, dynamic=False, options={"freezing": True})
        except Exception as e:  # noqa: BLE001 - any failure means: run eager
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        warnings.warn(f"torch.compile unavailable ({type(e).__name__}: {str(e)[:200]}); running eager",
                      RuntimeWarning, stacklevel=3)
        self.compiled_ok, self._compiled = False, None

    def forward(self, *args):
        if self._compiled is not None:
            try:
                out = self._compiled(*args)
                self.compiled_ok = True
                return out
            except Exception as e:  # noqa: BLE001
                self._fail(e)
        return self.module(*args)


def guided_unet(model: nn.Module, channels_last: bool = True, compile: bool = False, winograd: bool = True) -> nn.Module:
    """:class:`GuidedUNet` of ``model`` (BN folded, channels-last, 3x3 convolutions by Winograd on
    CPU when ``winograd``), optionally compiled with a clean eager fallback (:class:`CompiledOrEager`)."""
    g = GuidedUNet(fold_batchnorm(model)).eval()
    if channels_last:
        g = g.to(memory_format=torch.channels_last)
    if winograd:
        use_winograd(g)
    return CompiledOrEager(g) if compile else g
