"""One denoiser interface for every Part-A technique (SPEC Part A).

A *denoiser* maps ``(x_t, t, cond)`` to the model's noise estimate and, when the model
predicts one, its variance channels (in [-1, 1], diffusers' ``learned_range``)::

    out = denoiser(x_t, t, cond)          # DenoiserOutput(eps, variance | None)

Attributes every denoiser has:

* ``alphas_cumprod`` — 1-D float32 tensor, T entries (``abar``);
* ``sample_shape`` — ``(C, H, W)`` of the images the model works on;
* ``null_cond`` — the unconditional condition (``""`` for IF, ``None`` for MNIST);
* ``value_range`` — the pixel range the model was trained on ((-1, 1) or (0, 1)).

Conditions. A condition applies to a *block* of samples. ``batch_conds([c_1, ..., c_k])``
stacks k conditions so that ONE forward over ``cat([x_1, ..., x_k])`` evaluates each block
under its own condition — how CFG, anagrams and hybrids make one model call per step::

    eps_u, eps_c = denoiser(cat([x, x]), cat([t, t]), denoiser.batch_conds([null, c])).eps.chunk(2)

Internally a condition is an :class:`EncodedCond` with R rows; a batch of B samples must be a
multiple of R, and row j applies to samples ``j*B/R .. (j+1)*B/R - 1``.

Value range. Techniques take and return clean images in the canonical range [-1, 1]; the
diffusion itself runs in the model's own space. ``to_model_range`` / ``from_model_range``
convert (identity for IF, ``x/2 + 1/2`` for MNIST), so techniques never assume a range.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = [
    "DenoiserOutput", "EncodedCond", "Denoiser", "DiffusersDenoiser", "IFDenoiser",
    "IFSuperResDenoiser", "MNISTDenoiser", "alphas_cumprod_from_config", "IF_SCHEDULER_CONFIG",
]

#: DeepFloyd IF stage I/II scheduler config (``scheduler/scheduler_config.json`` on the hub).
IF_SCHEDULER_CONFIG = {
    "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "variance_type": "learned_range",
    "thresholding": True, "dynamic_thresholding_ratio": 0.95, "sample_max_value": 1.5,
    "clip_sample": True, "clip_sample_range": 1.0,
}


class DenoiserOutput(NamedTuple):
    """``eps``: noise estimate (like ``x_t``); ``variance``: learned-range channels in [-1, 1] or None."""

    eps: torch.Tensor
    variance: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class EncodedCond:
    """A condition in the model's own form (IF: embeddings [R, 77, E]; MNIST: one-hot [R, 10])."""

    value: torch.Tensor

    @property
    def rows(self) -> int:
        return self.value.shape[0]


def alphas_cumprod_from_config(config: Union[Mapping[str, Any], torch.Tensor, None]) -> torch.Tensor:
    """``abar`` as float32 from a diffusers scheduler config (or a tensor, returned checked)."""
    if isinstance(config, torch.Tensor):
        abar = config
    else:
        from diffusers import DDPMScheduler

        cfg = dict(IF_SCHEDULER_CONFIG if config is None else config)
        cfg.pop("_class_name", None)
        cfg.pop("_diffusers_version", None)
        abar = DDPMScheduler.from_config(cfg).alphas_cumprod
    if abar.ndim != 1 or abar.numel() < 2 or not abar.is_floating_point():
        raise ValueError(f"alphas_cumprod must be a 1-D float tensor with T >= 2 entries, got {tuple(abar.shape)}")
    return abar.detach().to(torch.float32).cpu().contiguous()


