// The per-sample quantile of dynamic thresholding (see quantile.h): one algorithm.
//
// A strided subsample of kSubsample values gives a bracket [lo, hi] that holds the two wanted
// order statistics with high probability (samples of at most kSubsample values take the whole
// range). One vectorized scan, in parallel chunks, counts the values below and above the bracket
// and collects the few inside; the order statistics are then selected exactly among those. The
// counts tell whether the bracket really held them; when it did not (a subsample that
// misrepresents the sample) the scan is repeated over the whole range, which is exact too.
#include "quantile.h"

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace diffaccel::cpu {
namespace {

constexpr int64_t kSubsample = 4096;
// Half-width of the bracket in standard deviations of the subsample quantile's rank: the true
// quantile falls outside with probability ~1e-4 per side for independent values.
constexpr double kBracketSigmas = 4.0;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// torch.quantile's linear interpolation between the order statistics around `rank` (torch's lerp
// formula, so the result matches it bit for bit).
inline float lerp_rank(float lo, float hi, float rank) {
  const float w = rank - std::floor(rank);
  return w < 0.5f ? lo + w * (hi - lo) : hi - (hi - lo) * (1.0f - w);
}

#if defined(CPU_CAPABILITY_AVX2)
// _mm256_permutevar8x32_ps indices that move the lanes set in an 8-bit mask to the front.
struct CompressTable {
  alignas(32) int32_t idx[256][8];
  CompressTable() {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int j = 0; j < 8; ++j) if (m >> j & 1) idx[m][k++] = j;
      for (; k < 8; ++k) idx[m][k] = 0;
    }
  }
};
const CompressTable kCompress;
#endif

// One scan of values against a bracket [lo, hi]: counts the values below lo and above hi and
// appends the others (those inside, and NaN) to `inside`, branch-free.
struct BracketScan {
  float lo, hi;
  int64_t below = 0, above = 0;
  std::vector<float> inside;
  int64_t used = 0;  // inside[0, used) holds the values; the rest is room to write into

  void scan(const float* v, int64_t n) {
    if (used + n + fVec::size() > static_cast<int64_t>(inside.size())) {
      inside.resize(std::max<int64_t>(2 * inside.size(), used + n + fVec::size()));
    }
    float* dst = inside.data() + used;
    constexpr int64_t V = fVec::size();
    const fVec vlo(lo), vhi(hi), one(1.0f);
    fVec n_below(0.0f), n_above(0.0f);  // exact: at most kBlock / V per lane
    int64_t i = 0;
    for (; i + V <= n; i += V) {
      const fVec a = fVec::loadu(v + i);
      const fVec lt = a < vlo, gt = a > vhi;
      n_below += lt & one;
      n_above += gt & one;
#if defined(CPU_CAPABILITY_AVX2)
      const int in = ~_mm256_movemask_ps(_mm256_or_ps(lt, gt)) & 0xff;
      _mm256_storeu_ps(dst, _mm256_permutevar8x32_ps(a, _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.idx[in]))));
      dst += __builtin_popcount(in);
#else
      float lanes[V];
      a.store(lanes);
      for (int64_t j = 0; j < V; ++j) if (!(lanes[j] < lo || lanes[j] > hi)) *dst++ = lanes[j];
#endif
    }
    float lanes[V];
    n_below.store(lanes);
    for (int64_t j = 0; j < V; ++j) below += static_cast<int64_t>(lanes[j]);
    n_above.store(lanes);
    for (int64_t j = 0; j < V; ++j) above += static_cast<int64_t>(lanes[j]);
    for (; i < n; ++i) {
      if (v[i] < lo) ++below;
      else if (v[i] > hi) ++above;
      else *dst++ = v[i];
    }
    used = dst - inside.data();
  }
};

