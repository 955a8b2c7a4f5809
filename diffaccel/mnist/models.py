"""The course UNet of SPEC Part B, its time- and class-conditioned variants (B2.1, B2.4), and the
flow-matching variants — small named blocks, configured by a dataclass.

Every op except Flatten ends in BatchNorm2d + GELU (SPEC Part B):

    1x28x28 -ConvBlock-> Dx28x28 (e0) -DownBlock-> Dx14x14 (e1) -DownBlock-> 2Dx7x7 (e2)
    -Flatten-> 2Dx1x1 -Unflatten-> 2Dx7x7 (u0); cat(u0, e2) -UpBlock-> Dx14x14 (u1);
    cat(u1, e1) -UpBlock-> Dx28x28; cat(., e0) -ConvBlock-> Dx28x28 -Conv2d-> 1x28x28
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn

CONDITIONINGS = ("none", "time", "class")
INJECTIONS = ("add", "mul")


@dataclass
class UNetConfig:
    """``hidden`` is D. ``conditioning``: "none" (B1 denoisers), "time" (B2.1), "class" (B2.4).

    ``injection`` is how the time embedding enters: "add" (``u0 + t1``, the DDPM edition) or
    "mul" (``u0 * t1``, the flow-matching edition). Class conditioning always multiplies:
    ``u0 = c1 * u0 (+|*) t1``.
    """

    hidden: int = 64
    in_channels: int = 1
    num_classes: int = 10
    conditioning: str = "none"
    injection: str = "add"

    def __post_init__(self):
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, got {self.injection!r}")
        if self.hidden < 1:
            raise ValueError(f"hidden (D) must be >= 1, got {self.hidden}")

    def to_dict(self) -> dict:
        return asdict(self)


def _bn_gelu(layer: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(layer, nn.BatchNorm2d(channels), nn.GELU())


def Conv(cin: int, cout: int) -> nn.Sequential:
    """Conv2d(k3, s1, p1) + BN + GELU; keeps the resolution."""
    return _bn_gelu(nn.Conv2d(cin, cout, 3, 1, 1), cout)


def DownConv(cin: int, cout: int) -> nn.Sequential:
    """Conv2d(k3, s2, p1) + BN + GELU; halves the resolution."""
    return _bn_gelu(nn.Conv2d(cin, cout, 3, 2, 1), cout)


def UpConv(cin: int, cout: int) -> nn.Sequential:
    """ConvTranspose2d(k4, s2, p1) + BN + GELU; doubles the resolution."""
    return _bn_gelu(nn.ConvTranspose2d(cin, cout, 4, 2, 1), cout)


def Flatten() -> nn.Sequential:
    """AvgPool2d(7) + GELU: 7x7 -> 1x1."""
    return nn.Sequential(nn.AvgPool2d(7), nn.GELU())


def Unflatten(channels: int) -> nn.Sequential:
    """ConvTranspose2d(k7, s7, p0) + BN + GELU: 1x1 -> 7x7."""
    return _bn_gelu(nn.ConvTranspose2d(channels, channels, 7, 7, 0), channels)


def ConvBlock(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(Conv(cin, cout), Conv(cout, cout))


def DownBlock(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(DownConv(cin, cout), ConvBlock(cout, cout))


def UpBlock(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(UpConv(cin, cout), ConvBlock(cout, cout))


class FCBlock(nn.Sequential):
    """Linear(in, out), GELU, Linear(out, out) (SPEC B2.1)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Linear(cin, cout), nn.GELU(), nn.Linear(cout, cout))


def inject(h: torch.Tensor, t_emb: torch.Tensor, c_emb: Optional[torch.Tensor], injection: str) -> torch.Tensor:
    """The conditioning injection of the course UNet: ``c1 * h (+|*) t1`` (class multiplies; time
    adds or multiplies, see :class:`UNetConfig`). Embeddings are [N, C], ``h`` is [N, C, H, W]."""
    if c_emb is not None:
        h = c_emb[..., None, None] * h
    if injection == "add":
        return h + t_emb[..., None, None]
    return h * t_emb[..., None, None]


