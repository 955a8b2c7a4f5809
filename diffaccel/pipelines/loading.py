"""Loading for Part A: DeepFloyd IF stages, prompt embeddings, images and masks (SPEC A0, A1.7.1).

Offline-safe: a local directory (or ``HF_HUB_OFFLINE=1``) is loaded with
``local_files_only=True`` and never touches the network.
"""
from __future__ import annotations

import os
import pickle
from contextlib import nullcontext as _nullcontext
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..errors import ArgumentError, FileFormatError, MissingFileError
from .denoisers import IF_SCHEDULER_CONFIG, IFDenoiser, IFSuperResDenoiser

__all__ = ["load_if_stage", "load_prompt_embeds", "save_prompt_embeds", "encode_prompts", "load_image", "load_mask",
           "MAX_IMAGE_PIXELS"]

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
        raise ArgumentError(f"size must be an int or (H, W) of positive ints, got {size!r}")
    return tuple(size)


#: The most pixels an image file may have after Pillow's ``draft`` (JPEG decodes at a reduced
#: scale first) for :func:`load_image`; larger files are refused instead of decoded. 8192 x 8192:
#: decoding takes up to 256 MB (4 bytes a pixel), and every model here works at 256 x 256 or less.
MAX_IMAGE_PIXELS = 1 << 26

