// Sampler-step kernels: cfg_combine (SPEC A1.6), ddpm_step (A1.4 / B2.3, with CFG, the three
// variance types, x0 clipping and dynamic thresholding), ddim_step (with CFG), the multistep
// solvers (DPM-Solver++(2M), UniPC bh2; with CFG, clipping and dynamic thresholding) and the Heun
// flow step. Every thresholding step shares one per-sample quantile kernel (threshold_kernel).
// Semantics: diffaccel/reference.py. Launch counts: see launchers.h.
#include "common.cuh"

#include "../schedule.h"

namespace diffaccel {
namespace launch {
namespace detail {
namespace {

//! The inputs every step reads to form eps and x0_hat.
template <typename T>
struct EpsInputs {
  const T* x_t;
  const T* eps_u;
  const T* eps_c;  // nullptr: no guidance
  float scale;

  //! eps = eps_u + scale (eps_c - eps_u), kept in float32: fused, the guided eps is never
  //! stored, so the only rounding to T is the step's output (what the tests expect).
  template <int V>
  __device__ __forceinline__ void load_x_eps(int64_t i, float (&x)[V], float (&e)[V]) const {
    load<T, V>(x_t + i, x);
    load<T, V>(eps_u + i, e);
    if (eps_c != nullptr) {
      float c[V];
      load<T, V>(eps_c + i, c);
#pragma unroll
      for (int k = 0; k < V; ++k) e[k] = e[k] + scale * (c[k] - e[k]);
    }
  }
};

//! A step's EpsInputs, from its params (params.h).
template <typename T>
EpsInputs<T> eps_inputs(const StepInputs& p) {
  return {static_cast<const T*>(p.x_t), static_cast<const T*>(p.eps_uncond), static_cast<const T*>(p.eps_cond),
          p.scale};
}

//! x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t). One definition, so the quantile
//! kernel and the step see bit-identical x0_hat.
__device__ __forceinline__ float x0_hat(float x, float e, float sqrt_1m_at, float sqrt_at) {
  return (x - sqrt_1m_at * e) / sqrt_at;
}

// ----------------------------------------------------------------------------- cfg_combine
template <typename T>
struct CfgOp {
  const T* eps_u;
  const T* eps_c;
  float scale;
  T* out;

  struct Row {};
  __device__ Row row(int64_t) const { return {}; }

  template <int V>
  __device__ void apply(Row, int64_t i, int64_t) const {
    float u[V], c[V];
    load<T, V>(eps_u + i, u);
    load<T, V>(eps_c + i, c);
#pragma unroll
    for (int k = 0; k < V; ++k) u[k] = u[k] + scale * (c[k] - u[k]);
    store<T, V>(out + i, u);
  }
};

// ----------------------------------------------------------------------------- ddpm
enum class X0Bound : int { kNone = 0, kClip = 1, kThreshold = 2 };

template <typename T>
struct DdpmOp {
  EpsInputs<T> in;
  const float* abar;
  int64_t num_t;
  const int64_t* t;
  const int64_t* t_prev;
  const T* noise;               // nullptr: no noise
  const T* predicted_variance;  // learned_range only
  int variance_type;
  X0Bound bound;
  float clip_x0;
  const float* thresholds;  // [N] s per sample (kThreshold)
  T* out;

  struct Row {
    float sqrt_1m_at, sqrt_at;  // x0_hat
    float c_x0, c_xt;           // posterior mean coefficients
    float bound;                // |x0_hat| bound (clip c or threshold s), unused for kNone
    float std;                  // fixed variances; 0 when no noise is added
    float log_beta, log_small;  // learned_range
    bool noisy;
  };

  __device__ Row row(int64_t n) const {
    const float a_t = gather_abar(abar, num_t, t[n]);
    const float a_p = gather_abar(abar, num_t, t_prev[n]);
    const float alpha = a_t / a_p;
    const float beta = 1.f - alpha;
    Row r;
    r.sqrt_1m_at = sqrtf(1.f - a_t);
    r.sqrt_at = sqrtf(a_t);
    r.c_x0 = sqrtf(a_p) * beta / (1.f - a_t);
    r.c_xt = sqrtf(alpha) * (1.f - a_p) / (1.f - a_t);
    r.bound = bound == X0Bound::kThreshold ? thresholds[n] : clip_x0;
    // Noise only where t > 0 (reference / diffusers: the step from t = 0 adds none).
    r.noisy = noise != nullptr && t[n] > 0;
    const float small = clamp_nan((1.f - a_p) / (1.f - a_t) * beta, 1e-20f, INFINITY);
    r.std = variance_type == kFixedLarge ? sqrtf(beta) : sqrtf(small);
    r.log_beta = logf(beta);
    r.log_small = logf(small);
    return r;
  }

