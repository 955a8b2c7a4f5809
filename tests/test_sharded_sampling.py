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


# ----------------------------------------------------------------------------- the library function
def test_shard_range_splits_whole_batches_in_rank_order():
    from diffaccel.errors import ArgumentError
    from diffaccel.mnist.distributed import shard_range

    for n, bs, world in [(7, 2, 2), (100, 8, 3), (5, 10, 4), (64, 16, 4), (1, 1, 1), (0, 3, 2)]:
        ranges = [shard_range(n, bs, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in rank order
        assert all(s % bs == 0 for s, _ in ranges)  # every shard starts on a batch boundary...
        assert all((e - s) % bs == 0 or e == n for s, e in ranges)  # ...and holds whole batches
    assert [shard_range(7, 2, r, 2) for r in (0, 1)] == [(0, 4), (4, 7)]
    with pytest.raises(ArgumentError, match="rank"):
        shard_range(7, 2, 2, 2)
    with pytest.raises(ArgumentError, match="batch_size"):
        shard_range(7, 0, 0, 1)


def test_rank_world_from_torchrun_environment(monkeypatch):
    from diffaccel.mnist.distributed import local_device, rank_world

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_world() == (0, 1)
    assert local_device("cuda") == torch.device("cuda")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_world() == (3, 4)
    assert local_device("cuda") == torch.device("cuda", 1) and local_device("cuda:0") == torch.device("cuda", 0)
    assert local_device("cpu") == torch.device("cpu")


def _rank_main(rank: int, world: int, run_dir: str, init_file: str, out_dir: str) -> None:
    """One process of a 2-process gloo job (spawned by the test below)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from diffaccel.mnist.distributed import sample_distributed
    from diffaccel.mnist.pretrained import load_pretrained

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = load_pretrained(run_dir)
        x = sample_distributed(model, torch.tensor([3, 1, 4, 1, 5, 9, 2]), scratch=Path(out_dir) / ".lib",
                               batch_size=2, num_steps=4, seed=5)
        torch.save({"x": x}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_sample_distributed_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    from diffaccel.mnist.distributed import sample_distributed
    from diffaccel.mnist.pretrained import load_pretrained
    from diffaccel.mnist.sampling import sample

    run_dir = _train_folder(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_rank_main, args=(2, str(run_dir), str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_pretrained(str(run_dir))
        single = sample(model, labels, num_steps=4, seed=5, batch_size=2)
        plain = sample_distributed(model, labels, scratch=out / ".unused", batch_size=2, num_steps=4, seed=5)
    finally:
        torch.set_num_threads(threads)
    got0, got1 = (torch.load(out / f"rank{r}.pt")["x"] for r in (0, 1))
    assert got1 is None and got0.shape == (7, 1, 28, 28)
    assert torch.equal(got0, single) and torch.equal(plain, single)  # bit for bit
    assert sorted(p.name for p in out.iterdir()) == ["rank0.pt", "rank1.pt"]  # shards removed
