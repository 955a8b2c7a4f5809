"""``diffaccel mnist train|train-classifier|sample|eval|figures|list`` — Part B (SPEC Part B)."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from .common import (CLIError, add_parser, add_sampler_arg, device_arg, finite_float, import_report, out_dir,
                     optional_kwarg, out_path, positive_int, sampler_kwargs, write_gif, write_png)

__all__ = ["add_mnist_parsers", "load_model"]

DATA_DIR_HELP = "folder with the MNIST IDX files (default: $DIFFACCEL_MNIST_DIR)"


def add_mnist_parsers(sub) -> None:
    """The ``mnist`` command group."""
    from .common import HelpFormatter

    mnist = sub.add_parser("mnist", help="Part B: MNIST diffusion from scratch", formatter_class=HelpFormatter,
                           description="Part B: MNIST diffusion from scratch (train, sample, eval, figures).")
    msub = mnist.add_subparsers(dest="mnist_command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_train_classifier, _add_sample, _add_eval, _add_figures, _add_list):
        add(msub)


def load_model(spec: str, device: str = "cpu", also_if: bool = False):
    """``--model``: a shipped model name or a training output folder (``config.json`` + ``model.safetensors``);
    ``also_if``: the command also takes DeepFloyd IF folders (the error then says so)."""
    from ..mnist.pretrained import load_pretrained

    p = Path(spec)
    if p.is_dir() and not (p / "config.json").is_file():
        raise CLIError(f"--model {spec!r} is a folder without config.json: an MNIST training output folder holds "
                       "config.json and model.safetensors (written by `diffaccel mnist train`)"
                       + ("; a DeepFloyd IF folder holds unet/ and scheduler/" if also_if else ""))
    return load_pretrained(spec, device=device)


# ----------------------------------------------------------------------------- train
def _add_train(sub):
    from ..mnist.train import PRESETS, TrainConfig

    p = add_parser(sub, "train", "train a Part B model (presets are the course's configs)", """\
Data parallel: `torchrun --nproc_per_node=K -m diffaccel.cli mnist train ...` follows the
single-process trajectory (every rank takes its slice of the same global batch).""")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="output folder (checkpoints, loss.csv, loss.png, model.safetensors)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--download", action="store_true", help="download MNIST (checksums verified) if missing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g.add_argument("--overwrite", action="store_true", help="clear an earlier run in --out and start over")
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--threads", type=positive_int("--threads"), default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for f in fields(TrainConfig):
        if f.name == "task":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None, metavar="BOOL")
        elif f.type in ("int", int):
            p.add_argument(flag, type=int, default=None)
        elif f.type in ("float", float):
            p.add_argument(flag, type=finite_float, default=None)
        else:
            p.add_argument(flag, type=str, default=None)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args):
    import torch
    import torch.distributed as dist

    from ..mnist.distributed import local_device, rank_world
    from ..mnist.train import TrainConfig, preset, train

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name != "task" and getattr(args, f.name, None) is not None}
    cfg = preset(args.preset, **overrides)
    device = local_device(args.device)
    kw = optional_kwarg(train, "overwrite", True, "--overwrite") if args.overwrite else {}
    sharded = rank_world()[1] > 1
    if sharded:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        path = train(cfg, args.out, data_dir=args.data_dir, resume=args.resume, progress=not args.no_progress,
                     device=str(device), download=args.download, **kw)
    finally:
        if sharded:
            dist.destroy_process_group()
    print(path)


def _add_train_classifier(sub):
    p = add_parser(sub, "train-classifier", "train the evaluation classifier (writes OUT.safetensors + OUT.json)")
    p.add_argument("--out", required=True, help="output path without suffix, e.g. runs/classifier")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--epochs", type=positive_int("--epochs"), default=3, help="training epochs")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=128, help="batch size")
    p.add_argument("--lr", type=finite_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_cmd_train_classifier)


def _cmd_train_classifier(args):
    from ..mnist.classifier import train_classifier

    _, acc = train_classifier(Path(args.out), data_dir=args.data_dir, epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"test accuracy {acc:.4f}")


# ----------------------------------------------------------------------------- sample
SAMPLE_SUFFIXES = (".safetensors", ".png", ".npz")


def _add_sample(sub):
    p = add_parser(sub, "sample", "sample digits from a Part B model (DDPM / DDIM / flow, CFG for class models)", """\
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
    p.add_argument("--n", "--num-samples", dest="n", type=positive_int("--n"), default=None,
                   help="number of samples (default: 40, or len(--labels)); under torchrun spell it --num-samples "
                        "(torchrun's own parser rejects --n as an ambiguous abbreviation)")
    p.add_argument("--guidance-scale", type=finite_float, default=5.0, help="CFG scale g (class-conditional models)")
    p.add_argument("--num-steps", type=positive_int("--num-steps"), default=None,
                   help="sampling steps (default: all T DDPM steps; 300 Euler steps for flow)")
    add_sampler_arg(p)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=512, help="samples per forward")
    p.add_argument("--gif", default=None, metavar="FILE.gif", help="also write a GIF of the grid being denoised")
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
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

    from ..mnist.checkpoint import atomic_save_tensors

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
        write_png(x, out, value_range=(0.0, 1.0), nrow=min(10, x.shape[0]), quiet=True)
    print(out)