  template <int V>
  __device__ void apply(const Row& r, int64_t i, int64_t) const {
    float x[V], e[V];
    in.template load_x_eps<V>(i, x, e);
    float y[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float x0 = x0_hat(x[k], e[k], r.sqrt_1m_at, r.sqrt_at);
      if (bound == X0Bound::kThreshold)
        x0 = clamp_nan(x0, -r.bound, r.bound) / r.bound;  // s may be NaN: / propagates it
      else if (bound == X0Bound::kClip)
        x0 = clamp_nan(x0, -r.bound, r.bound);
      y[k] = r.c_x0 * x0 + r.c_xt * x[k];
    }
    if (r.noisy) {
      float z[V];
      load<T, V>(noise + i, z);
      if (variance_type == kLearnedRange) {
        float v[V];
        load<T, V>(predicted_variance + i, v);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float frac = (v[k] + 1.f) / 2.f;
          y[k] += expf(0.5f * (frac * r.log_beta + (1.f - frac) * r.log_small)) * z[k];
        }
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) y[k] += r.std * z[k];
      }
    }
    store<T, V>(out + i, y);
  }
};

// ----------------------------------------------------------------------------- dynamic threshold
constexpr int kSelectThreads = 512;
constexpr unsigned kFullMask = 0xffffffffu;

//! Per sample n (one block each): s = clamp(quantile(|x0_hat|, ratio), 1, max_value), as
//! torch.quantile (linear interpolation) over the float32 x0_hat of the step.
//!
//! |x0_hat| >= 0, so its bit patterns order like uint32: a 4-pass 8-bit radix select
//! (most significant byte first) finds the order statistic at rank floor(pos); a fifth pass
//! finds the next larger key when the rank-ceil(pos) element is not a tie. x0_hat is
//! recomputed from x_t / eps (+ cfg) each pass instead of being stored: reads are cheap,
//! and the step stays at two launches with an N-float scratch. NaN anywhere gives s = NaN
//! (torch.quantile's rule), which makes the sample's x0_hat NaN as in the reference.
//! Op: any step op with the members `in` (EpsInputs), `abar`, `num_t` and `t` (DdpmOp, SolverOp).
template <typename Op, int V>
__global__ void __launch_bounds__(kSelectThreads)
    threshold_kernel(const Op op, int64_t inner, float ratio, float max_value, float* thresholds) {
  __shared__ unsigned hist[256];
  __shared__ unsigned s_prefix, s_rank, s_count, s_min;

  const int64_t n = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float a_t = gather_abar(op.abar, op.num_t, op.t[n]);
  const float sqrt_1m_at = sqrtf(1.f - a_t), sqrt_at = sqrtf(a_t);
  const int64_t base = n * inner;

  // torch.quantile: q is a float32 tensor, rank = q * (n - 1) in float32.
  const float pos = ratio * static_cast<float>(inner - 1);
  const int64_t lo = static_cast<int64_t>(pos);
  const int64_t hi = static_cast<int64_t>(ceilf(pos));
  const float weight = pos - static_cast<float>(lo);

  // Calls fn(key, valid) for every |x0_hat| of the sample. The trip count is uniform over the
  // block, so every warp is converged at fn (it uses warp collectives).
  auto for_each_key = [&](auto&& fn) {
    for (int64_t j0 = 0; j0 < inner; j0 += static_cast<int64_t>(blockDim.x) * V) {
      const int64_t j = j0 + static_cast<int64_t>(threadIdx.x) * V;
      const bool valid = j < inner;
      float x[V] = {}, e[V] = {};
      if (valid) op.in.template load_x_eps<V>(base + j, x, e);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const unsigned key = valid ? __float_as_uint(fabsf(x0_hat(x[k], e[k], sqrt_1m_at, sqrt_at))) : 0u;
        fn(key, valid);
      }
    }
  };

  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_rank = static_cast<unsigned>(lo);
  }
  int saw_nan = 0;    // this thread's keys (set in pass 0)
  bool any_nan = false;
  unsigned mask = 0;  // key bits fixed so far
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    const unsigned prefix = s_prefix;
    for_each_key([&](unsigned key, bool valid) {
      const bool match = valid && (key & mask) == prefix;
      const unsigned bucket = match ? (key >> shift) & 0xffu : 256u;
      // Warp-aggregated increment: most keys share an exponent byte, so per-lane shared
      // atomics would serialise on one or two bins.
      const unsigned peers = __match_any_sync(kFullMask, bucket);
      if (match && lane == __ffs(peers) - 1) atomicAdd(&hist[bucket], __popc(peers));
      if (pass == 0 && valid && key > 0x7f800000u) saw_nan = 1;
    });
    any_nan = __syncthreads_or(saw_nan) != 0;
    if (warp == 0) {
      // Find the bin holding rank s_rank: each lane owns 8 bins; warp-inclusive scan.
      unsigned local[8], sum = 0;
#pragma unroll
      for (int b = 0; b < 8; ++b) {
        local[b] = hist[lane * 8 + b];
        sum += local[b];
      }
      unsigned incl = sum;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned y = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += y;
      }
      const unsigned k = s_rank;
      const unsigned excl = incl - sum;
      const bool mine = excl <= k && k < incl;
      __syncwarp();
      if (mine) {
        unsigned c = excl;
        for (int b = 0; b < 8; ++b) {
          if (k < c + local[b]) {
            s_prefix = prefix | (static_cast<unsigned>(lane * 8 + b) << shift);
            s_rank = k - c;
            s_count = local[b];
            break;
          }
          c += local[b];
        }
      }
    }
    __syncthreads();
    mask |= 0xffu << shift;
  }

  const unsigned key_lo = s_prefix;
  unsigned key_hi = key_lo;
  if (hi > lo && s_rank + 1 >= s_count) {  // block-uniform: the next order statistic is larger
    if (threadIdx.x == 0) s_min = 0xffffffffu;
    __syncthreads();
    unsigned m = 0xffffffffu;
    for_each_key([&](unsigned key, bool valid) {
      if (valid && key > key_lo && key < m) m = key;
    });
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = min(m, __shfl_xor_sync(kFullMask, m, o));
    if (lane == 0) atomicMin(&s_min, m);
    __syncthreads();
    key_hi = s_min;
  }

  if (threadIdx.x == 0) {
    const float v_lo = __uint_as_float(key_lo), v_hi = __uint_as_float(key_hi);
    // torch.lerp's two-sided formula, as torch.quantile uses it.
    const float q = weight < 0.5f ? v_lo + weight * (v_hi - v_lo) : v_hi - (v_hi - v_lo) * (1.f - weight);
    thresholds[n] = any_nan ? __uint_as_float(0x7fc00000u) : fminf(fmaxf(q, 1.f), max_value);
  }
}

