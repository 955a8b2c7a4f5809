"""The ``diffaccel`` command line.

* ``diffaccel mnist train|train-classifier|sample|eval|figures|list`` — Part B (SPEC Part B);
* ``diffaccel demo`` — every result into one folder with an ``index.html``;
* ``diffaccel forward|blur-denoise|one-step|iterative|sample|cfg|sdedit|img2img|inpaint|anagram|hybrid|upsample``
  — the Part A techniques (SPEC A0-A1.9) on DeepFloyd IF or on the shipped MNIST models.

Every command writes into ``--out``; bad input prints ``diffaccel: error: ...`` and exits with 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path


def _add_train_parser(sub):
    from .mnist.train import PRESETS, TrainConfig

    p = sub.add_parser("train", help="train a Part B model (presets are the course's configs)")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="output folder (checkpoints, loss.csv, loss.png, model.safetensors)")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default: $DIFFACCEL_MNIST_DIR)")
    p.add_argument("--download", action="store_true", help="download MNIST (checksums verified) if missing")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    for f in fields(TrainConfig):
        if f.name == "task":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None, metavar="BOOL")
        elif f.type in ("int", int):
            p.add_argument(flag, type=int, default=None)
        elif f.type in ("float", float):
            p.add_argument(flag, type=float, default=None)
        else:
            p.add_argument(flag, type=str, default=None)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args):
    import torch

    from .mnist.train import TrainConfig, preset, train

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name != "task" and getattr(args, f.name, None) is not None}
    dist_env = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if dist_env:
        import torch.distributed as dist

        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        cfg = preset(args.preset, **overrides)
        path = train(cfg, args.out, data_dir=args.data_dir, resume=args.resume, progress=not args.no_progress,
                     device=args.device, download=args.download)
    finally:
        if dist_env:
            import torch.distributed as dist

            dist.destroy_process_group()
    print(path)


def _add_classifier_parser(sub):
    p = sub.add_parser("train-classifier", help="train the evaluation classifier (writes OUT.safetensors + OUT.json)")
    p.add_argument("--out", required=True, help="output path without suffix, e.g. runs/classifier")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_train_classifier)


def _cmd_train_classifier(args):
    from pathlib import Path

    from .mnist.classifier import train_classifier

    _, acc = train_classifier(Path(args.out), data_dir=args.data_dir, epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"test accuracy {acc:.4f}")




# ============================================================================= shared helpers
class CLIError(ValueError):
    """A bad command line or input file: printed as ``diffaccel: error: ...``, exit status 2."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples in descriptions as written; show an option's default where it has one."""

    def _get_help_string(self, action):
        help = action.help or ""
        if (not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and "default" not in help
                and (action.option_strings or action.nargs in ("?", "*"))):
            help += " (default: %(default)s)"
        return help


def _parser(sub, name: str, help: str, description: str = "", parents=()):
    return sub.add_parser(name, help=help, description=(help[0].upper() + help[1:] + ".\n\n" + description).strip(),
                          formatter_class=_HelpFormatter, parents=list(parents))


def _dist_rank_world():
    """``(rank, world)`` from torchrun's environment (``(0, 1)`` when run plainly)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _upscale(h: int) -> int:
    """Nearest-neighbour factor so small images are viewable (28 -> x4, 32 -> x4, 64 -> x2)."""
    return max(1, 128 // h)


def _grid(x, nrow=None, pad_value: float = -1.0):
    """[N, C, H, W] -> one [C, rows*H, nrow*W] image, row-major (unused cells are ``pad_value``)."""
    import math

    import torch

    n, c, h, w = x.shape
    nrow = max(1, min(nrow or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / nrow)
    pad = torch.full((rows * nrow - n, c, h, w), pad_value, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad]).reshape(rows, nrow, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, nrow * w)


def _save_png(x, path, value_range=(-1.0, 1.0), nrow=None, quiet: bool = False):
    """Write an image ([C, H, W]) or a grid of images ([N, C, H, W]) as PNG, upscaled when small."""
    from PIL import Image

    from .pipelines.animation import to_uint8

    x = x.detach().float().cpu()
    s = _upscale(min(x.shape[-2:]))  # from one image's size, before tiling
    if x.ndim == 4:
        x = _grid(x, nrow, pad_value=value_range[0])
    im = Image.fromarray(to_uint8(x, value_range))
    if s > 1:
        im = im.resize((im.width * s, im.height * s), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    if not quiet:
        print(path)
    return path


def _save_gif(frames, path, value_range=(-1.0, 1.0), nrow=None):
    """A GIF of a denoising run; ``frames`` are [N, C, H, W] (laid out as a grid) or [C, H, W]."""
    from .pipelines.animation import make_gif

    if not frames:
        raise CLIError("--gif: the run produced no frames")
    scale = _upscale(min(frames[0].shape[-2:]))  # from one image's size, before tiling
    frames = [_grid(f.float().cpu(), nrow, value_range[0]) if f.ndim == 4 else f for f in frames]
    p = make_gif(frames, path, duration_ms=80, value_range=value_range, scale=scale)
    print(p)
    return p


def _cat(xs):
    """Images from several calls as one CPU batch (for a strip or grid)."""
    import torch

    return torch.cat([x.detach().float().cpu() for x in xs])


def _out_path(path: str, suffixes, what: str = "--out") -> Path:
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise CLIError(f"{what} {path!r} must end in one of {', '.join(suffixes)}")
    if p.exists() and p.is_dir():
        raise CLIError(f"{what} {path!r} is a directory; give a file name")
    return p


def _out_dir(path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out {path!r} exists and is not a directory")
    p.mkdir(parents=True, exist_ok=True)
    return p


def _positive(name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {v}")
        return v
    return parse


# ============================================================================= mnist sample
SAMPLE_SUFFIXES = (".safetensors", ".png", ".npz")


def _add_sample_parser(sub):
    p = _parser(sub, "sample", "sample digits from a Part B model (DDPM / DDIM / flow, CFG for class models)", """\
