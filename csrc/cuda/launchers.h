// diffaccel CUDA kernels: host launchers with plain C types.
//
// Design
// ------
// * No PyTorch headers. The kernels in csrc/cuda/*.cu include only the CUDA toolkit
//   (cuda_runtime, cuda_fp16, cuda_bf16), so CI compiles them with a bare `nvcc` for
//   sm_80 and sm_90 (.ci/nvcc_check.sh) on machines whose PyTorch has no CUDA headers.
//   This header includes only <cuda_runtime_api.h>: a host C++ compiler can include it.
//   The thin binding (csrc/cuda/register.cpp, built only against CUDA PyTorch) checks the
//   tensors, then calls these launchers with data pointers and
//   `at::cuda::getCurrentCUDAStream()`.
// * Arguments follow the low-level calling convention of diffaccel.functional's
//   `_TorchBackend`: every image tensor is contiguous NCHW with the same shape and dtype;
//   `alphas_cumprod` is float32 of length `num_timesteps`; `t` / `t_prev` are int64 [N];
//   `out` may alias `x_t` (or any input read at the same index). Optional inputs are nullptr.
//   `n` is N and `inner` is C*H*W (elements per sample).
// * Semantics are exactly those of diffaccel/reference.py: float32 math whatever the
//   storage dtype, per-sample coefficients gathered in-kernel from alphas_cumprod
//   (indices clamped into [0, num_timesteps); t_prev = -1 means abar_prev = 1), so a bad
//   t on the device cannot read out of bounds.
// * Launch counts (the fusion the package exists for):
//     add_noise, predict_x0, cfg_combine, ddim_step, masked_project, heun_step : 1 kernel
//     ddpm_step, solver_step         : 1 kernel (CFG, clip and the step fused);
//                                      2 with dynamic thresholding (a per-sample quantile
//                                      kernel writing `scratch`, then the step)
//     gaussian_filter                : 2 kernels (horizontal pass into `tmp`, vertical pass)
//   No launcher allocates, synchronises or copies to the host, so all are safe to capture
//   in a CUDA graph.
// * Elementwise kernels use 16-byte vector loads (4 x fp32, 8 x fp16/bf16) when each
//   sample's length is a multiple of the vector width and every pointer is 16-byte aligned,
//   scalar loads otherwise, in a grid-stride loop sized to the device.
//
// Every launcher returns cudaSuccess, cudaErrorInvalidValue for bad arguments (nothing is
// launched), or the launch error (cudaGetLastError). Zero-sized inputs launch nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../params.h"