_WITH_ALPHA = ("RGBA", "LA", "P", "PA", "La", "RGBa")
_EIGHT_BIT = ("1", "L", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def _unit_float(a, what: str):
    """A numpy array of intensities -> float32 in [0, 1] by its type's nominal range: uint8 / 255,
    uint16 / 65535, bool as 0/1, float as is (it must already lie in [0, 1])."""
    import numpy as np

    a = np.asarray(a)
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16 or a.dtype == np.dtype(">u2"):
        return a.astype(np.float32) / 65535.0
    if a.dtype.kind == "f":
        a = a.astype(np.float32)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            bad = "" if np.isfinite(a).all() else " and NaN/Inf"
            raise FileFormatError(f"{what}: a float image must hold values in [0, 1], got "
                                  f"[{np.nanmin(a)}, {np.nanmax(a)}]{bad}; rescale it to [0, 1] or save it as 8/16-bit")
        return a
    raise FileFormatError(f"{what}: pixels of type {a.dtype} have no defined intensity range; "
                          "use uint8, uint16, bool or float in [0, 1]")


def _int32_top(im, what: str) -> int:
    """The full-scale value of a Pillow mode "I" image (32-bit integers, e.g. TIFF): from the
    file's bit depth (TIFF tag 258) and sample format (tag 339: 2 = signed)."""
    tags = getattr(im, "tag_v2", None) or {}
    bits = tags.get(258, None)
    bits = int(bits[0] if isinstance(bits, tuple) else bits) if bits else None
    if bits is None:
        raise FileFormatError(f"{what}: a 32-bit integer image without a stated bit depth has no defined "
                              "intensity range; save it as 8/16-bit or as float in [0, 1]")
    signed = tags.get(339, 1) in (2, (2,))
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


def _open_image(path: Path, what: str, max_pixels: int, target: Optional[Tuple[int, int]]):
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise MissingFileError(f"{what}: no such file {os.fspath(path)!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below instead
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise FileFormatError(f"{what} {os.fspath(path)!r} declares too many pixels to decode safely "
                              f"({e}); the limit is {max_pixels} pixels: resize it first") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise FileFormatError(f"{what} {os.fspath(path)!r} is not an image file Pillow can read: {e}") from None
    if im.format == "JPEG" and target is not None:  # decode at a reduced scale (DCT scaling), still >= 2x the target
        im.draft(im.mode, (2 * target[1], 2 * target[0]))
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise FileFormatError(f"{what} {os.fspath(path)!r} is {w}x{h} = {w * h} pixels, more than the "
                              f"{max_pixels} that load_image decodes (MAX_IMAGE_PIXELS); resize it first")
    try:
        im.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise FileFormatError(f"{what} {os.fspath(path)!r} cannot be decoded (truncated or corrupt?): {e}") from None
    return im


def _image_unit(im, target: Tuple[int, int], channels: int, what: str):
    """A PIL image of any mode -> float32 [C, H, W] in [0, 1] (C = ``channels``), first reduced
    by an integer factor while it stays >= 2x the target size (``Image.reduce``, box filter)."""
    import numpy as np
    from PIL import Image

    def reduced(img):
        f = min(img.size[0] // (2 * target[1]), img.size[1] // (2 * target[0]))
        return img.reduce(f) if f > 1 else img

    mode = im.mode
    if mode in _WITH_ALPHA:  # drawings: a transparent background is white
        im = reduced(im.convert("RGBA"))
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
        im = im.convert("L" if channels == 1 else "RGB")
        x = _unit_float(np.asarray(im), what)
    elif mode in _EIGHT_BIT:
        try:
            im = im.convert("L" if channels == 1 else "RGB")
        except ValueError as e:
            raise FileFormatError(f"{what}: Pillow cannot convert mode {mode!r} to RGB: {e}") from None
        x = _unit_float(np.asarray(reduced(im)), what)
    elif mode.startswith("I;16"):  # 16-bit: the full range is [0, 65535]
        x = np.asarray(reduced(im.convert("I")), dtype=np.float32) / 65535.0
    elif mode == "I":
        top = _int32_top(im, what)
        a = np.asarray(im)
        if a.size and a.min() < 0:
            raise FileFormatError(f"{what}: negative pixel values ({a.min()}) are not intensities")
        x = (np.asarray(reduced(im), dtype=np.float64) / top).astype(np.float32)
    elif mode == "F":
        x = _unit_float(np.asarray(reduced(im)), what)
    else:
        raise FileFormatError(f"{what}: image mode {mode!r} is not supported; save it as 8/16-bit "
                              "grayscale or RGB(A), or as float in [0, 1]")
    x = torch.from_numpy(np.ascontiguousarray(x))
    if x.ndim == 2:
        x = x[None]
    else:
        x = x.permute(2, 0, 1)
    if x.shape[0] == 1 and channels == 3:
        x = x.expand(3, -1, -1)
    return x


def load_image(path_or_image, size: Union[int, Tuple[int, int]] = 64,
               value_range: Tuple[float, float] = (-1.0, 1.0), channels: int = 3, resize: bool = True,
               max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Any image file (or PIL image / HxW(xC) array) -> [1, channels, H, W] float in ``value_range``.

    Center-cropped to the target aspect ratio and resized (SPEC A1.7.1: web images and drawings);
    ``resize=False`` refuses an image that is not already ``size``. Intensities are scaled by
    their type's full range: 8-bit / 255, 16-bit (``I;16``) / 65535, 32-bit integer TIFF by its
    bit depth, float (``F``) as is (must lie in [0, 1]), 1-bit as 0/1; palette, CMYK and the
    other 8-bit modes through Pillow's RGB conversion; a transparent background is white. Gray
    from color is ITU-R 601 luma (Pillow's ``L``). Files above ``max_pixels`` are refused
    before decoding, large ones are downscaled while decoding (JPEG ``draft``, ``reduce``). Every
    problem with the image is a :class:`~diffaccel.errors.FileFormatError` (a missing file a
    :class:`~diffaccel.errors.MissingFileError`) naming the file.
    """
    import numpy as np
    from PIL import Image

    if channels not in (1, 3):
        raise ArgumentError(f"channels must be 1 or 3, got {channels}")
    target = _size(size)
    if isinstance(path_or_image, (str, os.PathLike)):
        what = f"image {os.fspath(path_or_image)!r}"
        im = _open_image(Path(path_or_image), "image", max_pixels, target if resize else None)
    elif isinstance(path_or_image, Image.Image):
        what, im = "image", path_or_image
    elif np.asarray(path_or_image).dtype == np.uint8:  # 8-bit arrays: as Pillow reads files
        what, im = "image array", Image.fromarray(np.asarray(path_or_image))
    else:
        what, im = "image array", None
        a = np.asarray(path_or_image)
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
            raise ArgumentError(f"an image array must be HxW or HxWxC with C in 1, 3, 4, got shape {a.shape}")
        x = torch.from_numpy(np.ascontiguousarray(_unit_float(a, what)))
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        if x.shape[0] == 4:  # alpha: white background
            x = x[:3] * x[3:] + (1 - x[3:])
        if x.shape[0] == 3 and channels == 1:
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        elif x.shape[0] == 1 and channels == 3:
            x = x.expand(3, -1, -1)
    if im is not None:
        with im if isinstance(path_or_image, (str, os.PathLike)) else _nullcontext():
            if not resize and im.size != (target[1], target[0]):
                raise FileFormatError(f"{what} is {im.size[0]}x{im.size[1]} but the model works at "
                                      f"{target[1]}x{target[0]}; resize it (or allow resizing)")
            x = _image_unit(im, target, channels, what)
    elif not resize and tuple(x.shape[1:]) != target:
        raise FileFormatError(f"{what} is {x.shape[2]}x{x.shape[1]} but the model works at "
                              f"{target[1]}x{target[0]}; resize it (or allow resizing)")
    x = _center_crop_resize(x.float(), target).clamp(0, 1)
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