Writes FILE.safetensors (`samples` [N, 1, 28, 28] float in [0, 1], `labels` [N] int64, -1 when
unconditional), FILE.npz (the same arrays) or FILE.png (a grid, 10 per row). Sample k uses the
noise stream (seed, k), so a digit does not depend on the batch it is in (up to float rounding).

Sharded: `torchrun --nproc_per_node=K -m diffaccel.cli mnist sample --num-samples N ...` gives
each rank a contiguous run of whole batches of --batch-size, and rank 0 writes the same FILE (bit
for bit, at the same --batch-size and thread count) a single process would.

examples:
  diffaccel mnist sample --model ddpm_class --labels 0 1 2 3 4 5 6 7 8 9 --n 40 --out digits.png
  diffaccel mnist sample --model runs/ddpm_class --n 1000 --num-steps 50 --sampler ddim --out s.safetensors""")
    p.add_argument("--model", required=True,
                   help="shipped model name (`diffaccel mnist list`) or a training output folder")
    p.add_argument("--labels", type=int, nargs="+", default=None, metavar="DIGIT",
                   help="class labels (class-conditional models), repeated to --n; default 0..9 cycled")
    p.add_argument("--n", "--num-samples", dest="n", type=_positive("--n"), default=None,
                   help="number of samples (default: 40, or len(--labels)); under torchrun spell it --num-samples "
                        "(torchrun's own parser rejects --n as an ambiguous abbreviation)")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="CFG scale g (class-conditional models)")
    p.add_argument("--num-steps", type=_positive("--num-steps"), default=None,
                   help="sampling steps (default: all T DDPM steps; 300 Euler steps for flow)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="update rule for DDPM models")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=512, help="samples per forward")
    p.add_argument("--gif", default=None, metavar="FILE.gif", help="also write a GIF of the grid being denoised")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, metavar="FILE", help="output: " + " | ".join(SAMPLE_SUFFIXES))
    p.set_defaults(func=_cmd_sample)


def _sample_labels(model, labels, n):
    """(labels tensor or None, n): --labels cycle to --n; class models default to 0..9 cycled."""
    import torch

    if labels is not None:
        if model.conditioning != "class":
            raise CLIError(f"--labels: model {model.name!r} is not class-conditional ({model.conditioning}); "
                           "drop --labels and use --n")
        bad = [c for c in labels if not 0 <= c <= 9]
        if bad:
            raise CLIError(f"--labels must be digits 0..9, got {bad}")
        lab = torch.tensor(labels, dtype=torch.long)
        n = n or lab.numel()
        return lab.repeat((n + lab.numel() - 1) // lab.numel())[:n], n
    n = n or 40
    return (torch.arange(n) % 10 if model.conditioning == "class" else None), n


def _write_samples(out: Path, x, labels, meta: dict) -> None:
    import torch

    from .mnist.checkpoint import atomic_save_tensors

    x = x.detach().float().cpu().contiguous()
    lab = labels if labels is not None else torch.full((x.shape[0],), -1, dtype=torch.long)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".safetensors":
        atomic_save_tensors(out, {"samples": x, "labels": lab.long()}, metadata={k: str(v) for k, v in meta.items()})
    elif suffix == ".npz":
        import numpy as np

        np.savez(out, samples=x.numpy(), labels=lab.numpy())
    else:
        _save_png(x, out, value_range=(0.0, 1.0), nrow=min(10, x.shape[0]), quiet=True)
    print(out)


class _GridFrames:
    """Sampler callback keeping about ``max_frames`` snapshots of x; batches are joined per step."""

    def __init__(self, total_steps: int, max_frames: int = 60):
        self.every = max(1, -(-total_steps // max_frames))
        self.total = total_steps
        self.steps: dict = {}

    def __call__(self, info: dict) -> None:
        i = info["i"]
        if i % self.every == 0 or i == self.total - 1:
            self.steps.setdefault(i, []).append(info["x"].detach().float().cpu().clamp(0, 1))

    def frames(self):
        import torch

        return [torch.cat(self.steps[i]) for i in sorted(self.steps)]


def _cmd_sample(args):
    import torch

    from .mnist.pretrained import load_pretrained
    from .mnist.sampling import ddpm_timesteps, sample

    out = _out_path(args.out, SAMPLE_SUFFIXES)
    if args.gif is not None:
        _out_path(args.gif, (".gif",), "--gif")
    rank, world = _dist_rank_world()
    if world > 1 and args.gif:
        raise CLIError("--gif is not supported with torchrun (each rank sees only its slice); run it in one process")
    device = args.device
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    model = load_pretrained(args.model, device=device)
    if model.kind not in ("ddpm", "flow"):
        raise CLIError(f"--model {args.model!r} is a one-step {model.kind} model, not a generator; "
                       "use `diffaccel mnist eval` for its PSNR")
    labels, n = _sample_labels(model, args.labels, args.n)
    rec = None
    if args.gif:
        total = (len(ddpm_timesteps(model.num_timesteps, args.num_steps)) if model.kind == "ddpm"
                 else args.num_steps or 300)
        rec = _GridFrames(total)
    meta = {"model": args.model, "seed": args.seed, "guidance_scale": args.guidance_scale,
            "num_steps": args.num_steps, "sampler": args.sampler}

    def run(start: int, end: int):
        if end <= start:
            return torch.empty(0, 1, 28, 28)
        lab = labels[start:end] if labels is not None else None
        return sample(model, labels=lab, n=None if lab is not None else end - start,
                      guidance_scale=args.guidance_scale, num_steps=args.num_steps, seed=args.seed,
                      sampler=args.sampler, batch_size=args.batch_size, start_index=start, callback=rec,
                      progress=not args.no_progress and rank == 0).cpu()

    if world == 1:
        x = run(0, n)
        _write_samples(out, x, labels, meta)
        if rec is not None:
            _save_gif(rec.frames(), args.gif, value_range=(0.0, 1.0), nrow=min(10, n))
        return

    import torch.distributed as dist

    from .mnist.checkpoint import atomic_save_tensors, load_tensors

    # Shards always go through gloo (CPU tensors): a few MB, once.
    dist.init_process_group("gloo")
    try:
        # Shard by whole batches of --batch-size: every rank then runs exactly the forwards a
        # single process runs. Per-sample noise alone is not enough for bit-equality: CPU
        # conv/GEMM kernels pick their blocking by batch size, so the same digit computed in a
        # batch of another size can differ in the last bit (measured: ~1e-8 in eps, ~5e-7 in x_0).
        num_batches = -(-n // args.batch_size)
        start = min(n, rank * num_batches // world * args.batch_size)
        end = min(n, (rank + 1) * num_batches // world * args.batch_size)
        if rank == 0 and num_batches < world:
            print(f"diffaccel: warning: {n} samples make {num_batches} batch(es) of --batch-size {args.batch_size} "
                  f"for {world} ranks; {world - num_batches} rank(s) will idle (use a smaller --batch-size)",
                  file=sys.stderr)
        shard = out.with_name(f".{out.name}.shard{rank:04d}of{world:04d}.safetensors")
        atomic_save_tensors(shard, {"samples": run(start, end).contiguous()})
        dist.barrier()
        if rank == 0:
            shards = [out.with_name(f".{out.name}.shard{r:04d}of{world:04d}.safetensors") for r in range(world)]
            x = torch.cat([load_tensors(s)["samples"] for s in shards])
            _write_samples(out, x, labels, meta)
            for s in shards:
                s.unlink()
        dist.barrier()  # nobody exits (and tears down the group) before rank 0 has read every shard
    finally:
        dist.destroy_process_group()


# ============================================================================= mnist eval / list
def _add_eval_parser(sub):
    p = _parser(sub, "eval", "evaluate a Part B model with the project's classifier", """\
