"""Triton kernels for the diffusion hot paths, and their host launchers.

Semantics are exactly :mod:`diffaccel.reference` (the definition of correct): every kernel
loads its storage dtype (fp32 / fp16 / bf16), does all math in float32 and rounds once on
store. Per-sample coefficients are computed *in* the kernel from ``alphas_cumprod``
(float32) and ``t`` / ``t_prev`` (int64, one entry per sample): ``t_prev = -1`` gives
``abar_prev = 1`` and indices are clamped to ``[0, T - 1]`` so a bad CUDA ``t`` (which the
functional API cannot range-check without a host sync) never reads out of bounds.

Per-sample ops launch a 2-D grid ``(blocks of the per-sample size, N)``: a program
belongs to one sample, so it loads that sample's ``t``, gathers ``abar`` and derives its
scalar coefficients once, then streams ``BLOCK`` elements. (Samples sit on grid axis 1,
whose CUDA limit is 65535, because the block count is the axis that can grow large.)

Launch counts:

* ``add_noise``, ``predict_x0``, ``cfg_combine``, ``ddim_step``, ``masked_project``: 1.
* ``ddpm_step`` (with or without CFG, any variance, ``clip_x0``): 1. With dynamic
  thresholding, 2 when a sample has at most ``THRESHOLD_FUSED_MAX`` values: one program per
  sample computes ``|x0_hat|`` (CFG included) in registers and selects the exact quantile
  ``s`` from it (a radix select on in-register histograms), then the fused step kernel recomputes ``x0_hat`` with the very same
  instructions and applies ``clamp(x0_hat, -s, s) / s``. Larger samples: an exact radix
  select over the whole grid (a zeroed histogram buffer, four histogram passes that each
  recompute ``|x0_hat|``, one kernel that reads ``s`` off the histograms), then the step: 7.
* ``gaussian_filter``: 2 (a horizontal pass into float32 temporaries, a vertical pass
  that also forms ``blur(low) + high - blur(high)``).

Every launcher of an op takes the arguments of the matching low-level backend call
(``functional._TorchBackend``), annotated (its signature is the op's schema: ``diffaccel.triton.ops``
registers each as ``torch.ops.diffaccel.<name>_triton``), plus ``wrap``: the ops pass
``torch.library.wrap_triton`` so ``torch.compile`` can trace the launches; called directly
(Triton's interpreter, ``TRITON_INTERPRET=1``) the kernels launch as they are.
Inputs arrive contiguous (``diffaccel.functional`` guarantees it).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from .. import reference as ref


def _identity(kernel):
    return kernel


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def _abar_at(abar_ptr, t_ptr, n, T):
    """``abar[t[n]]`` with ``abar[-1] = 1`` (the final step) and the index clamped."""
    ti = tl.load(t_ptr + n)
    a = tl.load(abar_ptr + tl.minimum(tl.maximum(ti, 0), T - 1))
    return tl.where(ti >= 0, a, 1.0)


@triton.jit
def _guided_eps(eu_ptr, ec_ptr, offs, mask, scale, HAS_CFG: tl.constexpr):
    """``eps_u + scale (eps_c - eps_u)`` in float32 (or ``eps_u`` alone without CFG)."""
    e = tl.load(eu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_CFG:
        ec = tl.load(ec_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        e = e + scale * (ec - e)
    return e


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _add_noise_kernel(x0_ptr, noise_ptr, abar_ptr, t_ptr, out_ptr, inner, T, BLOCK: tl.constexpr):
    """SPEC A1.1 / B2.2: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``."""
    n = tl.program_id(1)
    a = _abar_at(abar_ptr, t_ptr, n, T)
    c0 = tl.sqrt_rn(a)
    c1 = tl.sqrt_rn(1.0 - a)
    local = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = local < inner
    offs = n.to(tl.int64) * inner + local
    x0 = tl.load(x0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (c0 * x0 + c1 * z).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _predict_x0_kernel(x_ptr, e_ptr, abar_ptr, t_ptr, out_ptr, inner, T, BLOCK: tl.constexpr):
    """SPEC A1.3: ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
    n = tl.program_id(1)
    a = _abar_at(abar_ptr, t_ptr, n, T)
    sqrt_a = tl.sqrt_rn(a)
    sqrt_1ma = tl.sqrt_rn(1.0 - a)
    local = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = local < inner
    offs = n.to(tl.int64) * inner + local
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.load(e_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, ((x - sqrt_1ma * e) / sqrt_a).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cfg_combine_kernel(eu_ptr, ec_ptr, out_ptr, numel, scale, BLOCK: tl.constexpr):
    """SPEC A1.6 / B2.5: ``eps = eps_u + g (eps_c - eps_u)`` (no per-sample state: 1-D grid)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    e = _guided_eps(eu_ptr, ec_ptr, offs, mask, scale, True)
    tl.store(out_ptr + offs, e.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ddpm_step_kernel(x_ptr, eu_ptr, ec_ptr, pv_ptr, noise_ptr, s_ptr, abar_ptr, t_ptr, tp_ptr, out_ptr,
                      scale, clip, inner, T,
                      HAS_CFG: tl.constexpr, HAS_NOISE: tl.constexpr, VARIANCE: tl.constexpr,
                      CLIP: tl.constexpr, THRESHOLD: tl.constexpr, BLOCK: tl.constexpr):
    """SPEC A1.4 / B2.3 (+ A1.6 CFG): the strided DDPM posterior step t -> t_prev, fused.

    ``alpha = abar_t / abar_prev``, ``beta = 1 - alpha``;
    ``x_prev = sqrt(abar_prev) beta / (1 - abar_t) x0_hat + sqrt(alpha) (1 - abar_prev) / (1 - abar_t) x_t
    + [t > 0] std z`` with ``std`` from ``VARIANCE`` (0 fixed_small, 1 fixed_large,
    2 learned_range on ``predicted_variance``); ``x0_hat`` clamped to ``[-clip, clip]``
    (``CLIP``) or thresholded by the per-sample ``s`` (``THRESHOLD``).
    """
    n = tl.program_id(1)
    a_t = _abar_at(abar_ptr, t_ptr, n, T)
    a_p = _abar_at(abar_ptr, tp_ptr, n, T)
    alpha = a_t / a_p
    beta = 1.0 - alpha
    sqrt_a = tl.sqrt_rn(a_t)
    sqrt_1ma = tl.sqrt_rn(1.0 - a_t)
    c_x0 = tl.sqrt_rn(a_p) * beta / (1.0 - a_t)
    c_xt = tl.sqrt_rn(alpha) * (1.0 - a_p) / (1.0 - a_t)

    local = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = local < inner
    offs = n.to(tl.int64) * inner + local
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = _guided_eps(eu_ptr, ec_ptr, offs, mask, scale, HAS_CFG)
    x0 = (x - sqrt_1ma * e) / sqrt_a
    if THRESHOLD:
        s = tl.load(s_ptr + n)
        x0 = tl.maximum(tl.minimum(x0, s), -s) / s
    elif CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip), clip)
    res = c_x0 * x0 + c_xt * x

    if HAS_NOISE:
        # No noise on the step that lands on t = 0 (diffusers' rule, SPEC B2.3): such a
        # sample's program does not even read noise / predicted_variance, and the select
        # (rather than a multiply by 0) keeps a non-finite std there out of the result.
        has_noise = tl.load(t_ptr + n) > 0
        nmask = local < tl.where(has_noise, inner, 0)
        small = tl.maximum((1.0 - a_p) / (1.0 - a_t) * beta, 1e-20)
        z = tl.load(noise_ptr + offs, mask=nmask, other=0.0).to(tl.float32)
        if VARIANCE == 0:  # fixed_small: the posterior variance
            std = tl.sqrt_rn(small)
        elif VARIANCE == 1:  # fixed_large: beta itself
            std = tl.sqrt_rn(beta)
        else:  # learned_range: log-variance interpolated between the two (diffusers)
            frac = (tl.load(pv_ptr + offs, mask=nmask, other=0.0).to(tl.float32) + 1.0) * 0.5
            std = tl.exp(0.5 * (frac * tl.log(beta) + (1.0 - frac) * tl.log(small)))
        res = tl.where(has_noise, res + std * z, res)
    tl.store(out_ptr + offs, res.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _abs_x0(x_ptr, eu_ptr, ec_ptr, abar_ptr, t_ptr, n, T, offs, mask, scale, HAS_CFG: tl.constexpr):
    """``|x0_hat|`` in float32 with exactly the step kernel's instructions (guidance included)."""
    a = _abar_at(abar_ptr, t_ptr, n, T)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = _guided_eps(eu_ptr, ec_ptr, offs, mask, scale, HAS_CFG)
    return tl.abs((x - tl.sqrt_rn(1.0 - a) * e) / tl.sqrt_rn(a))


@triton.jit
def _quantile_to_s(key_lo, key_hi, w, th_max, has_nan):
    """Order statistics (as int32 float bit patterns) -> torch.quantile's interpolation at
    weight ``w``, clamped to ``[1, th_max]``; NaN when the sample holds a NaN (as torch)."""
    v_lo = key_lo.to(tl.float32, bitcast=True)
    v_hi = key_hi.to(tl.float32, bitcast=True)
    q = tl.where(w < 0.5, v_lo + w * (v_hi - v_lo), v_hi - (v_hi - v_lo) * (1.0 - w))
    return tl.where(has_nan, float("nan"), tl.minimum(tl.maximum(q, 1.0), th_max))


# Exact order statistics by radix select: keys are the int32 bit patterns of |x0_hat|, which order
# like the non-negative floats they encode; their 31 value bits form four 8-bit digits (bits
# 30..24, which hold at most 7, then 23..16, 15..8, 7..0), digit q starting at bit 24 - 8 q. Per
# digit, a 256-bin histogram of the keys whose higher digits match the target's prefix; the bin
# where the cumulative count first exceeds the rank is the target's digit.
@triton.jit
def _radix_digit(h, k):
    """(digit, rank left within it) for a 256-bin histogram ``h`` and a rank ``k``."""
    bins = tl.arange(0, 256)
    d = tl.sum((tl.cumsum(h, axis=0) <= k).to(tl.int32), axis=0)
    return d, k - tl.sum(tl.where(bins < d, h, 0), axis=0)


@triton.jit
def _radix_match(keys, prefix, valid, Q: tl.constexpr):
    """The keys (of ``valid``) whose digits above digit ``Q`` equal the prefix's."""
    if Q == 0:
        return valid
    return valid & ((keys >> (32 - 8 * Q)) == (prefix >> (32 - 8 * Q)))


@triton.jit
def _threshold_kernel(x_ptr, eu_ptr, ec_ptr, abar_ptr, t_ptr, s_ptr, scale, inner, T, k_lo, k_hi, w, th_max,
                      HAS_CFG: tl.constexpr, BLOCK: tl.constexpr):
    """Dynamic thresholding's ``s`` of one sample (one program per sample, ``inner <= BLOCK``):
    ``|x0_hat|`` stays in registers and the order statistics ``k_lo`` and ``k_hi`` come from
    four in-register histograms each (the radix select above)."""
    n = tl.program_id(0)
    local = tl.arange(0, BLOCK)
    mask = local < inner
    v = _abs_x0(x_ptr, eu_ptr, ec_ptr, abar_ptr, t_ptr, n, T, n.to(tl.int64) * inner + local, mask, scale, HAS_CFG)
    valid = mask & (v == v)
    has_nan = tl.sum((mask & (v != v)).to(tl.int32), axis=0) > 0
    keys = v.to(tl.int32, bitcast=True)
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], 0, tl.int32)
    r_lo = k_lo + 0 * lo  # int32 tensors even when Triton specialised k_lo / k_hi to a constant
    r_hi = k_hi + 0 * lo
    for q in tl.static_range(4):
        digit = (keys >> (24 - 8 * q)) & 255
        d, r_lo = _radix_digit(tl.histogram(digit, 256, mask=_radix_match(keys, lo, valid, q)), r_lo)
        lo = lo | (d << (24 - 8 * q))
        d, r_hi = _radix_digit(tl.histogram(digit, 256, mask=_radix_match(keys, hi, valid, q)), r_hi)
        hi = hi | (d << (24 - 8 * q))
    tl.store(s_ptr + n, _quantile_to_s(lo, hi, w, th_max, has_nan))


