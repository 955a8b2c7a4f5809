// Dynamic thresholding on the CPU (Imagen; diffusers' `_threshold_sample`): the one per-sample
// quantile every thresholding op uses (ddpm_step, dpmpp_2m_step, unipc_step), and the loop that
// spreads "quantile of a sample, then its step" over the threads.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/FunctionRef.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "vec_utils.h"

namespace diffaccel::cpu {

// Writes the values at flat positions [lo, lo + n) (n <= kBlock) to out[0, n): non-negative or NaN.
using BlockFill = c10::function_ref<void(int64_t lo, int64_t n, float* out)>;

// The `ratio` quantile of fill's values over [base, base + n), each divided by `divisor` (> 0),
// exactly as torch.quantile (linear interpolation: rank ratio (n - 1) in float32, torch's lerp
// between the two order statistics around it; NaN when any value is NaN). The values are
// recomputed by `fill` rather than stored, and read in `chunks` parallel tasks.
float quantile(BlockFill fill, int64_t base, int64_t n, float divisor, double ratio, int64_t chunks);

// s = clamp(q, 1, max_value) with NaN kept (a NaN sample stays NaN, as torch.clamp keeps it).
inline float threshold_scale(float q, double max_value) {
  return std::min(std::max(q, 1.0f), static_cast<float>(max_value));
}

// The |x0_hat| input of the quantile without the division by sqrt(abar_t) (a positive divisor
// keeps the order, so `quantile` divides the two order statistics only):
// |x_t - s1a eps|, eps = eps_u or the CFG combine eps_u + scale (eps_c - eps_u).
template <typename scalar_t>
struct AbsX0Numerator {
  const scalar_t* x_t;
  const scalar_t* eps_u;
  const scalar_t* eps_c;  // nullptr: no guidance
  float s1a, scale;

  void operator()(int64_t lo, int64_t n, float* out) const {
    const fVec s1(s1a), g(scale);
    const std::array<const scalar_t*, 3> in{x_t + lo, eps_u + lo, eps_c == nullptr ? nullptr : eps_c + lo};
    for_each_block<3>(in, out, 0, n, [&](const auto& f, float* o, int64_t m) {
      vloop(m, [&](int64_t i, int64_t r) {
        const fVec u = fVec::loadu(f[1] + i, r);
        const fVec e = f[2] == nullptr ? u : fmadd(g, fVec::loadu(f[2] + i, r) - u, u);
        fnmadd(s1, e, fVec::loadu(f[0] + i, r)).abs().store(o + i, r);
      });
    });
  }
};

// For each sample s of a batch: thr = on_sample(s, chunks) (its quantile, over `chunks` tasks),
// then step(s, lo, hi) over the sample in `chunks` parallel pieces. Whole samples per thread when
// the batch splits evenly: one parallel region, no barrier between a sample's quantile and its
// step (on a shared machine every barrier can wait for a descheduled thread), and the sample's
// inputs may still be cached for the step. Few samples: every thread on each.
template <typename OnSample, typename Step>
void for_each_thresholded_sample(int64_t batch, int64_t per_sample, const OnSample& on_sample, const Step& step) {
  auto run = [&](int64_t s, int64_t chunks) {
    on_sample(s, chunks);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        step(s, s * per_sample + k * per_sample / chunks, s * per_sample + (k + 1) * per_sample / chunks);
      }
    });
  };
  const int64_t threads = at::get_num_threads();
  if (threads == 1 || batch % threads == 0 || batch >= 4 * threads) {
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) run(s, 1);
    });
  } else {
    const int64_t chunks = std::min(threads, std::max<int64_t>(1, per_sample / kGrain));
    for (int64_t s = 0; s < batch; ++s) run(s, chunks);
  }
}

}  // namespace diffaccel::cpu
