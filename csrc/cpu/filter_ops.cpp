// CPU kernel of the Gaussian filter family (SPEC A1.2, A1.9): gaussian_blur, highpass and the
// hybrid (factorized-diffusion) combine, all as
//
//     out = blur(low) + (high - blur(high))          (either input may be absent)
//
// computed with one separable blur by linearity: out = blur(low - high) + high. The blur is
// reference.gaussian_blur (torchvision): reflect padding, taps of reference.gaussian_kernel1d.
//
// The taps are symmetric, so each pass computes w_0 c + sum_k w_k (a_k + b_k): one add and one
// FMA per tap pair, the adds on the FP add pipes beside the FMA pipes, half the FMAs of a plain
// dot product; eight vectors per step keep eight independent FMA chains in flight. When there
// are at least as many planes as threads, each task blurs whole planes: the rows of a plane are
// blurred horizontally into a per-thread float32 tile (1 MiB for 512x512, L2-sized) and the
// vertical pass reads that tile, so the intermediate never goes to DRAM, and a plane is read
// completely before it is written, so `out` may alias `low` or `high`. With fewer planes (one
// large image), the two passes run over (plane, row) in parallel through a float32 temporary.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <optional>
#include <vector>

#include "../checks.h"
#include "../schedule.h"
#include "kernels.h"
#include "vec_utils.h"

