#!/usr/bin/env bash
# Compile-check the CUDA kernels without PyTorch (issue 2, "CI compiles the kernel files with
# nvcc for sm_80 and sm_90"). Needs only the CUDA toolkit; no GPU, no CUDA PyTorch.
#
#   bash .ci/nvcc_check.sh            # NVCC=/path/to/nvcc to pick a toolkit
#
# 1. every csrc/cuda/*.cu: nvcc -c for sm_80 + sm_90, -O3, C++17, nvcc warnings are errors,
#    under PyTorch's __CUDA_NO_HALF*/BFLOAT16 conversion macros (as torch's CUDAExtension
#    builds them);
# 2. launchers.h compiles as plain host C++ (the binding includes it without nvcc);
# 3. the objects link into one shared library with no undefined symbols.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/csrc/cuda"
nvcc="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$nvcc" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then nvcc="$CUDA_HOME/bin/nvcc"; fi
if [[ -z "$nvcc" ]]; then
  echo "nvcc_check: nvcc not found (put it on PATH, or set NVCC or CUDA_HOME)" >&2
  exit 1
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

flags=(-O3 -std=c++17 -Werror all-warnings -Xcompiler -fPIC
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)

echo "nvcc_check: $("$nvcc" --version | tail -n 2 | head -n 1)"
shopt -s nullglob
sources=("$src"/*.cu)
if (( ${#sources[@]} == 0 )); then
  echo "nvcc_check: no .cu files under $src" >&2
  exit 1
fi
objects=()
for f in "${sources[@]}"; do
  obj="$out/$(basename "$f" .cu).o"
  echo "nvcc_check: compiling ${f#"$root"/} (sm_80, sm_90)"
  "$nvcc" "${flags[@]}" -c "$f" -o "$obj"
  objects+=("$obj")
done

echo "nvcc_check: compiling csrc/cuda/launchers.h as host C++"
printf '#include "launchers.h"\n#include "launchers.h"\nint main() { return 0; }\n' > "$out/header_check.cpp"
"$nvcc" -x c++ -std=c++17 -I"$src" -Xcompiler -Wall,-Wextra,-Werror -c "$out/header_check.cpp" -o "$out/header_check.o"

echo "nvcc_check: linking ${#objects[@]} objects (no undefined symbols)"
"$nvcc" -shared -Xlinker --no-undefined "${objects[@]}" -o "$out/libdiffaccel_cuda_kernels.so"

echo "nvcc_check: OK (${#sources[@]} .cu files)"
