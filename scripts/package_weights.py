"""Copy a finished training folder into the shipped weights with a model card.

    python scripts/package_weights.py RUN_DIR NAME --command "diffaccel mnist train ..." [--epochs 1 5] [--eval EVAL.json]

Writes ``diffaccel/weights/mnist/NAME.safetensors``, ``NAME.loss.csv`` (loss per batch), ``NAME.json`` (train/model config, training
info, data checksum, eval numbers) and ``NAME.md`` (the model card), plus ``NAME.epoch<k>.safetensors``
snapshots for the figures "after epoch k". Refuses an unfinished run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from diffaccel._sysinfo import cpu_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--command", required=True, help="the exact command that trained it")
    ap.add_argument("--epochs", type=int, nargs="*", default=[], help="snapshots to ship too")
    ap.add_argument("--eval", type=Path, default=None, help="JSON from `diffaccel mnist eval --json`")
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    ap.add_argument("--dest", type=Path, default=ROOT / "diffaccel" / "weights" / "mnist")
    ap.add_argument("--machine", default=None,
                    help="where it was trained (default: this machine's CPU, as a 2-core VM)")
    args = ap.parse_args()

    run = args.run_dir
    info_path = run / "train_info.json"
    if not (run / "model.safetensors").exists() or not info_path.exists():
        raise SystemExit(f"{run} is not a finished run (no model.safetensors / train_info.json)")
    cfg = json.loads((run / "config.json").read_text())
    info = json.loads(info_path.read_text())
    sums = (args.data_dir / "SHA256SUMS.raw").read_text() if (args.data_dir / "SHA256SUMS.raw").exists() else ""
    data_sha = hashlib.sha256(sums.encode()).hexdigest()[:16] if sums else "unknown"
    ev = json.loads(args.eval.read_text()) if args.eval else {}
    dest = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model.safetensors", dest / f"{args.name}.safetensors")
    shutil.copyfile(run / "loss.csv", dest / f"{args.name}.loss.csv")
    for k in args.epochs:
        shutil.copyfile(run / "epochs" / f"epoch_{k:03d}.safetensors", dest / f"{args.name}.epoch{k}.safetensors")
    meta = {**cfg, "info": {**info, "command": args.command, "mnist_sha256sums_raw_digest": data_sha,
                            "epochs_shipped": args.epochs, "eval": ev}}
    (dest / f"{args.name}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tc = cfg["train_config"]
    lines = [
        f"# MNIST model card: `{args.name}`", "",
        f"- **What**: {tc['task']} UNet (SPEC Part B), conditioning `{tc['conditioning']}`, D = {tc['hidden']}.",
        f"- **Command**: `{args.command}`",
        f"- **Config**: batch {tc['batch_size']}, Adam lr {tc['lr']}, {tc['epochs']} epochs, "
        f"ExponentialLR decay {'on' if tc['lr_decay'] else 'off'}, seed {tc['seed']}"
        + (f", T = {tc['num_timesteps']}, p_uncond = {tc['p_uncond']}" if tc["task"] == "ddpm" else "")
        + (f", sigma = {tc['sigma']}" if tc["task"] == "denoiser" else "") + ".",
        f"- **Data**: the 60,000 MNIST training digits; SHA-256 of `SHA256SUMS.raw` (decompressed IDX checksums) "
        f"digest `{data_sha}`.",
        (f"- **Machine**: {args.machine}; {info['machine']}." if args.machine else
         f"- **Machine**: {cpu_model()}, 2-core VM; {info['machine']} (shared with other jobs while training, so "
         "wall time is an upper bound)."),
        f"- **Wall time**: {info['wall_time_s']} s for {info['steps']} steps.",
        f"- **Final loss**: last batch {info['final_loss']:.5f}, mean of the last epoch {info['final_epoch_mean_loss']:.5f}.",
        f"- **Snapshots shipped**: after epochs {args.epochs or 'none'} (for the figures).",
    ]
    if ev:
        lines.append(f"- **Eval**: `{json.dumps(ev)}`")
    from diffaccel.mnist.train import PRESETS

    full = any(all(tc.get(k) == v for k, v in pre.items()) for pre in PRESETS.values())
    with open(dest / f"{args.name}.safetensors", "rb") as f:
        header = f.read(8 + int.from_bytes(f.read(8), "little"))
    if full:
        lines += ["", "This is the course's configuration (the `--preset` defaults: D, batch, learning rate, epochs)."]
    else:
        lines += ["", "This is a CPU-trainable configuration (smaller D / fewer epochs than the course's), chosen so the "
                  "weights could be trained on a 2-core CPU; the full configs are `--preset` defaults and need a GPU."]
    if b'"F16"' in header:
        lines += ["Weights are stored as float16 (half the file size); loading casts them to float32, and the eval "
                  "numbers above were measured on these float16 weights."]
    lines.append("")
    (dest / f"{args.name}.md").write_text("\n".join(lines))
    print(f"packaged {args.name} -> {dest}")


if __name__ == "__main__":
    main()