//! Launch 1 of 2 of a thresholded step: s per sample into `thresholds` (stream order makes the
//! step's launch see it).
template <typename T, typename Op>
cudaError_t launch_threshold(const Op& op, int64_t n, int64_t inner, bool vec, float ratio, float max_value,
                             float* thresholds, cudaStream_t stream) {
  if (n > 0x7fffffff) return cudaErrorInvalidValue;
  constexpr int V = kVec<T>;
  const dim3 grid(static_cast<unsigned>(n));
  if (vec && inner % V == 0)
    threshold_kernel<Op, V><<<grid, kSelectThreads, 0, stream>>>(op, inner, ratio, max_value, thresholds);
  else
    threshold_kernel<Op, 1><<<grid, kSelectThreads, 0, stream>>>(op, inner, ratio, max_value, thresholds);
  return cudaGetLastError();
}

// ----------------------------------------------------------------------------- multistep solvers
//! reference.dpmpp_2m_step / unipc_step: x0 = thr(x0_hat); the UniC corrector (x_last given);
//! the UniP / DPM-Solver++(2M) predictor. Per-sample weights: schedule.h's solver_weights, in
//! double, once per row.
template <typename T>
struct SolverOp {
  EpsInputs<T> in;
  const float* abar;
  int64_t num_t;
  const int64_t* t;
  const int64_t* t_prev;
  const int64_t* t_last;   // nullptr: no history
  const int64_t* t_last2;  // nullptr: first-order corrector
  const T* x0_prev;
  const T* x_last;
  const T* x0_prev2;
  const T* noise;  // SDE-DPM-Solver++(2M) (dpmpp_2m_step only: no corrector); nullptr: the ODE form
  int mode;  // SolverStepParams::Mode
  bool second_order;
  X0Bound bound;
  float clip_x0;
  const float* thresholds;  // [N] s per sample (kThreshold)
  T* out;
  T* x0_out;
  T* x_corr_out;  // nullptr: not written

