"""Pure-PyTorch reference implementations: the definition of correct.

Every fused kernel (C++ CPU, CUDA, Triton) is tested against the functions here.
Conventions shared by every op (see SPEC "The accelerated core"):

* ``alphas_cumprod`` is a 1-D tensor ``abar`` of length T.
* ``t`` / ``t_prev`` are LongTensors with one entry per sample (shape ``[N]``);
  ``t_prev = -1`` means "the final step": ``abar_prev = 1``.
* Coefficients are gathered from ``abar`` in float32, all math is done in float32,
  and the result is cast back to the dtype of the image tensor.
* Noise is only added where ``t > 0`` (diffusers' rule: the step that lands on the
  clean image adds none; SPEC B2.3 "z = 0 at the last step").

The functions here take already-validated tensors; :mod:`diffaccel.functional` is the
public, checked, dispatching API.
"""
from __future__ import annotations



import torch
import torch.nn.functional as F

#: variance_type codes used by the kernels (strings in the public API)
VARIANCE_TYPES = {"fixed_small": 0, "fixed_large": 1, "learned_range": 2}


def _per_sample(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """[N] -> [N, 1, ..., 1] so it broadcasts over a sample."""
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


def gather_abar(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``abar[t]`` in float32 with ``abar[-1] = 1`` (the "final step" convention)."""
    abar = alphas_cumprod.to(torch.float32)
    idx = t.clamp(min=0)
    return torch.where(t >= 0, abar[idx], torch.ones_like(abar[idx]))


def add_noise(x0, noise, alphas_cumprod, t):
    """SPEC A1.1 / B2.2: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``."""
    a = _per_sample(gather_abar(alphas_cumprod, t), x0.ndim)
    out = a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()
    return out.to(x0.dtype)


def predict_x0(x_t, eps, alphas_cumprod, t):
    """SPEC A1.3: ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
    a = _per_sample(gather_abar(alphas_cumprod, t), x_t.ndim)
    out = (x_t.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()
    return out.to(x_t.dtype)


def cfg_combine(eps_uncond, eps_cond, scale: float):
    """SPEC A1.6 / B2.5: ``eps = eps_u + g (eps_c - eps_u)``."""
    u = eps_uncond.float()
    return (u + scale * (eps_cond.float() - u)).to(eps_uncond.dtype)


def dynamic_threshold_(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """diffusers' dynamic thresholding (Imagen), in float32, per sample.

    ``s`` = the ``ratio`` quantile of ``|x0|`` over a sample (linear interpolation, as
    ``torch.quantile``), clamped to ``[1, max_value]``; ``x0 = clamp(x0, -s, s) / s``.
    """
    n = x0.shape[0]
    flat = x0.reshape(n, -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value)
    s = _per_sample(s, x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def ddpm_step(
    x_t,
    eps,
    alphas_cumprod,
    t,
    t_prev,
    noise=None,
    variance: str = "fixed_small",
    predicted_variance=None,
    clip_x0: float | None = None,
    dynamic_threshold: tuple[float, float] | None = None,
):
    """SPEC A1.4 / B2.3: the strided DDPM posterior step t -> t_prev.

    ``alpha = abar_t / abar_prev``, ``beta = 1 - alpha``;
    ``mean = sqrt(abar_prev) beta / (1 - abar_t) x0_hat + sqrt(alpha) (1 - abar_prev) / (1 - abar_t) x_t``;
    variance: ``fixed_small`` = ``(1 - abar_prev) / (1 - abar_t) beta`` (clamped at 1e-20),
    ``fixed_large`` = ``beta``, ``learned_range`` = ``exp(frac log beta + (1 - frac) log fixed_small)``
    with ``frac = (predicted_variance + 1) / 2`` (diffusers' DDPMScheduler).
    ``x_prev = mean + sqrt(variance) * noise`` where ``t > 0`` and noise is given.
    """
    nd = x_t.ndim
    a_t = _per_sample(gather_abar(alphas_cumprod, t), nd)
    a_p = _per_sample(gather_abar(alphas_cumprod, t_prev), nd)
    alpha = a_t / a_p
    beta = 1 - alpha
    x = x_t.float()
    x0 = threshold_x0((x - (1 - a_t).sqrt() * eps.float()) / a_t.sqrt(), clip_x0, dynamic_threshold)
    mean = (a_p.sqrt() * beta / (1 - a_t)) * x0 + (alpha.sqrt() * (1 - a_p) / (1 - a_t)) * x
    if noise is not None:
        small = ((1 - a_p) / (1 - a_t) * beta).clamp(min=1e-20)
        if variance == "fixed_small":
            std = small.sqrt()
        elif variance == "fixed_large":
            std = beta.sqrt()
        elif variance == "learned_range":
            frac = (predicted_variance.float() + 1) / 2
            std = torch.exp(0.5 * (frac * beta.log() + (1 - frac) * small.log()))
        else:  # pragma: no cover - validated by functional
            raise ValueError(f"unknown variance {variance!r}")
        has_noise = _per_sample((t > 0).to(torch.float32), nd)
        mean = mean + has_noise * std * noise.float()
    return mean.to(x_t.dtype)


def ddim_step(x_t, eps, alphas_cumprod, t, t_prev, eta: float = 0.0, noise=None):
    """DDIM (Song et al. 2020, eq. 12), as diffusers' DDIMScheduler with ``eta``.

    ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))``;
    ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma noise``.
    """
    nd = x_t.ndim
    a_t = _per_sample(gather_abar(alphas_cumprod, t), nd)
    a_p = _per_sample(gather_abar(alphas_cumprod, t_prev), nd)
    e = eps.float()
    x0 = (x_t.float() - (1 - a_t).sqrt() * e) / a_t.sqrt()
    var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
    std = eta * var.sqrt()
    out = a_p.sqrt() * x0 + (1 - a_p - std * std).clamp(min=0).sqrt() * e
    if noise is not None and eta > 0:
        out = out + std * noise.float()
    return out.to(x_t.dtype)


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype=torch.float32, device=None):
    """torchvision's 1-D Gaussian: taps at ``linspace(-(k-1)/2, (k-1)/2, k)``, normalised."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=torch.float32, device=device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return (pdf / pdf.sum()).to(dtype)


def gaussian_blur(x, kernel_size: int, sigma: float):
    """Separable Gaussian blur with reflect padding; equals torchvision's ``gaussian_blur``."""
    k = gaussian_kernel1d(kernel_size, sigma, device=x.device)
    n, c, h, w = x.shape
    p = kernel_size // 2
    y = F.pad(x.float().reshape(n * c, 1, h, w), [p, p, p, p], mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w).to(x.dtype)


def highpass(x, kernel_size: int, sigma: float):
    """SPEC A1.9: ``highpass(x) = x - lowpass(x)``."""
    return (x.float() - gaussian_blur(x.float(), kernel_size, sigma)).to(x.dtype)


def hybrid_combine(eps_low, eps_high, kernel_size: int = 33, sigma: float = 2.0):
    """SPEC A1.9: ``eps = lowpass(eps1) + highpass(eps2)``."""
    lo = gaussian_blur(eps_low.float(), kernel_size, sigma)
    hi = highpass(eps_high.float(), kernel_size, sigma)
    return (lo + hi).to(eps_low.dtype)


def masked_project(x_t, x_orig, mask, noise, alphas_cumprod, t):
    """SPEC A1.7.2: ``m x_t + (1 - m) forward(x_orig, t)``; m = 1 marks pixels to regenerate."""
    m = mask.float()
    fwd = add_noise(x_orig.float(), noise.float(), alphas_cumprod, t)
    return (m * x_t.float() + (1 - m) * fwd).to(x_t.dtype)


def gaussian_blur_conv2d(x, kernel_size: int, sigma: float):
    """A direct (non-separable) 2-D convolution: the baseline the benchmarks compare against."""
    k = gaussian_kernel1d(kernel_size, sigma, device=x.device)
    k2 = torch.outer(k, k)
    n, c, h, w = x.shape
    p = kernel_size // 2
    y = F.pad(x.float(), [p, p, p, p], mode="reflect")
    y = F.conv2d(y, k2.expand(c, 1, kernel_size, kernel_size).contiguous(), groups=c)
    return y.to(x.dtype)


def flow_interpolate(x0, x1, t):
    """Flow matching (SPEC Part B, newer edition): ``x_t = (1 - t) x0 + t x1``, t per sample."""
    tt = _per_sample(t.to(torch.float32), x0.ndim)
    return ((1 - tt) * x0.float() + tt * x1.float()).to(x0.dtype)


# ----------------------------------------------------------------------------- multistep solvers
# Notation per sample (Lu et al. 2022, "DPM-Solver++"; Zhao et al. 2023, "UniPC"):
# a(t) = sqrt(abar[t]), s(t) = sqrt(1 - abar[t]), lam(t) = log(a(t) / s(t)) (+inf at t = -1).
# The per-sample scalars (lam, h, expm1(-h), the solver weights) are computed in float64 from the
# float32 abar and rounded once to float32; the image math is float32 like every other op.
def alpha_sigma_lambda(alphas_cumprod, t):
    """float64 ``(a(t), s(t), lam(t))`` per sample; ``t = -1`` gives ``(1, 0, +inf)``."""
    abar = gather_abar(alphas_cumprod, t).to(torch.float64)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    return a, s, a.log() - s.log()


def threshold_x0(x0, clip_x0=None, dynamic_threshold=None):
    """``thr(x0)``: dynamic thresholding ``(ratio, max)`` or clamping to ``[-clip_x0, clip_x0]`` (or neither)."""
    if dynamic_threshold is not None:
        return dynamic_threshold_(x0, *dynamic_threshold)
    if clip_x0 is not None:
        return x0.clamp(-clip_x0, clip_x0)
    return x0


def _thresholded_x0(x_t, eps, alphas_cumprod, t, clip_x0, dynamic_threshold):
    a = _per_sample(gather_abar(alphas_cumprod, t), x_t.ndim)
    x0 = (x_t.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()
    return threshold_x0(x0, clip_x0, dynamic_threshold)


def _f32(v, ndim):
    return _per_sample(v.to(torch.float32), ndim)


def dpmpp_2m_step(x_t, eps, alphas_cumprod, t, t_prev, x0_prev=None, t_last=None, clip_x0=None,
                  dynamic_threshold=None, noise=None):
    """DPM-Solver++(2M) t -> t_prev, data prediction, midpoint form (Lu et al. 2022, Alg. 2).

    ``x0 = thr((x_t - s(t) eps) / a(t))``, ``h = lam(t_prev) - lam(t)``; first order (no
    ``x0_prev``, or ``t_prev = -1``): ``D = x0``; second order, with ``x0_prev`` the x0 at
    ``t_last > t``: ``r = (lam(t) - lam(t_last)) / h``, ``D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev``;
    ``x_prev = (s(t_prev) / s(t)) x_t - a(t_prev) expm1(-h) D``.

    With ``noise`` (a N(0, I) draw): SDE-DPM-Solver++(2M) (Lu et al. 2022, appendix; diffusers'
    ``algorithm_type="sde-dpmsolver++"``), the same ``D`` in
    ``x_prev = (s(t_prev) / s(t)) e^-h x_t - a(t_prev) expm1(-2h) D + s(t_prev) sqrt(-expm1(-2h)) noise``
    (first order it is the DDPM posterior step with x0 = D). At ``t_prev = -1`` both forms return
    ``D = x0``. Returns ``(x_prev, x0)``.
    """
    nd = x_t.ndim
    x0 = _thresholded_x0(x_t, eps, alphas_cumprod, t, clip_x0, dynamic_threshold)
    w = solver_weights(alphas_cumprod, t, t_prev, t_last if x0_prev is not None else None, sde=noise is not None)
    _, _, _, _, ps, pa, pk, pn = (_per_sample(w[:, i], nd) for i in range(8))
    d = x0 if x0_prev is None else x0 + pk * (x0_prev.float() - x0)
    x_prev = ps * x_t.float() - pa * d
    if noise is not None:
        x_prev = x_prev + pn * noise.float()
    return x_prev.to(x_t.dtype), x0.to(x_t.dtype)


def unipc_bh2_corrector_weights(h, rk=None):
    """UniC's weights for B(h) = expm1(-h), data prediction (Zhao et al. 2023, Alg. 2; diffusers'
    ``multistep_uni_c_bh_update``), float64 per sample. Order 1 (``rk`` None): ``rho_t = 0.5``.
    Order 2 solves ``R rho = b``, ``R = [[1, 1], [rk, 1]]``, ``b_1 = hphi_2 / B(h)``,
    ``b_2 = 2 hphi_3 / B(h)`` with ``hh = -h``, ``hphi_1 = expm1(hh)``, ``hphi_2 = hphi_1 / hh - 1``,
    ``hphi_3 = hphi_2 / hh - 1/2``. Returns ``(rho_1, rho_t)``, the weights of ``(m1 - m0) / rk``
    and of ``model_t - m0``.
    """
    hh = -h
    b_h = torch.expm1(hh)
    if rk is None:
        return torch.zeros_like(h), torch.full_like(h, 0.5)
    phi = b_h / hh - 1          # h phi_2
    b1 = phi / b_h
    phi = phi / hh - 0.5        # h phi_3
    b2 = phi * 2 / b_h
    rho0 = (b1 - b2) / (1 - rk)
    return rho0, b1 - rho0


def solver_weights(alphas_cumprod, t, t_prev, t_last=None, t_last2=None, corrector: bool = False,
                   second_order: bool = True, sde: bool = False) -> torch.Tensor:
    """The per-sample weights of :func:`unipc_step` (and :func:`dpmpp_2m_step`, its predictor
    without corrector) as a float32 ``[N, 8]`` tensor ``(cs, ca, r1, rt, ps, pa, pk, pn)``,
    computed in float64 (the fused kernels use these; csrc/schedule.h computes the same on the
    host): ``x_corr = cs x_last - ca (m0 + r1 (m1 - m0) + rt (x0 - m0))`` (with ``corrector``;
    order 2 when ``t_last2`` is given), ``x_prev = ps x_corr - pa (x0 + pk (x0_prev - x0)) + pn noise``
    (``pk = 0``: first order, always at ``t_prev = -1``). ``pn = 0`` unless ``sde``, which gives
    SDE-DPM-Solver++'s ``ps = (s(t_prev)/s(t)) e^-h``, ``pa = a(t_prev) expm1(-2h)``,
    ``pn = s(t_prev) sqrt(-expm1(-2h))``.
    """
    a_t, s_t, l_t = alpha_sigma_lambda(alphas_cumprod, t)
    zero = torch.zeros_like(l_t)
    cs = ca = r1 = rt = zero
    if corrector:
        _, s_0, l_0 = alpha_sigma_lambda(alphas_cumprod, t_last)
        h = l_t - l_0
        cs, ca = s_t / s_0, a_t * torch.expm1(-h)
        if t_last2 is not None:
            rk = (alpha_sigma_lambda(alphas_cumprod, t_last2)[2] - l_0) / h
            rho_1, rt = unipc_bh2_corrector_weights(h, rk)
            r1 = rho_1 / rk
        else:
            rt = unipc_bh2_corrector_weights(h)[1]
    a_p, s_p, l_p = alpha_sigma_lambda(alphas_cumprod, t_prev)
    h = l_p - l_t
    pk = zero
    if second_order and t_last is not None:
        rk = (alpha_sigma_lambda(alphas_cumprod, t_last)[2] - l_t) / h
        pk = torch.where(t_prev >= 0, 0.5 / rk, zero)  # t_prev = -1: first order
    if sde:  # t_prev = -1: h = inf, so ps = 0, pa = -1, pn = 0 (x_prev = D), as the ODE form
        ps, pa, pn = s_p / s_t * torch.exp(-h), a_p * torch.expm1(-2 * h), s_p * (-torch.expm1(-2 * h)).sqrt()
    else:
        ps, pa, pn = s_p / s_t, a_p * torch.expm1(-h), zero
    return torch.stack([cs, ca, r1, rt, ps, pa, pk, pn], dim=1).to(torch.float32)


def unipc_step(x_t, eps, alphas_cumprod, t, t_prev, x0_prev=None, t_last=None, x_last=None, x0_prev2=None,
               t_last2=None, predictor_order: int = 2, clip_x0=None, dynamic_threshold=None):
    """UniPC t -> t_prev with B(h) = expm1(-h) ("bh2"), data prediction (Zhao et al. 2023).

    ``x0 = thr(predict_x0(x_t, eps, t))``. Corrector UniC (when ``x_last``, the sample at
    ``t_last`` whose x0 is ``x0_prev``, is given): ``h = lam(t) - lam(t_last)``,
    ``x_corr = (s(t)/s(t_last)) x_last - a(t) expm1(-h) (m0 + rho_1 (m1 - m0)/rk + rho_t (x0 - m0))``
    with ``m0 = x0_prev``, ``m1 = x0_prev2`` at ``t_last2`` (``rk = (lam(t_last2) - lam(t_last)) / h``,
    order 2) or none (order 1, ``rho_t = 0.5``); else ``x_corr = x_t``. Predictor UniP from
    ``x_corr`` at t to t_prev: ``h = lam(t_prev) - lam(t)``,
    ``x_prev = (s(t_prev)/s(t)) x_corr - a(t_prev) expm1(-h) (x0 + 0.5 (x0_prev - x0) / rk)`` with
    ``rk = (lam(t_last) - lam(t)) / h`` when ``predictor_order == 2``, ``x0_prev`` is given and
    ``t_prev >= 0``, else first order (``D = x0``). Returns ``(x_prev, x0, x_corr)``.
    """
    nd = x_t.ndim
    x0 = _thresholded_x0(x_t, eps, alphas_cumprod, t, clip_x0, dynamic_threshold)
    w = solver_weights(alphas_cumprod, t, t_prev, t_last if x0_prev is not None else None,
                       t_last2 if x0_prev2 is not None else None, corrector=x_last is not None,
                       second_order=predictor_order == 2)
    cs, ca, r1, rt, ps, pa, pk, _ = (_per_sample(w[:, i], nd) for i in range(8))
    x_corr = x_t.float()
    if x_last is not None:
        m0 = x0_prev.float()
        corr = rt * (x0 - m0)
        if x0_prev2 is not None:
            corr = corr + r1 * (x0_prev2.float() - m0)
        x_corr = cs * x_last.float() - ca * (m0 + corr)
    d = x0 if x0_prev is None else x0 + pk * (x0_prev.float() - x0)
    x_prev = ps * x_corr - pa * d
    return x_prev.to(x_t.dtype), x0.to(x_t.dtype), x_corr.to(x_t.dtype)


def heun_step(x, v, v_next, dt: float):
    """Second-order Heun step of the flow ODE: ``x + dt/2 (v + v_next)`` (v_next at the Euler point, t + dt)."""
    return (x.float() + (0.5 * dt) * (v.float() + v_next.float())).to(x.dtype)


__all__ = [
    "VARIANCE_TYPES", "gather_abar", "add_noise", "predict_x0", "cfg_combine",
    "dynamic_threshold_", "ddpm_step", "ddim_step", "gaussian_kernel1d", "gaussian_blur",
    "highpass", "hybrid_combine", "masked_project", "gaussian_blur_conv2d", "flow_interpolate",
    "alpha_sigma_lambda", "threshold_x0", "dpmpp_2m_step", "unipc_bh2_corrector_weights", "solver_weights", "unipc_step",
    "heun_step",
]
