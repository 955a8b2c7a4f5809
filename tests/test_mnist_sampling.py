"""Part B sampling: the fast sampler equals the course-style loop, noise is per sample,
fewer-step samplers, flow matching, the pretrained registry, BN folding."""
import json

import pytest
import torch

from diffaccel.mnist import pretrained as P
from diffaccel.mnist import sampling as S
from diffaccel.mnist import inference as I
from diffaccel.mnist.inference import fold_batchnorm
from diffaccel.mnist.models import UNet, UNetConfig, one_hot
from diffaccel.mnist.train import preset, train


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name in ("ddpm_class", "ddpm_time", "flow_class"):
        cfg = preset(name, hidden=4, batch_size=16, epochs=1, train_subset=64, max_steps_per_epoch=3, seed=0)
        train(cfg, root / name, data_dir=mnist_dir, progress=False)
        runs[name] = root / name
    return runs


def test_fast_sampler_equals_course_loop(tiny_runs):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    labels = [3, 8, 0]
    fast = S.sample(m, labels=labels, guidance_scale=5.0, seed=7)
    naive = S.sample_naive(m, labels, guidance_scale=5.0, seed=7)
    assert fast.shape == (3, 1, 28, 28)
    assert fast.min() >= 0 and fast.max() <= 1
    torch.testing.assert_close(fast, naive, atol=2e-4, rtol=0)
    other_seed = S.sample(m, labels=labels, guidance_scale=5.0, seed=8)
    assert (other_seed - fast).abs().max() > 1e-2