Generators (DDPM / flow): label accuracy of class-conditional samples and the Fréchet distance
(classifier features) between --n generated digits and the test set, printed beside the floor:
the same distance between --n training digits and the test set. One-step denoisers: PSNR on
the first --n test digits at each sigma of SPEC B1.2.

example:
  diffaccel mnist eval --model ddpm_class --n 10000 --json eval.json""")
    p.add_argument("--model", required=True, help="shipped model name or a training output folder")
    p.add_argument("--n", type=_positive("--n"), default=10000, help="digits to generate (and to compare with)")
    p.add_argument("--num-steps", type=_positive("--num-steps"), default=None, help="sampling steps (default: all)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="update rule for DDPM models")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="CFG scale g (class-conditional models)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--classifier", default=None, metavar="FILE.safetensors",
                   help="evaluation classifier (default: the shipped one)")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default: $DIFFACCEL_MNIST_DIR)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args):
    import json

    from .mnist import evaluate as ev
    from .mnist.classifier import classifier_info, load_classifier
    from .mnist.pretrained import load_pretrained

    if args.json is not None:
        _out_path(args.json, (".json",), "--json")
    clf_path = Path(args.classifier) if args.classifier else None
    try:
        clf = load_classifier(clf_path)
    except FileNotFoundError as e:
        raise CLIError(f"{e}; train one with `diffaccel mnist train-classifier --out PATH` and pass "
                       "--classifier PATH.safetensors") from None
    try:
        clf_acc = classifier_info(clf_path).get("test_accuracy")
    except (OSError, ValueError):
        clf_acc = None
    model = load_pretrained(args.model, device=args.device)
    res = {"model": model.name, "kind": model.kind, "conditioning": model.conditioning,
           "classifier_test_accuracy": clf_acc}
    rows = [("model", f"{model.name} ({model.kind}, {model.conditioning}-conditioned)"),
            ("classifier", "test accuracy " + (f"{clf_acc:.4f}" if clf_acc is not None else "unknown"))]
    if model.kind in ("denoiser", "pure_noise"):
        xt, _ = ev.mnist_tensors("test", root=args.data_dir)
        res["n"] = min(args.n, xt.shape[0])
        res["psnr_db"] = ev.denoiser_psnr(model, xt[: args.n].to(model.device), seed=args.seed)
        rows.append(("test digits", str(res["n"])))
        rows += [(f"PSNR sigma={s}", f"{v:.2f} dB") for s, v in res["psnr_db"].items()]
    else:
        res.update(ev.evaluate_generator(model, n=args.n, guidance_scale=args.guidance_scale, num_steps=args.num_steps,
                                         sampler=args.sampler, seed=args.seed, data_dir=args.data_dir, classifier=clf,
                                         progress=not args.no_progress))
        res["frechet_floor_train_vs_test"] = round(ev.fd_floor(args.data_dir, n=args.n, classifier=clf), 3)
        how = f"{res['sampler']}, {res['num_steps']} steps, seed {res['seed']}"
        if "guidance_scale" in res:
            how += f", g = {res['guidance_scale']:g}"
        rows.append(("samples", f"{res['n']} ({how}) in {res['sampling_time_s']} s"))
        if "label_accuracy" in res:
            rows.append(("label accuracy", f"{res['label_accuracy']:.4f}"))
        rows.append(("Fréchet distance", f"{res['frechet_distance']:.3f}   "
                     f"(floor, {args.n} train vs test: {res['frechet_floor_train_vs_test']:.3f})"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(path)


def _add_list_parser(sub):
    p = _parser(sub, "list", "list the shipped MNIST models")
    p.set_defaults(func=_cmd_list)


def _cmd_list(args):
    from .mnist.pretrained import list_pretrained, load_pretrained, pretrained_epochs

    names = list_pretrained()
    if not names:
        print("no shipped MNIST models found (set DIFFACCEL_WEIGHTS_DIR or train one: `diffaccel mnist train`)")
    for name in names:
        m = load_pretrained(name)
        snaps = pretrained_epochs(name)
        print(f"{name:<24} {m.kind:<10} {m.conditioning:<6} D={m.model.config.hidden}"
              + (f"  snapshots after epochs {snaps}" if snaps else ""))


# ============================================================================= figures / demo
def _import_report(name: str):
    import importlib

    try:
        return importlib.import_module(f"diffaccel.report.{name}")
    except ModuleNotFoundError as e:
        if e.name and (e.name == "diffaccel.report" or e.name.startswith(f"diffaccel.report.{name}")):
            raise CLIError(f"diffaccel.report.{name} is not available in this installation") from None
        raise


def _add_figures_parser(sub):
    p = _parser(sub, "figures", "write every Part B deliverable (figures, grids, GIFs) into a folder", """\
