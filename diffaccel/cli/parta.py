"""``diffaccel forward|blur-denoise|one-step|iterative|sample|cfg|sdedit|img2img|inpaint|anagram|hybrid|upsample``
— the Part A techniques (SPEC A0-A1.9) on DeepFloyd IF or on the shipped MNIST models.

Each command loads ``--model`` as a denoiser, calls one function of
:mod:`diffaccel.pipelines.techniques` and writes PNGs (and ``--gif``s) into ``--out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import (CLIError, add_parser, add_sampler_arg, cat, device_arg, finite_float, out_dir, out_path,
                     positive_int, sampler_kwargs, write_gif, write_png)

__all__ = ["add_technique_parsers", "MASK_SHAPES"]

MASK_SHAPES = ("top-half", "bottom-half", "left-half", "right-half", "center")


def _common_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="DeepFloyd IF directory or hub id (e.g. DeepFloyd/IF-I-XL-v1.0), or a shipped MNIST model "
                        "name / training folder (the digit label is then the prompt)")
    g.add_argument("--embeds", default=None, metavar="FILE",
                   help="IF prompt embeddings: a .pth or .safetensors dict {prompt: [1, 77, E]} ('' = null prompt)")
    g.add_argument("--device", type=device_arg, default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the torch.Generator every random draw comes from")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    return p


def _image_parent(required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--image", required=required, metavar="FILE",
                   help="input image (any size: center-cropped and resized to the model's)")
    p.add_argument("--no-resize", action="store_true", help="use --image as it is: it must be the model's size")
    return p


def _steps_parent(guided_default: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--num-steps", type=positive_int("--num-steps"), default=None,
                   help="diffusers-style timesteps (as IFPipeline); default: strided 990, 960, ..., 0 (scaled to T)")
    p.add_argument("--stride", type=positive_int("--stride"), default=None, help="stride of the strided timesteps")
    p.add_argument("--guidance-scale", type=finite_float, default=None,
                   help=("CFG scale (default: 7 for IF, 5 for MNIST)" if guided_default
                         else "CFG scale (default: no guidance)"))
    add_sampler_arg(p, "sampling loop (default: the techniques' own DDPM steps)")
    p.add_argument("--gif", default=None, metavar="FILE.gif", help="also write a GIF of the denoising")
    return p


def _is_if_model(spec: str) -> bool:
    p = Path(spec)
    if p.is_dir():
        if (p / "unet").is_dir():
            return True
        cfg = p / "config.json"
        if cfg.is_file():
            import json

            try:
                return "_class_name" in json.loads(cfg.read_text())
            except ValueError:
                return False
        return False
    # "Org/Name" that is not a local path: a hub id
    return not p.exists() and spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not spec.endswith("/")


def _load_denoiser(args, stage: int = 1):
    """``--model`` as a denoiser: DeepFloyd IF (needs --embeds) or an MNIST DDPM model."""
    import torch

    from ..mnist.pretrained import list_pretrained
    from ..pipelines.denoisers import MNISTDenoiser
    from .mnist import load_model

    spec = args.model
    if _is_if_model(spec):
        from ..pipelines.loading import load_if_stage

        if not args.embeds and not Path(spec).exists():
            raise CLIError(f"--model {spec!r} is neither a shipped MNIST model nor an existing folder; if it is a "
                           "DeepFloyd IF hub id, also give --embeds FILE (prompt embeddings)")
        if not args.embeds:
            raise CLIError(f"--embeds FILE is required with the DeepFloyd IF model {spec!r}: a .pth or .safetensors "
                           "dict {prompt: tensor[1, 77, E]} holding every --prompt and '' (the null prompt)")
        den = load_if_stage(spec, stage=stage, device=args.device, prompt_embeds=args.embeds)
        cfg = den.unet.config
        if stage == 1 and cfg.in_channels == cfg.out_channels:
            raise CLIError(f"--model {spec!r} looks like an IF stage-II UNet (it sees the low-res image); "
                           "use it with `diffaccel upsample`")
        if stage == 2 and cfg.in_channels != cfg.out_channels:
            raise CLIError(f"--model {spec!r} is not an IF stage-II UNet (upsample needs e.g. DeepFloyd/IF-II-L-v1.0)")
        return den
    if stage == 2:
        raise CLIError(f"upsample needs a DeepFloyd IF stage-II model (directory or hub id), got {spec!r}")
    if args.embeds:
        raise CLIError("--embeds is for DeepFloyd IF models; an MNIST model's prompt is a digit label")
    if not Path(spec).exists() and spec not in list_pretrained():
        raise CLIError(f"--model {spec!r} is not a shipped MNIST model ({', '.join(list_pretrained())}), an MNIST "
                       "training folder, or a DeepFloyd IF directory / hub id")
    model = load_model(spec, args.device, also_if=True)
    return MNISTDenoiser.from_pretrained(model, device=torch.device(args.device))


def _is_mnist(den) -> bool:
    from ..pipelines.denoisers import MNISTDenoiser

    return isinstance(den, MNISTDenoiser)


def _cond(den, s, what: str = "--prompt"):
    """A CLI prompt as the model's condition: the string for IF, a digit label (or None) for MNIST."""
    if s is None or not _is_mnist(den):
        return s
    if s.strip().lower() in ("", "none", "null", "uncond"):
        return None
    try:
        c = int(s)
    except ValueError:
        raise CLIError(f"{what} for an MNIST model is a digit label 0-9 (or 'none'), got {s!r}") from None
    if not 0 <= c < den.num_classes:
        raise CLIError(f"{what} for an MNIST model is a digit label 0-{den.num_classes - 1}, got {c}")
    return c