def test_time_conditioned_course_loop(tiny_runs):
    """The course loop of the time-conditioned model (one UNet call a step) gives sample()'s digits."""
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_time"])
    fast = S.sample(m, n=3, seed=7)
    naive = S.sample_naive(m, n=3, seed=7)
    torch.testing.assert_close(fast, naive, atol=2e-4, rtol=0)
    assert (S.sample_naive(m, n=3, seed=8) - naive).abs().max() > 1e-2
    with pytest.raises(TypeError, match="n must be an int"):
        S.sample_naive(m, seed=7)
    with pytest.raises(ValueError, match="labels must be given"):
        S.sample_naive(P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"]))


def test_guided_chunks_equal_course_loop(tiny_runs, monkeypatch):
    """Chunks of 2 + 1 samples (the guided forward per chunk) give the course loop's digits."""
    monkeypatch.setattr(S, "GUIDED_CHUNK", 2)
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    labels = [3, 8, 0]
    fast = S.sample(m, labels=labels, guidance_scale=5.0, seed=7, compile=False)
    naive = S.sample_naive(m, labels, guidance_scale=5.0, seed=7)
    torch.testing.assert_close(fast, naive, atol=2e-4, rtol=0)


def _trained_net(injection="add", hidden=8):
    torch.manual_seed(0)
    net = UNet(UNetConfig(hidden=hidden, conditioning="class", injection=injection)).train()
    with torch.no_grad():  # make the class matter as much as in a trained model
        for fc in (net.fc1_c, net.fc2_c):
            fc[2].weight.mul_(20.0)
    x, t, c = torch.rand(8, 1, 28, 28), torch.rand(8), one_hot(torch.arange(8) % 10, 8)
    with torch.no_grad():
        for _ in range(3):
            net(x, t, c)  # non-trivial BatchNorm statistics
    return net.eval()


@pytest.mark.parametrize("name,injection", [("ddpm_class", "add"), ("flow_class", "add"), ("ddpm_class", "mul")])
def test_guided_unet_is_two_calls(name, injection):
    """GuidedUNet(x, t, c, g) == eps_u + g (eps_c - eps_u) of the shipped (unfolded) UNet, to
    float32 rounding (both shipped models inject time by "add"; "mul" is that net rewired)."""
    import copy

    net = copy.deepcopy(P.load_pretrained(name).model).eval()
    net.config.injection = injection
    g = I.guided_unet(net)
    torch.manual_seed(1)
    x, t, c = torch.randn(5, 1, 28, 28), torch.rand(5), one_hot(torch.tensor([0, 3, 9, 9, 4]), 5)
    with torch.no_grad():
        ec, eu = net(x, t, c), net(x, t, torch.zeros_like(c))
        got = g(x, t, c, 5.0)
        tol = 1e-5 * (eu + 5.0 * (ec - eu)).abs().max()  # float32 rounding of the output's size
        assert (ec - eu).abs().max() > 100 * tol  # the class matters, so equality to tol can fail
        torch.testing.assert_close(got, eu + 5.0 * (ec - eu), atol=tol, rtol=0)
        torch.testing.assert_close(g(x, t, c, 1.0), ec, atol=tol, rtol=0)
        torch.testing.assert_close(g(x, t, c, 0.0), eu, atol=tol, rtol=0)
        assert (g(x, t, c.flip(0), 5.0) - got).abs().max() > 100 * tol
        assert (g(x, t, c, 4.0) - got).abs().max() > 100 * tol
    with pytest.raises(ValueError, match="class-conditioned"):
        I.GuidedUNet(fold_batchnorm(UNet(UNetConfig(hidden=4, conditioning="time"))))
    with pytest.raises(ValueError, match="fold"):
        I.GuidedUNet(_trained_net())


def test_gelu_rational_matches_erf_gelu():
    x = torch.linspace(-12, 12, 200_001)
    ref = torch.nn.functional.gelu(x.double())
    assert (I.gelu_rational(x).double() - ref).abs().max() < 2e-6
    assert (I.gelu_rational(x) - torch.nn.functional.gelu(x, approximate="tanh")).abs().max() > 1e-4


def test_compiled_guided_unet_falls_back_to_eager(monkeypatch):
    net = _trained_net(hidden=4)
    x, t, c = torch.randn(3, 1, 28, 28), torch.rand(3), one_hot(torch.tensor([1, 2, 3]), 3)

    def broken_compile(*args, **kwargs):
        def run(*a):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    g = I.guided_unet(net, compile=True)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="torch.compile unavailable"):
        got = g(x, t, c, 5.0)
    assert g.compiled_ok is False
    with torch.no_grad():
        torch.testing.assert_close(got, g.module(x, t, c, 5.0), atol=0, rtol=0)


def test_compiled_guided_sampling_matches_eager(tiny_runs):
    pytest.importorskip("torch._inductor")
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    eager = S.sample(m, labels=[3, 8], num_steps=4, seed=2, compile=False)
    comp = S.sample(m, labels=[3, 8], num_steps=4, seed=2, compile=True)
    if not m.guided_model(compile=True).compiled_ok:
        pytest.skip("torch.compile is unavailable here (the sampler fell back to eager)")
    torch.testing.assert_close(comp, eager, atol=1e-4, rtol=0)


def test_winograd_sampling_matches_course_loop(tiny_runs, monkeypatch):
    """The CPU sampler's 3x3 convolutions by Winograd (made eligible at this tiny width): the
    course loop's digits within float32 noise, and a sample still independent of its batch."""
    monkeypatch.setattr(I, "WINOGRAD_MIN_CHANNELS", 1)
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    net = m.guided_model(compile=False)
    assert any(isinstance(mod, I.WinogradConv3x3) for mod in net.modules())
    labels = [3, 8, 0, 5, 1]
    fast = S.sample(m, labels=labels, guidance_scale=5.0, seed=7, compile=False)
    naive = S.sample_naive(m, labels, guidance_scale=5.0, seed=7)
    torch.testing.assert_close(fast, naive, atol=2e-4, rtol=0)
    alone = S.sample(m, labels=[5], guidance_scale=5.0, seed=7, start_index=3, compile=False)
    torch.testing.assert_close(fast[3:4], alone, atol=1e-5, rtol=0)