Noising sweep, denoiser results after epochs 1 and 5, out-of-distribution sweep, pure noise vs
the mean digit, loss curves, sample grids after 5 and 20 epochs, 4 samples per digit, GIFs.""")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quick", action="store_true", help="fewer samples and steps (a fast preview)")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default: $DIFFACCEL_MNIST_DIR)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_figures)


def _cmd_figures(args):
    partb = _import_report("partb")
    out = _out_dir(args.out)
    figs = partb.write_partb_figures(out, seed=args.seed, quick=args.quick, data_dir=args.data_dir,
                                     progress=not args.no_progress)
    from .report.html import render_index

    print(render_index(figs, out, "diffaccel — Part B: MNIST diffusion from scratch"))


def _add_demo_parser(sub):
    p = _parser(sub, "demo", "run every Part A and Part B result into one folder with an index.html", """\
Part A runs on the shipped MNIST model (the class label is the prompt); with --if-stage1
(and --if-stage2, --embeds) it also runs on DeepFloyd IF.

example:
  diffaccel demo --out demo --quick && xdg-open demo/index.html""")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quick", action="store_true", help="fewer samples and steps (a fast preview)")
    p.add_argument("--if-stage1", default=None, metavar="P", help="DeepFloyd IF stage I directory or hub id")
    p.add_argument("--if-stage2", default=None, metavar="P", help="DeepFloyd IF stage II directory or hub id")
    p.add_argument("--embeds", default=None, metavar="P", help="prompt embeddings (.pth / .safetensors) for IF")
    p.add_argument("--image", default=None, metavar="FILE",
                   help="the image the IF sections edit (SDEdit, inpainting, img2img); default: a drawn scene")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default: $DIFFACCEL_MNIST_DIR)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args):
    if (args.if_stage1 or args.if_stage2) and not args.embeds:
        raise CLIError("--embeds FILE is required with --if-stage1/--if-stage2 (IF is text-conditioned)")
    if args.if_stage2 and not args.if_stage1:
        raise CLIError("--if-stage2 needs --if-stage1 (stage II upsamples stage-I images)")
    if args.image and not args.if_stage1:
        raise CLIError("--image is the picture the IF sections edit: it needs --if-stage1 (and --embeds)")
    if args.image and not Path(args.image).is_file():
        raise CLIError(f"--image {args.image}: no such file")
    demo = _import_report("demo")
    out = _out_dir(args.out)
    res = demo.run_demo(out, seed=args.seed, quick=args.quick, if_stage1=args.if_stage1, if_stage2=args.if_stage2,
                        embeds=args.embeds, device=args.device, progress=True, data_dir=args.data_dir,
                        if_image=args.image)
    index = Path(res) if res is not None else out
    print(index / "index.html" if index.is_dir() else index)


# ============================================================================= Part A techniques
MASK_SHAPES = ("top-half", "bottom-half", "left-half", "right-half", "center")


def _common_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="DeepFloyd IF directory or hub id (e.g. DeepFloyd/IF-I-XL-v1.0), or a shipped MNIST model "
                        "name / training folder (the digit label is then the prompt)")
    g.add_argument("--embeds", default=None, metavar="FILE",
                   help="IF prompt embeddings: a .pth or .safetensors dict {prompt: [1, 77, E]} ('' = null prompt)")
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
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
    p.add_argument("--num-steps", type=_positive("--num-steps"), default=None,
                   help="diffusers-style timesteps (as IFPipeline); default: strided 990, 960, ..., 0 (scaled to T)")
    p.add_argument("--stride", type=_positive("--stride"), default=None, help="stride of the strided timesteps")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help=("CFG scale (default: 7 for IF, 5 for MNIST)" if guided_default
                         else "CFG scale (default: no guidance)"))
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

    from .pipelines.denoisers import MNISTDenoiser

    spec = args.model
    if _is_if_model(spec):
        from .pipelines.loading import load_if_stage

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
    if Path(spec).exists() and not (Path(spec) / "config.json").is_file():
        raise CLIError(f"--model {spec!r}: neither an IF directory (unet/, scheduler/) nor an MNIST training folder "
                       "(config.json + model.safetensors)")
    try:
        return MNISTDenoiser.from_pretrained(spec, device=torch.device(args.device))
    except ValueError as e:
        raise CLIError(f"--model: {e}; or give a DeepFloyd IF directory / hub id") from None


def _is_mnist(den) -> bool:
    from .pipelines.denoisers import MNISTDenoiser

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
    from .pipelines.techniques import inference_timesteps, strided_timesteps

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


def _load_image(den, path: str, no_resize: bool = False, size=None, what: str = "--image"):
    """An image file as [1, C, H, W] in [-1, 1] at the model's size (or ``size``)."""
    from PIL import Image, UnidentifiedImageError

    from .pipelines.loading import load_image

    c, h, w = den.sample_shape
    h, w = size or (h, w)
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{what}: no such file {path!r}")
    try:
        with Image.open(p) as im:
            got = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{what} {path!r} is not an image file Pillow can read: {e}") from None
    if no_resize and got != (w, h):
        raise CLIError(f"{what} {path!r} is {got[0]}x{got[1]} but the model works at {w}x{h}; "
                       "drop --no-resize to center-crop and resize it")
    return load_image(p, size=(h, w), value_range=(-1.0, 1.0), channels=c)


