// The diffaccel operator library: every schema, in one place.
//
// Each op writes its result into a caller-provided `out` (annotated `Tensor(a!)`) and returns
// nothing, so a sampling loop reuses its buffers, `out` may alias x_t, and torch.compile traces
// the ops through auto_functionalize without graph breaks. Inputs arrive contiguous, with
// `alphas_cumprod` float32 and t / t_prev int64 [N] (diffaccel.functional normalises them);
// every kernel re-checks what it relies on. Math is float32 whatever the storage dtype.
//
// Kernels: csrc/cpu/*.cpp, once per ISA level, registered by csrc/cpu/dispatch.cpp (TORCH_LIBRARY_IMPL(diffaccel, CPU)); csrc/cuda/register.cpp
// (TORCH_LIBRARY_IMPL(diffaccel, CUDA)) over the plain-pointer launchers of csrc/cuda/*.cu.
// Semantics: diffaccel/reference.py.
#include <torch/library.h>

#include <string>

namespace diffaccel::cpu {
std::string cpu_capability();  // csrc/cpu/dispatch.cpp
}

TORCH_LIBRARY(diffaccel, m) {
  // The instruction-set level of the CPU kernels in use: "generic", "avx2" or "avx512", chosen
  // at load (csrc/cpu/dispatch.cpp; DIFFACCEL_CPU_CAPABILITY forces one).
  m.def("cpu_capability() -> str", &diffaccel::cpu::cpu_capability);
  // SPEC A1.1 / B2.2: out = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) noise
  m.def("add_noise(Tensor x0, Tensor noise, Tensor alphas_cumprod, Tensor t, Tensor(a!) out) -> ()");
  // SPEC A1.3: out = (x_t - sqrt(1 - abar[t]) eps) / sqrt(abar[t])
  m.def("predict_x0(Tensor x_t, Tensor eps, Tensor alphas_cumprod, Tensor t, Tensor(a!) out) -> ()");
  // SPEC A1.6: out = eps_uncond + scale (eps_cond - eps_uncond)
  m.def("cfg_combine(Tensor eps_uncond, Tensor eps_cond, float scale, Tensor(a!) out) -> ()");
  // SPEC A1.4 / B2.3: strided DDPM posterior step t -> t_prev on eps = eps_uncond (eps_cond None)
  // or the CFG combine. variance_type: 0 fixed_small, 1 fixed_large, 2 learned_range (needs
  // predicted_variance); noise is added where t > 0. clip_x0 <= 0: no clipping;
  // threshold_ratio <= 0: no dynamic thresholding (else per-sample quantile, clamp [1, max]).
  m.def(
      "ddpm_step(Tensor x_t, Tensor eps_uncond, Tensor? eps_cond, float scale, Tensor alphas_cumprod, "
      "Tensor t, Tensor t_prev, Tensor? noise, int variance_type, Tensor? predicted_variance, "
      "float clip_x0, float threshold_ratio, float threshold_max, Tensor(a!) out) -> ()");
  // DDIM (Song et al. eq. 12) with stochasticity eta, on eps or the CFG combine.
  m.def(
      "ddim_step(Tensor x_t, Tensor eps_uncond, Tensor? eps_cond, float scale, Tensor alphas_cumprod, "
      "Tensor t, Tensor t_prev, float eta, Tensor? noise, Tensor(a!) out) -> ()");
  // Multistep solvers, data prediction, on eps = eps_uncond (eps_cond None) or the CFG combine;
  // x0 = thr(predict_x0) as ddpm_step's clip_x0 / threshold_*; t_prev = -1: the final step.
  // DPM-Solver++(2M) (Lu et al. 2022, midpoint form): second order with x0_prev (at t_last).
  // Writes x_prev into out and x0 into x0_out. With noise (a N(0, I) draw): SDE-DPM-Solver++(2M).
  m.def(
      "dpmpp_2m_step(Tensor x_t, Tensor eps_uncond, Tensor? eps_cond, float scale, Tensor alphas_cumprod, "
      "Tensor t, Tensor t_prev, Tensor? x0_prev, Tensor? t_last, float clip_x0, float threshold_ratio, "
      "float threshold_max, Tensor(a!) out, Tensor(b!) x0_out, Tensor? noise=None) -> ()");
  // UniPC, B(h) = expm1(-h) (Zhao et al. 2023): the corrector UniC when x_last is given (order 2
  // with x0_prev2 at t_last2), then the predictor UniP of predictor_order (1 or 2). Writes x_prev,
  // x0 and the corrected sample into out, x0_out, x_corr_out.
  m.def(
      "unipc_step(Tensor x_t, Tensor eps_uncond, Tensor? eps_cond, float scale, Tensor alphas_cumprod, "
      "Tensor t, Tensor t_prev, Tensor? x0_prev, Tensor? t_last, Tensor? x_last, Tensor? x0_prev2, "
      "Tensor? t_last2, int predictor_order, float clip_x0, float threshold_ratio, float threshold_max, "
      "Tensor(a!) out, Tensor(b!) x0_out, Tensor(c!) x_corr_out) -> ()");
  // Flow matching, second-order Heun: out = x + dt/2 (v + v_next).
  m.def("heun_step(Tensor x, Tensor v, Tensor v_next, float dt, Tensor(a!) out) -> ()");
  // SPEC A1.2 / A1.9: out = blur(low) + (high - blur(high)), separable, reflect padding.
  m.def("gaussian_filter(Tensor? low, Tensor? high, int kernel_size, float sigma, Tensor(a!) out) -> ()");
  // SPEC A1.7.2: out = mask x_t + (1 - mask) add_noise(x_orig, noise, t); mask (N|1, C|1, H, W).
  m.def(
      "masked_project(Tensor x_t, Tensor x_orig, Tensor mask, Tensor noise, Tensor alphas_cumprod, "
      "Tensor t, Tensor(a!) out) -> ()");
  // Inference building block of the MNIST UNet on CPU: conv2d(x, w, b, stride 1, padding 1) by
  // Winograd F(4x4, 3x3) for channels-last float32 x. winograd_weight(w [Cout, Cin, 3, 3]) is the
  // transformed filter [36, Cin, Cout] (computed once); conv3x3_winograd returns channels-last.
  m.def("winograd_weight(Tensor weight) -> Tensor");
  m.def("conv3x3_winograd(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

#ifdef DIFFACCEL_PYTHON_MODULE
// `import diffaccel._C` loads this library (and so runs the registrations above); the module
// itself is empty except for `cpu_isa`, the highest instruction-set level of the CPU kernels built
// (the one in use is torch.ops.diffaccel.cpu_capability()).
// No pybind11: the ops are reached through torch.ops.diffaccel.
#include <Python.h>

#ifndef DIFFACCEL_CPU_ISA
#define DIFFACCEL_CPU_ISA "generic"
#endif

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "diffaccel's compiled operators (torch.ops.diffaccel)",
                               -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr && PyModule_AddStringConstant(m, "cpu_isa", DIFFACCEL_CPU_ISA) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
#endif