def test_noise_is_per_sample(tiny_runs):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    full = S.sample(m, labels=[1, 2, 3, 4, 5], num_steps=10, seed=1, batch_size=2)
    alone = S.sample(m, labels=[4], num_steps=10, seed=1, start_index=3)
    torch.testing.assert_close(full[3:4], alone, atol=1e-6, rtol=0)


def test_strided_and_ddim(tiny_runs):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    assert S.ddpm_timesteps(300, 4) == [299, 199, 100, 0]
    assert S.ddpm_timesteps(300)[:2] == [299, 298] and len(S.ddpm_timesteps(300)) == 300
    seen = []
    S.sample(m, labels=[1], num_steps=6, sampler="ddim", callback=lambda d: seen.append(d["t"]))
    assert seen == S.ddpm_timesteps(300, 6)
    a = S.sample(m, labels=[1, 2], num_steps=6, sampler="ddim", seed=0)
    b = S.sample(m, labels=[1, 2], num_steps=6, sampler="ddim", seed=0)
    assert torch.equal(a, b)


def test_multistep_solvers_do_not_spend_an_evaluation_at_t0(tiny_runs):
    """DPM-Solver++ / UniPC evaluate at diffusers' "linspace" points (T-1 .. > 0) and land on x_0
    with their last update; DDPM/DDIM keep the course's strided schedule that ends at t = 0."""
    assert S.solver_timesteps(300, 5) == [299, 239, 179, 120, 60]
    assert S.solver_timesteps(300, 300) == list(range(299, -1, -1))
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    for sampler in ("dpmpp_2m", "dpmpp_2m_sde", "unipc"):
        seen = []
        S.sample(m, labels=[1], num_steps=5, sampler=sampler, callback=lambda d: seen.append((d["t"], d["t_prev"])))
        assert [t for t, _ in seen] == [299, 239, 179, 120, 60] and seen[-1][1] == -1, (sampler, seen)
    seen = []
    S.sample(m, labels=[1], num_steps=5, sampler="ddim", callback=lambda d: seen.append(d["t"]))
    assert seen[-1] == 0


def test_time_conditioned_ignores_guidance(tiny_runs):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_time"])
    x = S.sample(m, n=3, num_steps=5)
    assert x.shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="not class-conditional"):
        S.sample(m, labels=[1, 2])


def test_flow_euler_matches_manual_loop(tiny_runs):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["flow_class"])
    got = S.sample(m, labels=[2, 5], num_steps=8, guidance_scale=5.0, seed=4)
    noise = S.PerSampleNoise(4, range(2), (1, 28, 28))
    x = noise.draw()
    c = one_hot(torch.tensor([2, 5]), 2)
    with torch.no_grad():
        for i in range(8):
            t = torch.full((2,), i / 8)
            uc, uu = m.model(x, t, c), m.model(x, t, torch.zeros_like(c))
            x = x + (uu + 5.0 * (uc - uu)) / 8
    torch.testing.assert_close(got, x.clamp(0, 1), atol=1e-4, rtol=0)


def test_sample_errors(tiny_runs):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    with pytest.raises(ValueError, match="labels"):
        S.sample(m)
    with pytest.raises(ValueError, match="digits 0..9"):
        S.sample(m, labels=[11])
    with pytest.raises(ValueError, match="sampler"):
        S.sample(m, labels=[1], sampler="euler")
    with pytest.raises(ValueError, match="n=3 but 2 labels"):
        S.sample(m, labels=[1, 2], n=3)
    with pytest.raises(ValueError, match="seed"):
        S.sample(m, labels=[1], seed=-1)