def _load_mask(den, spec: str):
    import torch

    from .pipelines.loading import load_mask

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
    m = load_mask(spec, (h, w))
    if not m.any():
        raise CLIError(f"--mask {spec!r} selects no pixel (white = regenerate, black = keep)")
    return m


def _recorder(den, args):
    if not getattr(args, "gif", None):
        return None
    from .pipelines.animation import FrameRecorder

    _out_path(args.gif, (".gif",), "--gif")
    return FrameRecorder(den.from_model_range)


def _finish_gif(rec, args):
    if rec is not None:
        _save_gif(rec.frames, args.gif)


def _progress(args) -> bool:
    return not args.no_progress


# ----------------------------------------------------------------------------- A1.1 - A1.3
def _cmd_forward(args):
    from .pipelines import techniques as T

    den = _load_denoiser(args)
    out = _out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    gen = _generator(args)
    noisy = [den.from_model_range(T.forward(den, x0, t, gen)) for t in args.t]
    _save_png(x0[0], out / "original.png")
    for t, x in zip(args.t, noisy):
        _save_png(x[0], out / f"forward_t{t}.png")
    _save_png(_cat([x0] + noisy), out / "forward.png", nrow=len(noisy) + 1)


def _cmd_blur_denoise(args):
    from .pipelines import techniques as T

    den = _load_denoiser(args)
    out = _out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    gen = _generator(args)
    noisy, blurred = [], []
    for t in args.t:
        x_t = T.forward(den, x0, t, gen)
        b = T.blur_denoise(x_t, args.kernel_size, args.sigma, t=t, num_train_timesteps=den.num_train_timesteps)
        noisy.append(den.from_model_range(x_t))
        blurred.append(den.from_model_range(b))
        _save_png(noisy[-1][0], out / f"noisy_t{t}.png")
        _save_png(blurred[-1][0], out / f"blur_t{t}.png")
    _save_png(_cat(noisy + blurred), out / "blur_denoise.png", nrow=len(args.t))


def _cmd_one_step(args):
    from .pipelines import techniques as T

    den = _load_denoiser(args)
    out = _out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    gen = _generator(args)
    cond = _cond(den, args.prompt)
    noisy, clean = [], []
    for t in args.t:
        x_t = T.forward(den, x0, t, gen)
        noisy.append(den.from_model_range(x_t))
        clean.append(T.one_step_denoise(den, x_t, t, cond))
        _save_png(noisy[-1][0], out / f"noisy_t{t}.png")
        _save_png(clean[-1][0], out / f"one_step_t{t}.png")
    _save_png(_cat(noisy + clean), out / "one_step.png", nrow=len(args.t))


