"""The sampling layer (diffaccel.samplers): every solver against a float64 transcription of its
paper's update and against diffusers' schedulers, on a Gaussian toy model whose ODE solution is
known (so the convergence order is measured, not assumed); noise per sample, callbacks, buffers,
wrappers, and the MNIST / Part-A entry points that call it."""
import math

import pytest
import torch

from diffaccel import functional as Fn
from diffaccel import samplers as S
from diffaccel.mnist import sampling as MS
from diffaccel.mnist.models import UNet, UNetConfig, one_hot
from diffaccel.mnist.pretrained import MNISTDiffusion
from diffaccel.schedules import ddpm_linear_schedule

# ----------------------------------------------------------------------------- the toy model
# Data x0 ~ N(MU, SD^2) per pixel. Then x_t = a x0 + s eps ~ N(a MU, a^2 SD^2 + s^2) and the exact
# eps-prediction is E[eps | x_t] = s (x_t - a MU) / (a^2 SD^2 + s^2). Along the probability-flow
# ODE the standardised z = (x_t - a MU) / sqrt(a^2 SD^2 + s^2) is constant: the exact endpoint.
MU = torch.linspace(-0.6, 0.8, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
SD = 0.5
T_TOY = 961
# A schedule with lambda = log(a / s) linear in t, from 4 (t = 0) to -4 (t = 960): uniform steps
# in t are uniform in lambda, which keeps the convergence-order measurement clean.
LAM = torch.linspace(4.0, -4.0, T_TOY, dtype=torch.float64)
ABAR64 = torch.sigmoid(2 * LAM)
ABAR = ABAR64.float()


def _as(t, abar=ABAR64):
    ab = torch.tensor(1.0, dtype=torch.float64) if t < 0 else abar[t]
    return ab.sqrt(), (1 - ab).sqrt()


def toy_eps(x, t, abar=ABAR64):
    a, s = _as(t, abar)
    return s * (x.double() - a * MU) / (a * a * SD * SD + s * s)


def toy_model(x, t):
    return toy_eps(x, t).to(x.dtype)


def exact_endpoint(x_T, t_start, t_end):
    a0, s0 = _as(t_start)
    a1, s1 = _as(t_end)
    z = (x_T.double() - a0 * MU) / (a0 * a0 * SD * SD + s0 * s0).sqrt()
    return a1 * MU + (a1 * a1 * SD * SD + s1 * s1).sqrt() * z


def x_T(n=3, seed=0):
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def strided(n):  # n steps from 960 to 0
    return list(range(960, -1, -(960 // n)))


# ----------------------------------------------------------------------------- float64 transcriptions
def lam64(t):
    a, s = _as(t)
    return torch.log(a) - torch.log(s)


def x0_64(x, t):
    a, s = _as(t)
    return (x - s * toy_eps(x, t)) / a


def ddpm64(x, ts, zs):
    """Ho et al. 2020, Alg. 2, strided (posterior q(x_t' | x_t, x0_hat)), beta-variance noise."""
    x, j = x.double(), 0
    for t, tp in zip(ts, ts[1:]):
        ab_t, ab_p = _as(t)[0] ** 2, _as(tp)[0] ** 2
        alpha = ab_t / ab_p
        beta = 1 - alpha
        x0 = x0_64(x, t)
        mean = ab_p.sqrt() * beta / (1 - ab_t) * x0 + alpha.sqrt() * (1 - ab_p) / (1 - ab_t) * x
        if t > 0:
            mean = mean + beta.sqrt() * zs[j].double()
            j += 1
        x = mean
    return x


def ddim64(x, ts):
    """Song et al. 2020, eq. 12 with sigma = 0."""
    x = x.double()
    for t, tp in zip(ts, ts[1:]):
        a_p, s_p = _as(tp)
        x = a_p * x0_64(x, t) + s_p * toy_eps(x, t)
    return x


def dpmpp_2m64(x, ts):
    """Lu et al. 2022 (DPM-Solver++), Algorithm 2 (multistep second order), data prediction."""
    x = x.double()
    prev = None  # (x0 at t_{i-1}, h_{i-1})
    for t, tp in zip(ts, ts[1:]):
        a_p, s_p = _as(tp)
        _, s_t = _as(t)
        h = lam64(tp) - lam64(t)
        x0 = x0_64(x, t)
        if prev is None:
            d = x0
        else:
            r = prev[1] / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev[0]
        x = s_p / s_t * x - a_p * (torch.exp(-h) - 1) * d
        prev = (x0, h)
    return x


def dpmpp_2m_sde64(x, ts, zs):
    """Lu et al. 2022 (DPM-Solver++), SDE-DPM-Solver++(2M): the multistep D of Algorithm 2 in the
    exponential integrator of the data-prediction SDE, x_{t'} = (s'/s) e^-h x + a' (1 - e^-2h) D
    + s' sqrt(1 - e^-2h) z, one draw per step that does not land on the clean image."""
    x, j = x.double(), 0
    prev = None
    for t, tp in zip(ts, ts[1:]):
        a_p, s_p = _as(tp)
        _, s_t = _as(t)
        h = lam64(tp) - lam64(t)
        x0 = x0_64(x, t)
        d = x0 if prev is None or tp < 0 else (1 + 1 / (2 * prev[1] / h)) * x0 - 1 / (2 * prev[1] / h) * prev[0]
        x = s_p / s_t * torch.exp(-h) * x + a_p * (1 - torch.exp(-2 * h)) * d
        if tp >= 0:
            x = x + s_p * (1 - torch.exp(-2 * h)).sqrt() * zs[j].double()
            j += 1
        prev = (x0, h)
    return x


def unipc64(x, ts, lower_order_final=True):
    """Zhao et al. 2023 (UniPC), UniP-2 + UniC with B(h) = e^h - 1 (bh2), data prediction; the
    rho's from the linear system R rho = b of the paper (solved numerically here)."""

    def phi_b(hh, order):
        # b_k = k! phi_{k+1}(hh) / B(h) with phi_1 = (e^hh - 1) / hh and phi_{k+1} = (phi_k - 1/k!) / hh
        bh = torch.expm1(hh)
        bs, phi, fact = [], torch.expm1(hh) / hh - 1, 1.0
        for k in range(1, order + 1):
            bs.append(phi * fact / bh)
            fact *= k + 1
            phi = phi / hh - 1 / fact
        return torch.stack(bs), bh

    def update(x_s, s, t, m0, ms, model_t=None):
        """One UniP (model_t None) or UniC step from (x_s, s) to t; ms = [(m_i, s_i)] older outputs."""
        a_t, s_t = _as(t)
        _, s_s = _as(s)
        h = lam64(t) - lam64(s)
        hh = -h
        rks = [(lam64(si) - lam64(s)) / h for _, si in ms]
        d1s = [(mi - m0) / rk for (mi, _), rk in zip(ms, rks)]
        base = s_t / s_s * x_s - a_t * torch.expm1(hh) * m0
        if model_t is None:
            if not d1s:
                return base
            rho = torch.tensor([0.5], dtype=torch.float64)  # the paper's choice for p = 2
            return base - a_t * torch.expm1(hh) * sum(r * d for r, d in zip(rho, d1s))
        rks = rks + [torch.tensor(1.0, dtype=torch.float64)]
        order = len(rks)
        b, bh = phi_b(hh, order)
        if order == 1:
            rho = torch.tensor([0.5], dtype=torch.float64)
        else:
            R = torch.stack([torch.stack(rks) ** k for k in range(order)])
            rho = torch.linalg.solve(R, b)
        terms = d1s + [model_t - m0]
        return base - a_t * bh * sum(r * d for r, d in zip(rho, terms))

    x = x.double()
    hist = []  # (x0, t) newest last
    last = None  # (sample at the previous t, previous t, order of its predictor)
    n = len(ts) - 1
    for i, (t, tp) in enumerate(zip(ts, ts[1:])):
        x0 = x0_64(x, t)  # the model at the uncorrected sample
        if last is not None:
            m0, s0 = hist[-1]
            older = [hist[-2]] if last[2] == 2 else []
            x = update(last[0], s0, t, m0, older, model_t=x0)
        order = 1 if i == 0 or (lower_order_final and i == n - 1) else 2
        hist.append((x0, t))
        last = (x, t, order)
        x = update(x, t, tp, x0, [hist[-2]] if order == 2 else [])
    return x


def euler64(x, times, v):
    x = x.double()
    for t, tn in zip(times, times[1:]):
        x = x + (tn - t) * v(x, t)
    return x


def heun64(x, times, v):
    """Karras et al. 2022, Alg. 1 (deterministic), on the flow ODE dx/dt = v(x, t); the step onto
    the data end (t = 1, sigma = 0 in Alg. 1) is Euler."""
    x = x.double()
    for t, tn in zip(times, times[1:]):
        d = v(x, t)
        x_e = x + (tn - t) * d
        x = x_e if tn >= 1.0 else x + (tn - t) * 0.5 * (d + v(x_e, tn))
    return x


# ----------------------------------------------------------------------------- the flow toy
def flow_v(x, t):
    """Exact E[x1 - x0 | x_t] for x_t = (1 - t) x0 + t x1, x0 ~ N(0, 1), x1 ~ N(MU, SD^2)."""
    x = x.double()
    var = (1 - t) ** 2 + t * t * SD * SD
    return MU + (t * SD * SD - (1 - t)) / var * (x - t * MU)


def flow_model(x, t):
    return flow_v(x, t).to(x.dtype)


def flow_exact(x0):
    return MU + SD * x0.double()


# ----------------------------------------------------------------------------- against the transcriptions
def test_ddpm_matches_ho_et_al():
    ts = strided(12)
    zs = torch.randn(len(ts), 3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    got = S.sample_ddpm(toy_model, x_T(), ts, ABAR, noise=zs, variance="fixed_large")
    want = ddpm64(x_T(), ts, zs)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    assert (got - S.sample_ddpm(toy_model, x_T(), ts, ABAR, variance="fixed_large")).abs().max() > 1e-2


@pytest.mark.parametrize("name,ref", [("ddim", ddim64), ("dpmpp_2m", dpmpp_2m64), ("unipc", unipc64)])
def test_deterministic_solvers_match_their_papers(name, ref):
    ts = strided(10)
    got = S.get_sampler(name)(toy_model, x_T(), ts, ABAR)
    want = ref(x_T(), ts)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    # the solvers differ from one another at 10 steps: the comparison can fail
    assert (got.double() - ddim64(x_T(), ts)).abs().max() > 1e-4 or name == "ddim"


def test_dpmpp_2m_sde_matches_lu_et_al():
    ts = strided(10)
    zs = torch.randn(10, 3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    got = S.sample_dpmpp_2m_sde(toy_model, x_T(), ts, ABAR, noise=zs)
    torch.testing.assert_close(got.double(), dpmpp_2m_sde64(x_T(), ts, zs), atol=2e-5, rtol=1e-5)
    assert (got - S.sample_dpmpp_2m(toy_model, x_T(), ts, ABAR)).abs().max() > 1e-2  # really stochastic
    # onto the clean image the last step draws nothing: 9 draws for 10 steps ending at -1
    ts_final = strided(10)[:-1] + [-1]
    got = S.sample_dpmpp_2m_sde(toy_model, x_T(), ts_final, ABAR, noise=zs[:9])
    torch.testing.assert_close(got.double(), dpmpp_2m_sde64(x_T(), ts_final, zs), atol=2e-5, rtol=1e-5)


def test_dpmpp_2m_sde_samples_the_data_distribution():
    """The toy's data are N(MU, SD^2) per pixel: 20 SDE steps from 4,000 starts land on that
    distribution (a wrong noise scale or drift moves the mean or the spread)."""
    x = torch.randn(4000, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    got = S.sample_dpmpp_2m_sde(toy_model, x, strided(20)[:-1] + [-1], ABAR, noise=torch.Generator().manual_seed(4))
    mean, sd = got.double().mean(0, keepdim=True), got.double().std(0, keepdim=True)
    assert (mean - MU).abs().max() < 0.04, (mean - MU).abs().max()
    assert (sd - SD).abs().max() < 0.04, (sd - SD).abs().max()
    # the same check sees a sampler without its noise: the ODE's endpoint keeps the spread, the
    # SDE's posterior mean alone (noise zero) shrinks it
    shrunk = S.sample_dpmpp_2m_sde(toy_model, x, strided(20)[:-1] + [-1], ABAR, noise=torch.zeros(19, *x.shape))
    assert (shrunk.double().std(0) - SD).abs().max() > 0.1


def test_unipc_without_lower_order_final():
    ts = strided(8)
    got = S.sample_unipc(toy_model, x_T(), ts, ABAR, lower_order_final=False)
    torch.testing.assert_close(got.double(), unipc64(x_T(), ts, lower_order_final=False), atol=2e-5, rtol=1e-5)
    assert (got.double() - unipc64(x_T(), ts)).abs().max() > 1e-5


def test_landing_on_the_clean_image_is_first_order():
    """``t_prev = -1``: DPM-Solver++ and UniPC return the (thresholded) x0 of the last step."""
    ts = strided(6)[:-1] + [-1]  # ..., 160, -1
    for name in ("dpmpp_2m", "unipc"):
        seen = []
        got = S.get_sampler(name)(toy_model, x_T(), ts, ABAR, callback=lambda d: seen.append(d["x0_hat"].clone()))
        torch.testing.assert_close(got, seen[-1], atol=1e-6, rtol=0)
        clipped = S.get_sampler(name)(toy_model, x_T() * 40, ts, ABAR, clip_x0=0.5)
        assert clipped.abs().max() <= 0.5 + 1e-6


@pytest.mark.parametrize("cls_name,name,kw", [
    ("DPMSolverMultistepScheduler", "dpmpp_2m", dict(algorithm_type="dpmsolver++", solver_order=2)),
    ("UniPCMultistepScheduler", "unipc", dict(solver_order=2, solver_type="bh2")),
])
@pytest.mark.parametrize("thresholding", [False, True])
def test_matches_diffusers_scheduler(cls_name, name, kw, thresholding):
    diffusers = pytest.importorskip("diffusers")
    T = 1000
    abar = ddpm_linear_schedule(T)[2]

    def model(x, t):
        return toy_eps(x, t, abar.double()).float()

    thr = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.2) if thresholding else {}
    sched = getattr(diffusers, cls_name)(num_train_timesteps=T, beta_schedule="linear", **kw, **thr)
    sched.set_timesteps(10)
    x = x_T() * 1.5
    want = x.clone()
    for t in sched.timesteps:
        want = sched.step(model(want, int(t)), t, want).prev_sample
    ts = [int(t) for t in sched.timesteps] + [-1]
    got = S.get_sampler(name)(model, x, ts, abar, dynamic_threshold=(0.9, 1.2) if thresholding else None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("thresholding", [False, True])
def test_dpmpp_2m_sde_matches_diffusers_scheduler(thresholding):
    """Drop-in: a generator seeded the same in both gives diffusers' ``sde-dpmsolver++`` samples
    (both draw float32 N(0, I) of the sample's shape per step, diffusers once more at the end)."""
    diffusers = pytest.importorskip("diffusers")
    T = 1000
    abar = ddpm_linear_schedule(T)[2]

    def model(x, t):
        return toy_eps(x, t, abar.double()).float()

    thr = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.2) if thresholding else {}
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear",
                                                  algorithm_type="sde-dpmsolver++", solver_order=2, **thr)
    sched.set_timesteps(10)
    x = x_T() * 1.5
    want, g = x.clone(), torch.Generator().manual_seed(11)
    for t in sched.timesteps:
        want = sched.step(model(want, int(t)), t, want, generator=g).prev_sample
    ts = [int(t) for t in sched.timesteps] + [-1]
    got = S.sample_dpmpp_2m_sde(model, x, ts, abar, noise=torch.Generator().manual_seed(11),
                                dynamic_threshold=(0.9, 1.2) if thresholding else None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_flow_solvers_match_transcriptions():
    times = S.flow_times(7)
    x = x_T()
    torch.testing.assert_close(S.sample_euler(flow_model, x, times).double(), euler64(x, times, flow_v),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S.sample_heun(flow_model, x, times).double(), heun64(x, times, flow_v),
                               atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- convergence order
def _order(errors):
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.mark.parametrize("name,lo,hi", [("ddim", 0.8, 1.3), ("dpmpp_2m", 1.7, 2.5), ("unipc", 1.8, 3.5)])
def test_convergence_order(name, lo, hi):
    """Halving the step halves DDIM's error and quarters DPM-Solver++(2M)'s (UniPC: at least that)."""
    x = x_T(8, seed=3)
    exact = exact_endpoint(x, 960, 0)
    errs = [(S.get_sampler(name)(toy_model, x, strided(n), ABAR).double() - exact).abs().max().item()
            for n in (12, 24, 48)]
    orders = _order(errs)
    assert all(lo < p < hi for p in orders), (name, errs, orders)


def test_flow_convergence_order():
    x = x_T(8, seed=4)
    exact = flow_exact(x)
    for sampler, lo, hi in ((S.sample_euler, 0.8, 1.3), (S.sample_heun, 1.7, 2.5)):
        errs = [(sampler(flow_model, x, S.flow_times(n)).double() - exact).abs().max().item() for n in (16, 32, 64)]
        assert all(lo < p < hi for p in _order(errs)), (sampler.__name__, errs)
    # at equal model evaluations (19: Heun's last step is Euler), Heun beats Euler by far
    e_euler = (S.sample_euler(flow_model, x, S.flow_times(19)).double() - exact).abs().max()
    e_heun = (S.sample_heun(flow_model, x, S.flow_times(10)).double() - exact).abs().max()
    assert e_heun < e_euler / 3
    assert S.nfe("heun", 10) == 19 and S.nfe("euler", 10) == 10 and S.nfe("unipc", 10) == 10


# ----------------------------------------------------------------------------- noise, callbacks, buffers
def test_noise_sources_and_batch_independence():
    ts = strided(6)
    idx = [0, 1, 2, 3]
    src = MS.PerSampleNoise(9, idx, (1, 4, 4))
    full = S.sample_ddpm(toy_model, src.draw(), ts, ABAR, noise=src)  # x_T, then one draw per noisy step
    assert (full[1] - full[2]).abs().max() > 1e-2
    one = MS.PerSampleNoise(9, [2], (1, 4, 4))
    alone = S.sample_ddpm(toy_model, one.draw(), ts, ABAR, noise=one)
    torch.testing.assert_close(alone, full[2:3], atol=1e-6, rtol=0)
    x0 = MS.PerSampleNoise(9, idx, (1, 4, 4)).draw()
    # pre-drawn noise = the same draws from the source, and a generator is seedable
    pre = MS.PerSampleNoise(9, idx, (1, 4, 4)).draw_steps(1 + sum(t > 0 for t in ts[:-1]))
    torch.testing.assert_close(S.sample_ddpm(toy_model, pre[0], ts, ABAR, noise=pre[1:]), full, atol=1e-6, rtol=0)
    g1 = S.sample_ddpm(toy_model, x0, ts, ABAR, noise=torch.Generator().manual_seed(1))
    g2 = S.sample_ddpm(toy_model, x0, ts, ABAR, noise=torch.Generator().manual_seed(1))
    g3 = S.sample_ddpm(toy_model, x0, ts, ABAR, noise=torch.Generator().manual_seed(2))
    assert torch.equal(g1, g2) and (g1 - g3).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pre-drawn noise"):
        S.sample_ddpm(toy_model, x0, ts, ABAR, noise=torch.zeros(3, 2, 1, 4, 4))
    with pytest.raises(ValueError, match="needs more"):
        S.sample_ddpm(toy_model, x0, ts, ABAR, noise=torch.zeros(2, 4, 1, 4, 4))
    with pytest.raises(TypeError, match="noise must be"):
        S.sample_ddpm(toy_model, x0, ts, ABAR, noise=3)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc"])
def test_callback_contents(name):
    ts = strided(5)
    seen = []

    def cb(info):
        seen.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in info.items()})

    x = x_T()
    got = S.get_sampler(name)(toy_model, x, ts, ABAR, callback=cb)
    assert [d["i"] for d in seen] == list(range(5))
    assert [(d["t"], d["t_prev"]) for d in seen] == list(zip(ts, ts[1:]))
    assert torch.equal(seen[-1]["x"], got)
    # x0_hat of step 0 is the data prediction at x_T (the toy's is known in closed form)
    torch.testing.assert_close(seen[0]["x0_hat"].double(), x0_64(x.double(), ts[0]), atol=1e-5, rtol=1e-5)
    if name in ("ddpm", "dpmpp_2m_sde"):
        assert all("noise" in d for d in seen)


def test_flow_callback_x0_hat():
    seen = []
    S.sample_euler(flow_model, x_T(), S.flow_times(4), callback=lambda d: seen.append(d["x0_hat"].clone()))
    # the data the current velocity points at: x + (1 - t) v
    torch.testing.assert_close(seen[0].double(), x_T().double() + flow_v(x_T(), 0.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "euler", "heun"])
def test_out_buffer_is_reused(name, monkeypatch):
    """The loop runs in ``out``; the number of image-sized allocations does not grow with the steps."""
    flow = name in S.FLOW_SAMPLERS
    fn = S.get_sampler(name)
    model = flow_model if flow else toy_model

    def run(n, out=None, cb=None):
        sched = S.flow_times(n) if flow else strided(n)
        args = (model, x_T(), sched) if flow else (model, x_T(), sched, ABAR)
        noisy = {"noise": torch.Generator().manual_seed(0)} if name == "dpmpp_2m_sde" else {}
        return fn(*args, out=out, callback=cb, **noisy)

    out = torch.empty(3, 1, 4, 4)
    ptrs = []
    res = run(4, out, lambda d: ptrs.append(d["x"].data_ptr()))
    assert res is out and set(ptrs) == {out.data_ptr()}
    torch.testing.assert_close(res, run(4))
    counts = []
    real = torch.empty_like
    for n in (3, 6):
        k = [0]

        def counting(*a, **kw):
            k[0] += 1
            return real(*a, **kw)
        monkeypatch.setattr(torch, "empty_like", counting)
        run(n)
        monkeypatch.setattr(torch, "empty_like", real)
        counts.append(k[0])
    assert counts[0] == counts[1], counts
    x = x_T()
    same = fn(model, x, S.flow_times(3), out=x) if flow else fn(model, x, strided(3), ABAR, out=x)
    if name == "dpmpp_2m_sde":  # a generator's draws go into one buffer made once per call
        assert counts[0] == counts[1]
    assert same is x  # out=x: in place on the start sample


@pytest.mark.parametrize("name,kw", [
    ("ddpm", {}), ("ddpm", dict(variance="learned_range")), ("ddpm", dict(dynamic_threshold=(0.95, 1.5))),
    ("ddim", {}), ("ddim", dict(eta=1.0)), ("dpmpp_2m", {}), ("dpmpp_2m", dict(dynamic_threshold=(0.95, 1.5))),
    ("dpmpp_2m", dict(clip_x0=1.0)), ("dpmpp_2m_sde", {}), ("dpmpp_2m_sde", dict(dynamic_threshold=(0.95, 1.5))),
    ("unipc", {}), ("unipc", dict(dynamic_threshold=(0.95, 1.5))),
    ("euler", {}), ("heun", {})])
@pytest.mark.parametrize("guided", [False, True])
def test_loops_never_read_a_value_back(name, kw, guided):
    """The no-host-sync loop (what a CUDA loop and graph capture need), checked on the CPU: the
    whole loop runs on meta tensors, which have shapes but no values, so any read of a value on
    the host (``.item()``, ``bool(tensor)``, ``.tolist()``, a data-dependent shape) raises.
    The per-step callback, with its lazy x0 estimate, runs too. (On a GPU,
    ``test_cuda_sampling_never_syncs_and_graph_replays_the_same`` checks the same with
    ``torch.cuda.set_sync_debug_mode("error")``.)"""
    flow = name in S.FLOW_SAMPLERS
    learned = kw.get("variance") == "learned_range"
    x = torch.randn(3, 2, 5, 7, device="meta")

    def forward(x, t):
        eps = torch.zeros_like(x)
        return S.Output(eps, torch.zeros_like(x)) if learned else eps

    model = S.cfg(lambda x2, t: forward(x2, t), 4.0) if guided else forward
    seen = []

    def callback(info):
        seen.append(info["x0_hat"].device.type)
    if flow:
        out = S.get_sampler(name)(model, x, S.flow_times(4), callback=callback, **kw)
    else:
        noisy = name in ("ddpm", "dpmpp_2m_sde") or kw.get("eta")
        kw = dict(kw, noise=torch.zeros(5, *x.shape, device="meta")) if noisy else kw
        out = S.get_sampler(name)(model, x, strided(5), ABAR.to("meta"), callback=callback, backend="torch", **kw)
    assert out.device.type == "meta" and out.shape == x.shape
    assert seen == ["meta"] * (4 if flow else 5)
    with pytest.raises(RuntimeError, match="meta"):  # the harness does catch a read-back
        S.get_sampler(name)(lambda x, t: torch.zeros_like(x) * float(x.sum()), x,
                            *((S.flow_times(2),) if flow else (strided(2), ABAR.to("meta"))))


# ----------------------------------------------------------------------------- wrappers
def test_cfg_wrapper_equals_manual_combine():
    """``cfg(forward, g)`` hands the fused step (eps_u, eps_c, g): the same as a model that
    returns the combined eps, for every DDPM-model sampler."""
    def forward(x2, t):  # [uncond; cond]: the "cond" block sees a shifted mean
        n = x2.shape[0] // 2
        e = toy_model(x2, t)
        return torch.cat([e[:n], e[n:] + 0.1])

    g = 3.0

    def combined(x, t):
        u = toy_model(x, t)
        return u + g * ((u + 0.1) - u)

    ts = strided(8)
    for name in ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc"):
        def run(model):
            kw = {"noise": torch.Generator().manual_seed(0)} if name == "dpmpp_2m_sde" else {}
            return S.get_sampler(name)(model, x_T(), ts, ABAR, **kw)
        a, b = run(S.cfg(forward, g)), run(combined)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
        assert (a - run(toy_model)).abs().max() > 1e-2
    # the variance rides along from the conditional block
    out = S.cfg(lambda x2, t: S.Output(toy_model(x2, t), torch.arange(6.0).reshape(6, 1, 1, 1).expand_as(x2)), g)(
        x_T(), 10)
    assert isinstance(out, S.Guided) and out.scale == g and torch.equal(out.variance[:, 0, 0, 0], torch.tensor([3., 4, 5]))
    for name in ("euler", "heun"):
        a = S.get_sampler(name)(S.cfg(lambda x2, t: flow_model(x2, t) + torch.cat([0 * x2[:3], 0.1 + 0 * x2[3:]]), g),
                                x_T(), S.flow_times(5))
        b = S.get_sampler(name)(lambda x, t: flow_model(x, t) + g * 0.1, x_T(), S.flow_times(5))
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="model function must return"):
        S.sample_ddim(lambda x, t: (x, x), x_T(), ts, ABAR)


def test_argument_errors():
    with pytest.raises(ValueError, match="strictly decrease"):
        S.sample_ddim(toy_model, x_T(), [10, 20], ABAR)
    with pytest.raises(ValueError, match="strictly decrease"):
        S.sample_ddim(toy_model, x_T(), [T_TOY, 0], ABAR)
    with pytest.raises(ValueError, match="at least 2"):
        S.sample_ddim(toy_model, x_T(), [10], ABAR)
    with pytest.raises(TypeError, match="ints"):
        S.sample_ddim(toy_model, x_T(), [10.0, 0], ABAR)
    with pytest.raises(ValueError, match="times must strictly increase"):
        S.sample_euler(flow_model, x_T(), [0.0, 1.5])
    with pytest.raises(ValueError, match="sampler must be one of"):
        S.get_sampler("plms")
    with pytest.raises(ValueError, match="out must be"):
        S.sample_ddim(toy_model, x_T(), [10, 0], ABAR, out=torch.empty(2, 1, 4, 4))
    with pytest.raises(ValueError, match="num_steps"):
        S.flow_times(0)


# ----------------------------------------------------------------------------- MNIST and Part A on the layer
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    abar = ddpm_linear_schedule(300)[2]
    out = {}
    for kind in ("ddpm", "flow"):
        for cond in ("class", "time"):
            net = UNet(UNetConfig(hidden=4, conditioning=cond)).eval()
            with torch.no_grad():  # make time and class matter as much as in a trained model
                for fc in (net.fc1_t, net.fc2_t) + ((net.fc1_c, net.fc2_c) if cond == "class" else ()):
                    fc[2].weight.mul_(20.0)
            out[kind, cond] = MNISTDiffusion(name=f"tiny_{kind}_{cond}", model=net, kind=kind,
                                             alphas_cumprod=abar if kind == "ddpm" else None)
    return out


def test_mnist_sampler_validation(tiny):
    ddpm, flow = tiny["ddpm", "class"], tiny["flow", "class"]
    with pytest.raises(ValueError, match="flow-matching model: sampler must be one of .'euler', 'heun'."):
        MS.sample(flow, labels=[1], sampler="ddpm")
    with pytest.raises(ValueError, match="DDPM model: sampler must be one of"):
        MS.sample(ddpm, labels=[1], sampler="heun")
    with pytest.raises(ValueError, match="sampler must be one of"):
        MS.sample(ddpm, labels=[1], sampler="plms")
    with pytest.raises(TypeError, match="sampler must be a string"):
        MS.sample(ddpm, labels=[1], sampler=2)
    assert MS.resolve_sampler(ddpm, None) == "ddpm" and MS.resolve_sampler(flow, None) == "euler"


@pytest.mark.parametrize("kind,sampler", [("ddpm", "dpmpp_2m"), ("ddpm", "dpmpp_2m_sde"), ("ddpm", "unipc"),
                                         ("flow", "heun")])
def test_mnist_new_samplers(tiny, kind, sampler):
    """The new samplers through mnist.sample: guided (CPU shared-work wrapper) equals the batched
    CFG wrapper, per-sample noise (a digit does not depend on its batch), steps as asked."""
    m = tiny[kind, "class"]
    labels = [3, 8, 0]
    seen = []
    a = MS.sample(m, labels=labels, num_steps=5, sampler=sampler, seed=2, callback=lambda d: seen.append(d["t"]))
    assert a.shape == (3, 1, 28, 28) and torch.isfinite(a).all()
    assert len(seen) == 5
    alone = MS.sample(m, labels=[8], num_steps=5, sampler=sampler, seed=2, start_index=1)
    torch.testing.assert_close(alone, a[1:2], atol=1e-5, rtol=0)
    default = MS.sample(m, labels=labels, num_steps=5, seed=2)
    assert (default - a).abs().max() > 1e-4  # really another solver
    # the CUDA path's batched [cond, uncond] wrapper (run here on the CPU) gives the same digits
    fn = MS._model_fn(m, one_hot(torch.tensor(labels), 3), 3, 5.0, guided=True, shared=False, compile=False,
                      bf16=False)
    noise = MS.PerSampleNoise(2, range(3), (1, 28, 28))
    x = noise.draw()
    with torch.inference_mode():
        b = MS._run_sampler(m, sampler, fn, x, MS._schedule(m, 5, sampler), noise, None, False, "auto").clamp(0, 1)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # the CUDA loop's noise, drawn up front: exactly the draws the loop takes, in its order
    ts = MS._schedule(m, 5, sampler)
    draws = MS.PerSampleNoise(2, range(3), (1, 28, 28)).draw_steps(1 + MS._noise_draws(ts, sampler))
    assert len(draws) == 1 + {"dpmpp_2m_sde": 4}.get(sampler, 0)
    with torch.inference_mode():
        c = MS._run_sampler(m, sampler, fn, draws[0], ts, draws[1:], None, False, "auto").clamp(0, 1)
    torch.testing.assert_close(c, a, atol=1e-5, rtol=0)


def test_mnist_default_samplers_unchanged(tiny):
    """ddpm / ddim through the layer equal a direct transcription of the old loop's updates."""
    m = tiny["ddpm", "time"]
    got = MS.sample(m, n=2, num_steps=4, seed=1)
    noise = MS.PerSampleNoise(1, range(2), (1, 28, 28))
    x = noise.draw()
    ts = MS.ddpm_timesteps(300, 4)
    abar = m.alphas_cumprod
    with torch.no_grad():
        for i, t in enumerate(ts):
            tp = ts[i + 1] if i + 1 < len(ts) else -1
            eps = m.model(x, torch.full((2,), t) / 300.0, None)
            x = Fn.ddpm_step(x, eps, abar, t, tp, noise=noise.draw() if t > 0 else None, variance="fixed_large")
    torch.testing.assert_close(got, x.clamp(0, 1), atol=1e-5, rtol=0)


def test_sdedit_with_ten_step_solvers(tiny):
    from diffaccel.pipelines import techniques as T
    from diffaccel.pipelines.denoisers import MNISTDenoiser

    m = tiny["ddpm", "class"]
    den = MNISTDenoiser(m.model, m.alphas_cumprod)
    ts10 = T.strided_timesteps(start=290, stride=29, num_train_timesteps=300)  # 290, 261, .., 0: 10 steps
    assert len(ts10) == 11
    img = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for sampler in ("dpmpp_2m", "dpmpp_2m_sde", "unipc"):
        out = T.sdedit(den, img, (3, 7), 4, ts10, 5.0, torch.Generator().manual_seed(1), sampler=sampler)
        noised = T.forward(den, img, ts10[3], torch.Generator().manual_seed(1))
        for i, res in out.items():
            assert res.shape == img.shape and torch.isfinite(res).all()
        assert (out[3] - den.from_model_range(noised)).abs().mean() > 1e-2
        assert (out[3] - out[7]).abs().max() > 1e-3
        steps = []
        T.img2img(den, img, 4, 7, ts10, 5.0, torch.Generator().manual_seed(1), callback=steps.append,
                  sampler=sampler)
        assert [d["i"] for d in steps] == [7, 8, 9]
    ddpm = T.sdedit(den, img, (3,), 4, ts10, 5.0, torch.Generator().manual_seed(1))
    assert (ddpm[3] - out[3]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="sampler 'ddim' takes no dynamic_threshold"):
        T.img2img(den, img, 4, 3, ts10, sampler="ddim", dynamic_threshold=(0.9, 1.5))
    with pytest.raises(ValueError, match="sampler must be one of"):
        T.img2img(den, img, 4, 3, ts10, sampler="euler")


def test_inpaint_and_anagram_wrappers_with_solvers(tiny):
    from diffaccel.pipelines import techniques as T
    from diffaccel.pipelines.denoisers import MNISTDenoiser

    m = tiny["ddpm", "class"]
    den = MNISTDenoiser(m.model, m.alphas_cumprod)
    ts = list(range(270, -1, -30))
    img = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(28, 28)
    mask[8:20, 8:20] = 1
    abar = den.alphas_cumprod
    for sampler in ("dpmpp_2m", "dpmpp_2m_sde", "unipc"):
        def check(info):
            a = abar[info["t_prev"]]
            renoised = a.sqrt() * (img + 1) / 2 + (1 - a).sqrt() * info["projection_noise"]
            keep = ~mask.bool().expand_as(img)
            torch.testing.assert_close(info["x"][keep], renoised[keep], atol=1e-5, rtol=1e-5)
        res = T.inpaint(den, img, mask, 3, 0, ts, 5.0, torch.Generator().manual_seed(0), callback=check,
                        sampler=sampler)
        assert torch.isfinite(res.image).all()
    # anagram wrapper, one DDIM step: eps = (eps1 + flip(eps2(flip(x)))) / 2, guided per view
    seen = []
    T.visual_anagram(den, [1, 7], ("identity", "flip"), 1, [210, 180], 5.0, torch.Generator().manual_seed(0),
                     callback=lambda d: seen.append(d["x"].clone()), sampler="ddim")
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def guided(xx, c):
        u, e = den(xx, 210, None).eps, den(xx, 210, c).eps
        return u + 5.0 * (e - u)
    eps = (guided(x, 1) + guided(x.flip(2), 7).flip(2)) / 2
    torch.testing.assert_close(seen[0], Fn.ddim_step(x, eps, abar, 210, 180), atol=1e-5, rtol=1e-5)
