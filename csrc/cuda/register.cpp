// CUDA registrations of the diffaccel ops: check the tensors, then call the plain-pointer
// launchers of csrc/cuda/*.cu (declared in launchers.h) on the current stream.
//
// Compiled only against a CUDA build of PyTorch (setup.py / CMakeLists.txt add it with the .cu
// files). Nothing here synchronises or copies to the host, so the ops can be captured in a CUDA
// graph; t / t_prev are not range-checked on the device (that would sync every step): the
// kernels clamp indices instead, and diffaccel.functional checks host-held timesteps.
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "../checks.h"
#include "../solver_step.h"
#include "../step_entry.h"
#include "launchers.h"

namespace diffaccel::cuda {
namespace {

launch::DType dtype_of(const at::Tensor& x) {
  const auto s = x.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kHalf || s == at::kBFloat16,
                   "diffaccel: the CUDA kernels take float32, float16 or bfloat16, got ", s);
  return s == at::kFloat ? launch::DType::F32 : (s == at::kHalf ? launch::DType::F16 : launch::DType::BF16);
}

const void* opt_ptr(const std::optional<at::Tensor>& x) { return x.has_value() ? x->const_data_ptr() : nullptr; }

void check_cuda(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "diffaccel::", op, " CUDA launch failed: ", cudaGetErrorString(err));
}

int64_t inner_of(const at::Tensor& x) { return x.size(0) == 0 ? 0 : x.numel() / x.size(0); }

void add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& abar, const at::Tensor& t,
               at::Tensor out) {
  check_image("x0", x0);
  check_like("noise", noise, x0);
  check_like("out", out, x0);
  check_schedule(x0, abar, t);
  const c10::cuda::CUDAGuard guard(x0.device());
  check_cuda(launch::add_noise(dtype_of(x0), x0.const_data_ptr(), noise.const_data_ptr(), abar.const_data_ptr<float>(),
                               abar.numel(), t.const_data_ptr<int64_t>(), out.mutable_data_ptr(), x0.size(0),
                               inner_of(x0), c10::cuda::getCurrentCUDAStream()),
             "add_noise");
}

void predict_x0(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& abar, const at::Tensor& t,
                at::Tensor out) {
  check_image("x_t", x_t);
  check_like("eps", eps, x_t);
  check_like("out", out, x_t);
  check_schedule(x_t, abar, t);
  const c10::cuda::CUDAGuard guard(x_t.device());
  check_cuda(launch::predict_x0(dtype_of(x_t), x_t.const_data_ptr(), eps.const_data_ptr(), abar.const_data_ptr<float>(),
                                abar.numel(), t.const_data_ptr<int64_t>(), out.mutable_data_ptr(), x_t.size(0),
                                inner_of(x_t), c10::cuda::getCurrentCUDAStream()),
             "predict_x0");
}

void cfg_combine(const at::Tensor& eps_u, const at::Tensor& eps_c, double scale, at::Tensor out) {
  check_image("eps_uncond", eps_u);
  check_like("eps_cond", eps_c, eps_u);
  check_like("out", out, eps_u);
  const c10::cuda::CUDAGuard guard(eps_u.device());
  check_cuda(launch::cfg_combine(dtype_of(eps_u), eps_u.const_data_ptr(), eps_c.const_data_ptr(),
                                 static_cast<float>(scale), out.mutable_data_ptr(), eps_u.numel(),
                                 c10::cuda::getCurrentCUDAStream()),
             "cfg_combine");
}

// A float32 device buffer of `floats` (none for 0) from the caching allocator: no cudaMalloc,
// graph-capture safe. scratch_ptr: its data, nullptr when there is none.
at::Tensor scratch_for(const at::Tensor& x, int64_t floats) {
  return floats > 0 ? at::empty({floats}, x.options().dtype(at::kFloat)) : at::Tensor();
}
float* scratch_ptr(at::Tensor& scratch) { return scratch.defined() ? scratch.mutable_data_ptr<float>() : nullptr; }

