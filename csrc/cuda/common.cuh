// Internal helpers shared by the diffaccel .cu files (not part of the launcher API).
//
// Only CUDA toolkit headers. Conversions use the explicit intrinsics, so the files also
// compile under PyTorch's -D__CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "launchers.h"

namespace diffaccel {
namespace launch {
namespace detail {

// ----------------------------------------------------------------------------- dtypes
template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

//! Elements of T in one 16-byte vector access.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

//! Loads V elements at p as float; V == kVec<T> is one 16-byte access (p 16-byte aligned).
template <typename T, int V>
__device__ __forceinline__ void load(const T* p, float (&f)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < V; ++i) f[i] = to_float<T>(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) f[i] = to_float<T>(p[i]);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store(T* p, const float (&f)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < V; ++i) e[i] = from_float<T>(f[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = from_float<T>(f[i]);
  }
}

// ----------------------------------------------------------------------------- math
//! reference.gather_abar: abar[t] with abar[-1] = 1; t clamped so bad input stays in bounds.
__device__ __forceinline__ float gather_abar(const float* abar, int64_t num_t, int64_t t) {
  if (t < 0) return 1.f;
  return abar[t < num_t ? t : num_t - 1];
}

//! torch.clamp semantics: NaN stays NaN (fminf/fmaxf alone would drop it).
__device__ __forceinline__ float clamp_nan(float x, float lo, float hi) {
  return x != x ? x : fminf(fmaxf(x, lo), hi);
}

// ----------------------------------------------------------------------------- launching
template <typename T>
struct Tag {
  using type = T;
};

//! Calls fn(Tag<storage type>{}) for the runtime dtype.
template <typename Fn>
inline cudaError_t dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: return fn(Tag<float>{});
    case DType::F16: return fn(Tag<__half>{});
    case DType::BF16: return fn(Tag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

inline bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

//! Multiprocessor count of the current device (cached per device: the attribute query is
//! not free and this runs on every launch).
inline int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // zero-initialised; racing writers agree
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return 132;
  int count = cache[dev].load(std::memory_order_relaxed);
  if (count == 0) {
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || count <= 0)
      count = 132;  // H100 SXM; only sizes the grid
    cache[dev].store(count, std::memory_order_relaxed);
  }
  return count;
}

constexpr int kThreads = 256;

//! Process `rows` contiguous rows of `len` elements: op.row(r) computes the per-row state
//! (per-sample coefficients: computed once per row, never per element), then
//! op.apply<V>(state, r * len + j, j) handles V elements. Grid: x strides within a row,
//! y strides over rows, so no per-element 64-bit division is needed.
template <int V, typename Op>
__global__ void __launch_bounds__(kThreads) rows_kernel(const Op op, int64_t rows, int64_t len) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * V;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const auto state = op.row(r);
    const int64_t base = r * len;
    for (int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; j < len; j += stride)
      op.template apply<V>(state, base + j, j);
  }
}

//! Launches rows_kernel with 16-byte vectors when `vectorizable` (all pointers aligned) and
//! `len` is a multiple of the vector width, scalar otherwise.
template <typename T, typename Op>
cudaError_t launch_rows(const Op& op, int64_t rows, int64_t len, bool vectorizable, cudaStream_t stream) {
  if (rows == 0 || len == 0) return cudaSuccess;
  constexpr int V = kVec<T>;
  const bool vec = vectorizable && len % V == 0;
  const int per_block = kThreads * (vec ? V : 1);
  const int64_t grid_y = rows < 65535 ? rows : 65535;
  // Enough blocks for two full waves (2048 threads / SM); a row gets its share of them.
  const int64_t target = static_cast<int64_t>(sm_count()) * (2048 / kThreads) * 2;
  int64_t grid_x = (len + per_block - 1) / per_block;
  const int64_t cap = target / grid_y > 1 ? target / grid_y : 1;
  if (grid_x > cap) grid_x = cap;
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  if (vec)
    rows_kernel<V, Op><<<grid, kThreads, 0, stream>>>(op, rows, len);
  else
    rows_kernel<1, Op><<<grid, kThreads, 0, stream>>>(op, rows, len);
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace launch
}  // namespace diffaccel
