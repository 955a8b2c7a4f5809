// CPU kernels of the multistep solvers: DPM-Solver++(2M) and its SDE form (Lu et al. 2022) and UniPC with
// B(h) = expm1(-h) (Zhao et al. 2023), data prediction, with the CFG combine and x0 clipping /
// dynamic thresholding fused in, and the Heun step of flow matching. Semantics are exactly
// diffaccel/reference.py's. A step is one pass over memory (two with dynamic thresholding, whose
// per-sample quantile of |x0_hat| comes first: quantile.h): guidance, x0_hat, the UniC corrector
// and the UniP / DPM-Solver++ predictor are one linear combination per sample (schedule.h's
// solver_weights), and every result (the new sample, x0 for the history, the corrected sample)
// is written from the same registers.
#include <ATen/Dispatch.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "../checks.h"
#include "../schedule.h"
#include "../params.h"
#include "quantile.h"
#include "kernels.h"
#include "vec_utils.h"

namespace diffaccel::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using Mode = SolverStepParams::Mode;
constexpr Mode kFirstOrder = SolverStepParams::kFirstOrder, kPredictor2 = SolverStepParams::kPredictor2,
               kCorrector1 = SolverStepParams::kCorrector1, kCorrector2 = SolverStepParams::kCorrector2;

struct SolverSample {
  float s1a, sa;        // x0 = clamp((x - s1a eps) / sa, lo, hi) / thr
  float lo, hi, thr;
  SolverWeights w;
};

// in = {x_t, eps_u, eps_c, x0_prev, x_last, x0_prev2, noise}; out = {x_prev, x0, x_corr}. Every
// input of a vector is loaded before its outputs are stored (outputs may alias inputs). kNoise:
// SDE-DPM-Solver++(2M)'s pn * noise (the predictor modes only; the weights say SDE).
template <bool kCfg, int kMode, bool kNoise = false>
void solver_block(const std::array<const float*, 7>& in, const std::array<float*, 3>& out, int64_t n,
                  const SolverSample& c, const fVec& g) {
  const fVec s1a(c.s1a), sa(c.sa), lo(c.lo), hi(c.hi), thr(c.thr);
  const fVec cs(c.w.cs), ca(c.w.ca), r1(c.w.r1), rt(c.w.rt), ps(c.w.ps), pa(c.w.pa), pk(c.w.pk), pn(c.w.pn);
  vloop(n, [&](int64_t i, int64_t r) {
    const fVec x = fVec::loadu(in[0] + i, r);
    const fVec u = fVec::loadu(in[1] + i, r);
    fVec e = u;
    if constexpr (kCfg) e = fmadd(g, fVec::loadu(in[2] + i, r) - u, u);
    fVec m0(0.0f), xl(0.0f), m1(0.0f);
    if constexpr (kMode >= kPredictor2) m0 = fVec::loadu(in[3] + i, r);
    if constexpr (kMode >= kCorrector1) xl = fVec::loadu(in[4] + i, r);
    if constexpr (kMode == kCorrector2) m1 = fVec::loadu(in[5] + i, r);
    fVec z(0.0f);
    if constexpr (kNoise) z = fVec::loadu(in[6] + i, r);

    const fVec x0 = at::vec::clamp(fnmadd(s1a, e, x) / sa, lo, hi) / thr;
    fVec xc = x;
    if constexpr (kMode >= kCorrector1) {
      fVec corr = rt * (x0 - m0);
      if constexpr (kMode == kCorrector2) corr = fmadd(r1, m1 - m0, corr);
      xc = cs * xl - ca * (m0 + corr);
    }
    fVec d = x0;
    if constexpr (kMode >= kPredictor2) d = fmadd(pk, m0 - x0, x0);
    fVec y = ps * xc - pa * d;
    if constexpr (kNoise) y = fmadd(pn, z, y);
    y.store(out[0] + i, r);
    x0.store(out[1] + i, r);
    xc.store(out[2] + i, r);
  });
}

template <bool kCfg>
void solver_block_any(const std::array<const float*, 7>& in, const std::array<float*, 3>& out, int64_t n,
                      const SolverSample& c, const fVec& g, int mode) {
  if (in[6] != nullptr) {  // noise: dpmpp_2m_step only, so no corrector
    return mode == kFirstOrder ? solver_block<kCfg, kFirstOrder, true>(in, out, n, c, g)
                               : solver_block<kCfg, kPredictor2, true>(in, out, n, c, g);
  }
  switch (mode) {
    case kFirstOrder: return solver_block<kCfg, kFirstOrder>(in, out, n, c, g);
    case kPredictor2: return solver_block<kCfg, kPredictor2>(in, out, n, c, g);
    case kCorrector1: return solver_block<kCfg, kCorrector1>(in, out, n, c, g);
    default: return solver_block<kCfg, kCorrector2>(in, out, n, c, g);
  }
}

