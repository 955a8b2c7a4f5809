// Host-side scalar math shared by the CPU kernels and the CUDA bindings: the per-sample
// schedule coefficients and the Gaussian taps. Kept in one place so every backend of an op
// derives its constants the same way diffaccel/reference.py does.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace diffaccel {

// abar[t] with abar[-1] = 1 ("the final step"), as reference.gather_abar.
inline float abar_at(const float* abar, int64_t t) { return t >= 0 ? abar[t] : 1.0f; }

// Taps of reference.gaussian_kernel1d (torchvision): positions as float32
// torch.linspace(-(k-1)/2, (k-1)/2, k) computes them, exp(-x^2 / (2 sigma^2)), normalised.
inline std::vector<float> gaussian_taps(int64_t kernel_size, double sigma) {
  std::vector<float> taps(kernel_size);
  const float half = (kernel_size - 1) * 0.5f;
  const float step = kernel_size > 1 ? (2 * half) / static_cast<float>(kernel_size - 1) : 0.0f;
  std::vector<double> pdf(kernel_size);
  double sum = 0;
  for (int64_t i = 0; i < kernel_size; ++i) {
    // torch.linspace fills the first half from the start and the second half from the end.
    const float x = i < kernel_size / 2 ? -half + step * i : half - step * (kernel_size - 1 - i);
    const double z = static_cast<double>(x) / sigma;
    pdf[i] = std::exp(-0.5 * z * z);
    sum += pdf[i];
  }
  for (int64_t i = 0; i < kernel_size; ++i) taps[i] = static_cast<float>(pdf[i] / sum);
  return taps;
}

}  // namespace diffaccel
