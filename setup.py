"""Build diffaccel's compiled operators (``diffaccel._C``) with torch's cpp_extension.

``pip install --no-build-isolation -e .`` builds the CPU kernels always, and the CUDA kernels too
where PyTorch was built with CUDA and a CUDA toolkit is found (CUDA_HOME). Environment switches:

* ``DIFFACCEL_SKIP_CPP=1``    — no C++ at all: a pure-Python install (the reference backend).
* ``DIFFACCEL_BUILD_CUDA=0|1`` — skip / force the CUDA kernels (default: auto-detect).
* ``DIFFACCEL_CPU_ISA=auto|avx2|generic`` — instruction set of the CPU kernels. ``auto``
  (default) uses AVX2+FMA+F16C when the build machine has them, like a ``-march=native`` build;
  ``generic`` is portable to any x86-64 / aarch64 machine.
* ``MAX_JOBS`` — parallel compile jobs (torch's ninja builder).

The extension is only loaded for its operator registrations (``torch.ops.diffaccel.*``); its
Python module is an empty stub, so there is no pybind11 and no Python-version-specific code.
"""
from __future__ import annotations

import glob
import os
import platform
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str):
    """True / False for 1 / 0 (and yes/no, true/false), None when unset or "auto"."""
    v = os.environ.get(name, "").strip().lower()
    if v in ("", "auto"):
        return None
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    sys.exit(f"setup.py: {name} must be 0 or 1, got {os.environ[name]!r}")


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _isa_args():
    """(isa name, compile args) for the CPU kernels; see DIFFACCEL_CPU_ISA above."""
    isa = os.environ.get("DIFFACCEL_CPU_ISA", "auto").strip().lower()
    if isa not in ("auto", "avx2", "generic"):
        sys.exit(f"setup.py: DIFFACCEL_CPU_ISA must be auto, avx2 or generic, got {isa!r}")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if isa == "auto":
        isa = "avx2" if x86 and {"avx2", "fma", "f16c"} <= _cpu_flags() else "generic"
    if isa == "avx2":
        # ATen's Vectorized<float> picks its AVX2 implementation (in namespace at::vec::AVX2, so
        # it cannot clash with libtorch's own copies) from CPU_CAPABILITY, as ATen's kernels do.
        return isa, ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return isa, []


def _extensions():
    if _env_flag("DIFFACCEL_SKIP_CPP"):
        print("setup.py: DIFFACCEL_SKIP_CPP=1, installing without compiled operators")
        return [], {}

    import torch
    from torch.utils import cpp_extension

    isa, isa_args = _isa_args()
    sources = ["csrc/diffaccel.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    cxx = ["-O3", "-fopenmp", "-Wno-unknown-pragmas", "-DDIFFACCEL_PYTHON_MODULE", f'-DDIFFACCEL_CPU_ISA="{isa}"', *isa_args]
    # at::parallel_for is inlined from ATen's OpenMP headers: without -fopenmp it runs serially.
    # libgomp resolves to the copy torch has already loaded (same soname).
    link = ["-fopenmp"]

    build_cuda = _env_flag("DIFFACCEL_BUILD_CUDA")
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if build_cuda and not has_cuda:
        sys.exit("setup.py: DIFFACCEL_BUILD_CUDA=1 but PyTorch has no CUDA "
                 f"(torch.version.cuda={torch.version.cuda}) or no toolkit was found (CUDA_HOME unset)")
    if build_cuda is None:
        build_cuda = has_cuda

    kwargs = dict(name="diffaccel._C", extra_link_args=link)
    if build_cuda:
        cu = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        ext = cpp_extension.CUDAExtension(
            sources=sources + cu,
            extra_compile_args={"cxx": cxx,
                                "nvcc": ["-O3", "-lineinfo"]},
            **kwargs)
    else:
        ext = cpp_extension.CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    print(f"setup.py: building diffaccel._C (CPU kernels for {isa}; CUDA kernels: {'yes' if build_cuda else 'no'})")
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