def test_fold_batchnorm_is_exact():
    torch.manual_seed(0)
    net = UNet(UNetConfig(hidden=8, conditioning="class")).train()
    x, t, c = torch.rand(8, 1, 28, 28), torch.rand(8), one_hot(torch.arange(8) % 10, 8)
    with torch.no_grad():
        for _ in range(3):
            net(x, t, c)  # non-trivial running statistics
    net.eval()
    folded = fold_batchnorm(net)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x, t, c), net(x, t, c), atol=1e-5, rtol=1e-5)


def test_pretrained_registry(tiny_runs, tmp_path, monkeypatch):
    import shutil

    run = tiny_runs["ddpm_class"]
    shutil.copyfile(run / "model.safetensors", tmp_path / "digits.safetensors")
    shutil.copyfile(run / "epochs" / "epoch_001.safetensors", tmp_path / "digits.epoch1.safetensors")
    (tmp_path / "digits.json").write_text((run / "config.json").read_text())
    monkeypatch.setattr(P, "WEIGHTS_DIR", tmp_path)
    import diffaccel.mnist as mnist

    assert mnist.list_pretrained() == ["digits"]
    assert mnist.pretrained_epochs("digits") == [1]
    m = mnist.load_pretrained("digits")
    assert m.kind == "ddpm" and m.conditioning == "class" and m.alphas_cumprod.shape == (300,)
    x = mnist.sample(m, labels=[7], num_steps=4)
    assert x.shape == (1, 1, 28, 28)
    assert mnist.load_pretrained("digits", epoch=1).kind == "ddpm"
    with pytest.raises(ValueError, match="shipped"):
        mnist.load_pretrained("nope")
    with pytest.raises(ValueError, match="epoch 9"):
        mnist.load_pretrained("digits", epoch=9)
    (tmp_path / "digits.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a valid safetensors"):
        mnist.load_pretrained("digits")
    (tmp_path / "digits.json").write_text(json.dumps({"broken": True})[:-3])
    with pytest.raises(ValueError, match="not valid JSON"):
        mnist.load_pretrained("digits")


def test_bf16_precision_is_close_to_fp32(tiny_runs):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    a = S.sample(m, labels=[1, 2], num_steps=10, seed=3)
    b = S.sample(m, labels=[1, 2], num_steps=10, seed=3, precision="bf16")
    assert not torch.equal(a, b)  # the UNet really ran in bf16
    assert (a - b).abs().mean() < 0.05
    with pytest.raises(ValueError, match="precision"):
        S.sample(m, labels=[1], precision="fp8")


# ----------------------------------------------------------------------------- noise drawn up front
def test_draw_steps_equals_per_step_draws():
    a = S.PerSampleNoise(3, [0, 5, 9], (1, 28, 28))
    b = S.PerSampleNoise(3, [0, 5, 9], (1, 28, 28))
    steps = [a.draw().clone() for _ in range(4)]
    block = b.draw_steps(4)
    assert block.shape == (4, 3, 1, 28, 28) and block.is_contiguous()
    assert torch.equal(torch.stack(steps), block)
    with pytest.raises(ValueError, match="multiple of 16"):
        S.PerSampleNoise(0, [0], (1, 3, 3)).draw_steps(2)


@pytest.mark.parametrize("name,kw", [("ddpm_class", {}), ("ddpm_class", dict(num_steps=7, sampler="ddim")),
                                     ("ddpm_time", dict(num_steps=9)), ("flow_class", dict(num_steps=8))])
def test_up_front_noise_gives_the_same_digits(tiny_runs, monkeypatch, name, kw):
    """The CUDA loop's noise (drawn before the first step) is the per-step draws of the CPU loop."""
    m = P.MNISTDiffusion.from_train_dir(tiny_runs[name])
    args = dict(labels=[2, 7, 1]) if m.conditioning == "class" else dict(n=3)
    per_step = S.sample(m, seed=4, **args, **kw)
    monkeypatch.setattr(S, "NOISE_UP_FRONT", ("cpu", "cuda"))
    up_front = S.sample(m, seed=4, **args, **kw)
    torch.testing.assert_close(up_front, per_step, atol=1e-6, rtol=0)