# The same select for large samples, over the whole grid: histograms hist[q, n, j, 256] (j = 0 for
# rank k_lo, 1 for k_hi) are filled pass by pass with atomics; NaN counts follow them.
@triton.jit
def _radix_prefix(hist_ptr, n, N, j, k, PASSES: tl.constexpr):
    """The top digits of the key of rank ``k`` known after ``PASSES`` histograms, and the rank
    left within them."""
    bins = tl.arange(0, 256)
    prefix = tl.full([], 0, tl.int32)
    for q in tl.static_range(PASSES):
        d, k = _radix_digit(tl.load(hist_ptr + ((q * N + n) * 2 + j) * 256 + bins), k)
        prefix = prefix | (d << (24 - 8 * q))
    return prefix, k


@triton.jit
def _radix_hist_kernel(x_ptr, eu_ptr, ec_ptr, abar_ptr, t_ptr, hist_ptr, scale, inner, T, N, k_lo, k_hi,
                       PASS: tl.constexpr, HAS_CFG: tl.constexpr, BLOCK: tl.constexpr):
    """Pass ``PASS`` of the radix select: this block's histogram of digit ``PASS`` over the keys
    whose higher digits match each target's prefix, added into the sample's global histogram."""
    n = tl.program_id(1)
    local = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = local < inner
    v = _abs_x0(x_ptr, eu_ptr, ec_ptr, abar_ptr, t_ptr, n, T, n.to(tl.int64) * inner + local, mask, scale, HAS_CFG)
    valid = mask & (v == v)
    if PASS == 0:
        tl.atomic_add(hist_ptr + 4 * N * 2 * 256 + n, tl.sum((mask & (v != v)).to(tl.int32), axis=0))
    keys = v.to(tl.int32, bitcast=True)
    digit = (keys >> (24 - 8 * PASS)) & 255
    bins = tl.arange(0, 256)
    for j in tl.static_range(2):
        k = k_lo + j * (k_hi - k_lo)
        prefix, k = _radix_prefix(hist_ptr, n, N, j, k, PASS)
        h = tl.histogram(digit, 256, mask=_radix_match(keys, prefix, valid, PASS))
        tl.atomic_add(hist_ptr + ((PASS * N + n) * 2 + j) * 256 + bins, h, mask=h != 0)