// The CUDA runners of the step ops (entry points and checks: step_entry.h, solver_step.h).
void run_ddpm(const DdpmStepParams& p, const at::Tensor& x_t) {
  const c10::cuda::CUDAGuard guard(x_t.device());
  at::Tensor scratch = scratch_for(x_t, launch::ddpm_step_scratch_floats(p.n, static_cast<float>(p.threshold_ratio)));
  check_cuda(launch::ddpm_step(dtype_of(x_t), p, scratch_ptr(scratch), c10::cuda::getCurrentCUDAStream()),
             "ddpm_step");
}

void run_ddim(const DdimStepParams& p, const at::Tensor& x_t) {
  const c10::cuda::CUDAGuard guard(x_t.device());
  check_cuda(launch::ddim_step(dtype_of(x_t), p, c10::cuda::getCurrentCUDAStream()), "ddim_step");
}

void run_solver(const SolverStepParams& p, const at::Tensor& x_t) {
  const c10::cuda::CUDAGuard guard(x_t.device());
  at::Tensor scratch = scratch_for(x_t, launch::solver_step_scratch_floats(p.n, p.threshold_ratio));
  check_cuda(launch::solver_step(dtype_of(x_t), p, scratch_ptr(scratch), c10::cuda::getCurrentCUDAStream()),
             "solver_step");
}

void heun_step(const at::Tensor& x, const at::Tensor& v, const at::Tensor& v_next, double dt, at::Tensor out) {
  check_image("x", x);
  check_like("v", v, x);
  check_like("v_next", v_next, x);
  check_like("out", out, x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(launch::heun_step(dtype_of(x), x.const_data_ptr(), v.const_data_ptr(), v_next.const_data_ptr(),
                               static_cast<float>(dt), out.mutable_data_ptr(), x.numel(),
                               c10::cuda::getCurrentCUDAStream()),
             "heun_step");
}

void gaussian_filter(const std::optional<at::Tensor>& low, const std::optional<at::Tensor>& high,
                     int64_t kernel_size, double sigma, at::Tensor out) {
  const at::Tensor& x = check_filter(low, high, kernel_size, sigma, out);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor tmp = at::empty({launch::gaussian_filter_tmp_floats(planes, h, w)}, x.options().dtype(at::kFloat));
  check_cuda(launch::gaussian_filter(dtype_of(x), opt_ptr(low), opt_ptr(high), static_cast<int32_t>(kernel_size),
                                     static_cast<float>(sigma), tmp.mutable_data_ptr<float>(), out.mutable_data_ptr(),
                                     planes, h, w, c10::cuda::getCurrentCUDAStream()),
             "gaussian_filter");
}

void masked_project(const at::Tensor& x_t, const at::Tensor& x_orig, const at::Tensor& mask,
                    const at::Tensor& noise, const at::Tensor& abar, const at::Tensor& t, at::Tensor out) {
  check_image("x_t", x_t);
  check_like("x_orig", x_orig, x_t);
  check_like("noise", noise, x_t);
  check_like("out", out, x_t);
  check_mask(mask, x_t);
  check_schedule(x_t, abar, t);
  const c10::cuda::CUDAGuard guard(x_t.device());
  check_cuda(launch::masked_project(dtype_of(x_t), x_t.const_data_ptr(), x_orig.const_data_ptr(), mask.const_data_ptr(),
                                    mask.size(0), mask.size(1), noise.const_data_ptr(), abar.const_data_ptr<float>(),
                                    abar.numel(), t.const_data_ptr<int64_t>(), out.mutable_data_ptr(), x_t.size(0),
                                    x_t.size(1), x_t.size(2) * x_t.size(3), c10::cuda::getCurrentCUDAStream()),
             "masked_project");
}

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CUDA, m) {
  m.impl("add_noise", &add_noise);
  m.impl("predict_x0", &predict_x0);
  m.impl("cfg_combine", &cfg_combine);
  m.impl("ddpm_step", &ddpm_step_op<&run_ddpm>);
  m.impl("dpmpp_2m_step", &dpmpp_2m_step_op<&run_solver>);
  m.impl("unipc_step", &unipc_step_op<&run_solver>);
  m.impl("heun_step", &heun_step);
  m.impl("ddim_step", &ddim_step_op<&run_ddim>);
  m.impl("gaussian_filter", &gaussian_filter);
  m.impl("masked_project", &masked_project);
}

}  // namespace diffaccel::cuda
