"""``diffaccel`` command line: ``diffaccel mnist train|sample|eval|figures``, ``diffaccel demo``, Part A techniques."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffaccel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    mnist = sub.add_parser("mnist", help="Part B: MNIST diffusion from scratch")
    msub = mnist.add_subparsers(dest="mnist_command", required=True)
    _add_train_parser(msub)
    _add_classifier_parser(msub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"diffaccel: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
