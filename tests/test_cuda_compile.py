"""The CUDA kernels (``csrc/cuda/*.cu``) compile with a bare nvcc, without PyTorch (issue 2).

They are built into the extension only where CUDA PyTorch exists, so on CPU-only machines
this is the check that they still compile: ``.ci/nvcc_check.sh`` (sm_80 + sm_90, -O3,
C++17, nvcc warnings as errors, PyTorch's half/bfloat16 conversion macros, launchers.h as
host C++, a no-undefined-symbols link). Skipped when nvcc is absent; marked ``slow``
(about a minute on two cores) so ``-m "not slow"`` deselects it; the definition check is
instant and always runs. Running the kernels needs
a GPU: that is ``tests/test_functional.py``'s ``gpu`` cases, not this file.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
SCRIPT = ROOT / ".ci" / "nvcc_check.sh"
# One file per op family (see csrc/cuda/launchers.h).
KERNEL_FILES = ("noise_kernels.cu", "step_kernels.cu", "filter_kernels.cu")


def _nvcc() -> str | None:
    if os.environ.get("NVCC"):
        return os.environ["NVCC"]
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return None


def _launchers_declared() -> list:
    text = (CUDA_DIR / "launchers.h").read_text()
    return re.findall(r"^cudaError_t\s+(\w+)\s*\(", text, flags=re.M)


def test_every_launcher_is_defined():
    """Each launcher in launchers.h has a qualified definition in exactly one .cu file.

    Qualified (``da::name(...)``) definitions make a signature drift a compile error; this
    catches a declaration with no definition at all, which nothing would link against here.
    """
    names = _launchers_declared()
    assert set(names) >= {"add_noise", "predict_x0", "cfg_combine", "ddpm_step", "ddim_step",
                          "gaussian_filter", "masked_project"}, names
    sources = {f: (CUDA_DIR / f).read_text() for f in KERNEL_FILES}
    for name in names:
        where = [f for f, text in sources.items() if re.search(rf"cudaError_t\s+da::{name}\s*\(", text)]
        assert len(where) == 1, f"launcher {name} must be defined in exactly one of {KERNEL_FILES}, found in {where}"


@pytest.mark.slow
def test_kernels_compile_with_nvcc_for_sm80_and_sm90(tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH)")
    env = dict(os.environ, NVCC=nvcc, TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f".ci/nvcc_check.sh failed (rc={proc.returncode}):\n{log[-8000:]}"
    for f in KERNEL_FILES:
        assert f"compiling csrc/cuda/{f} (sm_80, sm_90)" in log, f"{f} was not compiled:\n{log}"
    assert "nvcc_check: OK" in log