def test_one_hot_encoding_and_errors():
    c = one_hot(torch.tensor([3, -1, 0]), 3)
    assert torch.equal(c, torch.tensor([[0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0], [0.0] * 10, [1.0] + [0.0] * 9]))
    assert torch.equal(one_hot(None, 2), torch.zeros(2, 10))
    with pytest.raises(ValueError, match="labels must be in"):
        one_hot(torch.tensor([10]), 1)
    with pytest.raises(ValueError, match="labels must be in"):
        one_hot(torch.tensor([-2]), 1)


def test_cuda_graph_needs_cuda(tiny_runs):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"])
    with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
        S.sample(m, labels=[1], cuda_graph=True)


# ----------------------------------------------------------------------------- GPU (issue 3 targets)
@pytest.mark.gpu
@pytest.mark.parametrize("name,kw", [("ddpm_class", {}), ("ddpm_class", dict(num_steps=10, sampler="ddim")),
                                     ("ddpm_class", dict(num_steps=10, sampler="dpmpp_2m")),
                                     ("ddpm_class", dict(num_steps=10, sampler="unipc")),
                                     ("ddpm_time", dict(num_steps=10, sampler="dpmpp_2m_sde")),
                                     ("flow_class", dict(num_steps=12)), ("flow_class", dict(num_steps=6, sampler="heun"))])
def test_cuda_sampling_never_syncs_and_graph_replays_the_same(tiny_runs, name, kw):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs[name]).to("cuda")
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    S.sample(m, labels=labels[:2], seed=1, **kw)  # warm-up: lazy CUDA/cuDNN initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device->host wait inside sample() raises
    try:
        eager = S.sample(m, labels=labels, seed=1, batch_size=4, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # The capture itself synchronises once (torch.cuda.graph does); replays never do.
    captured = S.sample(m, labels=labels, seed=1, batch_size=4, cuda_graph=True, **kw)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        graphed = S.sample(m, labels=labels, seed=1, batch_size=4, cuda_graph=True, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert eager.device.type == "cuda" and eager.shape == (10, 1, 28, 28)
    torch.testing.assert_close(captured, eager, atol=1e-5, rtol=0)  # same kernels, replayed
    torch.testing.assert_close(graphed, eager, atol=1e-5, rtol=0)
    cpu = S.sample(P.MNISTDiffusion.from_train_dir(tiny_runs[name]), labels=labels, seed=1, batch_size=4, **kw)
    # Same noise streams as on the CPU; cuDNN's TF32 convolutions move the digits a little.
    assert (eager.cpu() - cpu).abs().mean() < 2e-2
    other = S.sample(m, labels=labels, seed=2, batch_size=4, cuda_graph=True, **kw)
    assert (other - graphed).abs().mean() > 1e-2  # replays take the new batch's noise


@pytest.mark.gpu
def test_cuda_graph_is_captured_once_per_batch_size(tiny_runs, monkeypatch):
    m = P.MNISTDiffusion.from_train_dir(tiny_runs["ddpm_class"]).to("cuda")
    captures = []
    real = torch.cuda.CUDAGraph

    class Counting(real):
        def __init__(self, *a, **k):
            captures.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Counting)
    S.sample(m, n=10, num_steps=5, batch_size=4, cuda_graph=True)  # batches 4, 4, 2
    assert len(captures) == 2
    S.sample(m, n=6, num_steps=5, batch_size=4, cuda_graph=True, seed=3)  # 4, 2: replays only
    assert len(captures) == 2
    S.sample(m, n=4, num_steps=6, batch_size=4, cuda_graph=True)  # other settings: a new capture
    assert len(captures) == 3
    m.clear_cuda_graphs()
    S.sample(m, n=4, num_steps=5, batch_size=4, cuda_graph=True)
    assert len(captures) == 4
