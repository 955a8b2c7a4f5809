"""``torchrun --nproc_per_node=2 -m diffaccel.cli mnist sample`` gives exactly the digits of one process.

Each rank samples a contiguous run of whole batches with ``start_index`` = its first index;
noise streams are per sample ``(seed, index)`` and every forward sees the batch it sees in one
process, so the concatenation is the single-process result bit for bit (gloo barrier, rank 0
writes FILE and removes the shards). Both runs use one thread: CPU kernels may block (and so
round) differently with the thread count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffaccel.mnist.models import UNet
from diffaccel.mnist.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _train_folder(root: Path) -> Path:
    """A random-init class-conditional DDPM in the training-output layout (config.json + model.safetensors)."""
    cfg = TrainConfig(task="ddpm", conditioning="class", hidden=4)
    torch.manual_seed(0)
    model = UNet(cfg.model_config())
    # Non-trivial BatchNorm statistics so the samples depend on every part of the network.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"train_config": asdict(cfg),
                                                  "model_config": cfg.model_config().to_dict()}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    return root


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_ranks_equal_one_process(tmp_path):
    model = _train_folder(tmp_path / "run")
    # 7 samples in batches of 2: rank 0 gets [0, 4), rank 1 the uneven [4, 7); labels cycle 3 1 4
    # over the whole index range. (--num-samples, not --n: torchrun's parser rejects "--n" anywhere
    # as an ambiguous abbreviation.)
    args = ["mnist", "sample", "--model", str(model), "--labels", "3", "1", "4", "--num-samples", "7",
            "--batch-size", "2", "--num-steps", "5", "--seed", "11", "--no-progress"]
    single, sharded = tmp_path / "single.safetensors", tmp_path / "sharded.safetensors"
    _run([sys.executable, "-m", "diffaccel.cli", *args, "--out", str(single)], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          "-m", "diffaccel.cli", *args, "--out", str(sharded)], tmp_path)
    a, b = load_file(str(single)), load_file(str(sharded))
    assert a["samples"].shape == (7, 1, 28, 28)
    assert torch.equal(a["labels"], b["labels"]) and a["labels"].tolist() == [3, 1, 4, 3, 1, 4, 3]
    assert torch.equal(a["samples"], b["samples"])
    assert not torch.equal(a["samples"][0], a["samples"][3])  # same label, different noise stream
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "sharded.safetensors", "single.safetensors"]
