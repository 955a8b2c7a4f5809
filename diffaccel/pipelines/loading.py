"""Loading for Part A: DeepFloyd IF stages, prompt embeddings, images and masks (SPEC A0, A1.7.1).

Offline-safe: a local directory (or ``HF_HUB_OFFLINE=1``) is loaded with
``local_files_only=True`` and never touches the network.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..errors import FileFormatError, MissingFileError
from .denoisers import IF_SCHEDULER_CONFIG, IFDenoiser, IFSuperResDenoiser

__all__ = ["load_if_stage", "load_prompt_embeds", "save_prompt_embeds", "encode_prompts", "load_image", "load_mask"]

PathLike = Union[str, os.PathLike]


def _offline(path_or_id: PathLike) -> bool:
    return Path(path_or_id).is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _scheduler_config(root: PathLike, subfolder: str, local: bool) -> Optional[dict]:
    from diffusers import DDPMScheduler

    try:
        return dict(DDPMScheduler.load_config(os.fspath(root), subfolder=subfolder, local_files_only=local))
    except (OSError, EnvironmentError, ValueError):
        return None


def load_if_stage(path_or_id: PathLike, stage: int = 1, device: Union[str, torch.device] = "cpu",
                  dtype: Optional[torch.dtype] = None, cpu_offload: bool = False,
                  prompt_embeds: Union[Mapping[str, torch.Tensor], PathLike, None] = None):
    """A DeepFloyd IF stage as a denoiser (:class:`IFDenoiser`, or :class:`IFSuperResDenoiser` for stage 2).

    ``path_or_id``: a hub id (``DeepFloyd/IF-I-XL-v1.0``, ``DeepFloyd/IF-I-L-v1.0``,
    ``DeepFloyd/IF-II-L-v1.0``) or a local directory laid out like one (``unet/``,
    ``scheduler/``, for stage 2 ``image_noising_scheduler/``), or a bare saved UNet directory
    (IF's scheduler config is then assumed). ``dtype`` defaults to fp16 on GPU, fp32 on CPU.
    ``cpu_offload`` keeps the weights on the CPU and moves each module to ``device`` when it
    runs (needs ``accelerate``). ``prompt_embeds``: a dict or a path for :func:`load_prompt_embeds`.
    """
    from diffusers import UNet2DConditionModel

    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    local = _offline(path_or_id)
    root = os.fspath(path_or_id)
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype, local_files_only=local)
        sub = True
    except (OSError, EnvironmentError) as e:
        if not (Path(root).is_dir() and (Path(root) / "config.json").is_file()):
            raise OSError(f"could not load an IF UNet from {root!r} (expected a hub id or a directory with "
                          f"unet/ and scheduler/): {e}") from e
        unet = UNet2DConditionModel.from_pretrained(root, torch_dtype=dtype, local_files_only=True)
        sub = False
    scheduler = (_scheduler_config(root, "scheduler", local) if sub else None) or dict(IF_SCHEDULER_CONFIG)
    if cpu_offload:
        try:
            from accelerate import cpu_offload as _offload
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("cpu_offload=True needs `pip install accelerate`") from e
        _offload(unet, execution_device=device)
    else:
        unet = unet.to(device)
    embeds = prompt_embeds
    if embeds is not None and not isinstance(embeds, Mapping):
        embeds = load_prompt_embeds(embeds)
    if stage == 1:
        den = IFDenoiser(unet, scheduler, embeds)
    else:
        noising = (_scheduler_config(root, "image_noising_scheduler", local) if sub else None)
        den = IFSuperResDenoiser(unet, scheduler, embeds, noising)
    if cpu_offload:
        den.device = device
    return den


def load_prompt_embeds(path: PathLike, device: Union[str, torch.device, None] = None,
                       dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """``{prompt: tensor[1, 77, E]}`` from the course's ``.pth`` dict (``torch.load(weights_only=True)``)
    or a ``.safetensors`` file (keys are the prompts)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"prompt embeddings file not found: {path}")
    expected = "a dict {prompt: tensor[1, 77, E]} saved with torch.save or safetensors"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            d = load_file(os.fspath(path))
        except SafetensorError as e:
            raise FileFormatError(f"{path} is not a readable safetensors file ({e}); expected {expected}") from None
    else:
        try:
            d = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # weights_only=True refused something other than tensors and containers: nothing ran.
            raise FileFormatError(f"{path} holds Python objects other than tensors, refused without running them "
                                  f"(torch.load weights_only=True); expected {expected}") from None
        except EOFError:
            raise FileFormatError(f"{path} is empty or truncated; expected {expected}") from None
        except RuntimeError as e:  # not a torch zip archive, or a corrupt one
            raise FileFormatError(f"{path} is not a torch-saved file ({str(e).splitlines()[0][:120]}); "
                                  f"expected {expected}") from None
    if not isinstance(d, Mapping):
        raise FileFormatError(f"{path} must hold {expected}, got a {type(d).__name__}")
    bad = [k for k in d if not isinstance(k, str)]
    if bad:
        raise FileFormatError(f"{path}: the keys of the embeddings dict must be prompt strings, found "
                              f"{type(bad[0]).__name__} key(s) {bad[:5]}")
    out = {}
    for k, v in d.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.ndim not in (2, 3):
            raise FileFormatError(f"{path}: embedding for {k!r} must be a float tensor [1, 77, E], "
                             f"got {getattr(v, 'shape', type(v).__name__)}")
        v = v if v.ndim == 3 else v[None]
        out[k] = v.to(device=device or "cpu", dtype=dtype or v.dtype)
    return out


