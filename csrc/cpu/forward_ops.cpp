// CPU kernels of the forward-process family: add_noise (SPEC A1.1 / B2.2), predict_x0
// (SPEC A1.3) and masked_project (SPEC A1.7.2). One pass over memory each; per-sample
// coefficients are computed once per sample; the flat index range is split over threads
// in (sample, chunk) pieces so a batch of one uses every thread.
#include <ATen/Dispatch.h>

#include <vector>

#include "../checks.h"
#include "../schedule.h"
#include "kernels.h"
#include "vec_utils.h"

namespace diffaccel::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// (sqrt(abar_t), sqrt(1 - abar_t)) per sample.
std::vector<std::pair<float, float>> forward_coefs(const at::Tensor& abar, const at::Tensor& t) {
  const float* a = abar.const_data_ptr<float>();
  const int64_t* tp = t.const_data_ptr<int64_t>();
  std::vector<std::pair<float, float>> c(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float at = abar_at(a, tp[i]);
    c[i] = {std::sqrt(at), std::sqrt(1.0f - at)};
  }
  return c;
}

// out = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise
void add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& abar, const at::Tensor& t,
               at::Tensor out) {
  check_image("x0", x0);
  check_like("noise", noise, x0);
  check_like("out", out, x0);
  check_schedule(x0, abar, t);
  if (x0.numel() == 0) return;
  const auto coef = forward_coefs(abar, t);
  const int64_t per_sample = x0.numel() / x0.size(0);
  DIFFACCEL_DISPATCH(x0.scalar_type(), "add_noise", [&] {
    const scalar_t* xp = x0.const_data_ptr<scalar_t>();
    const scalar_t* np = noise.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x0.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_segment(begin, end, per_sample, [&](int64_t s, int64_t lo, int64_t hi) {
        const fVec sa(coef[s].first), s1a(coef[s].second);
        for_each_block<2>(std::array{xp, np}, op, lo, hi, [&](const auto& in, float* o, int64_t n) {
          vmap(in, o, n, [&](fVec x, fVec e) { return fmadd(sa, x, s1a * e); });
        });
      });
    });
  });
}

// out = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
void predict_x0(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& abar, const at::Tensor& t,
                at::Tensor out) {
  check_image("x_t", x_t);
  check_like("eps", eps, x_t);
  check_like("out", out, x_t);
  check_schedule(x_t, abar, t);
  if (x_t.numel() == 0) return;
  const auto coef = forward_coefs(abar, t);
  const int64_t per_sample = x_t.numel() / x_t.size(0);
  DIFFACCEL_DISPATCH(x_t.scalar_type(), "predict_x0", [&] {
    const scalar_t* xp = x_t.const_data_ptr<scalar_t>();
    const scalar_t* ep = eps.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x_t.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_segment(begin, end, per_sample, [&](int64_t s, int64_t lo, int64_t hi) {
        const fVec sa(coef[s].first), s1a(coef[s].second);
        for_each_block<2>(std::array{xp, ep}, op, lo, hi, [&](const auto& in, float* o, int64_t n) {
          // A true division, as the reference: at large t, 1/sqrt(abar_t) is big enough that
          // a reciprocal's rounding would show.
          vmap(in, o, n, [&](fVec x, fVec e) { return fnmadd(s1a, e, x) / sa; });
        });
      });
    });
  });
}

// out = m x_t + (1 - m) (sqrt(abar_t) x_orig + sqrt(1 - abar_t) noise), m broadcast from
// (N or 1, 1 or C, H, W): the work is cut per (n, c) plane so each piece has one mask plane.
void masked_project(const at::Tensor& x_t, const at::Tensor& x_orig, const at::Tensor& mask,
                    const at::Tensor& noise, const at::Tensor& abar, const at::Tensor& t, at::Tensor out) {
  check_image("x_t", x_t);
  check_like("x_orig", x_orig, x_t);
  check_like("noise", noise, x_t);
  check_like("out", out, x_t);
  check_mask(mask, x_t);
  check_schedule(x_t, abar, t);
  if (x_t.numel() == 0) return;
  const auto coef = forward_coefs(abar, t);
  const int64_t C = x_t.size(1), plane = x_t.size(2) * x_t.size(3);
  const bool mask_per_sample = mask.size(0) != 1, mask_per_channel = mask.size(1) != 1;
  DIFFACCEL_DISPATCH(x_t.scalar_type(), "masked_project", [&] {
    const scalar_t* xp = x_t.const_data_ptr<scalar_t>();
    const scalar_t* rp = x_orig.const_data_ptr<scalar_t>();
    const scalar_t* np = noise.const_data_ptr<scalar_t>();
    const scalar_t* mp = mask.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x_t.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for_each_segment(begin, end, plane, [&](int64_t p, int64_t lo, int64_t hi) {
        const int64_t s = p / C, c = p % C;
        const fVec sa(coef[s].first), s1a(coef[s].second), one(1.0f);
        const int64_t mplane = (mask_per_sample ? s * (mask_per_channel ? C : 1) : 0) + (mask_per_channel ? c : 0);
        const scalar_t* m = mp + mplane * plane + (lo - p * plane);
        for_each_block<4>(std::array{xp + lo, rp + lo, np + lo, m}, op + lo, 0, hi - lo,
                          [&](const auto& in, float* o, int64_t n) {
          vmap(in, o, n, [&](fVec x, fVec x0, fVec e, fVec mv) {
            return fmadd(mv, x, (one - mv) * fmadd(sa, x0, s1a * e));
          });
        });
      });
    });
  });
}

}  // namespace

// This level's entry points, for the table of csrc/cpu/dispatch.cpp (called there only when the
// CPU has this level).
void fill_forward_kernels(CpuKernels& k) {
  k.add_noise = &add_noise;
  k.predict_x0 = &predict_x0;
  k.masked_project = &masked_project;
}

}  // namespace CPU_CAPABILITY
}  // namespace diffaccel::cpu