def _cmd_sample(args):
    from ..imageio import FrameRecorder
    from ..mnist.distributed import local_device, rank_world, sample_distributed
    from ..mnist.sampling import ddpm_timesteps, sample

    out = out_path(args.out, SAMPLE_SUFFIXES)
    if args.gif is not None:
        out_path(args.gif, (".gif",), "--gif")
        if rank_world()[1] > 1:
            raise CLIError("--gif is not supported with torchrun (each rank sees only its slice); "
                           "run it in one process")
    model = load_model(args.model, device=str(local_device(args.device)))
    if model.kind not in ("ddpm", "flow"):
        raise CLIError(f"--model {args.model!r} is a one-step {model.kind} model, not a generator; "
                       "use `diffaccel mnist eval` for its PSNR")
    labels, n = _sample_labels(model, args.labels, args.n)
    rec = None
    if args.gif:
        total = (len(ddpm_timesteps(model.num_timesteps, args.num_steps)) if model.kind == "ddpm"
                 else args.num_steps or 300)
        rec = FrameRecorder.spaced(total, value_range=(0.0, 1.0))
    x = sample_distributed(model, labels, None if labels is not None else n, scratch=out.with_name("." + out.name),
                           batch_size=args.batch_size, progress=not args.no_progress,
                           guidance_scale=args.guidance_scale, num_steps=args.num_steps, seed=args.seed,
                           callback=rec, **sampler_kwargs(args, sample))
    if x is None:  # a torchrun rank other than 0: rank 0 writes
        return
    meta = {"model": args.model, "seed": args.seed, "guidance_scale": args.guidance_scale,
            "num_steps": args.num_steps, "sampler": args.sampler or "default"}
    _write_samples(out, x, labels, meta)
    if rec is not None:
        write_gif(rec.frames, args.gif, value_range=(0.0, 1.0), nrow=min(10, n))


# ----------------------------------------------------------------------------- eval / list
def _add_eval(sub):
    p = add_parser(sub, "eval", "evaluate a Part B model with the project's classifier", """\
Generators (DDPM / flow): label accuracy of class-conditional samples and the Fréchet distance
(classifier features) between --n generated digits and the test set, printed beside the floor:
the same distance between --n training digits and the test set. One-step denoisers: PSNR on
the first --n test digits at each sigma of SPEC B1.2.

example:
  diffaccel mnist eval --model ddpm_class --n 10000 --json eval.json""")
    p.add_argument("--model", required=True, help="shipped model name or a training output folder")
    p.add_argument("--n", type=positive_int("--n"), default=10000, help="digits to generate (and to compare with)")
    p.add_argument("--num-steps", type=positive_int("--num-steps"), default=None, help="sampling steps (default: all)")
    add_sampler_arg(p)
    p.add_argument("--guidance-scale", type=finite_float, default=5.0, help="CFG scale g (class-conditional models)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--classifier", default=None, metavar="FILE.safetensors",
                   help="evaluation classifier (default: the shipped one)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args):
    from ..mnist import evaluate as ev
    from ..mnist.classifier import classifier_info, load_classifier

    if args.json is not None:
        out_path(args.json, (".json",), "--json")
    clf_path = Path(args.classifier) if args.classifier else None
    if clf_path is not None and not clf_path.is_file():
        raise CLIError(f"--classifier {args.classifier!r}: no such file; train one with "
                       "`diffaccel mnist train-classifier --out PATH` and pass --classifier PATH.safetensors")
    clf = load_classifier(clf_path)
    try:
        clf_acc = classifier_info(clf_path).get("test_accuracy")
    except (OSError, ValueError):  # the accuracy is shown when known: no JSON beside the weights is fine
        clf_acc = None
    model = load_model(args.model, device=args.device)
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
                                         seed=args.seed, data_dir=args.data_dir, classifier=clf,
                                         progress=not args.no_progress, **sampler_kwargs(args, ev.evaluate_generator)))
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


def _add_list(sub):
    p = add_parser(sub, "list", "list the shipped MNIST models")
    p.set_defaults(func=_cmd_list)


def _cmd_list(args):
    from ..mnist.pretrained import list_pretrained, load_pretrained, pretrained_epochs

    names = list_pretrained()
    if not names:
        print("no shipped MNIST models found (set DIFFACCEL_WEIGHTS_DIR or train one: `diffaccel mnist train`)")
    for name in names:
        m = load_pretrained(name)
        snaps = pretrained_epochs(name)
        print(f"{name:<24} {m.kind:<10} {m.conditioning:<6} D={m.model.config.hidden}"
              + (f"  snapshots after epochs {snaps}" if snaps else ""))


# ----------------------------------------------------------------------------- figures
def _add_figures(sub):
    p = add_parser(sub, "figures", "write every Part B deliverable (figures, grids, GIFs) into a folder", """\
Noising sweep, denoiser results after epochs 1 and 5, out-of-distribution sweep, pure noise vs
the mean digit, loss curves, sample grids after 5 and 20 epochs, 4 samples per digit, GIFs.""")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quick", action="store_true", help="fewer samples and steps (a fast preview)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_figures)


def _cmd_figures(args):
    partb = import_report("partb")
    html = import_report("html")
    out = out_dir(args.out)
    figs = partb.write_partb_figures(out, seed=args.seed, quick=args.quick, data_dir=args.data_dir,
                                     progress=not args.no_progress)
    print(html.render_index(figs, out, "diffaccel — Part B: MNIST diffusion from scratch"))

