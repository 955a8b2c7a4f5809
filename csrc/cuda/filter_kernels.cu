// Separable Gaussian filter (SPEC A1.9): out = blur(low) + (high - blur(high)).
//
// The blur is linear, so blur(low) - blur(high) = blur(low - high): one blur of the
// difference, in two launches:
//   1. horizontal: tmp = hblur(low - high)            (float32, reflect padding along W)
//   2. vertical:   out = vblur(tmp) + high            (reflect padding along H)
// Pass 2 reads `high` and writes `out` at the same index in the same thread, so out may
// alias an input. Each block stages a 32x32 output tile plus its halo in shared memory;
// when the halo of a very large kernel does not fit, a direct variant reads global memory
// (L1/L2-cached). Taps are reference.gaussian_kernel1d, computed in every block (k exps).
#include "common.cuh"

namespace diffaccel {
namespace launch {
namespace detail {
namespace {

constexpr int kTile = 32;                 // output tile: kTile x kTile pixels
constexpr int kBlockX = 32, kBlockY = 8;  // each thread computes kTile / kBlockY outputs
constexpr int kFilterThreads = kBlockX * kBlockY;
constexpr int kMaxKernelSize = 8191;      // taps live in shared memory: <= 32 KiB

//! torch's reflect padding (no edge repeat): valid for -n < i < 2n - 1.
__device__ __forceinline__ int reflect(int i, int n) {
  return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i);
}

//! reference.gaussian_kernel1d: x = linspace(-(k-1)/2, (k-1)/2, k) (exactly i - (k-1)/2 for
//! odd k), pdf = exp(-0.5 (x / sigma)^2), normalised to sum 1. Ends with __syncthreads().
__device__ void gaussian_taps(float* taps, int k, float sigma) {
  const float half = (k - 1) * 0.5f;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const float u = (static_cast<float>(i) - half) / sigma;
    taps[i] = expf(-0.5f * (u * u));
  }
  __syncthreads();
  __shared__ float total;
  if (threadIdx.x < 32) {
    float s = 0.f;
    for (int i = threadIdx.x; i < k; i += 32) s += taps[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) total = s;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < k; i += blockDim.x) taps[i] /= total;
  __syncthreads();
}

//! low - high at element i (either may be absent), in float32.
template <typename T>
__device__ __forceinline__ float difference(const T* low, const T* high, int64_t i) {
  return (low != nullptr ? to_float<T>(low[i]) : 0.f) - (high != nullptr ? to_float<T>(high[i]) : 0.f);
}

//! Pass 1: tmp = hblur(low - high). grid = (ceil(W / 32), ceil(H / 32), planes (strided)).
template <typename T, bool kTiled>
__global__ void __launch_bounds__(kFilterThreads)
    hblur_kernel(const T* low, const T* high, float* tmp, int k, float sigma, int64_t planes, int h, int w) {
  extern __shared__ float smem[];
  float* taps = smem;
  float* tile = smem + k;  // kTile rows x (kTile + 2p) columns
  gaussian_taps(taps, k, sigma);
  const int p = k / 2, pitch = kTile + 2 * p;
  const int tx = threadIdx.x % kBlockX, ty = threadIdx.x / kBlockX;
  const int x0 = blockIdx.x * kTile, y0 = blockIdx.y * kTile;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    const int64_t off = plane * h * w;
    if constexpr (kTiled) {
      __syncthreads();  // the previous plane's tile is no longer read
      for (int idx = threadIdx.x; idx < kTile * pitch; idx += kFilterThreads) {
        // Columns past w - 1 + p feed no output of this tile (it is cut at w) and would be
        // outside reflect's range (-w, 2w - 1) on images narrower than the tile: load 0.
        const int r = idx / pitch, c = idx - r * pitch, y = y0 + r, xx = x0 - p + c;
        tile[idx] = y < h && xx < w + p
                        ? difference(low, high, off + static_cast<int64_t>(y) * w + reflect(xx, w))
                        : 0.f;
      }
      __syncthreads();
    }
    const int x = x0 + tx;
    for (int r = ty; r < kTile; r += kBlockY) {
      const int y = y0 + r;
      if (y >= h || x >= w) continue;
      const int64_t row = off + static_cast<int64_t>(y) * w;
      float acc = 0.f;
      if constexpr (kTiled) {
        const float* src = tile + r * pitch + tx;
        for (int j = 0; j < k; ++j) acc += taps[j] * src[j];
      } else {
        for (int j = 0; j < k; ++j) acc += taps[j] * difference(low, high, row + reflect(x - p + j, w));
      }
      tmp[row + x] = acc;
    }
  }
}

//! Pass 2: out = vblur(tmp) + high.
template <typename T, bool kTiled>
__global__ void __launch_bounds__(kFilterThreads)
    vblur_kernel(const float* tmp, const T* high, T* out, int k, float sigma, int64_t planes, int h, int w) {
  extern __shared__ float smem[];
  float* taps = smem;
  float* tile = smem + k;  // (kTile + 2p) rows x kTile columns
  gaussian_taps(taps, k, sigma);
  const int p = k / 2, rows = kTile + 2 * p;
  const int tx = threadIdx.x % kBlockX, ty = threadIdx.x / kBlockX;
  const int x0 = blockIdx.x * kTile, y0 = blockIdx.y * kTile;
  const int x = x0 + tx;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    const int64_t off = plane * h * w;
    if constexpr (kTiled) {
      __syncthreads();
      for (int idx = threadIdx.x; idx < rows * kTile; idx += kFilterThreads) {
        // As in pass 1: rows past h - 1 + p are never read (and would not reflect into range).
        const int r = idx / kTile, c = idx - r * kTile, xx = x0 + c, yy = y0 - p + r;
        tile[idx] = xx < w && yy < h + p ? tmp[off + static_cast<int64_t>(reflect(yy, h)) * w + xx] : 0.f;
      }
      __syncthreads();
    }
    for (int r = ty; r < kTile; r += kBlockY) {
      const int y = y0 + r;
      if (y >= h || x >= w) continue;
      float acc = 0.f;
      if constexpr (kTiled) {
        const float* src = tile + r * kTile + tx;
        for (int j = 0; j < k; ++j) acc += taps[j] * src[j * kTile];
      } else {
        for (int j = 0; j < k; ++j) acc += taps[j] * tmp[off + static_cast<int64_t>(reflect(y - p + j, h)) * w + x];
      }
      const int64_t i = off + static_cast<int64_t>(y) * w + x;
      if (high != nullptr) acc += to_float<T>(high[i]);
      out[i] = from_float<T>(acc);
    }
  }
}

