// CPU kernels of the sampler-step family: cfg_combine (SPEC A1.6), the DDPM posterior step with
// optional CFG, learned-range variance, x0 clipping and dynamic thresholding (SPEC A1.4 / B2.3),
// and the DDIM step. Semantics are exactly diffaccel/reference.py's; guidance, x0_hat, the
// posterior mean and the noise term are fused into one pass over memory (two with dynamic
// thresholding, which needs a per-sample quantile of |x0_hat| first: quantile.h).
#include <ATen/Dispatch.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "../checks.h"
#include "../params.h"
#include "../schedule.h"
#include "quantile.h"
#include "kernels.h"
#include "vec_utils.h"

namespace diffaccel::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// A step's inputs as the blocks read them: {x_t, eps_u, eps_c, extra0, extra1} (nullptr: absent).
template <typename T>
std::array<const T*, 5> typed_inputs(const StepInputs& p, const void* extra0, const void* extra1) {
  return {static_cast<const T*>(p.x_t), static_cast<const T*>(p.eps_uncond), static_cast<const T*>(p.eps_cond),
          static_cast<const T*>(extra0), static_cast<const T*>(extra1)};
}

// Guided eps on one vector: eps_u + scale (eps_c - eps_u), or eps_u without guidance. Kept in
// float32: fused, the guided eps is never stored, so the step's output is the only rounding to
// the storage dtype (functional._TorchBackend composes the reference the same way).
template <bool kCfg>
inline fVec guided_eps(const std::array<const float*, 5>& in, int64_t i, int64_t r, const fVec& scale) {
  const fVec u = fVec::loadu(in[1] + i, r);
  if constexpr (kCfg) {
    return fmadd(scale, fVec::loadu(in[2] + i, r) - u, u);
  } else {
    return u;
  }
}

// out = eps_u + scale (eps_c - eps_u), elementwise over any shape.
void cfg_combine(const at::Tensor& eps_u, const at::Tensor& eps_c, double scale, at::Tensor out) {
  check_image("eps_uncond", eps_u);
  check_like("eps_cond", eps_c, eps_u);
  check_like("out", out, eps_u);
  const fVec g(static_cast<float>(scale));
  DIFFACCEL_DISPATCH(eps_u.scalar_type(), "cfg_combine", [&] {
    const scalar_t* up = eps_u.const_data_ptr<scalar_t>();
    const scalar_t* cp = eps_c.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, eps_u.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_block<2>(std::array{up, cp}, op, begin, end, [&](const auto& in, float* o, int64_t n) {
        vmap(in, o, n, [&](fVec u, fVec c) { return fmadd(g, c - u, u); });
      });
    });
  });
}

// ----------------------------------------------------------------------------- DDPM
// Per-sample constants of reference.ddpm_step, in float32 like the reference.
struct DdpmSample {
  float s1a, sa;      // sqrt(1 - abar_t), sqrt(abar_t): x0_hat = (x - s1a eps) / sa
  float c_x0, c_xt;   // mean = c_x0 x0_hat + c_xt x_t (c_x0 also carries 1/s of thresholding)
  float std;          // fixed_small / fixed_large standard deviation
  float lv_a, lv_b;   // learned_range: std = exp(lv_a + lv_b * predicted_variance)
  float clip;         // x0_hat is clamped to [-clip, clip] (inf: no clamp)
  bool noisy;         // noise given and t > 0
};

// clip_x0 <= 0: no clamp (the thresholded step passes 0: its bound comes later).
std::vector<DdpmSample> ddpm_constants(const DdpmStepParams& p, double clip_x0) {
  std::vector<DdpmSample> c(p.n);
  for (int64_t i = 0; i < p.n; ++i) {
    const float a_t = abar_at(p.alphas_cumprod, p.t[i]), a_p = abar_at(p.alphas_cumprod, p.t_prev[i]);
    const float alpha = a_t / a_p, beta = 1.0f - alpha;
    DdpmSample& s = c[i];
    s.s1a = std::sqrt(1.0f - a_t);
    s.sa = std::sqrt(a_t);
    s.c_x0 = std::sqrt(a_p) * beta / (1.0f - a_t);
    s.c_xt = std::sqrt(alpha) * (1.0f - a_p) / (1.0f - a_t);
    const float small = std::max((1.0f - a_p) / (1.0f - a_t) * beta, 1e-20f);
    s.std = p.variance_type == 1 ? std::sqrt(beta) : std::sqrt(small);
    // 0.5 (frac log beta + (1 - frac) log small) with frac = (v + 1) / 2, as lv_a + lv_b v.
    const float half_span = 0.25f * (std::log(beta) - std::log(small));
    s.lv_a = 0.5f * std::log(small) + half_span;
    s.lv_b = half_span;
    s.clip = clip_x0 > 0 ? static_cast<float>(clip_x0) : std::numeric_limits<float>::infinity();
    s.noisy = p.noise != nullptr && p.t[i] > 0;
  }
  return c;
}

