// The schema-level entry points of the multistep solver ops, written once for every device:
// argument checks, then a SolverStepParams (params.h) handed to the device's runner. The CPU
// (csrc/cpu/dispatch.cpp) and CUDA (csrc/cuda/register.cpp) registrations instantiate them
// with their runner, so the long argument list lives here and in the schema only.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "checks.h"
#include "params.h"
#include "step_entry.h"

namespace diffaccel {

using SolverRunner = StepRunner<SolverStepParams>;

inline SolverStepParams solver_params(const at::Tensor& x_t, const at::Tensor& eps_u,
                                      const std::optional<at::Tensor>& eps_c, double scale, const at::Tensor& abar,
                                      const at::Tensor& t, const at::Tensor& t_prev,
                                      const std::optional<at::Tensor>& x0_prev, const std::optional<at::Tensor>& t_last,
                                      const std::optional<at::Tensor>& x_last,
                                      const std::optional<at::Tensor>& x0_prev2,
                                      const std::optional<at::Tensor>& t_last2, int64_t predictor_order,
                                      double clip_x0, double threshold_ratio, double threshold_max,
                                      const at::Tensor& out, const at::Tensor& x0_out, const at::Tensor* x_corr_out,
                                      const std::optional<at::Tensor>& noise = std::nullopt) {
  check_step_eps(x_t, eps_u, eps_c);
  check_optional_like("noise", noise, x_t);
  check_optional_like("x0_prev", x0_prev, x_t);
  check_optional_like("x_last", x_last, x_t);
  check_optional_like("x0_prev2", x0_prev2, x_t);
  check_like("out", out, x_t);
  check_like("x0_out", x0_out, x_t);
  if (x_corr_out != nullptr) check_like("x_corr_out", *x_corr_out, x_t);
  check_step_schedule(x_t, abar, t, t_prev);
  check_solver_history(x_t, abar, x0_prev, t_last, x_last, x0_prev2, t_last2, predictor_order);
  check_threshold_options(threshold_ratio, threshold_max);
  SolverStepParams p;
  fill_step_inputs(p, x_t, eps_u, eps_c, scale, abar, t, t_prev, out);
  p.x0_prev = opt_data(x0_prev);
  p.t_last = opt_steps(t_last);
  p.x_last = opt_data(x_last);
  p.x0_prev2 = opt_data(x0_prev2);
  p.t_last2 = opt_steps(t_last2);
  p.predictor_order = static_cast<int32_t>(predictor_order);
  p.clip_x0 = static_cast<float>(clip_x0);
  p.threshold_ratio = static_cast<float>(threshold_ratio);
  p.threshold_max = static_cast<float>(threshold_max);
  p.x0_out = x0_out.data_ptr();
  p.x_corr_out = x_corr_out != nullptr ? x_corr_out->data_ptr() : nullptr;
  p.noise = opt_data(noise);
  return p;
}

// dpmpp_2m_step: the UniP predictor of order 2 without corrector (they coincide for B(h) = expm1(-h));
// with noise, SDE-DPM-Solver++(2M): the same D, schedule.h's SDE weights and pn * noise added.
template <SolverRunner Run>
void dpmpp_2m_step_op(const at::Tensor& x_t, const at::Tensor& eps_u, const std::optional<at::Tensor>& eps_c,
                      double scale, const at::Tensor& abar, const at::Tensor& t, const at::Tensor& t_prev,
                      const std::optional<at::Tensor>& x0_prev, const std::optional<at::Tensor>& t_last,
                      double clip_x0, double threshold_ratio, double threshold_max, at::Tensor out,
                      at::Tensor x0_out, const std::optional<at::Tensor>& noise) {
  Run(solver_params(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, std::nullopt, std::nullopt,
                    std::nullopt, 2, clip_x0, threshold_ratio, threshold_max, out, x0_out, nullptr, noise),
      x_t);
}

template <SolverRunner Run>
void unipc_step_op(const at::Tensor& x_t, const at::Tensor& eps_u, const std::optional<at::Tensor>& eps_c,
                   double scale, const at::Tensor& abar, const at::Tensor& t, const at::Tensor& t_prev,
                   const std::optional<at::Tensor>& x0_prev, const std::optional<at::Tensor>& t_last,
                   const std::optional<at::Tensor>& x_last, const std::optional<at::Tensor>& x0_prev2,
                   const std::optional<at::Tensor>& t_last2, int64_t predictor_order, double clip_x0,
                   double threshold_ratio, double threshold_max, at::Tensor out, at::Tensor x0_out,
                   at::Tensor x_corr_out) {
  Run(solver_params(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, x_last, x0_prev2, t_last2,
                    predictor_order, clip_x0, threshold_ratio, threshold_max, out, x0_out, &x_corr_out),
      x_t);
}

}  // namespace diffaccel
