"""After a GPU training session: store each finished run's weights as float16 (half the size, for
shipping) and bundle what comes back from the device machine.

    python scripts/gpu_pack.py RUNS_DIR OUT_DIR --snapshot 5

For every ``RUNS_DIR/<name>`` with ``model.safetensors``: the fp32 file is kept as
``model_fp32.safetensors`` and ``model.safetensors`` (and ``epochs/epoch_<snapshot>``) are
rewritten with float16 floating tensors (integers unchanged; loading casts back to float32).
Writes ``OUT_DIR/run-<name>.tar`` (config, fp16 weights, snapshot, loss.csv, train_info, eval).
"""
from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

import torch

from diffaccel.mnist.checkpoint import atomic_save_tensors, read_tensors


def to_fp16(path: Path) -> None:
    tensors, meta = read_tensors(path)  # verified; the rewrite below gets its own content hash
    if all(not v.is_floating_point() or v.dtype == torch.float16 for v in tensors.values()):
        return
    fp32 = path.with_name(path.stem + "_fp32.safetensors")
    if not fp32.exists():
        path.replace(fp32)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    atomic_save_tensors(path, half, metadata=meta)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--snapshot", type=int, default=5)
    ap.add_argument("--convert-only", action="store_true")
    ap.add_argument("--names", nargs="*", default=None, help="runs whose weights travel (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for run in sorted(p for p in args.runs.iterdir() if p.is_dir()):
        snap = run / "epochs" / f"epoch_{args.snapshot:03d}.safetensors"
        done = (run / "model.safetensors").exists()
        if done and (args.names is None or run.name in args.names):
            to_fp16(run / "model.safetensors")
            if snap.exists():
                to_fp16(snap)
        if args.convert_only:
            continue
        with tarfile.open(args.out / f"run-{run.name}.tar", "w") as tar:
            for rel in ("config.json", "loss.csv", "train_info.json", "eval.json", "eval_ddpm300.json", "train.log"):
                if (run / rel).exists():
                    tar.add(run / rel, arcname=f"{run.name}/{rel}")
            if done and (args.names is None or run.name in args.names):
                tar.add(run / "model.safetensors", arcname=f"{run.name}/model.safetensors")
                if snap.exists():
                    tar.add(snap, arcname=f"{run.name}/epochs/{snap.name}")
        print(f"{run.name}: {'finished' if done else 'UNFINISHED'} -> {args.out / f'run-{run.name}.tar'}")


if __name__ == "__main__":
    main()