def _guidance(den, args, default_on: bool = True):
    if args.guidance_scale is not None:
        return args.guidance_scale
    if not default_on:
        return None
    return 5.0 if _is_mnist(den) else 7.0


def _timesteps(den, args):
    from ..pipelines.techniques import inference_timesteps, strided_timesteps

    T = den.num_train_timesteps
    num_steps, stride = getattr(args, "num_steps", None), getattr(args, "stride", None)
    if num_steps and stride:
        raise CLIError("give --num-steps or --stride, not both")
    if num_steps:
        if num_steps > T:
            raise CLIError(f"--num-steps must be at most T = {T} for this model, got {num_steps}")
        return inference_timesteps(num_steps, T)
    if stride:
        if stride >= T:
            raise CLIError(f"--stride must be below T = {T} for this model, got {stride}")
        return strided_timesteps(stride=stride, num_train_timesteps=T)
    return strided_timesteps(num_train_timesteps=T)


def _generator(args):
    import torch

    return torch.Generator().manual_seed(args.seed)


def _image_size(path: str, what: str):
    """(width, height) of an image file, or a CLIError saying why it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{what}: no such file {path!r}")
    try:
        with Image.open(p) as im:
            return im.size
    except Image.DecompressionBombError as e:  # neither an OSError nor an UnidentifiedImageError
        raise CLIError(f"{what} {path!r} is too large to open safely: {e}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{what} {path!r} is not an image file Pillow can read: {e}") from None


def _load_image(den, path: str, no_resize: bool = False, size=None, what: str = "--image"):
    """An image file as [1, C, H, W] in [-1, 1] at the model's size (or ``size``)."""
    from ..pipelines.loading import load_image

    c, h, w = den.sample_shape
    h, w = size or (h, w)
    got = _image_size(path, what)
    if no_resize and got != (w, h):
        raise CLIError(f"{what} {path!r} is {got[0]}x{got[1]} but the model works at {w}x{h}; "
                       "drop --no-resize to center-crop and resize it")
    return load_image(Path(path), size=(h, w), value_range=(-1.0, 1.0), channels=c)