def save_prompt_embeds(embeds: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """Write ``{prompt: tensor}`` as ``.safetensors`` or (any other suffix) a torch ``.pth`` dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in embeds.items()}, os.fspath(path))
    else:
        torch.save(dict(embeds), os.fspath(path))


def encode_prompts(t5_path: PathLike, prompts: Sequence[str], device: Union[str, torch.device] = "cpu",
                   dtype: Optional[torch.dtype] = None, max_length: int = 77) -> Dict[str, torch.Tensor]:
    """Encode prompts with a T5 encoder (IF's ``text_encoder``/``tokenizer`` folders or a T5 dir).

    As ``IFPipeline.encode_prompt``: padded to 77 tokens, the encoder's last hidden state with
    the attention mask. Needs ``transformers`` (and the weights, ~20 GB for IF's T5-XXL).
    """
    try:
        from transformers import T5EncoderModel, T5Tokenizer
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError("encode_prompts needs `pip install transformers sentencepiece`") from e
    root = Path(t5_path)
    local = _offline(t5_path)
    tok_sub = "tokenizer" if (root / "tokenizer").is_dir() else ""
    enc_sub = "text_encoder" if (root / "text_encoder").is_dir() else ""
    tok = T5Tokenizer.from_pretrained(os.fspath(root), subfolder=tok_sub, local_files_only=local)
    model = T5EncoderModel.from_pretrained(os.fspath(root), subfolder=enc_sub, local_files_only=local,
                                           torch_dtype=dtype or torch.float32).to(device).eval()
    out = {}
    with torch.no_grad():
        for p in prompts:
            ids = tok([p], padding="max_length", max_length=max_length, truncation=True,
                      add_special_tokens=True, return_tensors="pt")
            h = model(ids.input_ids.to(device), attention_mask=ids.attention_mask.to(device))[0]
            out[p] = h.cpu()
    return out


def _center_crop_resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """[C, H, W] float -> center crop to the target aspect ratio, then antialiased bilinear resize."""
    _, h, w = x.shape
    th, tw = size
    scale = min(h / th, w / tw)
    ch, cw = int(round(th * scale)), int(round(tw * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    x = x[:, top:top + ch, left:left + cw]
    if (ch, cw) != (th, tw):
        x = F.interpolate(x[None], size=(th, tw), mode="bilinear", antialias=True, align_corners=False)[0]
    return x


def _size(size) -> Tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"size must be an int or (H, W) of positive ints, got {size!r}")
    return tuple(size)


def load_image(path_or_image, size: Union[int, Tuple[int, int]] = 64,
               value_range: Tuple[float, float] = (-1.0, 1.0), channels: int = 3) -> torch.Tensor:
    """Any image file (or PIL image / uint8 HxW(xC) array) -> [1, channels, H, W] float in ``value_range``.

    Center-cropped to the target aspect ratio and resized (SPEC A1.7.1: web images and drawings).
    """
    import numpy as np
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if isinstance(path_or_image, (str, os.PathLike)):
        if not Path(path_or_image).is_file():
            raise FileNotFoundError(f"image not found: {path_or_image}")
        im = Image.open(path_or_image)
    elif isinstance(path_or_image, Image.Image):
        im = path_or_image
    else:
        im = Image.fromarray(np.asarray(path_or_image))
    if im.mode in ("RGBA", "LA", "P"):  # drawings: transparent background -> white
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("L" if channels == 1 else "RGB")
    x = torch.from_numpy(np.array(im, dtype=np.float32) / 255.0)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    x = _center_crop_resize(x, _size(size)).clamp(0, 1)
    lo, hi = value_range
    return (x * (hi - lo) + lo)[None].contiguous()


def load_mask(array_or_path, size: Union[int, Tuple[int, int]], threshold: float = 0.5) -> torch.Tensor:
    """A mask [1, 1, H, W] of 0/1 floats (1 = regenerate) from a file, an array or a tensor.

    Arrays/tensors of another size are resized like images (center crop + resize) and thresholded.
    """
    import numpy as np

    if isinstance(array_or_path, (str, os.PathLike)):
        m = load_image(array_or_path, size, value_range=(0.0, 1.0), channels=1)
    else:
        m = torch.as_tensor(np.asarray(array_or_path) if not isinstance(array_or_path, torch.Tensor)
                            else array_or_path).float().cpu()
        while m.ndim > 2 and m.shape[0] == 1:
            m = m[0]
        if m.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W) (leading 1-dims allowed), got shape {tuple(m.shape)}")
        if m.max() > 1:
            m = m / 255.0
        m = _center_crop_resize(m[None], _size(size))[None]
    return (m > threshold).float()