# ----------------------------------------------------------------------------- A1.4 - A1.6
def _cmd_iterative(args):
    from .pipelines import techniques as T

    den = _load_denoiser(args)
    out = _out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    ts = _timesteps(den, args)
    i_start = T._check_i_start(args.i_start, ts)
    gen = _generator(args)
    cond = _cond(den, args.prompt)
    x_t = T.forward(den, x0, ts[i_start], gen)
    rec = _recorder(den, args)
    g = _guidance(den, args, default_on=False)
    kw = dict(cond=cond, generator=gen, callback=rec, every=args.every, progress=_progress(args))
    res = (T.iterative_denoise(den, x_t, i_start, ts, **kw) if g is None
           else T.iterative_denoise_cfg(den, x_t, i_start, ts, guidance_scale=g, **kw))
    _save_png(den.from_model_range(x_t)[0], out / "noisy.png")
    _save_png(res.image[0], out / "iterative.png")
    if res.intermediates:
        _save_png(_cat(res.intermediates), out / "iterative_steps.png", nrow=len(res.intermediates))
    # SPEC A1.4's comparison: one-step denoising and a Gaussian blur of the same x_t
    _save_png(T.one_step_denoise(den, x_t, ts[i_start], cond)[0], out / "one_step.png")
    _save_png(den.from_model_range(T.blur_denoise(x_t, t=ts[i_start], num_train_timesteps=den.num_train_timesteps))[0],
              out / "blur.png")
    _finish_gif(rec, args)


def _cmd_sample_a(args, guided_default: bool):
    from .pipelines import techniques as T

    den = _load_denoiser(args)
    out = _out_dir(args.out)
    ts = _timesteps(den, args)
    rec = _recorder(den, args)
    res = T.sample(den, _cond(den, args.prompt), num_samples=args.n, timesteps=ts,
                   guidance_scale=_guidance(den, args, guided_default), generator=_generator(args), callback=rec,
                   progress=_progress(args))
    for k, x in enumerate(res.image):
        _save_png(x, out / f"sample_{k}.png")
    _save_png(res.image, out / "samples.png")
    _finish_gif(rec, args)


# ----------------------------------------------------------------------------- A1.7
def _cmd_sdedit(args, name: str = "sdedit"):
    from .pipelines import techniques as T

    den = _load_denoiser(args)
    out = _out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    ts = _timesteps(den, args)
    cond = _cond(den, args.prompt)
    g = _guidance(den, args)
    gen = _generator(args)
    results = []
    for i in args.i_start:
        x = T.img2img(den, x0, cond, i, ts, guidance_scale=g, generator=gen, progress=_progress(args))
        results.append(x)
        _save_png(x[0], out / f"{name}_i{i}.png")
    _save_png(x0[0], out / "original.png")
    _save_png(_cat(results + [x0]), out / f"{name}.png", nrow=len(results) + 1)


def _cmd_inpaint(args):
    from .pipelines import techniques as T

    den = _load_denoiser(args)
    out = _out_dir(args.out)
    x0 = _load_image(den, args.image, args.no_resize)
    m = _load_mask(den, args.mask)
    ts = _timesteps(den, args)
    rec = _recorder(den, args)
    res = T.inpaint(den, x0, m, _cond(den, args.prompt), args.i_start, ts, guidance_scale=_guidance(den, args),
                    generator=_generator(args), callback=rec, progress=_progress(args))
    mask_img = (m * 2 - 1).expand_as(x0)
    _save_png(x0[0], out / "original.png")
    _save_png(mask_img[0], out / "mask.png")
    _save_png(res.image[0], out / "inpaint.png")
    _save_png(_cat([x0, mask_img, x0 * (1 - m), res.image]), out / "inpaint_strip.png", nrow=4)
    _finish_gif(rec, args)


# ----------------------------------------------------------------------------- A1.8 - A1.9
def _cmd_anagram(args):
    from .pipelines import techniques as T
    from .pipelines.animation import animate_view
    from .pipelines.views import get_view

    if len(args.prompts) < 2:
        raise CLIError(f"--prompts needs at least 2 prompts (one per view), got {len(args.prompts)}")
    views = args.views or (["identity", "flip"] if len(args.prompts) == 2 else None)
    if views is None:
        raise CLIError(f"give --views with one view per prompt ({len(args.prompts)} prompts)")
    if len(views) != len(args.prompts):
        raise CLIError(f"--views and --prompts must pair up: {len(views)} views but {len(args.prompts)} prompts")
    vs = [get_view(v) for v in views]
    if args.animate:
        _out_path(args.animate, (".gif",), "--animate")
    den = _load_denoiser(args)
    out = _out_dir(args.out)
    conds = [_cond(den, p, "--prompts") for p in args.prompts]
    rec = _recorder(den, args)
    res = T.visual_anagram(den, conds, vs, num_samples=args.n, timesteps=_timesteps(den, args),
                           guidance_scale=_guidance(den, args), generator=_generator(args), callback=rec,
                           progress=_progress(args))
    _save_png(res.image, out / "anagram.png")
    for k, v in enumerate(vs):
        _save_png(v.view(res.image), out / f"anagram_view{k}_{v.name}.png")
    _finish_gif(rec, args)
    if args.animate:
        print(animate_view(res.image[0], vs[1], args.animate, scale=_upscale(den.sample_shape[-1])))


