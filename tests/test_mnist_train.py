"""Part B models and training: block shapes (SPEC Part B), resume after a kill, data parallel."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffaccel.mnist import models as M
from diffaccel.mnist import train as T
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
    with pytest.raises(ValueError, match="different config"):
        T.train(_tiny(epochs=1, lr=0.5), tmp_path, data_dir=mnist_dir, progress=False, resume=True)


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