  struct Row {
    float sqrt_1m_at, sqrt_at, bound;
    SolverWeights w;
  };

  __device__ int64_t clamp_t(int64_t v) const { return v < num_t ? v : num_t - 1; }

  __device__ Row row(int64_t n) const {
    const float a_t = gather_abar(abar, num_t, t[n]);
    Row r;
    r.sqrt_1m_at = sqrtf(1.f - a_t);
    r.sqrt_at = sqrtf(a_t);
    r.bound = bound == X0Bound::kThreshold ? thresholds[n] : clip_x0;
    r.w = solver_weights(abar, clamp_t(t[n]), clamp_t(t_prev[n]), t_last ? clamp_t(t_last[n]) : -1,
                         t_last2 ? clamp_t(t_last2[n]) : -1, mode >= SolverStepParams::kCorrector1, second_order,
                         noise != nullptr);
    return r;
  }

  template <int V>
  __device__ void apply(const Row& r, int64_t i, int64_t) const {
    float x[V], e[V], m0[V] = {}, xl[V] = {}, m1[V] = {}, z[V] = {};
    in.template load_x_eps<V>(i, x, e);
    if (mode >= SolverStepParams::kPredictor2) load<T, V>(x0_prev + i, m0);
    if (mode >= SolverStepParams::kCorrector1) load<T, V>(x_last + i, xl);
    if (mode == SolverStepParams::kCorrector2) load<T, V>(x0_prev2 + i, m1);
    if (noise != nullptr) load<T, V>(noise + i, z);
    float y[V], x0v[V], xc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float x0 = x0_hat(x[k], e[k], r.sqrt_1m_at, r.sqrt_at);
      if (bound == X0Bound::kThreshold)
        x0 = clamp_nan(x0, -r.bound, r.bound) / r.bound;
      else if (bound == X0Bound::kClip)
        x0 = clamp_nan(x0, -r.bound, r.bound);
      float c = x[k];
      if (mode >= SolverStepParams::kCorrector1) {
        float corr = r.w.rt * (x0 - m0[k]);
        if (mode == SolverStepParams::kCorrector2) corr += r.w.r1 * (m1[k] - m0[k]);
        c = r.w.cs * xl[k] - r.w.ca * (m0[k] + corr);
      }
      float d = x0;
      if (mode >= SolverStepParams::kPredictor2) d = x0 + r.w.pk * (m0[k] - x0);
      y[k] = r.w.ps * c - r.w.pa * d + r.w.pn * z[k];
      x0v[k] = x0;
      xc[k] = c;
    }
    store<T, V>(out + i, y);
    store<T, V>(x0_out + i, x0v);
    if (x_corr_out != nullptr) store<T, V>(x_corr_out + i, xc);
  }
};

// ----------------------------------------------------------------------------- heun
template <typename T>
struct HeunOp {
  const T* x;
  const T* v;
  const T* v_next;
  float half_dt;
  T* out;

  struct Row {};
  __device__ Row row(int64_t) const { return {}; }

  template <int V>
  __device__ void apply(Row, int64_t i, int64_t) const {
    float a[V], b[V], c[V];
    load<T, V>(x + i, a);
    load<T, V>(v + i, b);
    load<T, V>(v_next + i, c);
#pragma unroll
    for (int k = 0; k < V; ++k) a[k] = a[k] + half_dt * (b[k] + c[k]);
    store<T, V>(out + i, a);
  }
};

// ----------------------------------------------------------------------------- ddim
template <typename T>
struct DdimOp {
  EpsInputs<T> in;
  const float* abar;
  int64_t num_t;
  const int64_t* t;
  const int64_t* t_prev;
  float eta;
  const T* noise;
  T* out;

  struct Row {
    float sqrt_1m_at, sqrt_at, sqrt_ap, c_eps, std;
  };

