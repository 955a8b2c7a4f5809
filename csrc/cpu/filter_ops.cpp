// CPU kernel of the Gaussian filter family (SPEC A1.2, A1.9): gaussian_blur, highpass and the
// hybrid (factorized-diffusion) combine, all as
//
//     out = blur(low) + (high - blur(high))          (either input may be absent)
//
// computed with one separable blur by linearity: out = blur(low - high) + high. The blur is
// reference.gaussian_blur (torchvision): reflect padding, taps of reference.gaussian_kernel1d.
// Pass 1 blurs each row into a float32 temporary, pass 2 blurs the columns of the temporary and
// adds `high`; both are vectorized along the row and parallel over (plane, row), so a single
// image still uses every thread. Reading all inputs in pass 1 lets `out` alias `low` or `high`
// (pass 2 reads high[r] just before writing out[r]).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "../checks.h"
#include "../schedule.h"
#include "vec_utils.h"

namespace diffaccel::cpu {
namespace {

// Reflect an index into [0, n) without repeating the edge (numpy/torch "reflect"); needs
// |overhang| < n, which check_filter guarantees.
inline int64_t reflect(int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// dst[x] = sum_k taps[k] * src_k[x] for x in [0, n), src_k = rows[k] (+ offset k when `shift`):
// the one inner product of both passes. Four independent accumulators hide FMA latency.
template <bool kShift>
inline void weighted_rows(const float* const* rows, const float* taps, int64_t num_taps, float* dst, int64_t n) {
  constexpr int64_t V = fVec::size();
  auto src = [&](int64_t k, int64_t x) { return kShift ? rows[0] + k + x : rows[k] + x; };
  int64_t x = 0;
  for (; x + 4 * V <= n; x += 4 * V) {
    fVec a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
    for (int64_t k = 0; k < num_taps; ++k) {
      const fVec w(taps[k]);
      const float* p = src(k, x);
      a0 = fmadd(w, fVec::loadu(p), a0);
      a1 = fmadd(w, fVec::loadu(p + V), a1);
      a2 = fmadd(w, fVec::loadu(p + 2 * V), a2);
      a3 = fmadd(w, fVec::loadu(p + 3 * V), a3);
    }
    a0.store(dst + x);
    a1.store(dst + x + V);
    a2.store(dst + x + 2 * V);
    a3.store(dst + x + 3 * V);
  }
  vloop(n - x, [&](int64_t i, int64_t r) {
    fVec a(0.0f);
    for (int64_t k = 0; k < num_taps; ++k) a = fmadd(fVec(taps[k]), fVec::loadu(src(k, x + i), r), a);
    a.store(dst + x + i, r);
  });
}

void gaussian_filter(const std::optional<at::Tensor>& low, const std::optional<at::Tensor>& high,
                     int64_t kernel_size, double sigma, at::Tensor out) {
  const at::Tensor& x = check_filter(low, high, kernel_size, sigma, out);
  if (x.numel() == 0) return;
  const std::vector<float> taps = gaussian_taps(kernel_size, sigma);
  const int64_t H = x.size(2), W = x.size(3), rows = x.numel() / W, pad = kernel_size / 2;
  at::Tensor tmp = at::empty({x.numel()}, x.options().dtype(at::kFloat));
  float* tp = tmp.mutable_data_ptr<float>();

  DIFFACCEL_DISPATCH(x.scalar_type(), "gaussian_filter", [&] {
    const scalar_t* lp = low.has_value() ? low->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* hp = high.has_value() ? high->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t row_grain = std::max<int64_t>(1, kGrain / (W * kernel_size / 8 + 1));

    // Pass 1: tmp[row] = horizontal blur of (low - high)[row], from a reflect-padded float row.
    at::parallel_for(0, rows, row_grain, [&](int64_t begin, int64_t end) {
      std::vector<float> padded(W + 2 * pad), a(W), b(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t off = r * W;
        float* row = padded.data() + pad;
        if (lp != nullptr && hp != nullptr) {
          to_float(lp + off, a.data(), W);
          to_float(hp + off, b.data(), W);
          vmap(std::array<const float*, 2>{a.data(), b.data()}, row, W, [](fVec l, fVec h) { return l - h; });
        } else if (lp != nullptr) {
          to_float(lp + off, row, W);
        } else {
          to_float(hp + off, b.data(), W);
          vmap(std::array<const float*, 1>{b.data()}, row, W, [](fVec h) { return fVec(0.0f) - h; });
        }
        for (int64_t i = 1; i <= pad; ++i) {
          row[-i] = row[i];
          row[W - 1 + i] = row[W - 1 - i];
        }
        const float* base = padded.data();
        weighted_rows<true>(&base, taps.data(), kernel_size, tp + off, W);
      }
    });

    // Pass 2: out[row] = vertical blur of tmp (reflected within the plane) + high[row].
    at::parallel_for(0, rows, row_grain, [&](int64_t begin, int64_t end) {
      std::vector<const float*> src(kernel_size);
      std::vector<float> blurred(W), h(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t plane = r / H, y = r % H;
        const float* plane_tmp = tp + plane * H * W;
        for (int64_t k = 0; k < kernel_size; ++k) src[k] = plane_tmp + reflect(y + k - pad, H) * W;
        weighted_rows<false>(src.data(), taps.data(), kernel_size, blurred.data(), W);
        if (hp != nullptr) {
          to_float(hp + r * W, h.data(), W);
          vmap(std::array<const float*, 2>{blurred.data(), h.data()}, blurred.data(), W,
               [](fVec bl, fVec hv) { return bl + hv; });
        }
        from_float(blurred.data(), op + r * W, W);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) { m.impl("gaussian_filter", &gaussian_filter); }

}  // namespace diffaccel::cpu