namespace diffaccel {
namespace launch {

//! Storage dtype of the image tensors (math is always float32).
enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2 };

//! ddpm_step's `variance_type` codes (reference.VARIANCE_TYPES).
enum VarianceType : int32_t { kFixedSmall = 0, kFixedLarge = 1, kLearnedRange = 2 };

//! SPEC A1.1: out = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.
cudaError_t add_noise(DType dtype, const void* x0, const void* noise, const float* alphas_cumprod,
                      int64_t num_timesteps, const int64_t* t, void* out, int64_t n, int64_t inner,
                      cudaStream_t stream);

//! SPEC A1.3: out = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t).
cudaError_t predict_x0(DType dtype, const void* x_t, const void* eps, const float* alphas_cumprod,
                       int64_t num_timesteps, const int64_t* t, void* out, int64_t n, int64_t inner,
                       cudaStream_t stream);

//! SPEC A1.6: out = eps_u + scale (eps_c - eps_u), over `numel` elements (any shape).
cudaError_t cfg_combine(DType dtype, const void* eps_uncond, const void* eps_cond, float scale, void* out,
                        int64_t numel, cudaStream_t stream);

//! Floats of `scratch` ddpm_step needs: N when dynamic thresholding is on, else 0.
inline int64_t ddpm_step_scratch_floats(int64_t n, float threshold_ratio) {
  return threshold_ratio > 0.f ? n : 0;
}

//! SPEC A1.4 / B2.3: DDPM posterior step t -> t_prev (see reference.ddpm_step; the arguments in
//! params.h).
//!
//! eps = eps_uncond, or eps_uncond + scale (eps_cond - eps_uncond) in float32 (never rounded
//! to the storage dtype: it is not stored) when eps_cond != nullptr. variance_type: VarianceType;
//! predicted_variance is required for kLearnedRange and ignored otherwise. clip_x0 <= 0: no
//! clipping. threshold_ratio > 0: dynamic thresholding with (ratio, threshold_max), which
//! takes precedence over clip_x0 and needs `scratch`: a float32 device buffer of
//! ddpm_step_scratch_floats(n, threshold_ratio) = N floats (receives the per-sample s);
//! scratch may be nullptr otherwise. noise == nullptr: no noise; else it is added only to
//! samples with t > 0. The scalar options are rounded to float32 here. Needs inner < 2^31 when
//! thresholding.
cudaError_t ddpm_step(DType dtype, const DdpmStepParams& params, float* scratch, cudaStream_t stream);

//! DDIM step t -> t_prev with stochasticity eta (see reference.ddim_step; the arguments in
//! params.h); eps_cond as in ddpm_step. Noise (if not nullptr) is added when eta > 0, as the
//! reference does.
cudaError_t ddim_step(DType dtype, const DdimStepParams& params, cudaStream_t stream);

//! Floats of `scratch` solver_step needs: N when dynamic thresholding is on, else 0.
inline int64_t solver_step_scratch_floats(int64_t n, float threshold_ratio) {
  return threshold_ratio > 0.f ? n : 0;
}

//! The multistep solver steps dpmpp_2m_step / unipc_step (reference.dpmpp_2m_step /
//! unipc_step; the arguments in params.h). 1 kernel; 2 with dynamic thresholding (the per-sample
//! quantile kernel of ddpm_step writing `scratch`, solver_step_scratch_floats(n, ratio) floats,
//! then the step). Per-sample weights computed in-kernel in double. Needs inner < 2^31 when
//! thresholding.
cudaError_t solver_step(DType dtype, const SolverStepParams& params, float* scratch, cudaStream_t stream);

//! Flow matching, second-order Heun: out = x + dt/2 (v + v_next), over `numel` elements.
cudaError_t heun_step(DType dtype, const void* x, const void* v, const void* v_next, float dt, void* out,
                      int64_t numel, cudaStream_t stream);

//! Floats of `tmp` gaussian_filter needs: one float32 image (planes * H * W).
inline int64_t gaussian_filter_tmp_floats(int64_t planes, int64_t height, int64_t width) {
  return planes * height * width;
}

//! SPEC A1.9: out = blur(low) + (high - blur(high)), either input may be nullptr (not both).
//!
//! Separable Gaussian with reflect padding, taps exactly reference.gaussian_kernel1d
//! (computed on the device). Because the blur is linear it runs once, on (low - high):
//! tmp = hblur(low - high), out = vblur(tmp) + high. `planes` = N*C. Requires odd
//! 1 <= kernel_size <= 8191, kernel_size / 2 < min(height, width), sigma > 0.
//! `tmp`: float32 device buffer of gaussian_filter_tmp_floats(planes, height, width); it
//! must not alias an input. `out` may alias low or high.
cudaError_t gaussian_filter(DType dtype, const void* low, const void* high, int32_t kernel_size, float sigma,
                            float* tmp, void* out, int64_t planes, int64_t height, int64_t width,
                            cudaStream_t stream);

//! SPEC A1.7.2: out = m x_t + (1 - m) (sqrt(abar_t) x_orig + sqrt(1 - abar_t) noise).
//!
//! x_t/x_orig/noise/out: [n, c, hw]; mask: same dtype, contiguous [mask_n, mask_c, hw] with
//! mask_n in {1, n} and mask_c in {1, c} (broadcast over the size-1 dims).
cudaError_t masked_project(DType dtype, const void* x_t, const void* x_orig, const void* mask, int64_t mask_n,
                           int64_t mask_c, const void* noise, const float* alphas_cumprod, int64_t num_timesteps,
                           const int64_t* t, void* out, int64_t n, int64_t c, int64_t hw, cudaStream_t stream);

}  // namespace launch
}  // namespace diffaccel
