"""The reference (``diffaccel.reference``) against independent ground truth.

Every backend is tested against the reference, so the reference itself is checked here
against things written another way: the SPEC formulas transcribed in float64 scalar math,
a hand-rolled numpy convolution, and diffusers' own schedulers (what IF's pipelines run).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffaccel import reference as ref

diffusers = pytest.importorskip("diffusers")


def _linear_abar(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).to(torch.float32)


def _t(v: int, n: int) -> torch.Tensor:
    return torch.full((n,), v, dtype=torch.int64)


# ----------------------------------------------------------------------------- blur
def _numpy_blur(x: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """Direct 2-D correlation with a k x k Gaussian after reflect padding, in float64 loops."""
    half = (k - 1) / 2
    taps = np.exp(-0.5 * (np.linspace(-half, half, k) / sigma) ** 2)
    taps /= taps.sum()
    k2 = np.outer(taps, taps)
    p = k // 2
    n, c, h, w = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
    out = np.zeros((n, c, h, w))
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = (xp[:, :, i:i + k, j:j + k] * k2).sum(axis=(-2, -1))
    return out


@pytest.mark.parametrize("k,sigma", [(1, 1.0), (3, 0.8), (5, 1.3), (7, 2.0)])
def test_gaussian_blur_equals_numpy_direct_convolution(k, sigma):
    x = torch.randn(2, 3, 8, 11, generator=torch.Generator().manual_seed(0))
    got = ref.gaussian_blur(x, k, sigma)
    want = torch.from_numpy(_numpy_blur(x.numpy(), k, sigma)).float()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape,k,sigma", [((3, 5, 17, 23), 33, 2.0), ((2, 3, 64, 64), 9, 1.5)])
def test_gaussian_blur_equals_direct_conv2d(shape, k, sigma):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ref.gaussian_blur(x, k, sigma), ref.gaussian_blur_conv2d(x, k, sigma),
                               atol=1e-6, rtol=1e-5)


def test_gaussian_blur_equals_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.randn(2, 3, 40, 33, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ref.gaussian_blur(x, 33, 2.0), tvf.gaussian_blur(x, [33, 33], [2.0, 2.0]),
                               atol=1e-6, rtol=1e-5)


def test_gaussian_kernel_is_normalised_and_symmetric():
    k = ref.gaussian_kernel1d(33, 2.0)
    assert k.shape == (33,)
    torch.testing.assert_close(k.sum(), torch.tensor(1.0))
    torch.testing.assert_close(k, k.flip(0))
    assert int(k.argmax()) == 16


def test_highpass_and_hybrid_decompose_the_signal():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    low = ref.gaussian_blur(x, 23, 2.0)  # 23 taps: reflect padding needs k // 2 < 32
    torch.testing.assert_close(ref.highpass(x, 23, 2.0), x - low)
    torch.testing.assert_close(ref.hybrid_combine(x, y, 23, 2.0),
                               low + y - ref.gaussian_blur(y, 23, 2.0))
    # The split is exact: lowpass(x) + highpass(x) == x (SPEC A1.9).
    torch.testing.assert_close(ref.hybrid_combine(x, x, 23, 2.0), x, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- forward process
def test_add_noise_and_predict_x0_match_spec_and_diffusers():
    abar = _linear_abar()
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([250, 500, 750])
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    torch.testing.assert_close(ref.add_noise(x0, eps, abar, t), sched.add_noise(x0, eps, t))
    # SPEC A1.1 and A1.3 in float64 scalar math, one sample at a time.
    x_t = ref.add_noise(x0, eps, abar, t)
    for i, ti in enumerate(t.tolist()):
        a = float(abar[ti])
        want = math.sqrt(a) * x0[i].double() + math.sqrt(1 - a) * eps[i].double()
        torch.testing.assert_close(x_t[i].double(), want, atol=1e-5, rtol=1e-5)
        want_x0 = (x_t[i].double() - math.sqrt(1 - a) * eps[i].double()) / math.sqrt(a)
        torch.testing.assert_close(ref.predict_x0(x_t, eps, abar, t)[i].double(), want_x0, atol=1e-4, rtol=1e-5)
    # predict_x0 inverts add_noise.
    torch.testing.assert_close(ref.predict_x0(x_t, eps, abar, t), x0, atol=1e-4, rtol=1e-4)


def test_cfg_combine_matches_spec():
    g = torch.Generator().manual_seed(6)
    u, c = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(ref.cfg_combine(u, c, 7.0), u + 7.0 * (c - u))
    torch.testing.assert_close(ref.cfg_combine(u, c, 1.0), c)
    torch.testing.assert_close(ref.cfg_combine(u, c, 0.0), u)


def test_masked_project_matches_spec():
    abar = _linear_abar()
    g = torch.Generator().manual_seed(7)
    x_t, x_orig, noise = (torch.randn(2, 3, 6, 6, generator=g) for _ in range(3))
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 2:4, 1:5] = 1
    t = torch.tensor([600, 30])
    got = ref.masked_project(x_t, x_orig, mask, noise, abar, t)
    fwd = ref.add_noise(x_orig, noise, abar, t)
    torch.testing.assert_close(got, torch.where(mask.bool(), x_t, fwd))


# ----------------------------------------------------------------------------- DDPM
def _ddpm_spec(x_t, eps, noise, abar, t: int, t_prev: int, variance: str):
    """SPEC A1.4 transcribed with float64 Python scalars (t -> t', abar[-1] = 1)."""
    a_t = float(abar[t])
    a_p = float(abar[t_prev]) if t_prev >= 0 else 1.0
    alpha = a_t / a_p
    beta = 1 - alpha
    x, e = x_t.double(), eps.double()
    x0_hat = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
    mean = math.sqrt(a_p) * beta / (1 - a_t) * x0_hat + math.sqrt(alpha) * (1 - a_p) / (1 - a_t) * x
    if noise is None or t == 0:
        return mean
    var = beta if variance == "fixed_large" else (1 - a_p) / (1 - a_t) * beta
    return mean + math.sqrt(var) * noise.double()


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t,t_prev", [(990, 960), (690, 660), (30, 0), (0, -1), (500, 499)])
@pytest.mark.parametrize("with_noise", [False, True])
def test_ddpm_step_matches_spec_a14(variance, t, t_prev, with_noise):
    abar = _linear_abar()
    g = torch.Generator().manual_seed(8)
    x_t, eps, noise = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    got = ref.ddpm_step(x_t, eps, abar, _t(t, 2), _t(t_prev, 2), noise=noise if with_noise else None,
                        variance=variance)
    want = _ddpm_spec(x_t, eps, noise if with_noise else None, abar, t, t_prev, variance)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)


