"""Part B models and training: block shapes (SPEC Part B), resume after a kill, data parallel."""
import csv
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffaccel.mnist import models as M
from diffaccel.mnist import train as T
from diffaccel.errors import ArgumentError, CheckpointError, FileFormatError
from diffaccel.mnist.checkpoint import load_tensors

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("d", [4, 7])
def test_block_shapes(d):
    x = torch.randn(3, 1, 28, 28)
    assert M.ConvBlock(1, d)(x).shape == (3, d, 28, 28)
    assert M.Conv(1, d)(x).shape == (3, d, 28, 28)
    assert M.DownConv(1, d)(x).shape == (3, d, 14, 14)
    assert M.DownBlock(1, d)(x).shape == (3, d, 14, 14)
    h = torch.randn(3, 2 * d, 7, 7)
    assert M.UpConv(2 * d, d)(h).shape == (3, d, 14, 14)
    assert M.UpBlock(2 * d, d)(h).shape == (3, d, 14, 14)
    f = M.Flatten()(h)
    assert f.shape == (3, 2 * d, 1, 1)
    assert M.Unflatten(2 * d)(f).shape == (3, 2 * d, 7, 7)
    assert M.FCBlock(1, 2 * d)(torch.rand(3, 1)).shape == (3, 2 * d)
    # every op except Flatten ends in BatchNorm2d + GELU
    for blk in (M.Conv(1, d), M.DownConv(1, d), M.UpConv(d, d), M.Unflatten(d)):
        assert isinstance(blk[-2], torch.nn.BatchNorm2d) and isinstance(blk[-1], torch.nn.GELU)


@pytest.mark.parametrize("cond,injection", [("none", "add"), ("time", "add"), ("time", "mul"), ("class", "add")])
def test_unet_forward_and_conditioning(cond, injection):
    torch.manual_seed(0)
    net = M.UNet(M.UNetConfig(hidden=8, conditioning=cond, injection=injection)).eval()
    x = torch.randn(4, 1, 28, 28)
    t = torch.rand(4)
    c = M.one_hot(torch.tensor([0, 1, 2, -1]), 4)
    y = net(x, t, c)
    assert y.shape == x.shape
    if cond != "none":  # the output depends on t
        assert (y - net(x, t * 0.1, c)).abs().max() > 1e-6
    if cond == "class":  # ... and on c; all-zero c is the null class
        assert (y - net(x, t, M.one_hot(None, 4))).abs().max() > 1e-6
        with pytest.raises(ValueError, match="class-conditioned"):
            net(x, t)
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        net(torch.randn(2, 1, 32, 32), t[:2], c[:2])


def test_one_hot_errors():
    assert M.one_hot(torch.tensor([3, -1]), 2).tolist()[1] == [0.0] * 10
    with pytest.raises(ValueError, match="labels must be in"):
        M.one_hot(torch.tensor([10]), 1)


def test_config_errors():
    with pytest.raises(ValueError, match="task"):
        T.TrainConfig(task="gan")
    with pytest.raises(ValueError, match="p_uncond"):
        T.TrainConfig(p_uncond=1.5)
    with pytest.raises(ValueError, match="unknown preset"):
        T.preset("nope")
    with pytest.raises(ValueError, match="conditioning"):
        M.UNetConfig(conditioning="text")


def _tiny(**kw):
    base = dict(hidden=4, batch_size=16, epochs=2, train_subset=96, seed=3, checkpoint_every=2)
    return T.preset("ddpm_class", **{**base, **kw})