@triton.jit
def _radix_finish_kernel(hist_ptr, s_ptr, N, k_lo, k_hi, w, th_max):
    """The two order statistics from the four histograms, then ``s`` (one program per sample)."""
    n = tl.program_id(0)
    key_lo, _ = _radix_prefix(hist_ptr, n, N, 0, k_lo, 4)
    key_hi, _ = _radix_prefix(hist_ptr, n, N, 1, k_hi, 4)
    has_nan = tl.load(hist_ptr + 4 * N * 2 * 256 + n) > 0
    tl.store(s_ptr + n, _quantile_to_s(key_lo, key_hi, w, th_max, has_nan))


@triton.jit
def _solver_step_kernel(x_ptr, eu_ptr, ec_ptr, m0_ptr, xl_ptr, m1_ptr, z_ptr, w_ptr, s_ptr, abar_ptr, t_ptr,
                        out_ptr, x0_ptr, xc_ptr, scale, clip, inner, T,
                        HAS_CFG: tl.constexpr, MODE: tl.constexpr, WRITE_XC: tl.constexpr, HAS_NOISE: tl.constexpr,
                        CLIP: tl.constexpr, THRESHOLD: tl.constexpr, BLOCK: tl.constexpr):
    """DPM-Solver++(2M) (with ``HAS_NOISE``: its SDE form) / UniPC bh2 (reference.dpmpp_2m_step /
    unipc_step), data prediction: ``x0 = thr(x0_hat)``; ``MODE`` 0 first order, 1 predictor with
    ``x0_prev``, 2 / 3 the UniC corrector of order 1 / 2 first; per-sample weights
    ``w[n] = (cs, ca, r1, rt, ps, pa, pk, pn)`` (reference.solver_weights)."""
    n = tl.program_id(1)
    a_t = _abar_at(abar_ptr, t_ptr, n, T)
    local = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = local < inner
    offs = n.to(tl.int64) * inner + local
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = _guided_eps(eu_ptr, ec_ptr, offs, mask, scale, HAS_CFG)
    x0 = (x - tl.sqrt_rn(1.0 - a_t) * e) / tl.sqrt_rn(a_t)
    if THRESHOLD:
        s = tl.load(s_ptr + n)
        x0 = tl.maximum(tl.minimum(x0, s), -s) / s
    elif CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip), clip)
    wp = w_ptr + n * 8
    xc = x
    if MODE >= 1:
        m0 = tl.load(m0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if MODE >= 2:
        corr = tl.load(wp + 3) * (x0 - m0)
        if MODE == 3:
            corr += tl.load(wp + 2) * (tl.load(m1_ptr + offs, mask=mask, other=0.0).to(tl.float32) - m0)
        xl = tl.load(xl_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        xc = tl.load(wp) * xl - tl.load(wp + 1) * (m0 + corr)
    d = x0
    if MODE >= 1:
        d = x0 + tl.load(wp + 6) * (m0 - x0)
    res = tl.load(wp + 4) * xc - tl.load(wp + 5) * d
    if HAS_NOISE:
        res += tl.load(wp + 7) * tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, res.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(x0_ptr + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)
    if WRITE_XC:
        tl.store(xc_ptr + offs, xc.to(xc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _heun_step_kernel(x_ptr, v_ptr, w_ptr, out_ptr, numel, half_dt, BLOCK: tl.constexpr):
    """Flow matching, second-order Heun: ``x + dt/2 (v + v_next)``."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (x + half_dt * (v + w)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ddim_step_kernel(x_ptr, eu_ptr, ec_ptr, noise_ptr, abar_ptr, t_ptr, tp_ptr, out_ptr,
                      scale, eta, inner, T,
                      HAS_CFG: tl.constexpr, HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr):
    """DDIM (Song et al. 2020, eq. 12) with ``eta``, as diffusers' DDIMScheduler.

    ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))``;
    ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z``.
    """
    n = tl.program_id(1)
    a_t = _abar_at(abar_ptr, t_ptr, n, T)
    a_p = _abar_at(abar_ptr, tp_ptr, n, T)
    sqrt_a = tl.sqrt_rn(a_t)
    sqrt_1ma = tl.sqrt_rn(1.0 - a_t)
    var = (1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p)
    std = eta * tl.sqrt_rn(var)
    c_x0 = tl.sqrt_rn(a_p)
    c_eps = tl.sqrt_rn(tl.maximum(1.0 - a_p - std * std, 0.0))

    local = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = local < inner
    offs = n.to(tl.int64) * inner + local
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = _guided_eps(eu_ptr, ec_ptr, offs, mask, scale, HAS_CFG)
    x0 = (x - sqrt_1ma * e) / sqrt_a
    res = c_x0 * x0 + c_eps * e
    if HAS_NOISE:
        z = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        res = res + std * z
    tl.store(out_ptr + offs, res.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _masked_project_kernel(x_ptr, xo_ptr, m_ptr, noise_ptr, abar_ptr, t_ptr, out_ptr,
                           inner, HW, m_stride_n, m_stride_c, T, BLOCK: tl.constexpr):
    """SPEC A1.7.2: ``m x_t + (1 - m) (sqrt(abar_t) x_orig + sqrt(1 - abar_t) z)``.

    The mask keeps its broadcast shape ``(N or 1, 1 or C, H, W)``: a broadcast axis has
    stride 0, so it is read in place rather than expanded in memory.
    """
    n = tl.program_id(1)
    a = _abar_at(abar_ptr, t_ptr, n, T)
    c0 = tl.sqrt_rn(a)
    c1 = tl.sqrt_rn(1.0 - a)
    local = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = local < inner
    offs = n.to(tl.int64) * inner + local
    c = local // HW
    m_offs = n.to(tl.int64) * m_stride_n + c * m_stride_c + (local - c * HW)
    m = tl.load(m_ptr + m_offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xo = tl.load(xo_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    res = m * x + (1.0 - m) * (c0 * xo + c1 * z)
    tl.store(out_ptr + offs, res.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _reflect(i, size):
    """Reflect padding without repeating the edge (``F.pad(mode="reflect")``); needs
    ``radius < size``, which ``functional`` checks."""
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= size, 2 * size - 2 - i, i)


@triton.jit
def _blur_rows_kernel(lo_ptr, hi_ptr, taps_ptr, tlo_ptr, thi_ptr, H, W, ksize, tiles_h, tiles_w,
                      HAS_LOW: tl.constexpr, HAS_HIGH: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Horizontal pass of the separable blur: float32 temporaries ``sum_k w_k x[y, x + k - r]``."""
    pid = tl.program_id(0)
    plane = pid // (tiles_h * tiles_w)
    tile = pid % (tiles_h * tiles_w)
    rows = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    cols = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    mask = (rows < H) & (cols < W)
    base = plane.to(tl.int64) * H * W + rows * W
    radius = ksize // 2
    acc_lo = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    acc_hi = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for k in range(0, ksize):
        w = tl.load(taps_ptr + k)
        src = base + _reflect(cols + (k - radius), W)
        if HAS_LOW:
            acc_lo += w * tl.load(lo_ptr + src, mask=mask, other=0.0).to(tl.float32)
        if HAS_HIGH:
            acc_hi += w * tl.load(hi_ptr + src, mask=mask, other=0.0).to(tl.float32)
    dst = base + cols
    if HAS_LOW:
        tl.store(tlo_ptr + dst, acc_lo, mask=mask)
    if HAS_HIGH:
        tl.store(thi_ptr + dst, acc_hi, mask=mask)


@triton.jit
def _blur_cols_kernel(hi_ptr, taps_ptr, tlo_ptr, thi_ptr, out_ptr, H, W, ksize, tiles_h, tiles_w,
                      HAS_LOW: tl.constexpr, HAS_HIGH: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Vertical pass, fused with the combine (SPEC A1.9): ``blur(low) + (high - blur(high))``."""
    pid = tl.program_id(0)
    plane = pid // (tiles_h * tiles_w)
    tile = pid % (tiles_h * tiles_w)
    rows = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    cols = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    mask = (rows < H) & (cols < W)
    base = plane.to(tl.int64) * H * W
    radius = ksize // 2
    acc_lo = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    acc_hi = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for k in range(0, ksize):
        w = tl.load(taps_ptr + k)
        src = base + _reflect(rows + (k - radius), H) * W + cols
        if HAS_LOW:
            acc_lo += w * tl.load(tlo_ptr + src, mask=mask, other=0.0)
        if HAS_HIGH:
            acc_hi += w * tl.load(thi_ptr + src, mask=mask, other=0.0)
    dst = base + rows * W + cols
    res = acc_lo
    if HAS_HIGH:
        res += tl.load(hi_ptr + dst, mask=mask, other=0.0).to(tl.float32) - acc_hi
    tl.store(out_ptr + dst, res.to(out_ptr.dtype.element_ty), mask=mask)


#: True when ``TRITON_INTERPRET=1`` was set before this module was imported: ``triton.jit``
#: then returns interpreted functions (numpy on the host) instead of compiled kernels.
INTERPRETED = not isinstance(_add_noise_kernel, JITFunction)


# ----------------------------------------------------------------------------- launch config
_NUM_WARPS = 4
#: Samples of at most this many values get dynamic thresholding's s from one program each, with
#: the sample in registers (_threshold_kernel; a 3x64x64 DeepFloyd IF stage-I image is 12288):
#: a thresholded step is 2 launches instead of the grid-wide select's 7 (zero fill, four histogram
#: passes, the finishing pass, the step). ``benchmarks/gpu_launches.py`` times both designs on the
#: IF shape; this one stays only if it wins there (not yet run on a GPU).
THRESHOLD_FUSED_MAX = 16384
_THRESHOLD_WARPS = 8
#: Elements per program of the radix-select histogram passes (larger samples).
_RADIX_BLOCK = 4096


def _block(inner: int) -> int:
    """Elements per program. 1024 (4 warps x 8 elements per thread) keeps a GPU busy on
    bandwidth-bound streams; the interpreter pays per program, so it takes whole samples."""
    cap = 1 << 16 if INTERPRETED else 1024
    return max(16, min(cap, triton.next_power_of_2(max(inner, 1))))


def _tile(h: int, w: int):
    """(rows, columns) of a blur tile: 64 contiguous columns give coalesced row loads."""
    block_h = min(32 if INTERPRETED else 16, triton.next_power_of_2(h))
    return block_h, min(64, triton.next_power_of_2(w))


def _per_sample_grid(x: torch.Tensor, block: int):
    n = x.shape[0]
    return (triton.cdiv(x.numel() // max(n, 1), block), n)


# ----------------------------------------------------------------------------- launchers
#: ``torch.library.wrap_triton`` (traceable launches) or the identity (plain launches)
Wrap = Callable[[Any], Any]
Tensor = torch.Tensor


def add_noise(x0: Tensor, noise: Tensor, abar: Tensor, t: Tensor, out: Tensor, *, wrap: Wrap = _identity) -> None:
    """SPEC A1.1: ``out = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) noise``."""
    if x0.numel() == 0:
        return
    inner = x0.numel() // x0.shape[0]
    block = _block(inner)
    wrap(_add_noise_kernel)[_per_sample_grid(x0, block)](
        x0, noise, abar, t, out, inner, abar.numel(), BLOCK=block, num_warps=_NUM_WARPS)


def predict_x0(x_t: Tensor, eps: Tensor, abar: Tensor, t: Tensor, out: Tensor, *, wrap: Wrap = _identity) -> None:
    """SPEC A1.3: ``out = (x_t - sqrt(1 - abar[t]) eps) / sqrt(abar[t])``."""
    if x_t.numel() == 0:
        return
    inner = x_t.numel() // x_t.shape[0]
    block = _block(inner)
    wrap(_predict_x0_kernel)[_per_sample_grid(x_t, block)](
        x_t, eps, abar, t, out, inner, abar.numel(), BLOCK=block, num_warps=_NUM_WARPS)


def cfg_combine(eps_u: Tensor, eps_c: Tensor, scale: float, out: Tensor, *, wrap: Wrap = _identity) -> None:
    """SPEC A1.6: ``out = eps_u + scale (eps_c - eps_u)``."""
    numel = eps_u.numel()
    if numel == 0:
        return
    block = _block(numel)
    wrap(_cfg_combine_kernel)[(triton.cdiv(numel, block),)](
        eps_u, eps_c, out, numel, scale, BLOCK=block, num_warps=_NUM_WARPS)


def _threshold_scales(x_t, eps_u, eps_c_arg, has_cfg: bool, scale: float, abar, t, th_ratio: float, th_max: float,
                      wrap: Wrap) -> torch.Tensor:
    """Dynamic thresholding's ``s`` per sample (float32 ``[N]``) for every thresholding step:
    ``clamp(quantile(|x0_hat|, th_ratio), 1, th_max)`` as torch.quantile, exactly."""
    n = x_t.shape[0]
    inner = x_t.numel() // n
    # The rank and weight of torch.quantile's interpolation, in float32 as torch takes them.
    rank = float(np.float32(th_ratio) * np.float32(inner - 1))
    k_lo, k_hi = int(math.floor(rank)), int(math.ceil(rank))
    w = float(np.float32(rank) - np.float32(k_lo))
    s = torch.empty(n, dtype=torch.float32, device=x_t.device)
    if inner <= THRESHOLD_FUSED_MAX:  # one program per sample, the sample in registers
        wrap(_threshold_kernel)[(n,)](
            x_t, eps_u, eps_c_arg, abar, t, s, scale, inner, abar.numel(), k_lo, k_hi, w, th_max,
            HAS_CFG=has_cfg, BLOCK=max(16, triton.next_power_of_2(inner)), num_warps=_THRESHOLD_WARPS)
    else:  # radix select over the whole grid: four histogram passes, then s
        hist = torch.zeros(4 * n * 2 * 256 + n, dtype=torch.int32, device=x_t.device)
        rblock = _RADIX_BLOCK
        for p in range(4):
            wrap(_radix_hist_kernel)[(triton.cdiv(inner, rblock), n)](
                x_t, eps_u, eps_c_arg, abar, t, hist, scale, inner, abar.numel(), n, k_lo, k_hi,
                PASS=p, HAS_CFG=has_cfg, BLOCK=rblock, num_warps=_NUM_WARPS)
        wrap(_radix_finish_kernel)[(n,)](hist, s, n, k_lo, k_hi, w, th_max, num_warps=1)
    return s


def solver_step(x_t, eps_u, eps_c: Optional[torch.Tensor], scale: float, abar, t, t_prev,
                x0_prev: Optional[torch.Tensor], t_last: Optional[torch.Tensor], x_last: Optional[torch.Tensor],
                x0_prev2: Optional[torch.Tensor], t_last2: Optional[torch.Tensor], predictor_order: int,
                clip_x0: float, th_ratio: float, th_max: float, out, x0_out, x_corr_out: Optional[torch.Tensor],
                noise: Optional[torch.Tensor] = None, *, wrap: Wrap = _identity) -> None:
    """dpmpp_2m_step (no ``x_last``, ``x_corr_out`` None) and unipc_step: one kernel (two with
    dynamic thresholding); the per-sample weights from reference.solver_weights (a few tiny
    float64 torch ops, no host sync)."""
    if x_t.numel() == 0:
        return
    n = x_t.shape[0]
    inner = x_t.numel() // n
    block = _block(inner)
    has_cfg = eps_c is not None
    eps_c_arg = eps_c if has_cfg else x_t
    mode = 3 if x0_prev2 is not None else 2 if x_last is not None else \
        1 if (x0_prev is not None and predictor_order == 2) else 0
    weights = ref.solver_weights(abar, t, t_prev, t_last, t_last2, corrector=mode >= 2,
                                 second_order=predictor_order == 2, sde=noise is not None).contiguous()
    thresholding = th_ratio > 0
    s = _threshold_scales(x_t, eps_u, eps_c_arg, has_cfg, scale, abar, t, th_ratio, th_max, wrap) \
        if thresholding else x_t
    wrap(_solver_step_kernel)[_per_sample_grid(x_t, block)](
        x_t, eps_u, eps_c_arg, x0_prev if x0_prev is not None else x_t, x_last if x_last is not None else x_t,
        x0_prev2 if x0_prev2 is not None else x_t, noise if noise is not None else x_t, weights, s, abar, t,
        out, x0_out, x_corr_out if x_corr_out is not None else out, scale, clip_x0, inner, abar.numel(),
        HAS_CFG=has_cfg, MODE=mode, WRITE_XC=x_corr_out is not None, HAS_NOISE=noise is not None,
        CLIP=clip_x0 > 0 and not thresholding,
        THRESHOLD=thresholding, BLOCK=block, num_warps=_NUM_WARPS)


def dpmpp_2m_step(x_t: Tensor, eps_u: Tensor, eps_c: Optional[Tensor], scale: float, abar: Tensor, t: Tensor,
                  t_prev: Tensor, x0_prev: Optional[Tensor], t_last: Optional[Tensor], clip_x0: float,
                  th_ratio: float, th_max: float, out: Tensor, x0_out: Tensor, noise: Optional[Tensor] = None, *,
                  wrap: Wrap = _identity) -> None:
    """DPM-Solver++(2M), with ``noise`` its SDE form; see :func:`reference.dpmpp_2m_step`."""
    solver_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, None, None, None, 2, clip_x0, th_ratio,
                th_max, out, x0_out, None, noise, wrap=wrap)


def unipc_step(x_t: Tensor, eps_u: Tensor, eps_c: Optional[Tensor], scale: float, abar: Tensor, t: Tensor,
               t_prev: Tensor, x0_prev: Optional[Tensor], t_last: Optional[Tensor], x_last: Optional[Tensor],
               x0_prev2: Optional[Tensor], t_last2: Optional[Tensor], predictor_order: int, clip_x0: float,
               th_ratio: float, th_max: float, out: Tensor, x0_out: Tensor, x_corr_out: Tensor, *,
               wrap: Wrap = _identity) -> None:
    """UniPC bh2 (corrector + predictor); see :func:`reference.unipc_step`."""
    solver_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, x_last, x0_prev2, t_last2,
                predictor_order, clip_x0, th_ratio, th_max, out, x0_out, x_corr_out, wrap=wrap)


def heun_step(x: Tensor, v: Tensor, v_next: Tensor, dt: float, out: Tensor, *, wrap: Wrap = _identity) -> None:
    """Flow matching, second-order Heun: ``out = x + dt/2 (v + v_next)``."""
    numel = x.numel()
    if numel == 0:
        return
    block = _block(numel)
    wrap(_heun_step_kernel)[(triton.cdiv(numel, block),)](x, v, v_next, out, numel, 0.5 * dt, BLOCK=block,
                                                          num_warps=_NUM_WARPS)


def ddpm_step(x_t: Tensor, eps_u: Tensor, eps_c: Optional[Tensor], scale: float, abar: Tensor, t: Tensor,
              t_prev: Tensor, noise: Optional[Tensor], variance_code: int, predicted_variance: Optional[Tensor],
              clip_x0: float, th_ratio: float, th_max: float, out: Tensor, *, wrap: Wrap = _identity) -> None:
    """SPEC A1.4 / B2.3 (+ A1.6): the (guided) strided DDPM step; see :func:`reference.ddpm_step`.
    ``clip_x0 > 0`` clamps x0_hat; ``th_ratio > 0`` selects dynamic thresholding."""
    if x_t.numel() == 0:
        return
    n = x_t.shape[0]
    inner = x_t.numel() // n
    block = _block(inner)
    grid = _per_sample_grid(x_t, block)
    has_cfg = eps_c is not None
    # Absent optional tensors are replaced by x_t: those pointers sit behind constexpr
    # flags and are never dereferenced, and a real tensor keeps the launch signature
    # identical for the compiled and the traced (wrap_triton) paths.
    eps_c_arg = eps_c if has_cfg else x_t
    thresholding = th_ratio > 0
    s = _threshold_scales(x_t, eps_u, eps_c_arg, has_cfg, scale, abar, t, th_ratio, th_max, wrap) \
        if thresholding else x_t
    wrap(_ddpm_step_kernel)[grid](
        x_t, eps_u, eps_c_arg,
        predicted_variance if predicted_variance is not None else x_t,
        noise if noise is not None else x_t,
        s, abar, t, t_prev, out,
        scale, clip_x0, inner, abar.numel(),
        HAS_CFG=has_cfg, HAS_NOISE=noise is not None, VARIANCE=variance_code,
        CLIP=clip_x0 > 0 and not thresholding, THRESHOLD=thresholding,
        BLOCK=block, num_warps=_NUM_WARPS)


def ddim_step(x_t: Tensor, eps_u: Tensor, eps_c: Optional[Tensor], scale: float, abar: Tensor, t: Tensor,
              t_prev: Tensor, eta: float, noise: Optional[Tensor], out: Tensor, *, wrap: Wrap = _identity) -> None:
    """The (guided) DDIM step; see :func:`reference.ddim_step`."""
    if x_t.numel() == 0:
        return
    inner = x_t.numel() // x_t.shape[0]
    block = _block(inner)
    has_cfg = eps_c is not None
    wrap(_ddim_step_kernel)[_per_sample_grid(x_t, block)](
        x_t, eps_u, eps_c if has_cfg else x_t, noise if noise is not None else x_t,
        abar, t, t_prev, out, scale, eta, inner, abar.numel(),
        HAS_CFG=has_cfg, HAS_NOISE=noise is not None and eta > 0,  # the reference's rule
        BLOCK=block, num_warps=_NUM_WARPS)


def masked_project(x_t: Tensor, x_orig: Tensor, mask: Tensor, noise: Tensor, abar: Tensor, t: Tensor, out: Tensor,
                   *, wrap: Wrap = _identity) -> None:
    """SPEC A1.7.2: ``out = mask x_t + (1 - mask) add_noise(x_orig, noise, abar, t)``; ``mask`` is
    contiguous ``(N or 1, 1 or C, H, W)`` in x_t's dtype."""
    if x_t.numel() == 0:
        return
    _, c, h, w = x_t.shape
    hw = h * w
    inner = c * hw
    block = _block(inner)
    m_stride_n = 0 if mask.shape[0] == 1 else mask.shape[1] * hw
    m_stride_c = 0 if mask.shape[1] == 1 else hw
    wrap(_masked_project_kernel)[_per_sample_grid(x_t, block)](
        x_t, x_orig, mask, noise, abar, t, out, inner, hw, m_stride_n, m_stride_c, abar.numel(),
        BLOCK=block, num_warps=_NUM_WARPS)


def gaussian_filter(low: Optional[Tensor], high: Optional[Tensor], kernel_size: int, sigma: float, out: Tensor, *,
                    wrap: Wrap = _identity) -> None:
    """SPEC A1.2 / A1.9: ``out = blur(low) + (high - blur(high))`` (separable, reflect padding);
    either input may be None (not both)."""
    x = low if low is not None else high
    if x is None:
        raise ValueError("gaussian_filter needs low, high or both")
    if x.numel() == 0:
        return
    h, w = x.shape[-2:]
    planes = x.numel() // (h * w)
    taps = ref.gaussian_kernel1d(kernel_size, sigma, device=x.device)
    tmp_lo = torch.empty(x.shape, dtype=torch.float32, device=x.device) if low is not None else taps
    tmp_hi = torch.empty(x.shape, dtype=torch.float32, device=x.device) if high is not None else taps
    block_h, block_w = _tile(h, w)
    tiles_h, tiles_w = triton.cdiv(h, block_h), triton.cdiv(w, block_w)
    grid = (planes * tiles_h * tiles_w,)
    flags = dict(HAS_LOW=low is not None, HAS_HIGH=high is not None, BLOCK_H=block_h, BLOCK_W=block_w,
                 num_warps=_NUM_WARPS)
    wrap(_blur_rows_kernel)[grid](
        low if low is not None else x, high if high is not None else x, taps, tmp_lo, tmp_hi,
        h, w, kernel_size, tiles_h, tiles_w, **flags)
    wrap(_blur_cols_kernel)[grid](
        high if high is not None else x, taps, tmp_lo, tmp_hi, out, h, w, kernel_size, tiles_h, tiles_w, **flags)


__all__ = [
    "INTERPRETED", "add_noise", "predict_x0", "cfg_combine", "ddpm_step", "ddim_step",
    "masked_project", "gaussian_filter",
]
