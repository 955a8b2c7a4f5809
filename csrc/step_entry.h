// The schema-level entry points of ddpm_step and ddim_step, written once for every device:
// argument checks, then a DdpmStepParams / DdimStepParams (params.h) handed to the device's
// runner. The CPU (csrc/cpu/dispatch.cpp) and CUDA (csrc/cuda/register.cpp) registrations
// instantiate them with their runner, so the long argument lists live here and in the schema
// (csrc/diffaccel.cpp) only. Also the pieces every step's entry point shares (solver_step.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "checks.h"
#include "params.h"

namespace diffaccel {

// A device's implementation: reads and writes through the params; x_t gives dtype and device.
template <typename Params>
using StepRunner = void (*)(const Params&, const at::Tensor& x_t);

inline const void* opt_data(const std::optional<at::Tensor>& x) { return x.has_value() ? x->const_data_ptr() : nullptr; }
inline const int64_t* opt_steps(const std::optional<at::Tensor>& x) {
  return x.has_value() ? x->const_data_ptr<int64_t>() : nullptr;
}

// The checks every step starts with: x_t, then eps_uncond and eps_cond like it.
inline void check_step_eps(const at::Tensor& x_t, const at::Tensor& eps_u, const std::optional<at::Tensor>& eps_c) {
  check_image("x_t", x_t);
  check_like("eps_uncond", eps_u, x_t);
  check_optional_like("eps_cond", eps_c, x_t);
}

// The StepInputs part of a step's params, from its (checked) schema arguments.
inline void fill_step_inputs(StepInputs& p, const at::Tensor& x_t, const at::Tensor& eps_u,
                             const std::optional<at::Tensor>& eps_c, double scale, const at::Tensor& abar,
                             const at::Tensor& t, const at::Tensor& t_prev, const at::Tensor& out) {
  p.x_t = x_t.const_data_ptr();
  p.eps_uncond = eps_u.const_data_ptr();
  p.eps_cond = opt_data(eps_c);
  p.scale = static_cast<float>(scale);
  p.alphas_cumprod = abar.const_data_ptr<float>();
  p.num_timesteps = abar.numel();
  p.t = t.const_data_ptr<int64_t>();
  p.t_prev = t_prev.const_data_ptr<int64_t>();
  p.out = out.mutable_data_ptr();
  p.n = x_t.size(0);
  p.inner = x_t.size(0) == 0 ? 0 : x_t.numel() / x_t.size(0);
}

// ddpm_step (schema: csrc/diffaccel.cpp).
template <StepRunner<DdpmStepParams> Run>
void ddpm_step_op(const at::Tensor& x_t, const at::Tensor& eps_u, const std::optional<at::Tensor>& eps_c,
                  double scale, const at::Tensor& abar, const at::Tensor& t, const at::Tensor& t_prev,
                  const std::optional<at::Tensor>& noise, int64_t variance_type,
                  const std::optional<at::Tensor>& predicted_variance, double clip_x0, double threshold_ratio,
                  double threshold_max, at::Tensor out) {
  check_step_eps(x_t, eps_u, eps_c);
  check_optional_like("noise", noise, x_t);
  check_optional_like("predicted_variance", predicted_variance, x_t);
  check_like("out", out, x_t);
  check_step_schedule(x_t, abar, t, t_prev);
  check_ddpm_options(variance_type, predicted_variance, threshold_ratio, threshold_max);
  DdpmStepParams p;
  fill_step_inputs(p, x_t, eps_u, eps_c, scale, abar, t, t_prev, out);
  p.noise = opt_data(noise);
  p.variance_type = static_cast<int32_t>(variance_type);  // checked: 0, 1 or 2
  p.predicted_variance = opt_data(predicted_variance);
  p.clip_x0 = clip_x0;
  p.threshold_ratio = threshold_ratio;
  p.threshold_max = threshold_max;
  Run(p, x_t);
}

// ddim_step (schema: csrc/diffaccel.cpp).
template <StepRunner<DdimStepParams> Run>
void ddim_step_op(const at::Tensor& x_t, const at::Tensor& eps_u, const std::optional<at::Tensor>& eps_c,
                  double scale, const at::Tensor& abar, const at::Tensor& t, const at::Tensor& t_prev, double eta,
                  const std::optional<at::Tensor>& noise, at::Tensor out) {
  check_step_eps(x_t, eps_u, eps_c);
  check_optional_like("noise", noise, x_t);
  check_like("out", out, x_t);
  check_step_schedule(x_t, abar, t, t_prev);
  TORCH_CHECK_VALUE(eta >= 0, "diffaccel: eta must be >= 0, got ", eta);
  DdimStepParams p;
  fill_step_inputs(p, x_t, eps_u, eps_c, scale, abar, t, t_prev, out);
  p.eta = eta;
  p.noise = opt_data(noise);
  Run(p, x_t);
}

}  // namespace diffaccel
