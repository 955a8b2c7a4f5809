"""Runtime ISA dispatch of the C++ CPU kernels (csrc/cpu/dispatch.cpp).

The extension holds every CPU kernel once per instruction-set level (generic, AVX2, AVX-512) and
picks one level's table when it loads, so each check here runs in a fresh interpreter with
``DIFFACCEL_CPU_CAPABILITY`` set: the ops against the reference under the generic level and under
the best level of this CPU (the C++ tests of test_cpp_ops.py / test_solver_ops.py /
test_conv_ops.py, rerun there), the level reported, and the fallback (with a warning) for a level
the CPU lacks. The last test disassembles the build's objects: the code that runs at load (the
schemas, the dispatch table, every static initialiser) must hold no VEX / EVEX instruction, or the
library would crash with SIGILL at load on a CPU without AVX.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

try:
    from diffaccel import _cpp_ops  # noqa: F401
except ImportError as e:  # not built: nothing to dispatch
    pytest.skip(f"diffaccel._C is not built ({e}); run `pip install --no-build-isolation -e .`",
                allow_module_level=True)

import diffaccel
from diffaccel._sysinfo import cpu_flags  # /proc/cpuinfo, not the extension's own detection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = ("generic", "avx2", "avx512")
#: The highest level ``auto`` picks (csrc/cpu/dispatch.cpp kDefaultCap): AVX-512 is opt-in until measured.
DEFAULT_CAP = "avx2"


def _run(level, code, *args, timeout=900):
    """Runs ``code`` in a fresh interpreter with DIFFACCEL_CPU_CAPABILITY=level (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "DIFFACCEL_CPU_CAPABILITY"}
    if level is not None:
        env["DIFFACCEL_CPU_CAPABILITY"] = level
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


_REPORT = "import diffaccel; print(diffaccel.cpu_capability())"


def _cpu_has(level) -> bool:
    """What the CPU supports, read independently of the extension (Linux x86-64; else unknown)."""
    flags = cpu_flags()
    avx2 = {"avx2", "fma", "f16c"} <= flags
    return {"generic": True, "avx2": avx2,
            "avx512": avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags}[level]


def _built_levels() -> list:
    top = getattr(diffaccel._cpp_ops._C, "cpu_isa", "generic")
    return list(LEVELS[:LEVELS.index(top) + 1])


BEST = _run(None, _REPORT).stdout.strip()


def test_default_is_the_best_level_up_to_the_default_cap():
    capped = LEVELS[:LEVELS.index(DEFAULT_CAP) + 1]
    expected = [lv for lv in _built_levels() if _cpu_has(lv) and lv in capped][-1] if cpu_flags() else BEST
    assert BEST == expected
    # in-process too (this pytest process may have the variable set: then it must be what it asked)
    assert diffaccel.cpu_capability() in LEVELS


@pytest.mark.parametrize("level", LEVELS)
def test_requested_level_is_used_or_refused_with_warning(level):
    r = _run(level, _REPORT)
    assert r.returncode == 0, r.stderr
    got = r.stdout.strip()
    if level in _built_levels() and _cpu_has(level):
        assert got == level
        assert "DIFFACCEL_CPU_CAPABILITY" not in r.stderr
    else:  # falls back to the highest level below it, and says so
        expected = [lv for lv in LEVELS[:LEVELS.index(level)] if lv in _built_levels() and _cpu_has(lv)][-1]
        assert got == expected
        assert f"DIFFACCEL_CPU_CAPABILITY={level} is not available" in r.stderr, r.stderr
        assert f"using {expected}" in r.stderr