// in = {x_t, eps_u, eps_c, noise, predicted_variance}; kNoise: 0 none, 1 per-sample std, 2 learned.
template <bool kCfg, int kNoise>
void ddpm_block(const std::array<const float*, 5>& in, float* o, int64_t n, const DdpmSample& c, const fVec& g) {
  const fVec s1a(c.s1a), sa(c.sa), c_x0(c.c_x0), c_xt(c.c_xt), sd(c.std), lv_a(c.lv_a), lv_b(c.lv_b);
  const fVec lo(-c.clip), hi(c.clip);
  vloop(n, [&](int64_t i, int64_t r) {
    const fVec x = fVec::loadu(in[0] + i, r);
    const fVec e = guided_eps<kCfg>(in, i, r, g);
    const fVec x0 = at::vec::clamp(fnmadd(s1a, e, x) / sa, lo, hi);
    fVec y = fmadd(c_x0, x0, c_xt * x);
    if constexpr (kNoise == 1) {
      y = fmadd(sd, fVec::loadu(in[3] + i, r), y);
    } else if constexpr (kNoise == 2) {
      const fVec std_learned = fmadd(lv_b, fVec::loadu(in[4] + i, r), lv_a).exp_u20();
      y = fmadd(std_learned, fVec::loadu(in[3] + i, r), y);
    }
    y.store(o + i, r);
  });
}

template <bool kCfg>
void ddpm_block_any(const std::array<const float*, 5>& in, float* o, int64_t n, const DdpmSample& c, const fVec& g,
                    int32_t variance_type) {
  if (!c.noisy) {
    ddpm_block<kCfg, 0>(in, o, n, c, g);
  } else if (variance_type == 2) {
    ddpm_block<kCfg, 2>(in, o, n, c, g);
  } else {
    ddpm_block<kCfg, 1>(in, o, n, c, g);
  }
}

// The DDPM step (arguments checked by ddpm_step_op, csrc/step_entry.h).
void run_ddpm(const DdpmStepParams& p, const at::Tensor& x_t) {
  if (p.n == 0 || p.inner == 0) return;

  const bool threshold = p.threshold_ratio > 0;
  auto coef = ddpm_constants(p, threshold ? 0.0 : p.clip_x0);
  const int64_t per_sample = p.inner;
  const fVec g(p.scale);
  const bool cfg = p.eps_cond != nullptr;
  const int32_t variance_type = p.variance_type;

  DIFFACCEL_DISPATCH(x_t.scalar_type(), "ddpm_step", [&] {
    const auto in = typed_inputs<scalar_t>(p, p.noise, p.predicted_variance);
    scalar_t* op = static_cast<scalar_t*>(p.out);
    // The step over [lo, hi) of sample s, given its constants; `stream` (std::true_type) writes
    // `out` with streaming stores.
    auto step_with = [&](auto stream, int64_t s, int64_t lo, int64_t hi) {
      for_each_block<5, decltype(stream)::value>(in, op, lo, hi, [&](const auto& f, float* o, int64_t n) {
        cfg ? ddpm_block_any<true>(f, o, n, coef[s], g, variance_type)
            : ddpm_block_any<false>(f, o, n, coef[s], g, variance_type);
      });
    };
    auto step = [&](int64_t s, int64_t lo, int64_t hi) { step_with(std::false_type{}, s, lo, hi); };
    if (!threshold) {
      at::parallel_for(0, p.n * per_sample, kGrain, [&](int64_t begin, int64_t end) {
        for_each_segment(begin, end, per_sample, step);
      });
      return;
    }
    // Dynamic thresholding: per sample s = clamp(quantile of |x0_hat|, 1, max) (quantile.h), then
    // the step clamps x0_hat to [-s, s], the 1/s being folded into the mean's coefficient.
    // Outputs larger than the last-level cache are written with streaming stores: no read for
    // ownership of `out`.
    const bool stream = x_t.scalar_type() == at::kFloat && p.n * per_sample * 4 >= kStreamBytes;
    for_each_thresholded_sample(
        p.n, per_sample,
        [&](int64_t s, int64_t chunks) {
          const AbsX0Numerator<scalar_t> fill{in[0], in[1], in[2], coef[s].s1a, p.scale};
          const float thr = threshold_scale(
              quantile(fill, s * per_sample, per_sample, coef[s].sa, p.threshold_ratio, chunks), p.threshold_max);
          coef[s].clip = thr;
          coef[s].c_x0 /= thr;
        },
        [&](int64_t s, int64_t lo, int64_t hi) {
          stream ? step_with(std::true_type{}, s, lo, hi) : step(s, lo, hi);
        });
  });
}

