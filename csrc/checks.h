// Argument checks shared by the CPU kernels and the CUDA bindings of every diffaccel op.
//
// diffaccel.functional validates and normalises arguments before it calls an op, so these
// checks are the second line of defence: they keep a direct `torch.ops.diffaccel.*` call
// (or a libtorch user) from reading out of bounds. Messages name the argument; the
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE variants surface in Python as ValueError / TypeError,
// like the functional API's own errors.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace diffaccel {

// Storage dtypes the kernels accept (math is always float32).
inline bool is_supported_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble;
}

// `x` is a contiguous tensor of the same shape, dtype and device as `like`.
inline void check_like(const char* name, const at::Tensor& x, const at::Tensor& like) {
  TORCH_CHECK_VALUE(x.sizes() == like.sizes(), "diffaccel: ", name, " must have shape ", like.sizes(),
                    ", got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == like.scalar_type(), "diffaccel: ", name, " must have dtype ",
                   like.scalar_type(), ", got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device() == like.device(), "diffaccel: ", name, " is on ", x.device(), " but x is on ",
                    like.device());
  TORCH_CHECK_VALUE(x.is_contiguous(), "diffaccel: ", name, " must be contiguous");
}

// The reference image of an op (x_t, x0, eps_uncond, ...): floating, contiguous, at least 1-D.
inline void check_image(const char* name, const at::Tensor& x) {
  TORCH_CHECK_TYPE(is_supported_dtype(x.scalar_type()), "diffaccel: ", name,
                   " must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, "diffaccel: ", name, " must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK_VALUE(x.is_contiguous(), "diffaccel: ", name, " must be contiguous");
}

inline void check_optional_like(const char* name, const std::optional<at::Tensor>& x, const at::Tensor& like) {
  if (x.has_value()) check_like(name, *x, like);
}

// alphas_cumprod: float32, 1-D, non-empty, contiguous, on x's device.
inline void check_abar(const at::Tensor& abar, const at::Tensor& x) {
  TORCH_CHECK_TYPE(abar.scalar_type() == at::kFloat, "diffaccel: alphas_cumprod must be float32, got ",
                   abar.scalar_type());
  TORCH_CHECK_VALUE(abar.dim() == 1 && abar.numel() > 0, "diffaccel: alphas_cumprod must be a non-empty 1-D tensor, got shape ",
                    abar.sizes());
  TORCH_CHECK_VALUE(abar.device() == x.device(), "diffaccel: alphas_cumprod is on ", abar.device(),
                    " but x is on ", x.device());
  TORCH_CHECK_VALUE(abar.is_contiguous(), "diffaccel: alphas_cumprod must be contiguous");
}

// t / t_prev: int64 [N] on x's device; on CPU also its range, [lo, T) with lo = -1 for t_prev
// ("the final step"). A CUDA range check would cost a device->host sync every step, so the
// CUDA kernels clamp indices instead (functional.py checks CPU-held t before moving it).
inline void check_timesteps(const char* name, const at::Tensor& t, const at::Tensor& x, int64_t num_t, int64_t lo) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "diffaccel: ", name, " must be int64 (torch.long), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), "diffaccel: ", name,
                    " must have shape [N] with one entry per sample (N = ", x.size(0), "), got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == x.device(), "diffaccel: ", name, " is on ", t.device(), " but x is on ",
                    x.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), "diffaccel: ", name, " must be contiguous");
  if (t.device().is_cpu()) {
    const int64_t* p = t.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      TORCH_CHECK_VALUE(p[i] >= lo && p[i] < num_t, "diffaccel: ", name, " must be in [", lo, ", ", num_t - 1,
                        "]", (lo < 0 ? " (-1 = the final step)" : ""), ", got ", p[i], " for sample ", i);
    }
  }
}

inline void check_schedule(const at::Tensor& x, const at::Tensor& abar, const at::Tensor& t) {
  check_abar(abar, x);
  check_timesteps("t", t, x, abar.numel(), 0);
}

inline void check_step_schedule(const at::Tensor& x, const at::Tensor& abar, const at::Tensor& t,
                                const at::Tensor& t_prev) {
  check_schedule(x, abar, t);
  check_timesteps("t_prev", t_prev, x, abar.numel(), -1);
}

// Dynamic thresholding options: ratio <= 0 is off, else ratio in (0, 1] and max_value >= 1.
inline void check_threshold_options(double threshold_ratio, double threshold_max) {
  TORCH_CHECK_VALUE(threshold_ratio <= 0 || (threshold_ratio <= 1 && threshold_max >= 1),
                    "diffaccel: dynamic thresholding needs ratio in (0, 1] and max_value >= 1, got ratio ",
                    threshold_ratio, ", max_value ", threshold_max);
}

