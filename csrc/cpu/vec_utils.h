// Building blocks of the CPU kernels: float32 math on any storage dtype, in cache-sized blocks.
//
// Every kernel is written once, on float32 vectors (at::vec::Vectorized<float>). Inputs are
// read a block at a time: float32 storage is used in place, float16 / bfloat16 / float64 are
// converted into a small stack buffer that stays in L1, and the result block is converted back.
// This keeps the fp32 path copy-free and the reduced-precision paths vectorized.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16-math.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>

// Every CPU kernel source is compiled once per ISA level with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512
// (setup.py, CMakeLists.txt), like ATen's kernels: its code lives in diffaccel::cpu::<level> so
// the copies do not collide, and csrc/cpu/dispatch.cpp picks one level's kernels at load.
#ifndef CPU_CAPABILITY
#error "compile csrc/cpu kernels with -DCPU_CAPABILITY=DEFAULT, AVX2 or AVX512 (see setup.py)"
#endif

namespace diffaccel::cpu {
inline namespace CPU_CAPABILITY {

using fVec = at::vec::Vectorized<float>;

// Elements per block: 2 KiB per float stream, so the five or six streams of a step fit in L1.
constexpr int64_t kBlock = 512;
// Elements per parallel task: large enough to amortise scheduling, small enough that a batch-1
// tensor still splits over every thread.
constexpr int64_t kGrain = 32768;

template <typename scalar_t>
inline void to_float(const scalar_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  if constexpr (c10::is_reduced_floating_point_v<scalar_t>) {
    using bVec = at::vec::Vectorized<scalar_t>;
    for (; i + bVec::size() <= n; i += bVec::size()) {
      auto [a, b] = at::vec::convert_to_float<scalar_t>(bVec::loadu(src + i));
      a.store(dst + i);
      b.store(dst + i + fVec::size());
    }
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename scalar_t>
inline void from_float(const float* src, scalar_t* dst, int64_t n) {
  int64_t i = 0;
  if constexpr (c10::is_reduced_floating_point_v<scalar_t>) {
    using bVec = at::vec::Vectorized<scalar_t>;
    for (; i + bVec::size() <= n; i += bVec::size()) {
      at::vec::convert_from_float<scalar_t>(fVec::loadu(src + i), fVec::loadu(src + i + fVec::size()))
          .store(dst + i);
    }
  }
  for (; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// `n` floats of `src` (nullptr stays nullptr): `src` itself for float32 storage, else `buf`.
template <typename scalar_t>
inline const float* load_block(const scalar_t* src, float* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else {
    if (src == nullptr) return nullptr;
    to_float(src, buf, n);
    return buf;
  }
}

// Outputs of at least this many bytes are written with streaming stores by the thresholded steps
// (larger than the last-level cache: see stream_store).
constexpr int64_t kStreamBytes = int64_t{32} << 20;

// Copies n floats to dst with non-temporal (streaming) stores where dst is 32-byte aligned: the
// lines are written to memory without being read first (no read-for-ownership) and without
// displacing cached data. For outputs far larger than the caches that nothing reads soon.
// Callers end their streaming with stream_fence() before other threads may read dst.
inline void stream_store(float* dst, const float* src, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 63) != 0; ++i) dst[i] = src[i];
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
#elif defined(CPU_CAPABILITY_AVX2)
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = src[i];
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::copy(src, src + n, dst);
#endif
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();
#endif
}

// Runs `body(in, out, n)` over [begin, end) in blocks, `in` being K float pointers (nullptr for
// an absent optional input) and `out` a float pointer (into `dst` itself when it is float32).
// Inputs of a block are read before its output is written, so `dst` may alias any input.
// kStream: a float32 `dst` is written with streaming stores (see stream_store), fenced at the end.
template <size_t K, bool kStream = false, typename scalar_t, typename out_t, typename Body>
inline void for_each_block(const std::array<const scalar_t*, K>& in, out_t* dst, int64_t begin, int64_t end,
                           const Body& body) {
  constexpr bool kDirect = std::is_same_v<out_t, float> && !kStream;
  [[maybe_unused]] float in_buf[K][std::is_same_v<scalar_t, float> ? 1 : kBlock];
  [[maybe_unused]] alignas(64) float out_buf[kDirect ? 1 : kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    std::array<const float*, K> f;
    for (size_t k = 0; k < K; ++k) f[k] = load_block(in[k] == nullptr ? nullptr : in[k] + b, in_buf[k], n);
    if constexpr (kDirect) {
      body(f, dst + b, n);
    } else if constexpr (std::is_same_v<out_t, float>) {
      body(f, out_buf, n);
      stream_store(dst + b, out_buf, n);
    } else {
      body(f, out_buf, n);
      from_float(out_buf, dst + b, n);
    }
  }
  if constexpr (kStream && std::is_same_v<out_t, float>) stream_fence();
}

// for_each_block with M outputs: body(in, out, n) with `out` M float pointers (into the outputs
// themselves when they are float32). A nullptr output is not written (its block goes to scratch).
// The body must read every input of a vector before it stores that vector's outputs: then any
// output may alias any input. kStream: float32 outputs are written with streaming stores (see
// stream_store) from the block buffers, fenced at the end.
template <size_t K, size_t M, bool kStream = false, typename scalar_t, typename Body>
inline void for_each_block_out(const std::array<const scalar_t*, K>& in, const std::array<scalar_t*, M>& dst,
                               int64_t begin, int64_t end, const Body& body) {
  constexpr bool kF32 = std::is_same_v<scalar_t, float>;
  constexpr bool kDirect = kF32 && !kStream;
  [[maybe_unused]] float in_buf[K][kF32 ? 1 : kBlock];
  alignas(64) float out_buf[M][kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    std::array<const float*, K> f;
    for (size_t k = 0; k < K; ++k) f[k] = load_block(in[k] == nullptr ? nullptr : in[k] + b, in_buf[k], n);
    std::array<float*, M> o;
    for (size_t m = 0; m < M; ++m) {
      if constexpr (kDirect) {
        o[m] = dst[m] != nullptr ? dst[m] + b : out_buf[m];
      } else {
        o[m] = out_buf[m];
      }
    }
    body(f, o, n);
    if constexpr (!kDirect) {
      for (size_t m = 0; m < M; ++m) {
        if (dst[m] == nullptr) continue;
        if constexpr (kF32) {
          stream_store(dst[m] + b, out_buf[m], n);
        } else {
          from_float(out_buf[m], dst[m] + b, n);
        }
      }
    }
  }
  if constexpr (kStream && kF32) stream_fence();
}

// Calls f(i, count) for each vector of [0, n): full vectors, then one partial tail, so a
// formula has a single (vector) code path; fVec::loadu(p, count) / store(p, count) do the tail.
template <typename F>
inline void vloop(int64_t n, const F& f) {
  int64_t i = 0;
  for (; i + fVec::size() <= n; i += fVec::size()) f(i, static_cast<int64_t>(fVec::size()));
  if (i < n) f(i, n - i);
}

// out[i] = op(in[0][i], ..., in[K-1][i]) on float vectors.
template <size_t K, typename Op, size_t... I>
inline void vmap_impl(const std::array<const float*, K>& in, float* out, int64_t n, const Op& op,
                      std::index_sequence<I...>) {
  vloop(n, [&](int64_t i, int64_t r) { op(fVec::loadu(in[I] + i, r)...).store(out + i, r); });
}

template <size_t K, typename Op>
inline void vmap(const std::array<const float*, K>& in, float* out, int64_t n, const Op& op) {
  vmap_impl(in, out, n, op, std::make_index_sequence<K>{});
}

// Splits [begin, end) at multiples of `segment` and calls fn(segment_index, lo, hi) per piece:
// how a flat parallel range is cut into per-sample (or per-plane) runs with their own constants.
template <typename Fn>
inline void for_each_segment(int64_t begin, int64_t end, int64_t segment, const Fn& fn) {
  while (begin < end) {
    const int64_t s = begin / segment;
    const int64_t hi = std::min(end, (s + 1) * segment);
    fn(s, begin, hi);
    begin = hi;
  }
}

// Dispatch over the storage dtypes (math in float32).
#define DIFFACCEL_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace CPU_CAPABILITY
}  // namespace diffaccel::cpu
