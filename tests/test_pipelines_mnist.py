"""Part A techniques on the project's MNIST class-conditional DDPM UNet (randomly initialised)."""
from __future__ import annotations

import pytest
import torch

models = pytest.importorskip("diffaccel.mnist.models", reason="diffaccel.mnist.models not written yet")
from diffaccel.pipelines import techniques as T  # noqa: E402
from diffaccel.pipelines.denoisers import MNISTDenoiser  # noqa: E402

SHORT = T.strided_timesteps(start=290, stride=29, num_train_timesteps=300)  # 11 steps


def _abar(T_=300):
    betas = torch.linspace(1e-4, 0.02, T_, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


@pytest.fixture(scope="module")
def den():
    torch.manual_seed(0)
    net = models.UNet(models.UNetConfig(hidden=8, conditioning="class"))
    return MNISTDenoiser(net, _abar())


def gen(s=0):
    return torch.Generator().manual_seed(s)


def _digit(seed=0):
    return torch.rand(1, 1, 28, 28, generator=gen(seed)) * 2 - 1


def test_interface(den):
    assert den.sample_shape == (1, 28, 28) and den.num_train_timesteps == 300 and den.null_cond is None
    assert not den.model.training
    x = torch.rand(4, 1, 28, 28)
    out = den(x, torch.full((4,), 150), 3)
    t_in = torch.full((4,), 150.0) / 300
    c = torch.zeros(4, 10)
    c[:, 3] = 1
    with torch.no_grad():
        torch.testing.assert_close(out.eps, den.model(x, t_in, c))
    assert out.variance is None
    # [uncond, per-sample labels] in one forward
    labels = [0, 1, 2, 3]
    both = den(torch.cat([x, x]), 150, den.batch_conds([None, labels]))
    u, cc = den(x, 150, None), den(x, 150, labels)
    torch.testing.assert_close(both.eps, torch.cat([u.eps, cc.eps]), atol=1e-5, rtol=1e-4)


def test_value_range(den):
    x = _digit()
    torch.testing.assert_close(den.to_model_range(x), (x + 1) / 2)
    torch.testing.assert_close(den.from_model_range(den.to_model_range(x)), x)
    z = torch.randn(x.shape, generator=gen(1))
    a = den.alphas_cumprod[100]
    torch.testing.assert_close(T.forward(den, x, 100, gen(1)), a.sqrt() * (x + 1) / 2 + (1 - a).sqrt() * z)


def test_iterative_denoise_fixed_small_equals_spec(den):
    ts = T.strided_timesteps(num_train_timesteps=300)
    x_t = T.forward(den, _digit(), ts[10], gen(0))
    res = T.iterative_denoise(den, x_t, 10, ts, 7, gen(1))
    g, abar, x = gen(1), den.alphas_cumprod.double(), x_t.double()
    for i in range(10, len(ts) - 1):
        t, tp = ts[i], ts[i + 1]
        eps = den(x.float(), t, 7).eps.double()
        a_t, a_p = abar[t], abar[tp]
        alpha, beta = a_t / a_p, 1 - a_t / a_p
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        mean = a_p.sqrt() * beta / (1 - a_t) * x0 + alpha.sqrt() * (1 - a_p) / (1 - a_t) * x
        x = mean + ((1 - a_p) / (1 - a_t) * beta).sqrt() * torch.randn(x.shape, generator=g).double()
    torch.testing.assert_close(res.image, (x.float() * 2 - 1), atol=1e-4, rtol=1e-4)


def test_every_technique_runs_and_is_seeded(den):
    img = _digit(3)
    mask = torch.zeros(28, 28)
    mask[:, 14:] = 1
    runs = {
        "sample_cfg": lambda g: T.sample(den, list(range(10)), 10, SHORT, guidance_scale=5.0, generator=g).image,
        "sdedit": lambda g: torch.cat(list(T.sdedit(den, img, (1, 3, 5), 8, SHORT, 5.0, g).values())),
        "inpaint": lambda g: T.inpaint(den, img, mask, 3, 0, SHORT, 5.0, g).image,
        "img2img": lambda g: T.img2img(den, img, 8, 3, SHORT, 5.0, g),
        "anagram": lambda g: T.visual_anagram(den, [1, 7], ("identity", "flip"), 2, SHORT, 5.0, g).image,
        "anagram4": lambda g: T.visual_anagram(
            den, [1, 7, 4, 0], ("identity", "rotate_cw", "rotate_180", "rotate_ccw"), 1, SHORT, 5.0, g).image,
        "hybrid": lambda g: T.hybrid(den, 0, 1, num_samples=2, timesteps=SHORT, guidance_scale=5.0,
                                     generator=g).image,
    }
    for name, run in runs.items():
        a, b, c = run(gen(0)), run(gen(0)), run(gen(1))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name
        assert torch.isfinite(a).all() and a.shape[1:] == (1, 28, 28), name


def test_errors(den):
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        T.img2img(den, torch.zeros(1, 1, 32, 32), 3)
    with pytest.raises(ValueError, match="class labels"):
        den(torch.zeros(1, 1, 28, 28), 5, 10)
    with pytest.raises(TypeError, match="class label"):
        den(torch.zeros(1, 1, 28, 28), 5, "a dog")
    with pytest.raises(ValueError, match="mask"):
        T.inpaint(den, _digit(), torch.ones(1, 1, 27, 28))
    with pytest.raises(ValueError, match="i_start"):
        T.iterative_denoise(den, torch.zeros(1, 1, 28, 28), -1)
    with pytest.raises(ValueError, match="kind='ddpm'"):
        MNISTDenoiser(den.model, den.alphas_cumprod, kind="flow")


def test_from_pretrained_if_shipped():
    pre = pytest.importorskip("diffaccel.mnist.pretrained")
    names = [n for n in pre.list_pretrained() if pre.load_pretrained(n).kind == "ddpm"
             and pre.load_pretrained(n).conditioning == "class"]
    if not names:
        pytest.skip("no shipped class-conditional MNIST DDPM weights yet")
    d = MNISTDenoiser.from_pretrained(names[0])
    img = T.sample(d, [3], 1, SHORT, guidance_scale=5.0, generator=gen(0)).image
    assert img.shape == (1, 1, 28, 28) and torch.isfinite(img).all()


def test_denoising_gif(den, tmp_path):
    from PIL import Image

    from diffaccel.imageio import FrameRecorder, save_gif

    rec = FrameRecorder(den.from_model_range, value_range=(-1, 1))
    res = T.sample(den, [0, 1, 2, 3], 4, SHORT, guidance_scale=5.0, generator=gen(0), callback=rec)
    assert len(rec.frames) == len(SHORT) - 1 and rec.frames[0].shape == (4, 1, 28, 28)
    torch.testing.assert_close(rec.frames[-1], res.image.clamp(-1, 1))
    p = save_gif(rec.frames, tmp_path / "run.gif", value_range=(-1, 1), scale=2)
    assert Image.open(p).size == (112, 112)