// ----------------------------------------------------------------------------- DDIM
struct DdimSample {
  float s1a, sa;  // x0_hat = (x - s1a eps) / sa
  float sap;      // sqrt(abar_prev)
  float dir;      // sqrt(max(1 - abar_prev - sigma^2, 0)), the "direction pointing to x_t"
  float sigma;    // eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))
  bool noisy;     // noise given and eta > 0
};

template <bool kCfg, bool kNoise>
void ddim_block(const std::array<const float*, 5>& in, float* o, int64_t n, const DdimSample& c, const fVec& g) {
  const fVec s1a(c.s1a), sa(c.sa), sap(c.sap), dir(c.dir), sigma(c.sigma);
  vloop(n, [&](int64_t i, int64_t r) {
    const fVec x = fVec::loadu(in[0] + i, r);
    const fVec e = guided_eps<kCfg>(in, i, r, g);
    const fVec x0 = fnmadd(s1a, e, x) / sa;
    fVec y = fmadd(sap, x0, dir * e);
    if constexpr (kNoise) y = fmadd(sigma, fVec::loadu(in[3] + i, r), y);
    y.store(o + i, r);
  });
}

// The DDIM step (arguments checked by ddim_step_op, csrc/step_entry.h).
void run_ddim(const DdimStepParams& p, const at::Tensor& x_t) {
  if (p.n == 0 || p.inner == 0) return;

  std::vector<DdimSample> coef(p.n);
  for (int64_t i = 0; i < p.n; ++i) {
    const float a_t = abar_at(p.alphas_cumprod, p.t[i]), a_p = abar_at(p.alphas_cumprod, p.t_prev[i]);
    const float var = (1.0f - a_p) / (1.0f - a_t) * (1.0f - a_t / a_p);
    const float sigma = static_cast<float>(p.eta) * std::sqrt(var);
    coef[i] = {std::sqrt(1.0f - a_t), std::sqrt(a_t), std::sqrt(a_p), std::sqrt(std::max(1.0f - a_p - sigma * sigma, 0.0f)),
               sigma, p.noise != nullptr && p.eta > 0};
  }
  const int64_t per_sample = p.inner;
  const fVec g(p.scale);
  const bool cfg = p.eps_cond != nullptr;

  DIFFACCEL_DISPATCH(x_t.scalar_type(), "ddim_step", [&] {
    const auto in = typed_inputs<scalar_t>(p, p.noise, nullptr);
    scalar_t* op = static_cast<scalar_t*>(p.out);
    at::parallel_for(0, p.n * per_sample, kGrain, [&](int64_t begin, int64_t end) {
      for_each_segment(begin, end, per_sample, [&](int64_t s, int64_t lo, int64_t hi) {
        const DdimSample& c = coef[s];
        for_each_block<5>(in, op, lo, hi, [&](const auto& f, float* o, int64_t n) {
          if (cfg) {
            c.noisy ? ddim_block<true, true>(f, o, n, c, g) : ddim_block<true, false>(f, o, n, c, g);
          } else {
            c.noisy ? ddim_block<false, true>(f, o, n, c, g) : ddim_block<false, false>(f, o, n, c, g);
          }
        });
      });
    });
  });
}

}  // namespace

// This level's entry points, for the table of csrc/cpu/dispatch.cpp (called there only when the
// CPU has this level).
void fill_step_kernels(CpuKernels& k) {
  k.cfg_combine = &cfg_combine;
  k.run_ddpm = &run_ddpm;
  k.run_ddim = &run_ddim;
}

}  // namespace CPU_CAPABILITY
}  // namespace diffaccel::cpu