def _cmd_hybrid(args):
    from .pipelines import techniques as T
    from .pipelines.factorizations import HighLow, get_factorization

    if args.factorization in ("high_low", "hybrid"):
        fac = HighLow(args.kernel_size, args.sigma)
    else:
        fac = get_factorization(args.factorization)
    if len(args.prompts) != fac.num_components:
        raise CLIError(f"--prompts: the {fac.name} factorization needs {fac.num_components} prompts "
                       f"(first = {'far away / low frequencies' if fac.num_components == 2 else 'first component'}), "
                       f"got {len(args.prompts)}")
    den = _load_denoiser(args)
    out = _out_dir(args.out)
    conds = [_cond(den, p, "--prompts") for p in args.prompts]
    rec = _recorder(den, args)
    res = T.factorized(den, conds, fac, num_samples=args.n, timesteps=_timesteps(den, args),
                       guidance_scale=_guidance(den, args), generator=_generator(args), callback=rec,
                       progress=_progress(args))
    _save_png(res.image, out / "hybrid.png")
    for k, part in enumerate(fac.components(res.image)):
        _save_png(part, out / f"hybrid_component{k}.png")
    _finish_gif(rec, args)


# ----------------------------------------------------------------------------- A0 stage II
def _cmd_upsample(args):
    from .pipelines import techniques as T

    den = _load_denoiser(args, stage=2)
    out = _out_dir(args.out)
    _, h, w = den.sample_shape
    low = _load_image(den, args.image, args.no_resize, size=(h // args.factor, w // args.factor))
    rec = _recorder(den, args)
    res = T.upsample_stage2(den, low, args.prompt, num_inference_steps=args.num_steps, noise_level=args.noise_level,
                            guidance_scale=args.guidance_scale, generator=_generator(args), callback=rec,
                            progress=_progress(args))
    _save_png(low[0], out / "low_res.png")
    _save_png(res.image[0], out / "upsampled.png")
    _finish_gif(rec, args)


def _add_technique_parsers(sub):
    common = _common_parent()
    image = _image_parent()
    steps_plain, steps_cfg = _steps_parent(False), _steps_parent(True)

    def prompt(p, help="prompt (IF) or digit label (MNIST); default: 'a high quality photo' for IF, none for MNIST"):
        p.add_argument("--prompt", default=None, help=help)

    def t_list(p, default=(250, 500, 750)):
        p.add_argument("--t", type=int, nargs="+", default=list(default), metavar="T",
                       help="noise levels (timesteps; the MNIST models have T = 300)")

    p = _parser(sub, "forward", "SPEC A1.1: the forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps",
                "example:\n  diffaccel forward --model ddpm_class --image digit.png --t 50 100 200 --out out/forward",
                parents=[common, image])
    t_list(p)
    p.set_defaults(func=_cmd_forward)

    p = _parser(sub, "blur-denoise", "SPEC A1.2: classical denoising (Gaussian blur of the noisy image)",
                parents=[common, image])
    t_list(p)
    p.add_argument("--kernel-size", type=int, default=None, help="Gaussian kernel size (default: chosen per t)")
    p.add_argument("--sigma", type=float, default=None, help="Gaussian sigma (default: chosen per t)")
    p.set_defaults(func=_cmd_blur_denoise)

    p = _parser(sub, "one-step", "SPEC A1.3: one-step denoising x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)",
                parents=[common, image])
    t_list(p)
    prompt(p)
    p.set_defaults(func=_cmd_one_step)

    p = _parser(sub, "iterative", "SPEC A1.4: iterative denoising down strided timesteps from timesteps[i_start]",
                "Also writes the one-step and blur results for the same x_t (the course's comparison).",
                parents=[common, image, steps_plain])
    p.add_argument("--i-start", type=int, default=10, help="index into the timesteps to start from (10: t = 690)")
    p.add_argument("--every", type=_positive("--every"), default=5, help="keep every k-th step for iterative_steps.png")
    prompt(p)
    p.set_defaults(func=_cmd_iterative)

    p = _parser(sub, "sample", "SPEC A1.5: sample from pure noise (no guidance unless --guidance-scale)",
                "example:\n  diffaccel sample --model ddpm_class --prompt 7 --n 8 --guidance-scale 5 --out out/sample",
                parents=[common, steps_plain])
    p.add_argument("--n", type=_positive("--n"), default=5, help="number of samples")
    prompt(p)
    p.set_defaults(func=lambda a: _cmd_sample_a(a, guided_default=False))

    p = _parser(sub, "cfg", "SPEC A1.6: sample with classifier-free guidance eps_u + g (eps_c - eps_u)",
                parents=[common, steps_cfg])
    p.add_argument("--n", type=_positive("--n"), default=5, help="number of samples")
    prompt(p)
    p.set_defaults(func=lambda a: _cmd_sample_a(a, guided_default=True))

    for name, helptext, desc in (
            ("sdedit", "SPEC A1.7: SDEdit, noise an image to timesteps[i_start] and denoise it with CFG",
             "One image per --i-start (the course's sweep 1 3 5 7 10 20), then the original."),
            ("img2img", "SPEC A1.7.3: text-conditional image-to-image (SDEdit toward --prompt)",
             "example:\n  diffaccel img2img --model ddpm_class --image three.png --prompt 8 --out out/3to8")):
        p = _parser(sub, name, helptext, desc, parents=[common, image, steps_cfg])
        p.add_argument("--i-start", type=int, nargs="+", default=[1, 3, 5, 7, 10, 20], metavar="I",
                       help="start indices into the timesteps (larger = closer to the original)")
        if name == "sdedit":
            prompt(p)
        else:
            p.add_argument("--prompt", required=True, help="prompt (IF) or digit label (MNIST) to edit toward")
        p.set_defaults(func=lambda a, name=name: _cmd_sdedit(a, name))

    p = _parser(sub, "inpaint", "SPEC A1.7.2: inpainting, regenerate the masked pixels (white = regenerate)",
                parents=[common, image, steps_cfg])
    p.add_argument("--mask", required=True, metavar="FILE|SHAPE",
                   help=f"mask image (white = regenerate) or one of {', '.join(MASK_SHAPES)}")
    p.add_argument("--i-start", type=int, default=0, help="0: start from pure noise; > 0: from the noised image")
    prompt(p)
    p.set_defaults(func=_cmd_inpaint)

    from .pipelines.views import list_views

    p = _parser(sub, "anagram", "SPEC A1.8: visual anagrams, one image read differently under each view",
                "example (a 1 upright, a 7 upside down):\n"
                "  diffaccel anagram --model ddpm_class --prompts 1 7 --views identity flip --out out/anagram",
                parents=[common, steps_cfg])
    p.add_argument("--prompts", nargs="+", required=True, help="one prompt (IF) or digit (MNIST) per view")
    p.add_argument("--views", nargs="+", default=None, choices=list_views(), metavar="VIEW",
                   help=f"one per prompt, default identity flip; choices: {', '.join(list_views())}")
    p.add_argument("--n", type=_positive("--n"), default=1, help="number of illusions")
    p.add_argument("--animate", default=None, metavar="FILE.gif",
                   help="also write a GIF of the first illusion turning into its second reading")
    p.set_defaults(func=_cmd_anagram)

    from .pipelines.factorizations import FACTORIZATIONS

    p = _parser(sub, "hybrid", "SPEC A1.9: hybrid images, lowpass(eps_1) + highpass(eps_2) (and other factorizations)",
                "example (a 0 from far away, a 1 up close):\n"
                "  diffaccel hybrid --model ddpm_class --prompts 0 1 --kernel-size 9 --sigma 1.5 --out out/hybrid",
                parents=[common, steps_cfg])
    p.add_argument("--prompts", nargs="+", required=True,
                   help="one prompt (IF) or digit (MNIST) per component; high_low: far away first, up close second")
    p.add_argument("--factorization", default="high_low", choices=sorted(FACTORIZATIONS))
    p.add_argument("--kernel-size", type=int, default=33, help="Gaussian kernel of the low pass (high_low)")
    p.add_argument("--sigma", type=float, default=2.0, help="Gaussian sigma of the low pass (high_low)")
    p.add_argument("--n", type=_positive("--n"), default=1, help="number of images")
    p.set_defaults(func=_cmd_hybrid)

    p = _parser(sub, "upsample", "SPEC A0: DeepFloyd IF stage II, upsample a stage-I image guided by a prompt",
                "--model is the stage-II model (e.g. DeepFloyd/IF-II-L-v1.0); --image is a stage-I output.",
                parents=[common, image])
    p.add_argument("--prompt", default=None, help="prompt (default: 'a high quality photo')")
    p.add_argument("--num-steps", type=_positive("--num-steps"), default=50, help="stage-II sampling steps")
    p.add_argument("--noise-level", type=int, default=250, help="noise added to the upscaled low-res image")
    p.add_argument("--guidance-scale", type=float, default=4.0, help="CFG scale (IF stage II's default)")
    p.add_argument("--factor", type=_positive("--factor"), default=4, help="upsampling factor (IF: 64 -> 256)")
    p.add_argument("--gif", default=None, metavar="FILE.gif", help="also write a GIF of the denoising")
    p.set_defaults(func=_cmd_upsample)


# ============================================================================= entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffaccel", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    mnist = sub.add_parser("mnist", help="Part B: MNIST diffusion from scratch", formatter_class=_HelpFormatter,
                           description="Part B: MNIST diffusion from scratch (train, sample, eval, figures).")
    msub = mnist.add_subparsers(dest="mnist_command", required=True, metavar="COMMAND")
    _add_train_parser(msub)
    _add_classifier_parser(msub)
    _add_sample_parser(msub)
    _add_eval_parser(msub)
    _add_figures_parser(msub)
    _add_list_parser(msub)
    _add_demo_parser(sub)
    _add_technique_parsers(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0, or 2 for a usage or input error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or an argparse usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else 0
    from .mnist.data import MNISTDownloadError

    try:
        args.func(args)
    except (ValueError, TypeError, KeyError, OSError, MNISTDownloadError) as e:
        # Bad input of every kind (our CLIError, the library's ValueError/TypeError naming the
        # argument, KeyError for a missing prompt, FileNotFoundError/OSError for paths, a failed
        # MNIST download) is an error for the user to fix, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"diffaccel: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