class UNet(nn.Module):
    """The course UNet. ``forward(x, t=None, c=None)``:

    * ``x``: [N, 1, 28, 28];
    * ``t``: [N] float (DDPM: ``t / T`` for the 0-based timestep index; flow matching: t in [0, 1]);
    * ``c``: [N, num_classes] one-hot float; all zeros is the unconditional (null) class.
    """

    def __init__(self, config: Optional[UNetConfig] = None, **kwargs):
        super().__init__()
        self.config = config = config or UNetConfig(**kwargs)
        d, cin = config.hidden, config.in_channels
        self.enc0 = ConvBlock(cin, d)
        self.enc1 = DownBlock(d, d)
        self.enc2 = DownBlock(d, 2 * d)
        self.flatten = Flatten()
        self.unflatten = Unflatten(2 * d)
        self.dec1 = UpBlock(4 * d, d)
        self.dec2 = UpBlock(2 * d, d)
        self.dec3 = ConvBlock(2 * d, d)
        self.head = nn.Conv2d(d, cin, 3, 1, 1)
        if config.conditioning in ("time", "class"):
            self.fc1_t, self.fc2_t = FCBlock(1, 2 * d), FCBlock(1, d)
        if config.conditioning == "class":
            self.fc1_c, self.fc2_c = FCBlock(config.num_classes, 2 * d), FCBlock(config.num_classes, d)

    def _inject(self, h: torch.Tensor, t_emb: torch.Tensor, c_emb: Optional[torch.Tensor]) -> torch.Tensor:
        return inject(h, t_emb, c_emb, self.config.injection)

    def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None, c: Optional[torch.Tensor] = None):
        cond = self.config.conditioning
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.config.in_channels, 28, 28):
            raise ValueError(f"x must be [N, {self.config.in_channels}, 28, 28], got {tuple(x.shape)}")
        if cond != "none" and t is None:
            raise ValueError(f"this UNet is {cond}-conditioned: pass t ([N] floats)")
        if cond == "class" and c is None:
            raise ValueError("this UNet is class-conditioned: pass c ([N, num_classes] one-hot; zeros = unconditional)")
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        u0 = self.unflatten(self.flatten(e2))
        if cond != "none":
            t = t.to(x.dtype).reshape(-1, 1)
            c1 = c2 = None
            if cond == "class":
                c = c.to(x.dtype)
                c1, c2 = self.fc1_c(c), self.fc2_c(c)
            u0 = self._inject(u0, self.fc1_t(t), c1)
        u1 = self.dec1(torch.cat([u0, e2], dim=1))
        if cond != "none":
            u1 = self._inject(u1, self.fc2_t(t), c2)
        u2 = self.dec2(torch.cat([u1, e1], dim=1))
        return self.head(self.dec3(torch.cat([u2, e0], dim=1)))


def one_hot(labels: Optional[torch.Tensor], n: int, num_classes: int = 10, device=None, dtype=torch.float32):
    """Labels -> one-hot [N, num_classes]; ``None`` or label -1 -> all zeros (unconditional).

    CPU labels are range-checked, then copied to ``device`` without blocking; the encoding is a
    comparison (no boolean indexing), so nothing here waits for the GPU."""
    if labels is None:
        return torch.zeros(n, num_classes, device=device, dtype=dtype)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.device.type == "cpu" and labels.numel() and (labels.max() >= num_classes or labels.min() < -1):
        raise ValueError(f"labels must be in [0, {num_classes - 1}] (or -1 for unconditional), got {labels.tolist()[:10]}")
    if device is not None:
        labels = labels.to(device, non_blocking=True)
    classes = torch.arange(num_classes, device=labels.device)
    return (labels[:, None] == classes).to(dtype)


def load_weights(module: nn.Module, state: dict, source) -> nn.Module:
    """``module.load_state_dict(state)``, or a one-line :class:`~diffaccel.errors.CheckpointError`
    saying how the weights in ``source`` differ from the module (another model's weights)."""
    from ..errors import CheckpointError

    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the {len(own)} expected tensors missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k!r}: {list(state[k].shape)} in the file, "
                         f"{list(own[k].shape)} expected)")
        raise CheckpointError(f"{source} holds the weights of another model than its config describes "
                              f"({type(module).__name__}): {'; '.join(parts)}")
    module.load_state_dict(state)
    return module
