// CPU kernels of the convolution family: a Winograd F(4x4, 3x3) 3x3 convolution (stride 1,
// padding 1) for channels-last float32, the layer that dominates the course UNet of SPEC
// Part B (83% of its multiply-adds at D = 64).
//
// Winograd (Lavin & Gray 2016): each 4x4 output tile is A^T [(G g G^T) . (B^T d B)] A for the
// 6x6 input tile d and the 3x3 filter g, so the channel sums become 36 independent GEMMs
// (one per position of the 6x6 transformed tile) of (tiles x Cin) by (Cin x Cout): 36 x Cin x Cout
// multiply-adds per 16 outputs instead of 144 x Cin x Cout, 4x fewer. The transforms are
// additions and small constant multiples, vectorized over channels (channels-last keeps a
// pixel's channels contiguous). Tiles are processed in blocks whose transformed inputs and
// GEMM results stay in the per-core caches; the GEMMs are one batched GEMM per block (MKL /
// the BLAS torch was built with). Float32 rounding differs from a direct convolution (about
// 1e-6 relative for these transforms' points 0, +-1, +-2, +-1/2).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>
#include <optional>

#include "kernels.h"
#include "vec_utils.h"

namespace diffaccel::cpu {
inline namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kTile = 4;             // output tile side
constexpr int64_t kIn = kTile + 2;       // input tile side (6)
constexpr int64_t kPos = kIn * kIn;      // transformed positions (36)
constexpr int64_t kTilesPerBlock = 192;  // tiles per GEMM block (measured: the GEMM gains up to ~192)

// B^T applied to six vectors (a column or a row of the 6x6 input tile).
inline void input_1d(const fVec d[6], fVec r[6]) {
  const fVec four(4.0f), five(5.0f), two(2.0f);
  r[0] = fmadd(four, d[0], fnmadd(five, d[2], d[4]));
  const fVec a = fnmadd(four, d[2], d[4]), b = fnmadd(four, d[1], d[3]);  // d4 - 4 d2, d3 - 4 d1
  r[1] = a + b;
  r[2] = a - b;
  const fVec c = d[4] - d[2], e = two * (d[3] - d[1]);
  r[3] = c + e;
  r[4] = c - e;
  r[5] = fmadd(four, d[1], fnmadd(five, d[3], d[5]));
}

// A^T applied to six vectors: four outputs.
inline void output_1d(const fVec m[6], fVec o[4]) {
  const fVec s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
  o[0] = m[0] + s12 + s34;
  o[1] = fmadd(fVec(2.0f), d34, d12);
  o[2] = fmadd(fVec(4.0f), s34, s12);
  o[3] = fmadd(fVec(8.0f), d34, d12) + m[5];
}

struct Geometry {
  int64_t n, h, w, cin, cout, tiles_h, tiles_w;
  int64_t tiles() const { return n * tiles_h * tiles_w; }
};

// V[j][pos][c] for the tiles [t0, t0 + count): the transformed 6x6 input tiles (zero padding).
void transform_inputs(const float* x, const Geometry& g, int64_t t0, int64_t count, float* v) {
  const int64_t per_image = g.tiles_h * g.tiles_w;
  const fVec zero(0.0f);
  for (int64_t j = 0; j < count; ++j) {
    const int64_t tile = t0 + j, img = tile / per_image, ty = tile % per_image / g.tiles_w,
                  tx = tile % g.tiles_w;
    const int64_t y0 = ty * kTile - 1, x0 = tx * kTile - 1;
    const float* base = x + img * g.h * g.w * g.cin;
    vloop(g.cin, [&](int64_t c, int64_t r) {
      fVec tmp[kIn][kIn];  // B^T d, row by row of the result
      for (int64_t col = 0; col < kIn; ++col) {
        fVec d[kIn], out[kIn];
        const int64_t xx = x0 + col;
        for (int64_t row = 0; row < kIn; ++row) {
          const int64_t yy = y0 + row;
          d[row] = (yy >= 0 && yy < g.h && xx >= 0 && xx < g.w)
                       ? fVec::loadu(base + (yy * g.w + xx) * g.cin + c, r)
                       : zero;
        }
        input_1d(d, out);
        for (int64_t row = 0; row < kIn; ++row) tmp[row][col] = out[row];
      }
      for (int64_t row = 0; row < kIn; ++row) {
        fVec out[kIn];
        input_1d(tmp[row], out);
        for (int64_t col = 0; col < kIn; ++col) {
          out[col].store(v + (j * kPos + row * kIn + col) * g.cin + c, r);
        }
      }
    });
  }
}

// The 4x4 output tiles of [t0, t0 + count) from M[j][pos][co], plus bias, into NHWC y.
void transform_outputs(const float* m, const float* bias, const Geometry& g, int64_t t0, int64_t count, float* y) {
  const int64_t per_image = g.tiles_h * g.tiles_w;
  for (int64_t j = 0; j < count; ++j) {
    const int64_t tile = t0 + j, img = tile / per_image, ty = tile % per_image / g.tiles_w,
                  tx = tile % g.tiles_w;
    const int64_t rows = std::min(kTile, g.h - ty * kTile), cols = std::min(kTile, g.w - tx * kTile);
    float* base = y + ((img * g.h + ty * kTile) * g.w + tx * kTile) * g.cout;
    vloop(g.cout, [&](int64_t c, int64_t r) {
      fVec tmp[kTile][kIn];  // A^T M
      for (int64_t col = 0; col < kIn; ++col) {
        fVec in[kIn], out[kTile];
        for (int64_t row = 0; row < kIn; ++row) in[row] = fVec::loadu(m + (j * kPos + row * kIn + col) * g.cout + c, r);
        output_1d(in, out);
        for (int64_t row = 0; row < kTile; ++row) tmp[row][col] = out[row];
      }
      const fVec b = bias != nullptr ? fVec::loadu(bias + c, r) : fVec(0.0f);
      for (int64_t row = 0; row < rows; ++row) {
        fVec out[kTile];
        output_1d(tmp[row], out);
        for (int64_t col = 0; col < cols; ++col) (out[col] + b).store(base + (row * g.w + col) * g.cout + c, r);
      }
    });
  }
}

// U[pos][ci][co] = (G g G^T)[pos] for weight [Cout, Cin, 3, 3] (float64 arithmetic, rounded once).
at::Tensor winograd_weight(const at::Tensor& weight) {
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
                    "diffaccel: winograd_weight: weight must be [Cout, Cin, 3, 3], got ", weight.sizes());
  TORCH_CHECK_TYPE(weight.is_floating_point(), "diffaccel: winograd_weight: weight must be floating point, got ",
                   weight.scalar_type());
  static constexpr double G[kIn][3] = {{1.0 / 4, 0, 0},
                                       {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                       {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                       {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                       {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                       {0, 0, 1}};
  const int64_t cout = weight.size(0), cin = weight.size(1);
  const at::Tensor w = weight.to(at::kDouble).contiguous();
  at::Tensor u = at::empty({kPos, cin, cout}, weight.options().dtype(at::kFloat));
  const double* wp = w.const_data_ptr<double>();
  float* up = u.mutable_data_ptr<float>();
  for (int64_t co = 0; co < cout; ++co) {
    for (int64_t ci = 0; ci < cin; ++ci) {
      const double* k = wp + (co * cin + ci) * 9;
      double gk[kIn][3];  // G g
      for (int64_t i = 0; i < kIn; ++i)
        for (int64_t b = 0; b < 3; ++b) gk[i][b] = G[i][0] * k[b] + G[i][1] * k[3 + b] + G[i][2] * k[6 + b];
      for (int64_t i = 0; i < kIn; ++i)
        for (int64_t jj = 0; jj < kIn; ++jj)
          up[((i * kIn + jj) * cin + ci) * cout + co] =
              static_cast<float>(gk[i][0] * G[jj][0] + gk[i][1] * G[jj][1] + gk[i][2] * G[jj][2]);
    }
  }
  return u;
}

// y = conv2d(x, weight, bias, stride 1, padding 1) for channels-last float32 x, from the
// transformed weight u = winograd_weight(weight). Returns a channels-last [N, Cout, H, W].
at::Tensor conv3x3_winograd(const at::Tensor& x, const at::Tensor& u, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() == 4, "diffaccel: conv3x3_winograd: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat && u.scalar_type() == at::kFloat,
                   "diffaccel: conv3x3_winograd: x and weight must be float32, got ", x.scalar_type(), " and ",
                   u.scalar_type());
  TORCH_CHECK_VALUE(u.dim() == 3 && u.size(0) == kPos && u.size(1) == x.size(1),
                    "diffaccel: conv3x3_winograd: weight must be winograd_weight() of a [Cout, ", x.size(1),
                    ", 3, 3] filter ([36, ", x.size(1), ", Cout]), got ", u.sizes());
  const int64_t cout = u.size(2);
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == cout && bias->scalar_type() == at::kFloat,
                      "diffaccel: conv3x3_winograd: bias must be float32 [", cout, "], got ", bias->sizes(), " ",
                      bias->scalar_type());
  }
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor uc = u.contiguous();
  const std::optional<at::Tensor> bc = bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  Geometry g{x.size(0), x.size(2), x.size(3), x.size(1), cout, 0, 0};
  g.tiles_h = (g.h + kTile - 1) / kTile;
  g.tiles_w = (g.w + kTile - 1) / kTile;
  at::Tensor y = at::empty({g.n, cout, g.h, g.w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const float* xp = xc.const_data_ptr<float>();
  const float* bp = bc.has_value() ? bc->const_data_ptr<float>() : nullptr;
  float* yp = y.mutable_data_ptr<float>();
  const int64_t blocks = (g.tiles() + kTilesPerBlock - 1) / kTilesPerBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor v = at::empty({kTilesPerBlock, kPos, g.cin}, xc.options().memory_format(at::MemoryFormat::Contiguous));
    at::Tensor m = at::empty({kTilesPerBlock, kPos, cout}, v.options());
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t t0 = blk * kTilesPerBlock, count = std::min(kTilesPerBlock, g.tiles() - t0);
      // Tile-major buffers ([tile][pos][C]: a tile's 36 transformed vectors are contiguous for
      // the transforms), seen as the GEMM batch [pos][tile][C] with row stride 36 C.
      at::Tensor vb = v.as_strided({kPos, count, g.cin}, {g.cin, kPos * g.cin, 1});
      at::Tensor mb = m.as_strided({kPos, count, cout}, {cout, kPos * cout, 1});
      transform_inputs(xp, g, t0, count, vb.mutable_data_ptr<float>());
      at::bmm_out(mb, vb, uc);
      transform_outputs(mb.const_data_ptr<float>(), bp, g, t0, count, yp);
    }
  });
  return y;
}

}  // namespace

// This level's entry points, for the table of csrc/cpu/dispatch.cpp (called there only when the
// CPU has this level).
void fill_conv_kernels(CpuKernels& k) {
  k.winograd_weight = &winograd_weight;
  k.conv3x3_winograd = &conv3x3_winograd;
}

}  // namespace CPU_CAPABILITY
}  // namespace diffaccel::cpu