// The one multistep kernel behind dpmpp_2m_step (no corrector, x_corr not written) and unipc_step;
// arguments checked by solver_params (solver_step.h).
void run_solver(const SolverStepParams& p, const at::Tensor& x_t) {
  if (p.n == 0 || p.inner == 0) return;
  const int mode = p.mode();
  const bool threshold = p.threshold_ratio > 0;
  const float clip = !threshold && p.clip_x0 > 0 ? p.clip_x0 : std::numeric_limits<float>::infinity();
  std::vector<SolverSample> coef(p.n);
  for (int64_t i = 0; i < p.n; ++i) {
    const float a_t = abar_at(p.alphas_cumprod, p.t[i]);
    coef[i] = {std::sqrt(1.0f - a_t), std::sqrt(a_t), -clip, clip, 1.0f,
               solver_weights(p.alphas_cumprod, p.t[i], p.t_prev[i], p.t_last ? p.t_last[i] : -1,
                              p.t_last2 ? p.t_last2[i] : -1, mode >= kCorrector1, p.predictor_order == 2,
                              p.noise != nullptr)};
  }
  const int64_t per_sample = p.inner;
  const fVec g(p.scale);
  const bool cfg = p.eps_cond != nullptr;

  DIFFACCEL_DISPATCH(x_t.scalar_type(), "multistep_step", [&] {
    auto in_ptr = [](const void* v) { return static_cast<const scalar_t*>(v); };
    const std::array<const scalar_t*, 7> in{in_ptr(p.x_t),     in_ptr(p.eps_uncond), in_ptr(p.eps_cond),
                                            in_ptr(p.x0_prev), in_ptr(p.x_last),     in_ptr(p.x0_prev2),
                                            in_ptr(p.noise)};
    const std::array<scalar_t*, 3> dst{static_cast<scalar_t*>(p.out), static_cast<scalar_t*>(p.x0_out),
                                       static_cast<scalar_t*>(p.x_corr_out)};
    // The step over [lo, hi) of sample s; `stream` (std::true_type) writes with streaming stores.
    auto step_with = [&](auto stream, int64_t s, int64_t lo, int64_t hi) {
      for_each_block_out<7, 3, decltype(stream)::value>(in, dst, lo, hi, [&](const auto& f, const auto& o, int64_t n) {
        cfg ? solver_block_any<true>(f, o, n, coef[s], g, mode) : solver_block_any<false>(f, o, n, coef[s], g, mode);
      });
    };
    auto step = [&](int64_t s, int64_t lo, int64_t hi) { step_with(std::false_type{}, s, lo, hi); };
    if (!threshold) {
      at::parallel_for(0, p.n * per_sample, kGrain, [&](int64_t begin, int64_t end) {
        for_each_segment(begin, end, per_sample, step);
      });
      return;
    }
    // As ddpm_step's thresholded path (step_ops.cpp): outputs larger than the last-level cache are
    // written with streaming stores, no read for ownership (the quantile pass already evicted them).
    const bool stream = x_t.scalar_type() == at::kFloat && p.n * per_sample * 4 >= kStreamBytes;
    for_each_thresholded_sample(
        p.n, per_sample,
        [&](int64_t s, int64_t chunks) {
          const AbsX0Numerator<scalar_t> fill{in[0], in[1], in[2], coef[s].s1a, p.scale};
          const float thr = threshold_scale(
              quantile(fill, s * per_sample, per_sample, coef[s].sa, p.threshold_ratio, chunks), p.threshold_max);
          coef[s].lo = -thr;
          coef[s].hi = thr;
          coef[s].thr = thr;
        },
        [&](int64_t s, int64_t lo, int64_t hi) {
          stream ? step_with(std::true_type{}, s, lo, hi) : step(s, lo, hi);
        });
  });
}

// Flow matching, second-order Heun: out = x + dt/2 (v + v_next), elementwise over any shape.
void heun_step(const at::Tensor& x, const at::Tensor& v, const at::Tensor& v_next, double dt, at::Tensor out) {
  check_image("x", x);
  check_like("v", v, x);
  check_like("v_next", v_next, x);
  check_like("out", out, x);
  const fVec half_dt(static_cast<float>(0.5 * dt));
  DIFFACCEL_DISPATCH(x.scalar_type(), "heun_step", [&] {
    const std::array<const scalar_t*, 3> in{x.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                                            v_next.const_data_ptr<scalar_t>()};
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_block<3>(in, op, begin, end, [&](const auto& f, float* o, int64_t n) {
        vmap(f, o, n, [&](fVec a, fVec b, fVec c) { return fmadd(half_dt, b + c, a); });
      });
    });
  });
}

}  // namespace

// This level's entry points, for the table of csrc/cpu/dispatch.cpp (called there only when the
// CPU has this level).
void fill_solver_kernels(CpuKernels& k) {
  k.run_solver = &run_solver;
  k.heun_step = &heun_step;
}

}  // namespace CPU_CAPABILITY
}  // namespace diffaccel::cpu
