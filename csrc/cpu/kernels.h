// The CPU kernels' entry points as a table of function pointers, one table per ISA level.
//
// Like ATen's DispatchStub (CPU_CAPABILITY): every kernel source of csrc/cpu is compiled once per
// level (DEFAULT: no ISA flags, the only level on non-x86 machines; AVX2: AVX2 + FMA + F16C;
// AVX512: AVX-512 F/BW/VL/DQ + FMA) into namespace diffaccel::cpu::<level>, and each fills its
// part of a CpuKernels. csrc/cpu/dispatch.cpp, compiled without ISA flags, picks one level at load
// (CPU feature detection, or DIFFACCEL_CPU_CAPABILITY) and registers forwarding functions with the
// dispatcher. This header holds no vector code, so the generic dispatch code can include it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "../params.h"

namespace diffaccel::cpu {

// Each kernel source defines `void fill_<family>_kernels(CpuKernels&)` in its level's namespace
// (declared in dispatch.cpp, since a level namespace must not be declared before the sources open
// it as inline).
struct CpuKernels {
  // forward_ops.cpp
  void (*add_noise)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor);
  void (*predict_x0)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor);
  void (*masked_project)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&, at::Tensor);
  // step_ops.cpp: cfg_combine, and the kernels behind ddpm_step / ddim_step (arguments checked by
  // csrc/step_entry.h in the generic code)
  void (*cfg_combine)(const at::Tensor&, const at::Tensor&, double, at::Tensor);
  void (*run_ddpm)(const DdpmStepParams&, const at::Tensor&);
  void (*run_ddim)(const DdimStepParams&, const at::Tensor&);
  // filter_ops.cpp
  void (*gaussian_filter)(const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, double,
                          at::Tensor);
  // conv_ops.cpp
  at::Tensor (*winograd_weight)(const at::Tensor&);
  at::Tensor (*conv3x3_winograd)(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
  // solver_ops.cpp: the multistep kernel behind dpmpp_2m_step / unipc_step (arguments checked by
  // csrc/solver_step.h in the generic code), and heun_step
  void (*run_solver)(const SolverStepParams&, const at::Tensor&);
  void (*heun_step)(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, at::Tensor);
};

}  // namespace diffaccel::cpu
