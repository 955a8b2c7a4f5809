// Host-side scalar math shared by the CPU kernels and the CUDA bindings: the per-sample
// schedule coefficients and the Gaussian taps. Kept in one place so every backend of an op
// derives its constants the same way diffaccel/reference.py does.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

// Scalar helpers also called from CUDA kernels (the per-sample solver weights are computed in-kernel).
#ifdef __CUDACC__
#define DIFFACCEL_HOST_DEVICE __host__ __device__
#else
#define DIFFACCEL_HOST_DEVICE
#endif

namespace diffaccel {

// abar[t] with abar[-1] = 1 ("the final step"), as reference.gather_abar.
DIFFACCEL_HOST_DEVICE inline float abar_at(const float* abar, int64_t t) { return t >= 0 ? abar[t] : 1.0f; }

// Per-sample weights of the multistep solvers (reference.dpmpp_2m_step / reference.unipc_step),
// computed in double from the float32 abar and rounded once to float, as the reference does:
//   x0     = clamp((x - s1a eps) / sa, -clip, clip) / thr           (thr: dynamic thresholding)
//   x_corr = cs x_last - ca (m0 + r1 (m1 - m0) + rt (x0 - m0))      (UniC; else x_corr = x_t)
//   x_prev = ps x_corr - pa (x0 + pk (x0_prev - x0)) + pn noise      (UniP / DPM-Solver++(2M))
// pn = 0 but for SDE-DPM-Solver++(2M) (`sde`), whose ps, pa, pn are reference.solver_weights'.
struct SolverWeights {
  float cs = 0, ca = 0, r1 = 0, rt = 0;
  float ps = 0, pa = 0, pk = 0, pn = 0;
};

// a(t) = sqrt(abar[t]), s(t) = sqrt(1 - abar[t]), lam(t) = log a - log s (+inf at t = -1).
struct AlphaSigma {
  double a, s, lam;
  DIFFACCEL_HOST_DEVICE AlphaSigma(const float* abar, int64_t t) {
    const double ab = abar_at(abar, t);
    a = ::sqrt(ab);
    s = ::sqrt(1.0 - ab);
    lam = ::log(a) - ::log(s);
  }
};

// t_last < 0: no history (first order); t_last2 < 0: a first-order corrector. `corrector`: UniC
// from (x_last, t_last) to t. The predictor is second order when `second_order`, t_last >= 0 and
// t_prev >= 0 (the final step, abar = 1, is always first order).
DIFFACCEL_HOST_DEVICE inline SolverWeights solver_weights(const float* abar, int64_t t, int64_t t_prev,
                                                          int64_t t_last, int64_t t_last2, bool corrector,
                                                          bool second_order, bool sde = false) {
  SolverWeights w;
  const AlphaSigma now(abar, t), next(abar, t_prev);
  if (corrector) {
    const AlphaSigma last(abar, t_last);
    const double h = now.lam - last.lam, hh = -h, b_h = ::expm1(hh);
    w.cs = static_cast<float>(now.s / last.s);
    w.ca = static_cast<float>(now.a * b_h);
    if (t_last2 >= 0) {  // R rho = b with R = [[1, 1], [rk, 1]] (reference.unipc_bh2_corrector_weights)
      const double rk = (AlphaSigma(abar, t_last2).lam - last.lam) / h;
      double phi = b_h / hh - 1;
      const double b1 = phi / b_h;
      phi = phi / hh - 0.5;
      const double b2 = phi * 2 / b_h;
      const double rho0 = (b1 - b2) / (1 - rk);
      w.r1 = static_cast<float>(rho0 / rk);
      w.rt = static_cast<float>(b1 - rho0);
    } else {
      w.rt = 0.5f;
    }
  }
  const double h = next.lam - now.lam;
  if (sde) {  // t_prev = -1: h = inf, so ps = 0, pa = -1, pn = 0 (x_prev = D), as the ODE form
    const double em2h = ::expm1(-2 * h);
    w.ps = static_cast<float>(next.s / now.s * ::exp(-h));
    w.pa = static_cast<float>(next.a * em2h);
    w.pn = static_cast<float>(next.s * ::sqrt(-em2h));
  } else {
    w.ps = static_cast<float>(next.s / now.s);
    w.pa = static_cast<float>(next.a * ::expm1(-h));
  }
  if (second_order && t_last >= 0 && t_prev >= 0) {
    w.pk = static_cast<float>(0.5 / ((AlphaSigma(abar, t_last).lam - now.lam) / h));
  }
  return w;
}

// Taps of reference.gaussian_kernel1d (torchvision): positions as float32
// torch.linspace(-(k-1)/2, (k-1)/2, k) computes them, exp(-x^2 / (2 sigma^2)), normalised.
inline std::vector<float> gaussian_taps(int64_t kernel_size, double sigma) {
  std::vector<float> taps(kernel_size);
  const float half = (kernel_size - 1) * 0.5f;
  const float step = kernel_size > 1 ? (2 * half) / static_cast<float>(kernel_size - 1) : 0.0f;
  std::vector<double> pdf(kernel_size);
  double sum = 0;
  for (int64_t i = 0; i < kernel_size; ++i) {
    // torch.linspace fills the first half from the start and the second half from the end.
    const float x = i < kernel_size / 2 ? -half + step * i : half - step * (kernel_size - 1 - i);
    const double z = static_cast<double>(x) / sigma;
    pdf[i] = std::exp(-0.5 * z * z);
    sum += pdf[i];
  }
  for (int64_t i = 0; i < kernel_size; ++i) taps[i] = static_cast<float>(pdf[i] / sum);
  return taps;
}

}  // namespace diffaccel
