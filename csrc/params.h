// Plain parameter structs of the sampler-step ops, shared by the CPU kernels (csrc/cpu) and the
// CUDA launchers (csrc/cuda/launchers.h): the schema's argument list is turned into one of these
// once (csrc/step_entry.h, csrc/solver_step.h), and everything below passes the struct. No
// PyTorch or CUDA headers, so nvcc and a host compiler can both include it.
#pragma once

#include <cstdint>

namespace diffaccel {

// What every step reads and writes. Images: contiguous [n, inner], one storage dtype; nullptr =
// an absent optional input. eps = eps_uncond, or with eps_cond the CFG combine
// eps_u + scale (eps_c - eps_u) (in float32). t_prev = -1 is the final step (abar_prev = 1).
struct StepInputs {
  const void* x_t = nullptr;
  const void* eps_uncond = nullptr;
  const void* eps_cond = nullptr;  // nullptr: no guidance
  float scale = 1.0f;
  const float* alphas_cumprod = nullptr;
  int64_t num_timesteps = 0;
  const int64_t* t = nullptr;       // [n]
  const int64_t* t_prev = nullptr;  // [n], -1 = the final step
  void* out = nullptr;              // x_prev; may alias x_t
  int64_t n = 0, inner = 0;
};

// ddpm_step (reference.ddpm_step): the strided DDPM posterior step t -> t_prev. The scalar
// options keep the schema's double: the CPU kernel decides on them in double precision, the
// CUDA launcher rounds them to float32 (each exactly as it did with the unbundled arguments).
struct DdpmStepParams : StepInputs {
  const void* noise = nullptr;  // nullptr: no noise; else added only where t > 0
  int32_t variance_type = 0;    // 0 fixed_small, 1 fixed_large, 2 learned_range
  const void* predicted_variance = nullptr;  // learned_range only
  double clip_x0 = 0.0;          // <= 0: no clipping
  double threshold_ratio = 0.0;  // <= 0: no dynamic thresholding (else it takes precedence over clip_x0)
  double threshold_max = 0.0;
};

// ddim_step (reference.ddim_step): the DDIM step t -> t_prev with stochasticity eta (>= 0; a
// double, as the schema's, for the reason above).
struct DdimStepParams : StepInputs {
  double eta = 0.0;
  const void* noise = nullptr;  // nullptr: no noise; else added when eta > 0
};

// A multistep solver step (dpmpp_2m_step, unipc_step; reference.dpmpp_2m_step / unipc_step).
// Any output may alias any input (each element is read before it is written); outputs are
// distinct.
struct SolverStepParams : StepInputs {
  const void* x0_prev = nullptr;    // history: x0 of the previous step, at t_last
  const int64_t* t_last = nullptr;
  const void* x_last = nullptr;     // UniC corrector: the previous step's sample (at t_last)
  const void* x0_prev2 = nullptr;   // second-order corrector: x0 at t_last2
  const int64_t* t_last2 = nullptr;
  int32_t predictor_order = 2;
  float clip_x0 = 0.0f;          // <= 0: no clipping
  float threshold_ratio = 0.0f;  // <= 0: no dynamic thresholding
  float threshold_max = 0.0f;
  void* x0_out = nullptr;      // x0 (the next step's x0_prev); `out` is x_prev
  void* x_corr_out = nullptr;  // the corrected sample (nullptr: not written)
  const void* noise = nullptr;  // dpmpp_2m_step: a N(0, I) draw = SDE-DPM-Solver++(2M) (nullptr: the ODE form)

  // Which history terms the step uses (uniform over the batch).
  enum Mode : int32_t { kFirstOrder = 0, kPredictor2 = 1, kCorrector1 = 2, kCorrector2 = 3 };
  Mode mode() const {
    if (x0_prev2 != nullptr) return kCorrector2;
    if (x_last != nullptr) return kCorrector1;
    if (x0_prev != nullptr && predictor_order == 2) return kPredictor2;
    return kFirstOrder;
  }
};

}  // namespace diffaccel