  __device__ Row row(int64_t n) const {
    const float a_t = gather_abar(abar, num_t, t[n]);
    const float a_p = gather_abar(abar, num_t, t_prev[n]);
    const float var = (1.f - a_p) / (1.f - a_t) * (1.f - a_t / a_p);
    const float std = eta * sqrtf(var);
    const float dir = 1.f - a_p - std * std;
    Row r;
    r.sqrt_1m_at = sqrtf(1.f - a_t);
    r.sqrt_at = sqrtf(a_t);
    r.sqrt_ap = sqrtf(a_p);
    r.c_eps = sqrtf(dir != dir ? dir : fmaxf(dir, 0.f));  // clamp(min=0), NaN kept
    r.std = std;
    return r;
  }

  template <int V>
  __device__ void apply(const Row& r, int64_t i, int64_t) const {
    float x[V], e[V];
    in.template load_x_eps<V>(i, x, e);
#pragma unroll
    for (int k = 0; k < V; ++k) x[k] = r.sqrt_ap * x0_hat(x[k], e[k], r.sqrt_1m_at, r.sqrt_at) + r.c_eps * e[k];
    if (noise != nullptr && eta > 0.f) {
      float z[V];
      load<T, V>(noise + i, z);
#pragma unroll
      for (int k = 0; k < V; ++k) x[k] += r.std * z[k];
    }
    store<T, V>(out + i, x);
  }
};

bool bad_step_args(const StepInputs& p) {
  return p.n < 0 || p.inner < 0 || p.num_timesteps <= 0 || !p.x_t || !p.eps_uncond || !p.alphas_cumprod || !p.t ||
         !p.t_prev || !p.out;
}

//! The StepInputs pointers allow 16-byte vector access (the op's own extra pointers come on top).
bool aligned_step(const StepInputs& p) {
  return aligned16(p.x_t) && aligned16(p.eps_uncond) && aligned16(p.eps_cond) && aligned16(p.out);
}

}  // namespace
}  // namespace detail
}  // namespace launch
}  // namespace diffaccel

// Qualified definitions: a signature that drifts from launchers.h is a compile error.
namespace da = diffaccel::launch;

cudaError_t da::cfg_combine(DType dtype, const void* eps_uncond, const void* eps_cond, float scale, void* out,
                            int64_t numel, cudaStream_t stream) {
  using namespace detail;
  if (numel < 0) return cudaErrorInvalidValue;
  if (numel == 0) return cudaSuccess;
  if (!eps_uncond || !eps_cond || !out) return cudaErrorInvalidValue;
  const bool vec = aligned16(eps_uncond) && aligned16(eps_cond) && aligned16(out);
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const CfgOp<T> op{static_cast<const T*>(eps_uncond), static_cast<const T*>(eps_cond), scale,
                      static_cast<T*>(out)};
    return launch_rows<T>(op, 1, numel, vec, stream);
  });
}

cudaError_t da::ddpm_step(DType dtype, const DdpmStepParams& p, float* scratch, cudaStream_t stream) {
  using namespace detail;
  // The schema's doubles, rounded as the launch takes them.
  const float clip_x0 = static_cast<float>(p.clip_x0), threshold_ratio = static_cast<float>(p.threshold_ratio),
              threshold_max = static_cast<float>(p.threshold_max);
  if (bad_step_args(p)) return cudaErrorInvalidValue;
  if (p.variance_type < kFixedSmall || p.variance_type > kLearnedRange) return cudaErrorInvalidValue;
  if (p.variance_type == kLearnedRange && p.noise != nullptr && p.predicted_variance == nullptr)
    return cudaErrorInvalidValue;
  const bool threshold = threshold_ratio > 0.f;
  if (threshold && (threshold_ratio > 1.f || !(threshold_max >= 1.f) || scratch == nullptr ||
                    p.inner >= (int64_t{1} << 31)))
    return cudaErrorInvalidValue;
  if (p.n == 0 || p.inner == 0) return cudaSuccess;
  const bool vec = aligned_step(p) && aligned16(p.noise) && aligned16(p.predicted_variance);
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    const DdpmOp<T> op{eps_inputs<T>(p), p.alphas_cumprod, p.num_timesteps, p.t, p.t_prev,
                       static_cast<const T*>(p.noise), static_cast<const T*>(p.predicted_variance), p.variance_type,
                       threshold ? X0Bound::kThreshold : (clip_x0 > 0.f ? X0Bound::kClip : X0Bound::kNone),
                       clip_x0, scratch, static_cast<T*>(p.out)};
    if (threshold) {
      const cudaError_t err =
          launch_threshold<T>(op, p.n, p.inner, vec, threshold_ratio, threshold_max, scratch, stream);
      if (err != cudaSuccess) return err;
    }
    return launch_rows<T>(op, p.n, p.inner, vec, stream);
  });
}