namespace diffaccel::cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Reflect an index into [0, n) without repeating the edge (numpy/torch "reflect"); needs
// |overhang| < n, which check_filter guarantees.
inline int64_t reflect(int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// Rows of a horizontal pass: the neighbours of x are x -+ k in one padded row.
struct ShiftedRows {
  const float* center;
  const float* lo(int64_t k) const { return center - k; }
  const float* hi(int64_t k) const { return center + k; }
};
// Rows of a vertical pass: the rows k above and below (reflected at the plane's edges).
struct RowPointers {
  const float* center;
  const float* const* above;  // above[k], k = 1..pad
  const float* const* below;
  const float* lo(int64_t k) const { return above[k]; }
  const float* hi(int64_t k) const { return below[k]; }
};

// dst[x] = w[0] center[x] + sum_{k=1..pad} w[k] (lo_k[x] + hi_k[x]) for x in [0, n).
template <typename Rows>
inline void symmetric_taps(const Rows& rows, const float* w, int64_t pad, float* dst, int64_t n) {
  constexpr int64_t V = fVec::size(), B = 8;
  int64_t x = 0;
  for (; x + B * V <= n; x += B * V) {
    fVec acc[B];
    const fVec w0(w[0]);
    for (int64_t j = 0; j < B; ++j) acc[j] = w0 * fVec::loadu(rows.center + x + j * V);
    for (int64_t k = 1; k <= pad; ++k) {
      const fVec wk(w[k]);
      const float* a = rows.lo(k) + x;
      const float* b = rows.hi(k) + x;
      for (int64_t j = 0; j < B; ++j) acc[j] = fmadd(wk, fVec::loadu(a + j * V) + fVec::loadu(b + j * V), acc[j]);
    }
    for (int64_t j = 0; j < B; ++j) acc[j].store(dst + x + j * V);
  }
  vloop(n - x, [&](int64_t i, int64_t r) {
    const int64_t at = x + i;
    fVec acc = fVec(w[0]) * fVec::loadu(rows.center + at, r);
    for (int64_t k = 1; k <= pad; ++k) {
      acc = fmadd(fVec(w[k]), fVec::loadu(rows.lo(k) + at, r) + fVec::loadu(rows.hi(k) + at, r), acc);
    }
    acc.store(dst + at, r);
  });
}

// Per-thread scratch of the row passes.
struct RowScratch {
  std::vector<float> padded, a, b, h;
  std::vector<const float*> above, below;
  RowScratch(int64_t W, int64_t pad) : padded(W + 2 * pad), a(W), b(W), h(W), above(pad + 1), below(pad + 1) {}
};

void gaussian_filter(const std::optional<at::Tensor>& low, const std::optional<at::Tensor>& high,
                     int64_t kernel_size, double sigma, at::Tensor out) {
  const at::Tensor& x = check_filter(low, high, kernel_size, sigma, out);
  if (x.numel() == 0) return;
  const std::vector<float> taps = gaussian_taps(kernel_size, sigma);
  const int64_t H = x.size(2), W = x.size(3), planes = x.numel() / (H * W), pad = kernel_size / 2;
  const float* w = taps.data() + pad;  // w[k] = taps[pad + k] = taps[pad - k]

  DIFFACCEL_DISPATCH(x.scalar_type(), "gaussian_filter", [&] {
    const scalar_t* lp = low.has_value() ? low->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* hp = high.has_value() ? high->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();

    // dst = horizontal blur of (low - high) on flat row r, from a reflect-padded float row.
    auto blur_row = [&](int64_t r, RowScratch& sc, float* dst) {
      const int64_t off = r * W;
      float* row = sc.padded.data() + pad;
      if (lp != nullptr && hp != nullptr) {
        to_float(lp + off, sc.a.data(), W);
        to_float(hp + off, sc.b.data(), W);
        vmap(std::array<const float*, 2>{sc.a.data(), sc.b.data()}, row, W, [](fVec l, fVec h) { return l - h; });
      } else if (lp != nullptr) {
        to_float(lp + off, row, W);
      } else {
        to_float(hp + off, sc.b.data(), W);
        vmap(std::array<const float*, 1>{sc.b.data()}, row, W, [](fVec h) { return fVec(0.0f) - h; });
      }
      for (int64_t i = 1; i <= pad; ++i) {
        row[-i] = row[i];
        row[W - 1 + i] = row[W - 1 - i];
      }
      symmetric_taps(ShiftedRows{row}, w, pad, dst, W);
    };
    // out[row y of `plane`] = vertical blur of the plane's horizontally blurred rows + high.
    auto blur_column = [&](const float* plane_rows, int64_t plane, int64_t y, RowScratch& sc) {
      for (int64_t k = 1; k <= pad; ++k) {
        sc.above[k] = plane_rows + reflect(y - k, H) * W;
        sc.below[k] = plane_rows + reflect(y + k, H) * W;
      }
      const int64_t r = plane * H + y;
      float* res = sc.a.data();
      symmetric_taps(RowPointers{plane_rows + y * W, sc.above.data(), sc.below.data()}, w, pad, res, W);
      if (hp != nullptr) {
        to_float(hp + r * W, sc.h.data(), W);
        vmap(std::array<const float*, 2>{res, sc.h.data()}, res, W, [](fVec bl, fVec hv) { return bl + hv; });
      }
      from_float(res, op + r * W, W);
    };

    if (planes >= at::get_num_threads()) {  // whole planes per task, through an L2-sized tile
      at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
        RowScratch sc(W, pad);
        std::vector<float> tile(H * W);
        for (int64_t plane = begin; plane < end; ++plane) {
          for (int64_t y = 0; y < H; ++y) blur_row(plane * H + y, sc, tile.data() + y * W);
          for (int64_t y = 0; y < H; ++y) blur_column(tile.data(), plane, y, sc);
        }
      });
      return;
    }
    // Few planes: both passes parallel over rows, through a float32 temporary.
    at::Tensor tmp = at::empty({x.numel()}, x.options().dtype(at::kFloat));
    float* tp = tmp.mutable_data_ptr<float>();
    const int64_t rows = planes * H, row_grain = std::max<int64_t>(1, kGrain / (W * kernel_size / 8 + 1));
    at::parallel_for(0, rows, row_grain, [&](int64_t begin, int64_t end) {
      RowScratch sc(W, pad);
      for (int64_t r = begin; r < end; ++r) blur_row(r, sc, tp + r * W);
    });
    at::parallel_for(0, rows, row_grain, [&](int64_t begin, int64_t end) {
      RowScratch sc(W, pad);
      for (int64_t r = begin; r < end; ++r) blur_column(tp + (r / H) * H * W, r / H, r % H, sc);
    });
  });
}

}  // namespace

// This level's entry points, for the table of csrc/cpu/dispatch.cpp (called there only when the
// CPU has this level).
void fill_filter_kernels(CpuKernels& k) {
  k.gaussian_filter = &gaussian_filter;
}

}  // namespace CPU_CAPABILITY
}  // namespace diffaccel::cpu
