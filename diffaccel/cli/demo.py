"""``diffaccel demo`` — every Part A and Part B result rendered into one folder (:mod:`diffaccel.report`)."""
from __future__ import annotations

from pathlib import Path

from .common import CLIError, add_parser, device_arg, import_report, out_dir

__all__ = ["add_demo_parser"]


def add_demo_parser(sub) -> None:
    """``diffaccel demo``."""
    p = add_parser(sub, "demo", "run every Part A and Part B result into one folder with an index.html", """\
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
    p.add_argument("--device", type=device_arg, default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
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
    demo = import_report("demo")
    out = out_dir(args.out)
    res = demo.run_demo(out, seed=args.seed, quick=args.quick, if_stage1=args.if_stage1, if_stage2=args.if_stage2,
                        embeds=args.embeds, device=args.device, progress=True, data_dir=args.data_dir,
                        if_image=args.image)
    index = Path(res) if res is not None else out
    print(index / "index.html" if index.is_dir() else index)