// Order statistics k and k + 1 (or k alone when !next) of v[0, n), no NaN, all values in
// [lo, hi] (pass -inf / inf when unknown). Reorders v. Large sets are bucketed first:
// bucket(v) = (v - lo) * scale, truncated, is non-decreasing in v in float arithmetic, so one
// counting pass finds the buckets holding the two order statistics and only their values are
// selected among (about 8 values per bucket).
std::pair<float, float> select_pair(float* v, int64_t n, int64_t k, bool next, float lo, float hi) {
  auto pair_of = [&](float* w, int64_t m, int64_t j) {
    std::nth_element(w, w + j, w + m);
    return std::pair<float, float>{w[j], next ? *std::min_element(w + j + 1, w + m) : w[j]};
  };
  if (n <= kSubsample) return pair_of(v, n, k);
  if (!(hi - lo < kInf)) {
    const auto [mn_it, mx_it] = std::minmax_element(v, v + n);
    lo = *mn_it, hi = *mx_it;
  }
  if (!(hi - lo < kInf) || hi == lo) return pair_of(v, n, k);
  const int64_t buckets = std::min<int64_t>(std::max<int64_t>(n / 8, 1024), 1 << 20);
  const float scale = static_cast<float>(buckets) / (hi - lo), top = static_cast<float>(buckets - 1);
  // (v - lo) * scale in [0, buckets] (rounding can reach the end): clamped in float, then truncated.
  std::vector<int32_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = static_cast<int32_t>(std::min((v[i] - lo) * scale, top));
  std::vector<int64_t> hist(buckets, 0);
  for (int64_t i = 0; i < n; ++i) ++hist[idx[i]];
  int64_t cum = 0, b_lo = 0;
  while (cum + hist[b_lo] <= k) cum += hist[b_lo++];
  int64_t b_hi = b_lo, cum_hi = cum + hist[b_lo];
  while (next && cum_hi <= k + 1) cum_hi += hist[++b_hi];
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] >= b_lo && idx[i] <= b_hi) v[m++] = v[i];  // m <= i: in place
  }
  return pair_of(v, m, k - cum);
}

}  // namespace

float quantile(BlockFill fill, int64_t base, int64_t n, float divisor, double ratio, int64_t chunks) {
  const float rank = static_cast<float>(ratio) * static_cast<float>(n - 1);
  const int64_t below = static_cast<int64_t>(rank), above = static_cast<int64_t>(std::ceil(rank));
  chunks = std::max<int64_t>(1, std::min(chunks, n / kBlock));

  // The bracket: order statistics of the subsample kBracketSigmas standard deviations (of the
  // subsample quantile's rank, sqrt(m p (1 - p))) either side of the target, +-2 for small spreads.
  float lo = -kInf, hi = kInf;
  double inside_fraction = 1.0;  // expected share of the values inside the bracket
  if (n > kSubsample) {
    const int64_t m = kSubsample, stride = n / m;
    std::vector<float> sub(m);
    for (int64_t j = 0; j < m; ++j) {
      fill(base + j * stride, 1, &sub[j]);
      if (std::isnan(sub[j])) return kNaN;
    }
    const double half = kBracketSigmas * std::sqrt(m * ratio * (1 - ratio)) + 2, center = ratio * (m - 1);
    const int64_t lo_i = static_cast<int64_t>(std::floor(center - half));
    const int64_t hi_i = static_cast<int64_t>(std::ceil(center + half));
    if (lo_i >= 0) {
      std::nth_element(sub.begin(), sub.begin() + lo_i, sub.end());
      lo = sub[lo_i];
    }
    if (hi_i < m) {
      std::nth_element(sub.begin() + std::max<int64_t>(lo_i + 1, 0), sub.begin() + hi_i, sub.end());
      hi = sub[hi_i];
    }
    inside_fraction = std::min(1.0, 1.5 * static_cast<double>(hi_i - lo_i + 1) / m);
  }

  auto chunk_lo = [&](int64_t k) { return base + k * n / chunks; };
  for (;;) {
    std::vector<BracketScan> scans(chunks, BracketScan{lo, hi});
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      float buf[kBlock];
      for (int64_t k = begin; k < end; ++k) {
        BracketScan& sc = scans[k];
        const int64_t a = chunk_lo(k), b = chunk_lo(k + 1);
        sc.inside.resize(static_cast<size_t>(inside_fraction * (b - a)) + kBlock + fVec::size());
        for (int64_t i = a; i < b; i += kBlock) {
          const int64_t len = std::min(kBlock, b - i);
          fill(i, len, buf);
          sc.scan(buf, len);
        }
      }
    });
    int64_t first = 0;  // values below lo
    std::vector<float> inside;
    for (const auto& sc : scans) {
      first += sc.below;
      inside.insert(inside.end(), sc.inside.begin(), sc.inside.begin() + sc.used);
    }
    if (std::any_of(inside.begin(), inside.end(), [](float f) { return std::isnan(f); })) return kNaN;
    if (below < first || above >= first + static_cast<int64_t>(inside.size())) {  // the bracket missed
      lo = -kInf, hi = kInf, inside_fraction = 1.0;
      continue;
    }
    const auto [v_lo, v_hi] = select_pair(inside.data(), inside.size(), below - first, above > below, lo, hi);
    return lerp_rank(v_lo / divisor, v_hi / divisor, rank);
  }
}

}  // namespace diffaccel::cpu