//! Largest dynamic shared memory a block may opt in to on the current device.
int max_shared_optin() {
  int dev = 0, bytes = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return 48 * 1024;
  return bytes;
}

template <typename T>
cudaError_t launch_filter(const T* low, const T* high, int k, float sigma, float* tmp, T* out, int64_t planes,
                          int h, int w, cudaStream_t stream) {
  const int p = k / 2;
  const size_t taps_bytes = sizeof(float) * k;
  // Both passes stage kTile * (kTile + 2p) floats (transposed), plus the taps.
  const size_t tiled_bytes = taps_bytes + sizeof(float) * kTile * (kTile + 2 * p);
  // Limits apply to dynamic + static shared memory (gaussian_taps' `total`): keep a margin.
  constexpr size_t kStaticMargin = 64, kDefaultSmem = 48 * 1024;
  bool tiled = tiled_bytes + kStaticMargin <= kDefaultSmem;
  if (!tiled && tiled_bytes + kStaticMargin <= static_cast<size_t>(max_shared_optin())) {
    const int bytes = static_cast<int>(tiled_bytes);
    tiled = cudaFuncSetAttribute(hblur_kernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) ==
                cudaSuccess &&
            cudaFuncSetAttribute(vblur_kernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) ==
                cudaSuccess;
    if (!tiled) cudaGetLastError();  // fall back to the direct kernels; clear the error
  }
  const dim3 grid(static_cast<unsigned>((w + kTile - 1) / kTile), static_cast<unsigned>((h + kTile - 1) / kTile),
                  static_cast<unsigned>(planes < 65535 ? planes : 65535));
  if (tiled) {
    hblur_kernel<T, true><<<grid, kFilterThreads, tiled_bytes, stream>>>(low, high, tmp, k, sigma, planes, h, w);
    vblur_kernel<T, true><<<grid, kFilterThreads, tiled_bytes, stream>>>(tmp, high, out, k, sigma, planes, h, w);
  } else {
    hblur_kernel<T, false><<<grid, kFilterThreads, taps_bytes, stream>>>(low, high, tmp, k, sigma, planes, h, w);
    vblur_kernel<T, false><<<grid, kFilterThreads, taps_bytes, stream>>>(tmp, high, out, k, sigma, planes, h, w);
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace detail
}  // namespace launch
}  // namespace diffaccel

// Qualified definition: a signature that drifts from launchers.h is a compile error.
namespace da = diffaccel::launch;

cudaError_t da::gaussian_filter(DType dtype, const void* low, const void* high, int32_t kernel_size, float sigma,
                                float* tmp, void* out, int64_t planes, int64_t height, int64_t width,
                                cudaStream_t stream) {
  using namespace detail;
  if (kernel_size < 1 || kernel_size % 2 == 0 || kernel_size > kMaxKernelSize || !(sigma > 0.f))
    return cudaErrorInvalidValue;
  if (planes < 0 || height < 0 || width < 0 || height > 0x7fffffff || width > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (planes == 0 || height == 0 || width == 0) return cudaSuccess;
  if (kernel_size / 2 >= height || kernel_size / 2 >= width) return cudaErrorInvalidValue;  // reflect needs p < n
  if ((!low && !high) || !tmp || !out) return cudaErrorInvalidValue;
  if ((height + kTile - 1) / kTile > 65535) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_filter<T>(static_cast<const T*>(low), static_cast<const T*>(high), kernel_size, sigma, tmp,
                            static_cast<T*>(out), planes, static_cast<int>(height), static_cast<int>(width),
                            stream);
  });
}
