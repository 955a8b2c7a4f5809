"""Build diffaccel's compiled operators (``diffaccel._C``) with torch's cpp_extension.

Install torch first, then ``pip install --no-build-isolation .`` (``-e .`` for development): the
operators are compiled against the torch you run. The CPU kernels are built always, the CUDA
kernels where PyTorch was built with CUDA and a CUDA toolkit is found (CUDA_HOME). Switches:

* ``DIFFACCEL_SKIP_CPP=1``    — no C++ at all: a pure-Python install (the reference backend).
* ``DIFFACCEL_BUILD_CUDA=0|1`` — skip / force the CUDA kernels (default: auto-detect).
* ``DIFFACCEL_CPU_ISA=auto|avx512|avx2|generic`` — the highest instruction-set level of the CPU
  kernels built (see "CPU dispatch" below). ``auto`` (default): every level of the platform
  (x86-64: generic, avx2, avx512; elsewhere generic only), whatever CPU the build machine has.
* ``DIFFACCEL_DEBUG=1``       — keep debug info (``-g``); release builds have none (``-g0``).
* ``DIFFACCEL_ALLOW_ISOLATED_BUILD=1`` — build against a torch that is not the environment's own
  (see :func:`isolated_torch_message`), e.g. a deliberate ``python -m build`` for one torch pin.
* ``TORCH_CUDA_ARCH_LIST``    — CUDA architectures (default :data:`CUDA_ARCH_LIST`).
* ``MAX_JOBS`` — parallel compile jobs (torch's ninja builder).

CPU dispatch (as ATen's ``CPU_CAPABILITY`` / ``DispatchStub``): every kernel source of
``csrc/cpu`` is compiled once per level — generic (no ISA flags; the only level off x86-64), AVX2
and AVX-512, flags in :data:`CPU_LEVEL_FLAGS` — with ``-DCPU_CAPABILITY=<LEVEL>`` putting its code in
namespace ``diffaccel::cpu::<LEVEL>``; ``csrc/cpu/dispatch.cpp`` and the schemas, the only code
run at load, get no ISA flags and pick one level's function table at load by CPU feature
detection (``DIFFACCEL_CPU_CAPABILITY=generic|avx2|avx512`` at run time forces one;
``torch.ops.diffaccel.cpu_capability()`` reports it). setuptools has one set of compile flags per
extension, so: the same source compiled twice needs two object paths, which tiny generated
wrappers give (``build/cpu_capability/<level>/<name>.cpp``, one ``#include`` of the kernel
source), and :class:`BuildExt` compiles the sources in groups, one per level, each with that
level's flags added (the generic group first, so the linker keeps the generic copy of any inline
function that several levels emit).

The extension is only loaded for its operator registrations (``torch.ops.diffaccel.*``); its
Python module is an empty stub using the limited C API only, so the wheel is tagged
``cp310-abi3`` (one wheel for every CPython >= 3.10) and does not link ``libtorch_python``.
The torch it was built against is recorded next to it (``diffaccel/_build_info.py``) and
checked at import (``diffaccel/_cpp_ops.py``).
"""
from __future__ import annotations

import glob
import os
import platform
import sys
import sysconfig

ROOT = os.path.dirname(os.path.abspath(__file__))

#: CUDA architectures of the wheel: SASS for Ampere (sm_80) and Hopper (sm_90), plus compute_90
#: PTX that newer GPUs JIT-compile. Keep in step with CUDA_ARCHITECTURES in CMakeLists.txt.
CUDA_ARCH_LIST = "8.0;9.0+PTX"
#: The limited C API level of ``diffaccel._C`` (torch's cpp_extension defines Py_LIMITED_API to
#: its own minimum, 3.10) and so the wheel's ``cp310-abi3`` tag; = requires-python.
LIMITED_API_TAG = "cp310"

# Path components of the temporary environments that build front-ends install build requirements
# into when they isolate a build: pip (pip-build-env-*), python -m build (build-env-*), uv.
_ISOLATED_MARKERS = ("pip-build-env-", "build-env-", "builds-v")


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