def test_ddpm_step_matches_spec_b23():
    """SPEC B2.3 (T = 300, t -> t - 1): ``x_{t-1} = ... + sqrt(beta_t) z``, z = 0 at the last step."""
    T = 300
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar64 = torch.cumprod(1 - betas, 0)
    abar = abar64.float()
    g = torch.Generator().manual_seed(9)
    x_t, eps, z = (torch.randn(1, 1, 28, 28, generator=g) for _ in range(3))
    for t in (299, 150, 1, 0):
        a_t = float(abar64[t])
        a_p = float(abar64[t - 1]) if t > 0 else 1.0
        beta_t, alpha_t = float(betas[t]), 1 - float(betas[t])
        x0_hat = (x_t.double() - math.sqrt(1 - a_t) * eps.double()) / math.sqrt(a_t)
        want = (math.sqrt(a_p) * beta_t / (1 - a_t) * x0_hat
                + math.sqrt(alpha_t) * (1 - a_p) / (1 - a_t) * x_t.double()
                + (math.sqrt(beta_t) * z.double() if t > 0 else 0))
        got = ref.ddpm_step(x_t, eps, abar, _t(t, 1), _t(t - 1, 1), noise=z, variance="fixed_large")
        torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=5e-5)


def _if_scheduler(num_inference_steps: int, **kw):
    """IF stage I's scheduler config (learned range variance, dynamic thresholding)."""
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
        thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5, clip_sample=False, **kw)
    sched.set_timesteps(num_inference_steps)
    return sched