def test_unknown_level_warns_and_uses_the_best():
    r = _run("sse9", _REPORT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == BEST
    assert "DIFFACCEL_CPU_CAPABILITY must be auto, generic, avx2 or avx512, got 'sse9'" in r.stderr


def test_level_names_are_case_insensitive_and_default_means_generic():
    assert _run("GENERIC", _REPORT).stdout.strip() == "generic"
    assert _run("default", _REPORT).stdout.strip() == "generic"
    assert _run("auto", _REPORT).stdout.strip() == BEST


# The C++ op tests that compare every op and dtype with the reference (and the dynamic-thresholding
# quantile, aliasing and streaming-store paths), rerun under one level: the cpp cases only (the
# torch-backend and compile cases of test_solver_ops.py do not depend on the level).
_KERNEL_TESTS = [
    "tests/test_cpp_ops.py::test_direct_ops_match_reference",
    "tests/test_cpp_ops.py::test_dynamic_threshold_quantile_matches_torch_quantile",
    "tests/test_cpp_ops.py::test_dynamic_threshold_streaming_output",
    "tests/test_cpp_ops.py::test_dynamic_threshold_bracket_reduced_precision_and_ties",
    "tests/test_cpp_ops.py::test_out_may_alias_input",
    "tests/test_cpp_ops.py::test_gaussian_filter_33_taps_both_schedules",
    "tests/test_solver_ops.py", "tests/test_conv_ops.py",
]
_UNDER_LEVEL = ("import sys, pytest, diffaccel\n"
                "level = diffaccel.cpu_capability()\n"
                "assert level == sys.argv[1], f'asked for {sys.argv[1]}, running {level}'\n"
                "sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', '-k', "
                "'not cuda and not triton and not compiled and not (test_solver_ops and torch)', "
                "*sys.argv[2:]]))")


# generic, the default level, and any level above it that this CPU and build have (opt-in AVX-512).
@pytest.mark.parametrize("level", sorted({"generic", BEST} | {lv for lv in _built_levels() if _cpu_has(lv)
                                                             and LEVELS.index(lv) > LEVELS.index(BEST)},
                                         key=LEVELS.index))
def test_ops_match_reference_under_level(level):
    r = _run(level, _UNDER_LEVEL, level, *_KERNEL_TESTS)
    assert r.returncode == 0, f"under {level}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    assert re.search(r"\d+ passed", r.stdout), r.stdout[-2000:]


# ----------------------------------------------------------------------------- load-time code
def _objects(pattern):
    return sorted(glob.glob(os.path.join(ROOT, "build", "temp.*", pattern), recursive=True))


def _vex_instructions(obj, section=None) -> list:
    """Disassembled instructions of ``obj`` (one section, or all) that are VEX / EVEX encoded: in
    64-bit mode a first byte c4 / c5 (VEX) or 62 (EVEX), or an AVX mnemonic / ymm / zmm register."""
    cmd = ["objdump", "-d", "-w", obj]
    if section:
        cmd[2:2] = ["-j", section]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not re.match(r"\s*[0-9a-f]+:$", parts[0]):
            continue
        raw, insn = parts[1].split(), parts[2]
        if (raw and raw[0] in ("c4", "c5", "62")) or re.match(r"v[a-z]", insn) or re.search(r"%[yz]mm", insn):
            bad.append(line.strip())
    return bad


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_load_time_code_has_no_vex_instructions():
    generic = _objects("csrc/**/dispatch.o") + _objects("csrc/diffaccel.o")
    levels = _objects("cpu_avx*/**/*.o")
    if len(generic) < 2:
        pytest.skip("no setup.py build objects under build/temp.* (an installed wheel): nothing to disassemble")
    # The registration and the dispatch table: no AVX anywhere in them.
    for obj in generic:
        assert _vex_instructions(obj) == [], obj
    # The per-level kernels: AVX, but none in their static initialisers (.text.startup), which run
    # at load whatever the CPU.
    assert levels, "the build has no per-level (cpu_avx2 / cpu_avx512) objects"
    assert any(_vex_instructions(obj) for obj in levels), "the AVX levels' objects hold no AVX code"
    for obj in levels:
        sections = subprocess.run(["objdump", "-h", obj], capture_output=True, text=True, check=True).stdout
        if ".text.startup" in sections:
            assert _vex_instructions(obj, ".text.startup") == [], obj