#: Compile flags of the CPU kernels per ISA level (ATen's own for these levels).
CPU_LEVEL_FLAGS = {
    "generic": ["-DCPU_CAPABILITY=DEFAULT"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}
_CPU_LEVELS = ("generic", "avx2", "avx512")
#: Where the per-level wrapper sources are generated (relative to the source tree).
CPU_WRAPPER_DIR = os.path.join("build", "cpu_capability")


def _cpu_levels() -> list:
    """The ISA levels to build, lowest first; see DIFFACCEL_CPU_ISA above."""
    isa = os.environ.get("DIFFACCEL_CPU_ISA", "auto").strip().lower()
    if isa not in ("auto",) + _CPU_LEVELS:
        sys.exit(f"setup.py: DIFFACCEL_CPU_ISA must be auto, avx512, avx2 or generic, got {isa!r}")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if isa == "auto":
        isa = "avx512" if x86 else "generic"
    if isa != "generic" and not x86:
        sys.exit(f"setup.py: DIFFACCEL_CPU_ISA={isa} needs an x86-64 build machine, this is {platform.machine()}")
    return list(_CPU_LEVELS[:_CPU_LEVELS.index(isa) + 1])


def cpu_level_sources(levels, kernel_sources) -> dict:
    """{level: sources} of the CPU kernels: the sources themselves for generic, generated wrappers
    (one ``#include`` each, written here when missing or stale) for the other levels."""
    out = {"generic": list(kernel_sources)}
    for level in levels[1:]:
        d = os.path.join(CPU_WRAPPER_DIR, level)
        os.makedirs(os.path.join(ROOT, d), exist_ok=True)
        out[level] = []
        for src in kernel_sources:
            wrapper = os.path.join(d, os.path.basename(src))
            rel = os.path.relpath(os.path.join(ROOT, src), os.path.join(ROOT, d)).replace(os.sep, "/")
            text = (f"// Generated by setup.py: {src} for the {level} level (flags: setup.CPU_LEVEL_FLAGS).\n"
                    f'#include "{rel}"\n')
            path = os.path.join(ROOT, wrapper)
            if not os.path.exists(path) or open(path).read() != text:
                with open(path, "w") as f:
                    f.write(text)
            out[level].append(wrapper)
    return out


# ----------------------------------------------------------------------------- build isolation
def _environment_site_dirs() -> list:
    """The interpreter's own site-packages (venv / conda / system, and the user site)."""
    dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    try:
        import site

        dirs.update(site.getsitepackages())  # e.g. Debian's /usr/lib/python3/dist-packages too
        dirs.add(site.getusersitepackages())
    except (AttributeError, ImportError):  # site may be trimmed (embedded interpreters, old virtualenv)
        pass
    return [os.path.realpath(d) for d in dirs if d]


def _installed_torch_version(site_dirs) -> str | None:
    """The version of the torch installed in the environment itself (None if it has none)."""
    for d in site_dirs:
        version_py = os.path.join(d, "torch", "version.py")
        try:
            with open(version_py) as f:
                for line in f:
                    if line.startswith("__version__"):
                        return line.split("=", 1)[1].strip().strip("'\"")
        except OSError:
            continue
    return None


def isolated_torch_message(torch_file: str, torch_version: str, site_dirs) -> str | None:
    """Why building against the torch at ``torch_file`` is wrong, or None when it is the
    environment's own.

    A build front-end that isolates the build (plain ``pip install``, ``python -m build``, uv)
    installs the build requirements, torch included, into a temporary environment: the
    operators would then be compiled against whatever torch the index serves there (often a
    different version or a multi-GB CUDA build) and fail to load under the torch the user runs.
    """
    torch_dir = os.path.realpath(os.path.dirname(os.path.dirname(torch_file)))
    parts = torch_dir.split(os.sep)
    isolated = any(p.startswith(m) for p in parts for m in _ISOLATED_MARKERS)
    inside = any(torch_dir == d or torch_dir.startswith(d + os.sep) for d in site_dirs)
    if inside and not isolated:
        return None
    own = _installed_torch_version(site_dirs)
    here = (f"this environment has torch {own}" if own else
            "this environment has no torch installed")
    how = ("the build front-end isolated the build in a temporary environment" if isolated else
           "it comes from outside this environment's site-packages (PYTHONPATH?)")
    return (
        f"setup.py: building against torch {torch_version} from {torch_dir}, which is not this "
        f"environment's own torch ({here}): {how}, so the compiled operators would not match the "
        "torch you run.\n"
        "diffaccel is a PyTorch extension: install torch first, then build without isolation:\n"
        "    pip install torch            # the build you want (CPU or CUDA), >= the floor in pyproject.toml\n"
        "    pip install --no-build-isolation diffaccel   # or: . / diffaccel-<version>.tar.gz / -e .\n"
        "(set DIFFACCEL_ALLOW_ISOLATED_BUILD=1 to build against that torch anyway)")


def no_torch_message(error: str, path) -> str:
    """What to do when torch cannot be imported at build time (``path``: ``sys.path``)."""
    isolated = any(m in p for p in path for m in _ISOLATED_MARKERS)
    own = _installed_torch_version(_environment_site_dirs())
    why = (f"the build front-end isolated the build in a temporary environment without it"
           f"{f' (this environment has torch {own})' if own else ''}"
           if isolated else "it is not installed in this environment")
    return (f"setup.py: torch is not importable ({error}): {why}.\n"
            "diffaccel is a PyTorch extension compiled against the torch you run: install torch first, "
            "then build without isolation:\n"
            "    pip install torch            # the build you want (CPU or CUDA), >= the floor in pyproject.toml\n"
            "    pip install --no-build-isolation diffaccel   # or: . / diffaccel-<version>.tar.gz / -e .\n"
            "(DIFFACCEL_SKIP_CPP=1 installs the pure-Python reference without compiled operators)")


def _check_not_isolated(torch) -> None:
    if _env_flag("DIFFACCEL_ALLOW_ISOLATED_BUILD"):
        return
    msg = isolated_torch_message(torch.__file__, torch.__version__, _environment_site_dirs())
    if msg:
        sys.exit(msg)


# ----------------------------------------------------------------------------- extension
def _headers() -> list:
    """Every header the sources include: a change to one rebuilds the extension."""
    return sorted(p for ext in ("h", "cuh") for p in glob.glob(f"csrc/**/*.{ext}", root_dir=ROOT, recursive=True))


def build_info_source(torch_version: str, cuda_version, cpu_isa: str, cuda_kernels: bool, debug: bool) -> str:
    """``diffaccel/_build_info.py``: what ``diffaccel._C`` was built against (read at import)."""
    return (
        '"""What diffaccel._C was built against; written by setup.py, checked by _cpp_ops at import."""\n'
        f"TORCH_VERSION = {torch_version!r}\n"
        f"TORCH_CUDA_VERSION = {cuda_version!r}\n"
        f"CPU_ISA = {cpu_isa!r}\n"
        f"CUDA_KERNELS = {cuda_kernels!r}\n"
        f"DEBUG = {debug!r}\n")


# Commands that compile (directly or through build). Others (sdist, egg_info, dist_info, --name)
# only describe or package the sources: they need neither torch nor a compiler, so an sdist can
# be made anywhere (``python -m build --sdist`` included).
_BUILDING = {"build", "build_ext", "bdist_wheel", "bdist", "bdist_egg", "editable_wheel", "develop",
             "install", "bdist_rpm", "bdist_dumb"}


def _extensions():
    """(ext_modules, cmdclass, setup options) for :func:`setuptools.setup`."""
    if not _BUILDING & set(sys.argv[1:]):
        return [], {}, {}
    if _env_flag("DIFFACCEL_SKIP_CPP"):
        print("setup.py: DIFFACCEL_SKIP_CPP=1, installing without compiled operators")
        return [], {}, {}

    try:
        import torch
    except ImportError as e:
        sys.exit(no_torch_message(str(e), sys.path))
    _check_not_isolated(torch)
    from torch.utils import cpp_extension

    levels = _cpu_levels()
    isa = levels[-1]
    debug = bool(_env_flag("DIFFACCEL_DEBUG"))
    kernel_sources = [p for p in sorted(glob.glob("csrc/cpu/*.cpp")) if os.path.basename(p) != "dispatch.cpp"]
    level_sources = cpu_level_sources(levels, kernel_sources)
    sources = ["csrc/diffaccel.cpp", "csrc/cpu/dispatch.cpp", *(p for lv in levels for p in level_sources[lv])]
    # -g / -g0 last: Python's own CFLAGS (sysconfig) often carry -g, which would put ~11 MB of
    # debug info into the library.
    g = ["-g"] if debug else ["-g0"]
    cxx = ["-O3", "-fopenmp", "-Wno-unknown-pragmas", "-DDIFFACCEL_PYTHON_MODULE",
           f'-DDIFFACCEL_CPU_ISA="{isa}"',
           *(f"-DDIFFACCEL_CPU_HAVE_{lv.upper()}" for lv in levels[1:]), *g]
    # at::parallel_for is inlined from ATen's OpenMP headers: without -fopenmp it runs serially.
    # libgomp resolves to the copy torch has already loaded (same soname).
    link = ["-fopenmp"] + ([] if debug else ["-s"])

    build_cuda = _env_flag("DIFFACCEL_BUILD_CUDA")
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if build_cuda and not has_cuda:
        sys.exit("setup.py: DIFFACCEL_BUILD_CUDA=1 but PyTorch has no CUDA "
                 f"(torch.version.cuda={torch.version.cuda}) or no toolkit was found (CUDA_HOME unset)")
    if build_cuda is None:
        build_cuda = has_cuda

    kwargs = dict(name="diffaccel._C", extra_link_args=link, depends=_headers(), py_limited_api=True)
    if build_cuda:
        # torch turns the list into -gencode flags; without it, it would target the GPUs of the
        # build machine only (or every architecture of the toolkit when there is none).
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCH_LIST)
        cu = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        nvcc = ["-O3"] + (["-g", "-lineinfo"] if debug else ["-lineinfo"])
        ext = cpp_extension.CUDAExtension(sources=sources + cu, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                                          **kwargs)
    else:
        ext = cpp_extension.CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    info = build_info_source(torch.__version__, torch.version.cuda, isa, build_cuda, debug)

    # Source -> its ISA level (see "CPU dispatch" above).
    level_of = {os.path.abspath(p): lv for lv in levels for p in level_sources[lv]}

    class BuildExt(cpp_extension.BuildExtension):
        """torch's builder, compiling the CPU kernels once per ISA level, plus ``_build_info.py``
        written next to the library it builds."""

        def build_extension(self, ext):
            compile_all = self.compiler.compile  # torch's (ninja) compile, set by build_extensions

            def compile_by_level(sources, output_dir=None, *args, extra_postargs=None, **kwargs):
                # One compile (one ninja file, in its own directory) per level, each with the
                # level's flags; the other sources first, so their objects come first in the link.
                # (distutils sorts the sources by path, which would put build/cpu_capability first).
                groups = {}
                for src in sources:
                    groups.setdefault(level_of.get(os.path.abspath(src)), []).append(src)
                objects = []
                for level in sorted(groups, key=[None, *levels].index):
                    group = groups[level]
                    post, out = extra_postargs, output_dir
                    if level is not None:
                        flags = CPU_LEVEL_FLAGS[level]
                        post = ({**post, "cxx": [*post["cxx"], *flags]} if isinstance(post, dict)
                                else [*(post or []), *flags])
                        out = os.path.join(output_dir or ".", f"cpu_{level}")
                    objects += compile_all(group, out, *args, extra_postargs=post, **kwargs)
                return objects

            self.compiler.compile = compile_by_level
            try:
                super().build_extension(ext)
            finally:
                self.compiler.compile = compile_all

        def run(self):
            super().run()
            targets = {os.path.join(os.path.dirname(self.get_ext_fullpath("diffaccel._C")), "_build_info.py")}
            if getattr(self, "editable_mode", False):  # pip install -e: the library is copied into the tree
                targets.add(os.path.join(ROOT, "diffaccel", "_build_info.py"))
            for target in targets:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "w") as f:
                    f.write(info)

    archs = f", CUDA architectures {os.environ['TORCH_CUDA_ARCH_LIST']}" if build_cuda else ""
    print(f"setup.py: building diffaccel._C against torch {torch.__version__} (CPU kernels for {', '.join(levels)}; "
          f"CUDA kernels: {'yes' if build_cuda else 'no'}{archs}; {'debug info' if debug else 'no debug info'})")
    options = {"bdist_wheel": {"py_limited_api": LIMITED_API_TAG}}
    return [ext], {"build_ext": BuildExt}, options


if __name__ == "__main__":  # also how setuptools' build backend runs this file
    from setuptools import setup

    ext_modules, cmdclass, options = _extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass, options=options)