def test_learned_range_variance_equals_diffusers_get_variance():
    sched = _if_scheduler(50)
    abar = sched.alphas_cumprod.float()
    g = torch.Generator().manual_seed(10)
    x_t, eps = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g)
    pv = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    ones = torch.ones_like(x_t)
    ts = sched.timesteps.tolist()
    for t in (ts[0], ts[10], ts[25], ts[-2]):  # t = 0 adds no noise (diffusers' rule too)
        t_prev = int(sched.previous_timestep(t))
        # With unit noise, (step with noise) - (step without) is exactly the predicted std.
        kw = dict(variance="learned_range", predicted_variance=pv)
        std = (ref.ddpm_step(x_t, eps, abar, _t(t, 1), _t(t_prev, 1), noise=ones, **kw)
               - ref.ddpm_step(x_t, eps, abar, _t(t, 1), _t(t_prev, 1), **kw))
        want = torch.exp(0.5 * sched._get_variance(t, predicted_variance=pv))
        torch.testing.assert_close(std, want.float(), atol=1e-6, rtol=1e-4)


def test_dynamic_threshold_equals_diffusers_threshold_sample():
    sched = _if_scheduler(20)
    g = torch.Generator().manual_seed(11)
    # Per-sample scales so s lands below 1, inside (1, 1.5) and above 1.5 (the clamp's three cases).
    x0 = torch.randn(4, 3, 16, 16, generator=g) * torch.tensor([0.3, 0.7, 0.8, 5.0]).view(4, 1, 1, 1)
    got = ref.dynamic_threshold_(x0, 0.95, 1.5)
    torch.testing.assert_close(got, sched._threshold_sample(x0))
    s = torch.quantile(x0.reshape(4, -1).abs(), 0.95, dim=1)
    assert (s < 1).any() and ((s > 1) & (s < 1.5)).any() and (s > 1.5).any()


@pytest.mark.parametrize("num_inference_steps", [20, 50])
def test_ddpm_step_equals_diffusers_if_step(num_inference_steps):
    """The whole IF stage-I step: learned range + dynamic thresholding, strided t -> t'."""
    sched = _if_scheduler(num_inference_steps)
    abar = sched.alphas_cumprod.float()
    g = torch.Generator().manual_seed(12)
    x_t = torch.randn(2, 3, 16, 16, generator=g)
    for t in sched.timesteps.tolist()[:: max(1, num_inference_steps // 5)] + [int(sched.timesteps[-1])]:
        model_out = torch.randn(2, 6, 16, 16, generator=g)
        model_out[:, 3:] = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
        t_prev = int(sched.previous_timestep(t))
        want = sched.step(model_out, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(t))
        got = ref.ddpm_step(x_t, model_out[:, :3], abar, _t(t, 2), _t(t_prev, 2), noise=noise,
                            variance="learned_range", predicted_variance=model_out[:, 3:],
                            dynamic_threshold=(0.95, 1.5))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ddpm_step_clip_equals_diffusers_clip_sample():
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=True, clip_sample_range=1.0)
    sched.set_timesteps(25)
    abar = sched.alphas_cumprod.float()
    g = torch.Generator().manual_seed(13)
    x_t, eps = torch.randn(2, 3, 8, 8, generator=g) * 3, torch.randn(2, 3, 8, 8, generator=g)
    t = int(sched.timesteps[3])
    t_prev = int(sched.previous_timestep(t))
    want = sched.step(eps, t, x_t, generator=torch.Generator().manual_seed(0)).prev_sample
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    got = ref.ddpm_step(x_t, eps, abar, _t(t, 2), _t(t_prev, 2), noise=noise, clip_x0=1.0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_equals_diffusers(eta):
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(50)
    abar = sched.alphas_cumprod.float()
    stride = 1000 // 50
    g = torch.Generator().manual_seed(14)
    x_t = torch.randn(2, 3, 8, 8, generator=g)
    for t in sched.timesteps.tolist()[::7] + [int(sched.timesteps[-1])]:
        eps, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        want = sched.step(eps, t, x_t, eta=eta, variance_noise=noise).prev_sample
        got = ref.ddim_step(x_t, eps, abar, _t(t, 2), _t(t - stride if t >= stride else -1, 2),
                            eta=eta, noise=noise)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
