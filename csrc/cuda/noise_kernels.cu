// Forward-process kernels: add_noise (SPEC A1.1), predict_x0 (A1.3), masked_project (A1.7.2).
// Semantics: diffaccel/reference.py. One launch each; see launchers.h for the conventions.
#include "common.cuh"

namespace diffaccel {
namespace launch {
namespace detail {
namespace {

struct SqrtPair {
  float a;  // sqrt(abar_t)
  float b;  // sqrt(1 - abar_t)
};

__device__ __forceinline__ SqrtPair sqrt_pair(const float* abar, int64_t num_t, int64_t t) {
  const float a = gather_abar(abar, num_t, t);
  return {sqrtf(a), sqrtf(1.f - a)};
}

//! out = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; one row per sample.
template <typename T>
struct AddNoiseOp {
  const T* x0;
  const T* noise;
  const float* abar;
  int64_t num_t;
  const int64_t* t;
  T* out;

  __device__ SqrtPair row(int64_t r) const { return sqrt_pair(abar, num_t, t[r]); }

  template <int V>
  __device__ void apply(const SqrtPair& c, int64_t i, int64_t) const {
    float x[V], e[V];
    load<T, V>(x0 + i, x);
    load<T, V>(noise + i, e);
#pragma unroll
    for (int k = 0; k < V; ++k) x[k] = c.a * x[k] + c.b * e[k];
    store<T, V>(out + i, x);
  }
};

//! out = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); a true division, as the reference.
template <typename T>
struct PredictX0Op {
  const T* x_t;
  const T* eps;
  const float* abar;
  int64_t num_t;
  const int64_t* t;
  T* out;

  __device__ SqrtPair row(int64_t r) const { return sqrt_pair(abar, num_t, t[r]); }

  template <int V>
  __device__ void apply(const SqrtPair& c, int64_t i, int64_t) const {
    float x[V], e[V];
    load<T, V>(x_t + i, x);
    load<T, V>(eps + i, e);
#pragma unroll
    for (int k = 0; k < V; ++k) x[k] = (x[k] - c.b * e[k]) / c.a;
    store<T, V>(out + i, x);
  }
};

//! out = m x_t + (1 - m) (sqrt(abar_t) x_orig + sqrt(1 - abar_t) noise); one row per (n, c)
//! plane, so the broadcast mask's plane offset is computed once per row.
template <typename T>
struct MaskedProjectOp {
  const T* x_t;
  const T* x_orig;
  const T* mask;
  const T* noise;
  const float* abar;
  int64_t num_t;
  const int64_t* t;
  T* out;
  int64_t channels, hw, mask_n, mask_c;

  struct Row {
    SqrtPair c;
    const T* mask_plane;
  };

  __device__ Row row(int64_t r) const {
    const int64_t n = r / channels, ch = r - n * channels;
    const int64_t plane = (mask_n > 1 ? n : 0) * mask_c + (mask_c > 1 ? ch : 0);
    return {sqrt_pair(abar, num_t, t[n]), mask + plane * hw};
  }

  template <int V>
  __device__ void apply(const Row& s, int64_t i, int64_t j) const {
    float x[V], xo[V], m[V], e[V];
    load<T, V>(x_t + i, x);
    load<T, V>(x_orig + i, xo);
    load<T, V>(s.mask_plane + j, m);
    load<T, V>(noise + i, e);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float fwd = s.c.a * xo[k] + s.c.b * e[k];
      x[k] = m[k] * x[k] + (1.f - m[k]) * fwd;
    }
    store<T, V>(out + i, x);
  }
};

bool bad_sizes(int64_t n, int64_t inner, int64_t num_t) { return n < 0 || inner < 0 || num_t <= 0; }

}  // namespace
}  // namespace detail
}  // namespace launch
}  // namespace diffaccel

// Qualified definitions: a signature that drifts from launchers.h is a compile error.
namespace da = diffaccel::launch;

cudaError_t da::add_noise(DType dtype, const void* x0, const void* noise, const float* alphas_cumprod,
                      int64_t num_timesteps, const int64_t* t, void* out, int64_t n, int64_t inner,
                      cudaStream_t stream) {
  using namespace detail;
  if (bad_sizes(n, inner, num_timesteps)) return cudaErrorInvalidValue;
  if (n == 0 || inner == 0) return cudaSuccess;
  if (!x0 || !noise || !alphas_cumprod || !t || !out) return cudaErrorInvalidValue;
  const bool vec = aligned16(x0) && aligned16(noise) && aligned16(out);
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const AddNoiseOp<T> op{static_cast<const T*>(x0), static_cast<const T*>(noise), alphas_cumprod,
                           num_timesteps, t, static_cast<T*>(out)};
    return launch_rows<T>(op, n, inner, vec, stream);
  });
}

cudaError_t da::predict_x0(DType dtype, const void* x_t, const void* eps, const float* alphas_cumprod,
                       int64_t num_timesteps, const int64_t* t, void* out, int64_t n, int64_t inner,
                       cudaStream_t stream) {
  using namespace detail;
  if (bad_sizes(n, inner, num_timesteps)) return cudaErrorInvalidValue;
  if (n == 0 || inner == 0) return cudaSuccess;
  if (!x_t || !eps || !alphas_cumprod || !t || !out) return cudaErrorInvalidValue;
  const bool vec = aligned16(x_t) && aligned16(eps) && aligned16(out);
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const PredictX0Op<T> op{static_cast<const T*>(x_t), static_cast<const T*>(eps), alphas_cumprod,
                            num_timesteps, t, static_cast<T*>(out)};
    return launch_rows<T>(op, n, inner, vec, stream);
  });
}

cudaError_t da::masked_project(DType dtype, const void* x_t, const void* x_orig, const void* mask, int64_t mask_n,
                           int64_t mask_c, const void* noise, const float* alphas_cumprod, int64_t num_timesteps,
                           const int64_t* t, void* out, int64_t n, int64_t c, int64_t hw, cudaStream_t stream) {
  using namespace detail;
  if (bad_sizes(n, hw, num_timesteps) || c < 0) return cudaErrorInvalidValue;
  if (!(mask_n == 1 || mask_n == n) || !(mask_c == 1 || mask_c == c)) return cudaErrorInvalidValue;
  if (n == 0 || c == 0 || hw == 0) return cudaSuccess;
  if (!x_t || !x_orig || !mask || !noise || !alphas_cumprod || !t || !out) return cudaErrorInvalidValue;
  const bool vec = aligned16(x_t) && aligned16(x_orig) && aligned16(mask) && aligned16(noise) && aligned16(out);
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const MaskedProjectOp<T> op{static_cast<const T*>(x_t), static_cast<const T*>(x_orig),
                                static_cast<const T*>(mask), static_cast<const T*>(noise),
                                alphas_cumprod, num_timesteps, t, static_cast<T*>(out), c, hw, mask_n, mask_c};
    // Rows are (n, c) planes of hw elements: a vector never straddles a mask plane.
    return launch_rows<T>(op, n * c, hw, vec, stream);
  });
}