def _losses(path):
    with open(path) as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_resume_after_kill_gives_same_weights(tmp_path, mnist_dir, monkeypatch):
    cfg = _tiny()
    ref_dir, cut_dir = tmp_path / "unbroken", tmp_path / "killed"
    T.train(cfg, ref_dir, data_dir=mnist_dir, progress=False)

    real_loss, calls = T.training_loss, {"n": 0}

    def dying_loss(*a, **k):  # "kill" the run in the middle of epoch 2, after a mid-epoch checkpoint
        calls["n"] += 1
        if calls["n"] == 6 + 3:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(T, "training_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, cut_dir, data_dir=mnist_dir, progress=False)
    monkeypatch.setattr(T, "training_loss", real_loss)
    assert not (cut_dir / "model.safetensors").exists()
    T.train(cfg, cut_dir, data_dir=mnist_dir, progress=False, resume=True)

    a, b = load_tensors(ref_dir / "model.safetensors"), load_tensors(cut_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(ref_dir / "loss.csv") == _losses(cut_dir / "loss.csv")
    # no temp files left behind by the atomic writes
    assert not [p for p in cut_dir.rglob("*.tmp")]


def test_resume_rejects_other_config(tmp_path, mnist_dir):
    T.train(_tiny(epochs=1), tmp_path, data_dir=mnist_dir, progress=False)
    with pytest.raises(CheckpointError, match="different config"):
        T.train(_tiny(epochs=1, lr=0.5), tmp_path, data_dir=mnist_dir, progress=False, resume=True)


# ----------------------------------------------------------------------------- checkpoints commit as one
def _small(**kw):  # 2 epochs of 2 steps, a checkpoint after every step
    return _tiny(**{**dict(train_subset=32, checkpoint_every=1), **kw})


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist_dir):
    """A finished small run: its folder (copy it before changing anything) and its final weights."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("finished") / "run"
        T.train(_small(), folder, data_dir=mnist_dir, progress=False)
    finally:
        torch.set_num_threads(n)
    return folder, load_tensors(folder / "model.safetensors")


def _same_weights(folder, ref):
    got = load_tensors(folder / "model.safetensors")
    return got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def _tmp_files(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


class _KillRecorder:
    """Stands in for ``os`` inside diffaccel.mnist.checkpoint, which does every file operation of
    a save (create, write, fsync, rename). After each one — and halfway through each data write —
    it copies the run folder: exactly what a kill at that instant leaves on disk."""

    def __init__(self, folder, snaps):
        self.folder, self.snaps, self.count = folder, snaps, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def _snap(self, what):
        self.count += 1
        dest = self.snaps / f"{self.count:04d}-{what}"
        if self.folder.exists():
            shutil.copytree(self.folder, dest)
        else:
            dest.mkdir()

    def open(self, *a, **k):
        fd = os.open(*a, **k)
        self._snap("open")
        return fd

    def write(self, fd, data):
        half = len(data) // 2
        n = os.write(fd, data[:half])
        self._snap("half-written")
        return n if n < half else n + os.write(fd, data[half:])

    def fsync(self, fd):
        os.fsync(fd)
        self._snap("fsync")

    def replace(self, src, dst):
        os.replace(src, dst)
        self._snap("rename")

    def unlink(self, path):
        os.unlink(path)


def _disk_state(folder):
    """What resuming depends on: every file but the temporary files of interrupted writes."""
    return tuple(sorted((str(p.relative_to(folder)), hashlib.sha256(p.read_bytes()).hexdigest())
                        for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".tmp")))


def test_a_kill_at_every_write_boundary_resumes_to_the_same_weights(tmp_path, mnist_dir, finished_run,
                                                                      monkeypatch, one_thread):
    """Kill the run after every file operation of every save (and in the middle of every write):
    resuming must give the unbroken run's final weights and losses exactly, or refuse clearly."""
    from diffaccel.mnist import checkpoint as C

    ref_dir, ref = finished_run
    run, snaps = tmp_path / "run", tmp_path / "snaps"
    snaps.mkdir()
    rec = _KillRecorder(run, snaps)
    monkeypatch.setattr(C, "os", rec)
    T.train(_small(), run, data_dir=mnist_dir, progress=False)
    monkeypatch.undo()
    assert _same_weights(run, ref)  # recording changed nothing
    kills = sorted(snaps.iterdir())
    assert len(kills) == rec.count > 40
    # Snapshots that differ only in the temporary file of the write in flight resume alike (the
    # temporary files are deleted first): resume one of each, the one with a temporary file left.
    states = {}
    for snap in kills:
        key = _disk_state(snap)
        if key not in states or _tmp_files(snap):
            states[key] = snap
    assert len(states) >= 14
    for snap in states.values():
        try:
            T.train(_small(), snap, data_dir=mnist_dir, progress=False, resume=True)
        except CheckpointError as e:  # refusing is allowed only where nothing was committed yet
            assert not (snap / T.CHECKPOINT).exists(), (snap.name, e)
            continue
        assert _same_weights(snap, ref), snap.name
        assert _losses(snap / "loss.csv") == _losses(ref_dir / "loss.csv"), snap.name
        assert not _tmp_files(snap), snap.name


def _copy(finished_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished_run[0], folder)
    return folder


def test_a_corrupt_checkpoint_is_refused_and_the_weights_kept(tmp_path, mnist_dir, finished_run):
    run = _copy(finished_run, tmp_path)
    raw = bytearray((run / T.CHECKPOINT).read_bytes())
    raw[-20] ^= 0x10  # one bit of one tensor's data (the data section ends the file)
    (run / T.CHECKPOINT).write_bytes(bytes(raw))
    model_before = (run / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="corrupt.*SHA-256"):
        T.train(_small(), run, data_dir=mnist_dir, progress=False, resume=True)
    assert (run / "model.safetensors").read_bytes() == model_before
    (run / T.CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        T.train(_small(), run, data_dir=mnist_dir, progress=False, resume=True)


def test_an_existing_run_needs_resume_or_overwrite(tmp_path, mnist_dir, finished_run, one_thread, capsys):
    run = _copy(finished_run, tmp_path)
    model_before = (run / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match=r"already holds a training run.*resume=True.*overwrite=True"):
        T.train(_small(epochs=1), run, data_dir=mnist_dir, progress=False)
    assert (run / "model.safetensors").read_bytes() == model_before
    with pytest.raises(ArgumentError, match="resume=True and overwrite=True"):
        T.train(_small(epochs=1), run, data_dir=mnist_dir, progress=False, resume=True, overwrite=True)
    assert (run / "epochs" / "epoch_002.safetensors").exists()
    T.train(_small(epochs=1), run, data_dir=mnist_dir, progress=False, overwrite=True)
    assert sorted(p.name for p in (run / "epochs").iterdir()) == ["epoch_001.safetensors"]  # the old run is gone
    assert len(_losses(run / "loss.csv")) == 2
    # Unrelated files in the folder are never touched; resume=True on a folder without a run starts one.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "notes.txt").write_text("mine")
    (fresh / ".draft.0123456789ab.tmp").write_text("mine too")
    T.train(_small(epochs=1), fresh, data_dir=mnist_dir, progress=False, resume=True)
    assert f"resume: no checkpoint in {fresh} yet: starting a new run" in capsys.readouterr().out  # said, not silent
    assert (fresh / "notes.txt").read_text() == "mine" and (fresh / "model.safetensors").exists()
    assert (fresh / ".draft.0123456789ab.tmp").read_text() == "mine too"


def test_an_incomplete_run_is_refused_never_restarted(tmp_path, mnist_dir, finished_run, one_thread):
    from diffaccel.mnist import checkpoint as C

    run = _copy(finished_run, tmp_path)
    (run / T.CHECKPOINT).unlink()  # the state file missing
    with pytest.raises(CheckpointError, match="no checkpoint.safetensors to continue from.*overwrite=True"):
        T.train(_small(), run, data_dir=mnist_dir, progress=False, resume=True)

    tensors, state = C.load_checkpoint(finished_run[0] / T.CHECKPOINT)
    no_adam = {k: v for k, v in tensors.items() if not k.startswith("opt.")}
    C.save_checkpoint(run / T.CHECKPOINT, no_adam, state)  # well-formed, hash and all
    with pytest.raises(CheckpointError, match="no optimizer state"):
        T.train(_small(), run, data_dir=mnist_dir, progress=False, resume=True)

    C.save_checkpoint(run / T.CHECKPOINT, tensors, {})
    with pytest.raises(CheckpointError, match="lacks 'train_config'"):
        T.train(_small(), run, data_dir=mnist_dir, progress=False, resume=True)

    other = T.build_model(_small(hidden=8)).state_dict()
    C.save_checkpoint(run / T.CHECKPOINT, {**tensors, **{f"model.{k}": v for k, v in other.items()}}, state)
    with pytest.raises(CheckpointError, match="weights of another model"):
        T.train(_small(), run, data_dir=mnist_dir, progress=False, resume=True)

    C.save_checkpoint(run / T.CHECKPOINT, {k: v for k, v in tensors.items() if not k.startswith("loss.")}, state)
    with pytest.raises(CheckpointError, match="loss history"):
        T.train(_small(), run, data_dir=mnist_dir, progress=False, resume=True)

    # The loss history lives in the checkpoint: a garbage loss.csv is rewritten from it, never emptied.
    C.save_checkpoint(run / T.CHECKPOINT, tensors, state)
    (run / "loss.csv").write_text("step,epoch,loss\nnot,a,number\n\x00\x01")
    T.train(_small(), run, data_dir=mnist_dir, progress=False, resume=True)
    assert _losses(run / "loss.csv") == _losses(finished_run[0] / "loss.csv")
    assert _same_weights(run, finished_run[1])


def test_files_keep_the_users_umask(tmp_path):
    from diffaccel.mnist import checkpoint as C

    old = os.umask(0o027)
    try:
        C.atomic_save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(2)})
        C.atomic_write_json(tmp_path / "c.json", {"a": 1})
        os.umask(0o002)
        C.atomic_save_tensors(tmp_path / "w2.safetensors", {"a": torch.zeros(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "w2.safetensors").stat().st_mode & 0o777 == 0o664


def test_weights_files_are_verified_on_load(tmp_path):
    from diffaccel.mnist import checkpoint as C

    C.atomic_save_tensors(tmp_path / "w.safetensors", {"a": torch.arange(6.0), "b": torch.ones(2, dtype=torch.bool)})
    assert torch.equal(C.load_tensors(tmp_path / "w.safetensors")["a"], torch.arange(6.0))
    raw = bytearray((tmp_path / "w.safetensors").read_bytes())
    raw[-3] ^= 0x40
    (tmp_path / "w.safetensors").write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="corrupt"):
        C.load_tensors(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="no weights file"):
        C.load_tensors(tmp_path / "missing.safetensors")


def test_epoch_order_depends_only_on_seed_and_epoch():
    """The one batching rule (SPEC Part B): shuffled, drop_last, seeded by (seed, epoch)."""
    n, b = 50, 8
    g1, first = T.epoch_batches(n, b, seed=1, epoch=0)
    _, again = T.epoch_batches(n, b, seed=1, epoch=0)
    assert first.shape == (6, 8) and torch.equal(first, again)
    assert len(first.flatten().unique()) == 48  # no index twice in an epoch
    assert not torch.equal(first, T.epoch_batches(n, b, seed=1, epoch=3)[1])
    assert not torch.equal(first, T.epoch_batches(n, b, seed=2, epoch=0)[1])
    # The generator goes on to draw the noise: the same draws for the same (seed, epoch).
    g2, _ = T.epoch_batches(n, b, seed=1, epoch=0)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
    with pytest.raises(ArgumentError, match="batch_size must be a positive int"):
        T.epoch_batches(10, 0, 0, 0)


def test_full_train_load_is_fast_and_an_epoch_covers_every_index(mnist_dir):
    from diffaccel.mnist.data import mnist_tensors

    t0 = time.perf_counter()
    x, y = mnist_tensors("train", mnist_dir)
    assert time.perf_counter() - t0 < 5.0
    n, b = x.shape[0], 256
    t0 = time.perf_counter()
    _, batches = T.epoch_batches(n, b, seed=0, epoch=0)
    assert time.perf_counter() - t0 < 5.0
    assert batches.shape == (n // b, b) == (234, 256)  # drop_last: every step a full batch
    seen = batches.flatten()
    assert len(seen.unique()) == 234 * b and 0 <= seen.min() and seen.max() < n  # each index at most once
    assert not torch.equal(seen, torch.arange(234 * b))  # shuffled
    ib = batches[7]
    assert torch.equal(x[ib], x.index_select(0, ib)) and torch.equal(y[ib], y.index_select(0, ib))


@pytest.mark.parametrize("b,world", [(21, 3), (32, 2), (16, 1), (12, 4)])
def test_shards_are_disjoint_slices_of_one_global_batch(b, world):
    _, batches = T.epoch_batches(100, b, seed=3, epoch=0)
    for batch in batches:
        parts = [batch[T.rank_slice(r, world, b)] for r in range(world)]
        assert len({len(p) for p in parts}) == 1  # every rank runs the same step shape (DDP lockstep)
        assert torch.equal(torch.cat(parts), batch)  # together: exactly the single-process batch
        assert len(torch.cat(parts).unique()) == b  # disjoint


def test_batching_validates_arguments():
    with pytest.raises(ArgumentError, match="batch_size must be a positive int"):
        T.epoch_batches(10, 0, seed=0, epoch=0)
    with pytest.raises(ArgumentError, match="0 <= rank < world"):
        T.rank_slice(2, 2, 8)
    with pytest.raises(ArgumentError, match="divisible by the number of processes 3"):
        T.rank_slice(0, 3, 8)


@pytest.mark.parametrize("preset", ["denoiser", "pure_noise", "ddpm_time", "flow_time", "flow_class"])
def test_every_objective_learns(tmp_path, mnist_dir, preset):
    """A few steps on one batch lower the loss: each objective is wired to its target."""
    cfg = T.preset(preset, hidden=8, batch_size=32, epochs=1, train_subset=32, max_steps_per_epoch=1, lr=3e-3)
    torch.manual_seed(0)
    model = T.build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    from diffaccel.mnist.data import mnist_tensors
    from diffaccel.schedules import ddpm_linear_schedule

    x, y = mnist_tensors("train", root=mnist_dir)
    x, y = x[:32], y[:32]
    abar = ddpm_linear_schedule(cfg.num_timesteps)[2]
    losses = []
    for _ in range(30):
        loss = T.training_loss(model, cfg, x, y, torch.Generator().manual_seed(1), abar)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_data_parallel_matches_single_process(tmp_path, mnist_dir):
    """2 CPU processes (gloo) follow the 1-process loss trajectory with the same global batch."""
    args = ["mnist", "train", "--preset", "ddpm_class", "--hidden", "4", "--train-subset", "128",
            "--batch-size", "32", "--epochs", "1", "--max-steps-per-epoch", "4", "--seed", "5",
            "--data-dir", str(mnist_dir), "--no-progress", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "diffaccel.cli", *args, "--out", str(single)], check=True, env=env,
                   cwd=ROOT, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                    "-m", "diffaccel.cli", *args, "--out", str(multi)], check=True, env=env, cwd=ROOT, timeout=300)
    a, b = _losses(single / "loss.csv"), _losses(multi / "loss.csv")
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=1e-3, abs=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["ddpm_class", "flow_time", "denoiser"])
def test_cuda_training_follows_the_cpu_trajectory(tmp_path, mnist_dir, preset, monkeypatch):
    """Same seed, same data order and noise (drawn by the CPU generator): the CUDA run's losses
    track the CPU run's (TF32 off, so only float32 summation order differs)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = T.preset(preset, hidden=8, batch_size=32, epochs=2, train_subset=256, max_steps_per_epoch=4, seed=3)
    T.train(cfg, tmp_path / "cpu", data_dir=mnist_dir, progress=False)
    T.train(cfg, tmp_path / "cuda", data_dir=mnist_dir, progress=False, device="cuda")
    cpu, gpu = _losses(tmp_path / "cpu" / "loss.csv"), _losses(tmp_path / "cuda" / "loss.csv")
    assert len(gpu) == len(cpu) == 8
    torch.testing.assert_close(torch.tensor(gpu), torch.tensor(cpu), rtol=5e-2, atol=1e-3)
    w = load_tensors(tmp_path / "cuda" / "model.safetensors")
    assert all(v.device.type == "cpu" for v in w.values())