def _expand_rows(cond: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    rows = cond.shape[0]
    if batch % rows:
        raise ValueError(
            f"the batch ({batch} samples) must be a multiple of the {rows} condition rows in {what}; "
            "use denoiser.batch_conds([...]) with one block of samples per condition")
    return cond.repeat_interleave(batch // rows, dim=0) if rows != batch else cond


class Denoiser:
    """Base class: subclasses implement :meth:`encode` and :meth:`_forward`."""

    alphas_cumprod: torch.Tensor
    sample_shape: Tuple[int, int, int]
    null_cond: Any = None
    value_range: Tuple[float, float] = (-1.0, 1.0)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    # -- conditions -------------------------------------------------------------------
    def encode(self, cond) -> EncodedCond:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch_conds(self, conds: Sequence[Any]) -> EncodedCond:
        """Stack conditions block-wise: k conditions -> one condition for k blocks of samples."""
        if isinstance(conds, (str, EncodedCond)) or not isinstance(conds, Sequence) or len(conds) == 0:
            raise TypeError("conds must be a non-empty list of conditions, e.g. [denoiser.null_cond, 'a photo']")
        enc = [self.encode(c) for c in conds]
        rows = max(e.rows for e in enc)
        parts = []
        for e in enc:
            if e.rows not in (1, rows):
                raise ValueError(f"conditions in one batch must have 1 or {rows} rows each, got {e.rows}")
            parts.append(e.value.expand(rows, *e.value.shape[1:]) if e.rows == 1 else e.value)
        return EncodedCond(torch.cat(parts, dim=0))

    # -- value range --------------------------------------------------------------------
    def to_model_range(self, x: torch.Tensor) -> torch.Tensor:
        """Canonical [-1, 1] -> the model's pixel range."""
        lo, hi = self.value_range
        if (lo, hi) == (-1.0, 1.0):
            return x
        return (x + 1) * ((hi - lo) / 2) + lo

    def from_model_range(self, x: torch.Tensor) -> torch.Tensor:
        """The model's pixel range -> canonical [-1, 1]."""
        lo, hi = self.value_range
        if (lo, hi) == (-1.0, 1.0):
            return x
        return (x - lo) * (2 / (hi - lo)) - 1

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def check_sample(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise a clear error unless ``x`` is [N, C, H, W] with (C, H, W) = ``sample_shape``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.sample_shape):
            raise ValueError(
                f"{name} must have shape (N, {', '.join(map(str, self.sample_shape))}) for this model, "
                f"got {tuple(x.shape)}; resize it (e.g. load_image(path, size={self.sample_shape[-1]}))")

    # -- forward --------------------------------------------------------------------------
    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> DenoiserOutput:
        raise NotImplementedError  # pragma: no cover - abstract

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t, cond=None) -> DenoiserOutput:
        n = x_t.shape[0]
        if isinstance(t, int):
            t = torch.full((n,), t, dtype=torch.long)
        t = torch.as_tensor(t).to(device=x_t.device, dtype=torch.long).reshape(-1).expand(n)
        enc = self.encode(cond)
        return self._forward(x_t, t, _expand_rows(enc.value.to(x_t.device), n, "cond"))


def _split_eps(out: torch.Tensor, channels: int, learned: bool) -> DenoiserOutput:
    if out.shape[1] == 2 * channels:
        eps, var = out[:, :channels], out[:, channels:]
        return DenoiserOutput(eps, var if learned else None)
    return DenoiserOutput(out, None)


class DiffusersDenoiser(Denoiser):
    """Any diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` that predicts noise.

    ``scheduler``: a scheduler config mapping (or ``alphas_cumprod`` tensor). If the UNet puts
    out twice the image channels, the second half is returned as ``variance`` (the config's
    ``variance_type`` must then be ``learned_range``). Conditions for a ``UNet2DConditionModel``
    are ``encoder_hidden_states`` tensors ``[R, L, E]`` (set ``null_cond`` to the unconditional
    embedding to use CFG); a ``UNet2DModel`` takes ``None`` only.
    """

    def __init__(self, unet: nn.Module, scheduler: Union[Mapping[str, Any], torch.Tensor],
                 value_range: Tuple[float, float] = (-1.0, 1.0)):
        self.unet = unet.eval()
        self.alphas_cumprod = alphas_cumprod_from_config(scheduler)
        cfg = unet.config
        self.out_image_channels = int(getattr(cfg, "out_channels", cfg.in_channels))
        size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
        self.image_channels = self._image_channels()
        self.sample_shape = (self.image_channels, int(size[0]), int(size[1]))
        variance_type = scheduler.get("variance_type") if isinstance(scheduler, Mapping) else None
        # Twice the channels out: the second half is the variance; only diffusers'
        # "learned_range" parameterisation is a step the functional API takes.
        self.learned_variance = self.out_image_channels == 2 * self.image_channels
        if self.learned_variance and variance_type not in (None, "learned_range"):
            raise ValueError(f"the UNet predicts a variance but the scheduler's variance_type is {variance_type!r}; "
                             "only 'learned_range' is supported")
        self.value_range = tuple(float(v) for v in value_range)
        p = next(unet.parameters())
        self.device, self.dtype = p.device, p.dtype
        # abar lives where the images do: no host->device copy per step
        self.alphas_cumprod = self.alphas_cumprod.to(self.device)
        self.is_conditional = hasattr(cfg, "cross_attention_dim") and cfg.cross_attention_dim is not None
        self.null_cond = None

    def _image_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def _embeds(self, cond) -> torch.Tensor:
        if not isinstance(cond, torch.Tensor):
            raise TypeError(f"cond must be an encoder_hidden_states tensor [R, L, E], got {type(cond).__name__}")
        return cond

    def _check_embeds(self, e: torch.Tensor, what: str) -> torch.Tensor:
        dim = getattr(self.unet.config, "encoder_hid_dim", None) or self.unet.config.cross_attention_dim
        if e.ndim == 2:
            e = e[None]
        if e.ndim != 3 or (dim is not None and e.shape[-1] != dim):
            raise ValueError(f"{what} must have shape [R, L, {dim}] for this UNet, got {tuple(e.shape)}")
        if not e.is_floating_point():
            raise TypeError(f"{what} must be a floating tensor, got {e.dtype}")
        return e.to(device=self.device, dtype=self.dtype)

    def encode(self, cond) -> EncodedCond:
        if isinstance(cond, EncodedCond):
            return cond
        if not self.is_conditional:
            if cond is not None:
                raise ValueError("this UNet is unconditional: cond must be None")
            return EncodedCond(torch.zeros(1, 0, device=self.device))
        return EncodedCond(self._check_embeds(self._embeds(cond), "cond"))

    def _unet_kwargs(self, x_t, t, cond) -> dict:
        kw = {"return_dict": False}
        if self.is_conditional:
            kw["encoder_hidden_states"] = cond
        return kw

    def _model_input(self, x_t: torch.Tensor) -> torch.Tensor:
        return x_t

    def _forward(self, x_t, t, cond) -> DenoiserOutput:
        inp = self._model_input(x_t).to(self.dtype)
        out = self.unet(inp, t, **self._unet_kwargs(x_t, t, cond))[0]
        eps, var = _split_eps(out, self.image_channels, self.learned_variance)
        return DenoiserOutput(eps.to(x_t.dtype), None if var is None else var.to(x_t.dtype))


class IFDenoiser(DiffusersDenoiser):
    """DeepFloyd IF stage I (SPEC A0-A1.9): 6 output channels (eps, learned-range variance).

    ``prompt_embeds``: ``{prompt: tensor[1, 77, E]}`` (E = 4096 for IF); ``""`` is the null prompt.
    A condition is a prompt string, a list of prompt strings (one per row) or an embedding tensor.
    """

    def __init__(self, unet: nn.Module, scheduler: Union[Mapping[str, Any], torch.Tensor, None] = None,
                 prompt_embeds: Optional[Mapping[str, torch.Tensor]] = None):
        super().__init__(unet, scheduler if scheduler is not None else IF_SCHEDULER_CONFIG)
        if not self.is_conditional:
            raise ValueError("IFDenoiser needs a UNet2DConditionModel (cross-attention on prompt embeddings)")
        self.prompt_embeds = {}
        for k, v in (prompt_embeds or {}).items():
            if not isinstance(k, str):
                raise TypeError(f"prompt_embeds keys must be prompt strings, got {type(k).__name__}")
            self.prompt_embeds[k] = self._check_embeds(v, f"prompt_embeds[{k!r}]")  # cast once
        self.null_cond = ""
        self.default_prompt = "a high quality photo"  # SPEC A1.3

    def _embeds(self, cond) -> torch.Tensor:
        if isinstance(cond, str):
            cond = [cond]
        if isinstance(cond, (list, tuple)) and cond and all(isinstance(c, str) for c in cond):
            missing = [c for c in cond if c not in self.prompt_embeds]
            if missing:
                avail = sorted(self.prompt_embeds)
                raise KeyError(
                    f"no embedding for prompt(s) {missing}; available prompts: {avail[:50]}"
                    + (" ..." if len(avail) > 50 else "")
                    + ". Precompute them (encode_prompts) or pass an embedding tensor.")
            return torch.cat([self._check_embeds(self.prompt_embeds[c], f"prompt_embeds[{c!r}]") for c in cond])
        if cond is None:
            raise ValueError('IF is text-conditioned: pass a prompt (use "" for unconditional)')
        return super()._embeds(cond)


class IFSuperResDenoiser(IFDenoiser):
    """DeepFloyd IF stage II: the UNet sees ``cat([x_t, upscaled_low_res])`` and the noise level.

    As diffusers' ``IFSuperResolutionPipeline``: the stage-I image is upscaled (bilinear,
    ``align_corners=True``), noised to ``noise_level`` with the *image noising* scheduler, and
    both enter every call (``class_labels = noise_level``). Bind them with :meth:`with_low_res`.
    """

    def __init__(self, unet, scheduler=None, prompt_embeds=None, noising_scheduler=None):
        super().__init__(unet, scheduler, prompt_embeds)
        self.noising_alphas_cumprod = alphas_cumprod_from_config(
            noising_scheduler if noising_scheduler is not None else {
                "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000})
        self.upscaled: Optional[torch.Tensor] = None
        self.noise_level: Optional[torch.Tensor] = None

    def _image_channels(self) -> int:
        return int(self.unet.config.in_channels) // 2

    def with_low_res(self, upscaled_noisy: torch.Tensor, noise_level: int) -> "IFSuperResDenoiser":
        """A copy bound to the (already upscaled and noised) low-resolution images [N, 3, H, W]."""
        import copy

        self.check_sample(upscaled_noisy, "upscaled low-res image")
        if not 0 <= int(noise_level) < self.noising_alphas_cumprod.numel():
            raise ValueError(f"noise_level must be in [0, {self.noising_alphas_cumprod.numel() - 1}], got {noise_level}")
        bound = copy.copy(self)
        bound.upscaled = upscaled_noisy.to(self.device)
        bound.noise_level = int(noise_level)
        return bound

    def _model_input(self, x_t):
        if self.upscaled is None:
            raise RuntimeError("IF stage II needs the low-res image: use denoiser.with_low_res(...) "
                               "or techniques.upsample_stage2")
        n, b = self.upscaled.shape[0], x_t.shape[0]
        if b % n:
            raise ValueError(f"the batch ({b}) must be a multiple of the {n} bound low-res images")
        # CFG and friends stack whole blocks of the N samples: tile, do not interleave.
        up = self.upscaled.repeat(b // n, 1, 1, 1) if b != n else self.upscaled
        return torch.cat([x_t, up.to(x_t.dtype)], dim=1)

    def _unet_kwargs(self, x_t, t, cond):
        kw = super()._unet_kwargs(x_t, t, cond)
        kw["class_labels"] = torch.full((x_t.shape[0],), self.noise_level, device=x_t.device, dtype=torch.long)
        return kw


class MNISTDenoiser(Denoiser):
    """The project's MNIST DDPM UNets (SPEC B2.2-B2.5) behind the denoiser interface.

    ``model.forward(x, t / T, c)``, ``c`` one-hot [N, 10] (zeros = unconditional). Conditions:
    a class label 0..9, ``None`` (unconditional), or a sequence of labels/None (one row each).
    Images are in [0, 1] (``value_range``); the model is put in eval mode (BatchNorm).
    """

    null_cond = None

    def __init__(self, model: nn.Module, alphas_cumprod: torch.Tensor, kind: str = "ddpm", num_classes: int = 10):
        if kind != "ddpm":
            raise ValueError(
                f"the Part-A techniques need a noise-predicting DDPM model (kind='ddpm'), got kind={kind!r}")
        self.model = model.eval()
        self.alphas_cumprod = alphas_cumprod_from_config(torch.as_tensor(alphas_cumprod))
        cfg = getattr(model, "config", None)
        self.conditioning = getattr(cfg, "conditioning", "class")
        if self.conditioning == "none":
            raise ValueError("this MNIST UNet is not time-conditioned; it cannot be used as a DDPM denoiser")
        self.num_classes = int(getattr(cfg, "num_classes", num_classes))
        self.sample_shape = (int(getattr(cfg, "in_channels", 1)), 28, 28)
        self.value_range = (0.0, 1.0)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.alphas_cumprod = self.alphas_cumprod.to(self.device)

    @classmethod
    def from_pretrained(cls, name, device="cpu") -> "MNISTDenoiser":
        """A shipped MNIST model by name or training folder (``mnist.pretrained.load_pretrained``),
        or an already loaded ``MNISTDiffusion``."""
        if isinstance(name, (str, os.PathLike)):
            from ..mnist.pretrained import load_pretrained

            name = load_pretrained(os.fspath(name), device=device)
        pre = name
        return cls(pre.model.to(device), pre.alphas_cumprod, kind=getattr(pre, "kind", "ddpm"))

    def encode(self, cond) -> EncodedCond:
        if isinstance(cond, EncodedCond):
            return cond
        from ..mnist.models import one_hot

        if self.conditioning != "class":
            if cond is not None:
                raise ValueError("this MNIST model is not class-conditioned: cond must be None")
            return EncodedCond(torch.zeros(1, self.num_classes, device=self.device))
        if cond is None or isinstance(cond, int) and not isinstance(cond, bool):
            labels = [-1 if cond is None else cond]
        elif isinstance(cond, torch.Tensor) and not cond.is_floating_point():
            labels = cond.reshape(-1).tolist()
        elif isinstance(cond, Sequence) and not isinstance(cond, str):
            labels = [-1 if c is None else c for c in cond]
        else:
            raise TypeError(f"cond must be a class label 0..{self.num_classes - 1}, None, or a list of them; "
                            f"got {cond!r}")
        if any(isinstance(c, bool) or not isinstance(c, int) for c in labels):
            raise TypeError(f"class labels must be ints, got {labels}")
        if any(not -1 <= c < self.num_classes for c in labels):
            raise ValueError(f"class labels must be in [0, {self.num_classes - 1}] (or None), got {labels}")
        return EncodedCond(one_hot(torch.tensor(labels), len(labels), self.num_classes, device=self.device))

    def _forward(self, x_t, t, cond) -> DenoiserOutput:
        t_in = t.to(self.dtype) / self.num_train_timesteps
        c = cond.to(self.dtype) if self.conditioning == "class" else None
        eps = self.model(x_t.to(self.dtype), t_in, c)
        return DenoiserOutput(eps.to(x_t.dtype), None)