// The history of a multistep solver step (dpmpp_2m_step, unipc_step): x0_prev with t_last,
// x_last only with x0_prev, x0_prev2 with t_last2 and only with x_last; history timesteps in
// [0, T); predictor_order 1 or 2. The x0/x tensors themselves are checked with check_like.
inline void check_solver_history(const at::Tensor& x, const at::Tensor& abar, const std::optional<at::Tensor>& x0_prev,
                                 const std::optional<at::Tensor>& t_last, const std::optional<at::Tensor>& x_last,
                                 const std::optional<at::Tensor>& x0_prev2, const std::optional<at::Tensor>& t_last2,
                                 int64_t predictor_order) {
  TORCH_CHECK_VALUE(x0_prev.has_value() == t_last.has_value(),
                    "diffaccel: x0_prev and t_last must be given together (a history entry and its timestep)");
  TORCH_CHECK_VALUE(x0_prev2.has_value() == t_last2.has_value(),
                    "diffaccel: x0_prev2 and t_last2 must be given together (a history entry and its timestep)");
  TORCH_CHECK_VALUE(!x_last.has_value() || x0_prev.has_value(), "diffaccel: x_last needs x0_prev and t_last");
  TORCH_CHECK_VALUE(!x0_prev2.has_value() || x_last.has_value(),
                    "diffaccel: x0_prev2 is only used by the corrector, which needs x_last");
  TORCH_CHECK_VALUE(predictor_order == 1 || predictor_order == 2, "diffaccel: predictor_order must be 1 or 2, got ",
                    predictor_order);
  if (t_last.has_value()) check_timesteps("t_last", *t_last, x, abar.numel(), 0);
  if (t_last2.has_value()) check_timesteps("t_last2", *t_last2, x, abar.numel(), 0);
}

// ddpm_step's scalar options, decoded once (see the schema in diffaccel.cpp).
inline void check_ddpm_options(int64_t variance_type, const std::optional<at::Tensor>& predicted_variance,
                               double threshold_ratio, double threshold_max) {
  TORCH_CHECK_VALUE(variance_type >= 0 && variance_type <= 2,
                    "diffaccel: variance_type must be 0 (fixed_small), 1 (fixed_large) or 2 (learned_range), got ",
                    variance_type);
  TORCH_CHECK_VALUE(variance_type != 2 || predicted_variance.has_value(),
                    "diffaccel: variance_type 2 (learned_range) needs predicted_variance");
  check_threshold_options(threshold_ratio, threshold_max);
}

// mask for masked_project: 4-D (N or 1, 1 or C, H, W), x's dtype and device, contiguous.
inline void check_mask(const at::Tensor& mask, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 4, "diffaccel: x_t must be a 4-D NCHW tensor, got shape ", x.sizes());
  TORCH_CHECK_VALUE(mask.dim() == 4 && (mask.size(0) == 1 || mask.size(0) == x.size(0)) &&
                        (mask.size(1) == 1 || mask.size(1) == x.size(1)) && mask.size(2) == x.size(2) &&
                        mask.size(3) == x.size(3),
                    "diffaccel: mask must have shape (N or 1, 1 or C, H, W) with x_t of shape ", x.sizes(),
                    ", got ", mask.sizes());
  TORCH_CHECK_TYPE(mask.scalar_type() == x.scalar_type(), "diffaccel: mask must have dtype ", x.scalar_type(),
                   ", got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.device() == x.device(), "diffaccel: mask is on ", mask.device(), " but x_t is on ",
                    x.device());
  TORCH_CHECK_VALUE(mask.is_contiguous(), "diffaccel: mask must be contiguous");
}

// gaussian_filter: at least one input; 4-D; reflect padding needs kernel_size // 2 < min(H, W).
inline const at::Tensor& check_filter(const std::optional<at::Tensor>& low, const std::optional<at::Tensor>& high,
                                      int64_t kernel_size, double sigma, const at::Tensor& out) {
  TORCH_CHECK_VALUE(low.has_value() || high.has_value(), "diffaccel: gaussian_filter needs low or high (or both)");
  const at::Tensor& x = low.has_value() ? *low : *high;
  check_image(low.has_value() ? "low" : "high", x);
  TORCH_CHECK_VALUE(x.dim() == 4, "diffaccel: gaussian_filter input must be a 4-D NCHW tensor, got shape ", x.sizes());
  check_optional_like("high", high, x);
  check_like("out", out, x);
  TORCH_CHECK_VALUE(kernel_size >= 1 && kernel_size % 2 == 1, "diffaccel: kernel_size must be an odd int >= 1, got ",
                    kernel_size);
  TORCH_CHECK_VALUE(sigma > 0, "diffaccel: sigma must be > 0, got ", sigma);
  TORCH_CHECK_VALUE(kernel_size / 2 < std::min(x.size(2), x.size(3)), "diffaccel: kernel_size ", kernel_size,
                    " is too large for a ", x.size(2), "x", x.size(3),
                    " image (reflect padding needs kernel_size // 2 < min(H, W))");
  return x;
}

}  // namespace diffaccel