cudaError_t da::ddim_step(DType dtype, const DdimStepParams& p, cudaStream_t stream) {
  using namespace detail;
  const float eta = static_cast<float>(p.eta);  // the schema's double, rounded as the launch takes it
  if (bad_step_args(p) || eta < 0.f) return cudaErrorInvalidValue;
  if (p.n == 0 || p.inner == 0) return cudaSuccess;
  const bool vec = aligned_step(p) && aligned16(p.noise);
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const DdimOp<T> op{eps_inputs<T>(p), p.alphas_cumprod, p.num_timesteps, p.t, p.t_prev, eta,
                       static_cast<const T*>(p.noise), static_cast<T*>(p.out)};
    return launch_rows<T>(op, p.n, p.inner, vec, stream);
  });
}

cudaError_t da::solver_step(DType dtype, const SolverStepParams& p, float* scratch, cudaStream_t stream) {
  using namespace detail;
  if (bad_step_args(p) || !p.x0_out || (p.x0_prev != nullptr) != (p.t_last != nullptr) ||
      (p.x0_prev2 != nullptr) != (p.t_last2 != nullptr) || (p.x_last != nullptr && p.x0_prev == nullptr) ||
      (p.x0_prev2 != nullptr && p.x_last == nullptr) || (p.predictor_order != 1 && p.predictor_order != 2) ||
      (p.noise != nullptr && p.x_last != nullptr))
    return cudaErrorInvalidValue;
  const bool threshold = p.threshold_ratio > 0.f;
  if (threshold && (p.threshold_ratio > 1.f || !(p.threshold_max >= 1.f) || scratch == nullptr ||
                    p.inner >= (int64_t{1} << 31)))
    return cudaErrorInvalidValue;
  if (p.n == 0 || p.inner == 0) return cudaSuccess;
  const bool vec = aligned_step(p) && aligned16(p.x0_prev) && aligned16(p.x_last) && aligned16(p.x0_prev2) &&
                   aligned16(p.x0_out) && aligned16(p.x_corr_out) && aligned16(p.noise);
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    const SolverOp<T> op{eps_inputs<T>(p), p.alphas_cumprod, p.num_timesteps, p.t, p.t_prev, p.t_last, p.t_last2,
                         static_cast<const T*>(p.x0_prev), static_cast<const T*>(p.x_last),
                         static_cast<const T*>(p.x0_prev2), static_cast<const T*>(p.noise), static_cast<int>(p.mode()),
                         p.predictor_order == 2,
                         threshold ? X0Bound::kThreshold : (p.clip_x0 > 0.f ? X0Bound::kClip : X0Bound::kNone),
                         p.clip_x0, scratch, static_cast<T*>(p.out), static_cast<T*>(p.x0_out),
                         static_cast<T*>(p.x_corr_out)};
    if (threshold) {
      const cudaError_t err =
          launch_threshold<T>(op, p.n, p.inner, vec, p.threshold_ratio, p.threshold_max, scratch, stream);
      if (err != cudaSuccess) return err;
    }
    return launch_rows<T>(op, p.n, p.inner, vec, stream);
  });
}

cudaError_t da::heun_step(DType dtype, const void* x, const void* v, const void* v_next, float dt, void* out,
                          int64_t numel, cudaStream_t stream) {
  using namespace detail;
  if (numel < 0) return cudaErrorInvalidValue;
  if (numel == 0) return cudaSuccess;
  if (!x || !v || !v_next || !out) return cudaErrorInvalidValue;
  const bool vec = aligned16(x) && aligned16(v) && aligned16(v_next) && aligned16(out);
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const HeunOp<T> op{static_cast<const T*>(x), static_cast<const T*>(v), static_cast<const T*>(v_next),
                       0.5f * dt, static_cast<T*>(out)};
    return launch_rows<T>(op, 1, numel, vec, stream);
  });
}