def _load_mask(den, spec: str):
    import torch

    from ..pipelines.loading import load_mask

    _, h, w = den.sample_shape
    if spec in MASK_SHAPES:
        m = torch.zeros(1, 1, h, w)
        if spec == "top-half":
            m[..., : h // 2, :] = 1
        elif spec == "bottom-half":
            m[..., h // 2:, :] = 1
        elif spec == "left-half":
            m[..., :, : w // 2] = 1
        elif spec == "right-half":
            m[..., :, w // 2:] = 1
        else:
            m[..., h // 4: h - h // 4, w // 4: w - w // 4] = 1
        return m
    if not Path(spec).is_file():
        raise CLIError(f"--mask must be an image file (white = regenerate) or one of {', '.join(MASK_SHAPES)}; "
                       f"no such file {spec!r}")
    _image_size(spec, "--mask")
    m = load_mask(spec, (h, w))
    if not m.any():
        raise CLIError(f"--mask {spec!r} selects no pixel (white = regenerate, black = keep)")
    return m


def _recorder(den, args):
    if not getattr(args, "gif", None):
        return None
    from ..imageio import FrameRecorder

    out_path(args.gif, (".gif",), "--gif")
    return FrameRecorder(den.from_model_range, value_range=(-1.0, 1.0))


def _finish_gif(rec, args):
    if rec is not None:
        write_gif(rec.frames, args.gif)


def _progress(args) -> bool:
    return not args.no_progress


# ----------------------------------------------------------------------------- A1.1 - A1.3
def _cmd_forward(args):
    from ..pipelines import techniques as T

    den = _load_denoiser(args)
    out = out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    gen = _generator(args)
    noisy = [den.from_model_range(T.forward(den, x0, t, gen)) for t in args.t]
    write_png(x0[0], out / "original.png")
    for t, x in zip(args.t, noisy):
        write_png(x[0], out / f"forward_t{t}.png")
    write_png(cat([x0] + noisy), out / "forward.png", nrow=len(noisy) + 1)


def _cmd_blur_denoise(args):
    from ..pipelines import techniques as T

    den = _load_denoiser(args)
    out = out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    gen = _generator(args)
    noisy, blurred = [], []
    for t in args.t:
        x_t = T.forward(den, x0, t, gen)
        b = T.blur_denoise(x_t, args.kernel_size, args.sigma, t=t, num_train_timesteps=den.num_train_timesteps)
        noisy.append(den.from_model_range(x_t))
        blurred.append(den.from_model_range(b))
        write_png(noisy[-1][0], out / f"noisy_t{t}.png")
        write_png(blurred[-1][0], out / f"blur_t{t}.png")
    write_png(cat(noisy + blurred), out / "blur_denoise.png", nrow=len(args.t))


def _cmd_one_step(args):
    from ..pipelines import techniques as T

    den = _load_denoiser(args)
    out = out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    gen = _generator(args)
    cond = _cond(den, args.prompt)
    noisy, clean = [], []
    for t in args.t:
        x_t = T.forward(den, x0, t, gen)
        noisy.append(den.from_model_range(x_t))
        clean.append(T.one_step_denoise(den, x_t, t, cond))
        write_png(noisy[-1][0], out / f"noisy_t{t}.png")
        write_png(clean[-1][0], out / f"one_step_t{t}.png")
    write_png(cat(noisy + clean), out / "one_step.png", nrow=len(args.t))


# ----------------------------------------------------------------------------- A1.4 - A1.6
def _cmd_iterative(args):
    from ..pipelines import techniques as T

    den = _load_denoiser(args)
    out = out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    ts = _timesteps(den, args)
    i_start = args.i_start
    if not 0 <= i_start < len(ts) - 1:  # x_t is noised to ts[i_start] before the library sees i_start
        raise CLIError(f"--i-start must be in [0, {len(ts) - 2}] (i_start indexes the {len(ts)} timesteps), "
                       f"got {i_start}")
    gen = _generator(args)
    cond = _cond(den, args.prompt)
    x_t = T.forward(den, x0, ts[i_start], gen)
    rec = _recorder(den, args)
    g = _guidance(den, args, default_on=False)
    kw = dict(cond=cond, generator=gen, callback=rec, every=args.every, progress=_progress(args))
    if g is None:
        res = T.iterative_denoise(den, x_t, i_start, ts, **kw, **sampler_kwargs(args, T.iterative_denoise))
    else:
        res = T.iterative_denoise_cfg(den, x_t, i_start, ts, guidance_scale=g, **kw,
                                      **sampler_kwargs(args, T.iterative_denoise_cfg))
    write_png(den.from_model_range(x_t)[0], out / "noisy.png")
    write_png(res.image[0], out / "iterative.png")
    if res.intermediates:
        write_png(cat(res.intermediates), out / "iterative_steps.png", nrow=len(res.intermediates))
    # SPEC A1.4's comparison: one-step denoising and a Gaussian blur of the same x_t
    write_png(T.one_step_denoise(den, x_t, ts[i_start], cond)[0], out / "one_step.png")
    write_png(den.from_model_range(T.blur_denoise(x_t, t=ts[i_start], num_train_timesteps=den.num_train_timesteps))[0],
              out / "blur.png")
    _finish_gif(rec, args)


def _cmd_sample_a(args, guided_default: bool):
    from ..pipelines import techniques as T

    den = _load_denoiser(args)
    out = out_dir(args.out)
    ts = _timesteps(den, args)
    rec = _recorder(den, args)
    res = T.sample(den, _cond(den, args.prompt), num_samples=args.n, timesteps=ts, **sampler_kwargs(args, T.sample),
                   guidance_scale=_guidance(den, args, guided_default), generator=_generator(args), callback=rec,
                   progress=_progress(args))
    for k, x in enumerate(res.image):
        write_png(x, out / f"sample_{k}.png")
    write_png(res.image, out / "samples.png")
    _finish_gif(rec, args)


# ----------------------------------------------------------------------------- A1.7
def _cmd_sdedit(args, name: str = "sdedit"):
    from ..pipelines import techniques as T

    den = _load_denoiser(args)
    out = out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    ts = _timesteps(den, args)
    cond = _cond(den, args.prompt)
    g = _guidance(den, args)
    gen = _generator(args)
    results = []
    for i in args.i_start:
        x = T.img2img(den, x0, cond, i, ts, guidance_scale=g, generator=gen, progress=_progress(args),
                      **sampler_kwargs(args, T.img2img))
        results.append(x)
        write_png(x[0], out / f"{name}_i{i}.png")
    write_png(x0[0], out / "original.png")
    write_png(cat(results + [x0]), out / f"{name}.png", nrow=len(results) + 1)


def _cmd_inpaint(args):
    from ..pipelines import techniques as T

    den = _load_denoiser(args)
    out = out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    m = _load_mask(den, args.mask)
    ts = _timesteps(den, args)
    rec = _recorder(den, args)
    res = T.inpaint(den, x0, m, _cond(den, args.prompt), args.i_start, ts, guidance_scale=_guidance(den, args),
                    **sampler_kwargs(args, T.inpaint),
                    generator=_generator(args), callback=rec, progress=_progress(args))
    mask_img = (m * 2 - 1).expand_as(x0)
    write_png(x0[0], out / "original.png")
    write_png(mask_img[0], out / "mask.png")
    write_png(res.image[0], out / "inpaint.png")
    write_png(cat([x0, mask_img, x0 * (1 - m), res.image]), out / "inpaint_strip.png", nrow=4)
    _finish_gif(rec, args)


# ----------------------------------------------------------------------------- A1.8 - A1.9
def _cmd_anagram(args):
    from ..pipelines import techniques as T
    from ..pipelines.animation import animate_view
    from ..pipelines.views import get_view

    if len(args.prompts) < 2:
        raise CLIError(f"--prompts needs at least 2 prompts (one per view), got {len(args.prompts)}")
    views = args.views or (["identity", "flip"] if len(args.prompts) == 2 else None)
    if views is None:
        raise CLIError(f"give --views with one view per prompt ({len(args.prompts)} prompts)")
    if len(views) != len(args.prompts):
        raise CLIError(f"--views and --prompts must pair up: {len(views)} views but {len(args.prompts)} prompts")
    vs = [get_view(v) for v in views]
    if args.animate:
        out_path(args.animate, (".gif",), "--animate")
    den = _load_denoiser(args)
    out = out_dir(args.out)
    conds = [_cond(den, p, "--prompts") for p in args.prompts]
    rec = _recorder(den, args)
    res = T.visual_anagram(den, conds, vs, num_samples=args.n, timesteps=_timesteps(den, args),
                           **sampler_kwargs(args, T.visual_anagram),
                           guidance_scale=_guidance(den, args), generator=_generator(args), callback=rec,
                           progress=_progress(args))
    write_png(res.image, out / "anagram.png")
    for k, v in enumerate(vs):
        write_png(v.view(res.image), out / f"anagram_view{k}_{v.name}.png")
    _finish_gif(rec, args)
    if args.animate:
        print(animate_view(res.image[0], vs[1], args.animate))


def _cmd_hybrid(args):
    from ..pipelines import techniques as T
    from ..pipelines.factorizations import HighLow, get_factorization

    if args.factorization in ("high_low", "hybrid"):
        fac = HighLow(args.kernel_size, args.sigma)
    else:
        fac = get_factorization(args.factorization)
    if len(args.prompts) != fac.num_components:
        raise CLIError(f"--prompts: the {fac.name} factorization needs {fac.num_components} prompts "
                       f"(first = {'far away / low frequencies' if fac.num_components == 2 else 'first component'}), "
                       f"got {len(args.prompts)}")
    den = _load_denoiser(args)
    out = out_dir(args.out)
    conds = [_cond(den, p, "--prompts") for p in args.prompts]
    rec = _recorder(den, args)
    res = T.factorized(den, conds, fac, num_samples=args.n, timesteps=_timesteps(den, args),
                       **sampler_kwargs(args, T.factorized),
                       guidance_scale=_guidance(den, args), generator=_generator(args), callback=rec,
                       progress=_progress(args))
    write_png(res.image, out / "hybrid.png")
    for k, part in enumerate(fac.components(res.image)):
        write_png(part, out / f"hybrid_component{k}.png")
    _finish_gif(rec, args)


# ----------------------------------------------------------------------------- A0 stage II
def _cmd_upsample(args):
    from ..pipelines import techniques as T

    den = _load_denoiser(args, stage=2)
    out = out_dir(args.out)
    _, h, w = den.sample_shape
    low = _load_image(den, args.image, args.no_resize, size=(h // args.factor, w // args.factor))
    rec = _recorder(den, args)
    res = T.upsample_stage2(den, low, args.prompt, num_inference_steps=args.num_steps, noise_level=args.noise_level,
                            **sampler_kwargs(args, T.upsample_stage2),
                            guidance_scale=args.guidance_scale, generator=_generator(args), callback=rec,
                            progress=_progress(args))
    write_png(low[0], out / "low_res.png")
    write_png(res.image[0], out / "upsampled.png")
    _finish_gif(rec, args)


def add_technique_parsers(sub) -> None:
    """Every Part A technique as a top-level command."""
    common = _common_parent()
    image = _image_parent()
    steps_plain, steps_cfg = _steps_parent(False), _steps_parent(True)

    def prompt(p, help="prompt (IF) or digit label (MNIST); default: 'a high quality photo' for IF, none for MNIST"):
        p.add_argument("--prompt", default=None, help=help)

    def t_list(p, default=(250, 500, 750)):
        p.add_argument("--t", type=int, nargs="+", default=list(default), metavar="T",
                       help="noise levels (timesteps; the MNIST models have T = 300)")

    p = add_parser(sub, "forward", "SPEC A1.1: the forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps",
                "example:\n  diffaccel forward --model ddpm_class --image digit.png --t 50 100 200 --out out/forward",
                parents=[common, image])
    t_list(p)
    p.set_defaults(func=_cmd_forward)

    p = add_parser(sub, "blur-denoise", "SPEC A1.2: classical denoising (Gaussian blur of the noisy image)",
                parents=[common, image])
    t_list(p)
    p.add_argument("--kernel-size", type=int, default=None, help="Gaussian kernel size (default: chosen per t)")
    p.add_argument("--sigma", type=finite_float, default=None, help="Gaussian sigma (default: chosen per t)")
    p.set_defaults(func=_cmd_blur_denoise)

    p = add_parser(sub, "one-step", "SPEC A1.3: one-step denoising x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)",
                parents=[common, image])
    t_list(p)
    prompt(p)
    p.set_defaults(func=_cmd_one_step)

    p = add_parser(sub, "iterative", "SPEC A1.4: iterative denoising down strided timesteps from timesteps[i_start]",
                "Also writes the one-step and blur results for the same x_t (the course's comparison).",
                parents=[common, image, steps_plain])
    p.add_argument("--i-start", type=int, default=10, help="index into the timesteps to start from (10: t = 690)")
    p.add_argument("--every", type=positive_int("--every"), default=5,
                   help="keep every k-th step for iterative_steps.png")
    prompt(p)
    p.set_defaults(func=_cmd_iterative)

    p = add_parser(sub, "sample", "SPEC A1.5: sample from pure noise (no guidance unless --guidance-scale)",
                "example:\n  diffaccel sample --model ddpm_class --prompt 7 --n 8 --guidance-scale 5 --out out/sample",
                parents=[common, steps_plain])
    p.add_argument("--n", type=positive_int("--n"), default=5, help="number of samples")
    prompt(p)
    p.set_defaults(func=lambda a: _cmd_sample_a(a, guided_default=False))

    p = add_parser(sub, "cfg", "SPEC A1.6: sample with classifier-free guidance eps_u + g (eps_c - eps_u)",
                parents=[common, steps_cfg])
    p.add_argument("--n", type=positive_int("--n"), default=5, help="number of samples")
    prompt(p)
    p.set_defaults(func=lambda a: _cmd_sample_a(a, guided_default=True))

    for name, helptext, desc in (
            ("sdedit", "SPEC A1.7: SDEdit, noise an image to timesteps[i_start] and denoise it with CFG",
             "One image per --i-start (the course's sweep 1 3 5 7 10 20), then the original."),
            ("img2img", "SPEC A1.7.3: text-conditional image-to-image (SDEdit toward --prompt)",
             "example:\n  diffaccel img2img --model ddpm_class --image three.png --prompt 8 --out out/3to8")):
        p = add_parser(sub, name, helptext, desc, parents=[common, image, steps_cfg])
        p.add_argument("--i-start", type=int, nargs="+", default=[1, 3, 5, 7, 10, 20], metavar="I",
                       help="start indices into the timesteps (larger = closer to the original)")
        if name == "sdedit":
            prompt(p)
        else:
            p.add_argument("--prompt", required=True, help="prompt (IF) or digit label (MNIST) to edit toward")
        p.set_defaults(func=lambda a, name=name: _cmd_sdedit(a, name))

    p = add_parser(sub, "inpaint", "SPEC A1.7.2: inpainting, regenerate the masked pixels (white = regenerate)",
                parents=[common, image, steps_cfg])
    p.add_argument("--mask", required=True, metavar="FILE|SHAPE",
                   help=f"mask image (white = regenerate) or one of {', '.join(MASK_SHAPES)}")
    p.add_argument("--i-start", type=int, default=0, help="0: start from pure noise; > 0: from the noised image")
    prompt(p)
    p.set_defaults(func=_cmd_inpaint)

    from ..pipelines.views import list_views

    p = add_parser(sub, "anagram", "SPEC A1.8: visual anagrams, one image read differently under each view",
                "example (a 1 upright, a 7 upside down):\n"
                "  diffaccel anagram --model ddpm_class --prompts 1 7 --views identity flip --out out/anagram",
                parents=[common, steps_cfg])
    p.add_argument("--prompts", nargs="+", required=True, help="one prompt (IF) or digit (MNIST) per view")
    p.add_argument("--views", nargs="+", default=None, choices=list_views(), metavar="VIEW",
                   help=f"one per prompt, default identity flip; choices: {', '.join(list_views())}")
    p.add_argument("--n", type=positive_int("--n"), default=1, help="number of illusions")
    p.add_argument("--animate", default=None, metavar="FILE.gif",
                   help="also write a GIF of the first illusion turning into its second reading")
    p.set_defaults(func=_cmd_anagram)

    from ..pipelines.factorizations import FACTORIZATIONS

    p = add_parser(sub, "hybrid",
                   "SPEC A1.9: hybrid images, lowpass(eps_1) + highpass(eps_2) (and other factorizations)",
                "example (a 0 from far away, a 1 up close):\n"
                "  diffaccel hybrid --model ddpm_class --prompts 0 1 --kernel-size 9 --sigma 1.5 --out out/hybrid",
                parents=[common, steps_cfg])
    p.add_argument("--prompts", nargs="+", required=True,
                   help="one prompt (IF) or digit (MNIST) per component; high_low: far away first, up close second")
    p.add_argument("--factorization", default="high_low", choices=sorted(FACTORIZATIONS))
    p.add_argument("--kernel-size", type=int, default=33, help="Gaussian kernel of the low pass (high_low)")
    p.add_argument("--sigma", type=finite_float, default=2.0, help="Gaussian sigma of the low pass (high_low)")
    p.add_argument("--n", type=positive_int("--n"), default=1, help="number of images")
    p.set_defaults(func=_cmd_hybrid)

    p = add_parser(sub, "upsample", "SPEC A0: DeepFloyd IF stage II, upsample a stage-I image guided by a prompt",
                "--model is the stage-II model (e.g. DeepFloyd/IF-II-L-v1.0); --image is a stage-I output.",
                parents=[common, image])
    p.add_argument("--prompt", default=None, help="prompt (default: 'a high quality photo')")
    p.add_argument("--num-steps", type=positive_int("--num-steps"), default=50, help="stage-II sampling steps")
    p.add_argument("--noise-level", type=int, default=250, help="noise added to the upscaled low-res image")
    p.add_argument("--guidance-scale", type=finite_float, default=4.0, help="CFG scale (IF stage II's default)")
    add_sampler_arg(p, "sampling loop (default: stage II's DDPM steps)")
    p.add_argument("--factor", type=positive_int("--factor"), default=4, help="upsampling factor (IF: 64 -> 256)")
    p.add_argument("--gif", default=None, metavar="FILE.gif", help="also write a GIF of the denoising")
    p.set_defaults(func=_cmd_upsample)


