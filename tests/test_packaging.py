"""Installing anywhere: the sdist's file list, setup.py refusing an isolated build's torch, the
import-time check of the torch the extension was built against, and the MNIST digits shipped
for the offline report. (.ci/sdist_check.sh builds and installs from the sdist for real.)
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import textwrap
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _load_setup():
    """setup.py as a module: its ``setup()`` call runs only as ``__main__``."""
    spec = importlib.util.spec_from_file_location("diffaccel_setup_py", REPO / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(args, env_extra=None, cwd=REPO, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFACCEL_ALLOW")}
    env.update(env_extra or {})
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- sdist
def test_sdist_holds_every_file_the_build_needs(tmp_path):
    """Every source and header of csrc/, the CMake build, the licence, the tests and the package
    data are in the sdist; compiled outputs and the generated build record are not."""
    r = _run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
              "sdist", "--dist-dir", str(tmp_path / "dist")])
    assert r.returncode == 0, r.stdout + r.stderr
    (sdist,) = (tmp_path / "dist").glob("diffaccel-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    csrc = {p.relative_to(REPO).as_posix() for p in (REPO / "csrc").rglob("*") if p.is_file()}
    assert any(n.endswith(".h") for n in csrc) and any(n.endswith(".cu") for n in csrc)
    needed = csrc | {"CMakeLists.txt", "LICENSE", "setup.py", "pyproject.toml", "README.md", "tests/conftest.py",
                     "diffaccel/data/mnist_report_digits.safetensors", "diffaccel/data/README.md",
                     "diffaccel/weights/mnist/ddpm_class.safetensors"}
    assert not needed - names, f"missing from the sdist: {sorted(needed - names)}"
    junk = [n for n in names if n.endswith((".so", ".o", ".pyc")) or n.endswith("_build_info.py")]
    assert not junk, f"build outputs in the sdist: {junk}"


def test_extension_declares_its_headers():
    on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / "csrc").rglob("*") if p.suffix in (".h", ".cuh")}
    assert on_disk and set(_load_setup()._headers()) == on_disk


# ----------------------------------------------------------------------------- build isolation
def test_isolated_torch_is_recognised():
    setup = _load_setup()
    site = ["/venv/lib/python3.11/site-packages"]
    own = "/venv/lib/python3.11/site-packages/torch/__init__.py"
    assert setup.isolated_torch_message(own, "2.13.0+cpu", site) is None
    for overlay in ("/tmp/pip-build-env-x1y2/overlay/lib/python3.11/site-packages/torch/__init__.py",
                    "/tmp/build-env-abc/lib/python3.11/site-packages/torch/__init__.py",
                    "/opt/elsewhere/torch/__init__.py"):
        msg = setup.isolated_torch_message(overlay, "2.14.1+cu130", site)
        assert msg is not None, overlay
        assert "2.14.1+cu130" in msg and "pip install --no-build-isolation" in msg and "install torch" in msg
    # a site-packages that itself sits in a pip build env is still the build env's
    env = ["/tmp/pip-build-env-x1y2/overlay/lib/python3.11/site-packages"]
    assert setup.isolated_torch_message(env[0] + "/torch/__init__.py", "2.14.1", env) is not None


def test_no_torch_message_says_what_to_run():
    setup = _load_setup()
    iso = setup.no_torch_message("No module named 'torch'", ["/tmp/pip-build-env-ab/site", "/usr/lib"])
    assert "isolated the build" in iso and "pip install --no-build-isolation" in iso
    plain = setup.no_torch_message("No module named 'torch'", ["/usr/lib/python3.11"])
    assert "not installed" in plain and "pip install torch" in plain


def test_setup_py_stops_on_the_torch_of_a_build_env(tmp_path):
    """End to end: a torch importable only from a ``pip-build-env-*`` folder (as pip's isolated
    build puts it first on sys.path) makes ``setup.py build_ext`` stop before compiling, naming
    both torches and the commands to run."""
    fake = tmp_path / "pip-build-env-test" / "overlay" / "site-packages"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text('__version__ = "2.14.1+cu130"\n')
    r = _run([sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "bt"),
              "--build-lib", str(tmp_path / "bl")], {"PYTHONPATH": str(fake)})
    assert r.returncode != 0
    assert "torch 2.14.1+cu130" in r.stderr and f"this environment has torch {torch.__version__}" in r.stderr
    assert "pip install --no-build-isolation" in r.stderr
    assert not (tmp_path / "bl").exists()  # stopped before building anything


# ----------------------------------------------------------------------------- import check
def test_build_mismatch_names_both_versions():
    pytest.importorskip("diffaccel._cpp_ops", exc_type=ImportError)
    from diffaccel._cpp_ops import build_mismatch

    assert build_mismatch(None, "2.13.0+cpu") is None  # no record: not refused
    assert build_mismatch(types.SimpleNamespace(TORCH_VERSION="2.13.0+cpu"), "2.13.0+cpu") is None
    msg = build_mismatch(types.SimpleNamespace(TORCH_VERSION="2.11.0+cu130"), "2.13.0+cpu")
    assert "built against torch 2.11.0+cu130" in msg and "torch 2.13.0+cpu is loaded" in msg
    assert "--no-build-isolation" in msg
    # the local build tag counts: a CUDA build's extension is not a CPU build's
    assert build_mismatch(types.SimpleNamespace(TORCH_VERSION="2.13.0+cu130"), "2.13.0+cpu") is not None


_FAKE_RECORD = textwrap.dedent("""
    import sys, types, warnings
    rec = types.ModuleType("diffaccel._build_info")
    rec.TORCH_VERSION = {version!r}
    sys.modules["diffaccel._build_info"] = rec
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import diffaccel
    import torch
    from diffaccel import functional as F
    print("CPP", "cpp" in diffaccel.available_backends())
    for w in caught:
        print("WARNING", w.message)
    x = torch.randn(2, 1, 4, 4)
    out = F.add_noise(x, x, torch.linspace(0.9, 0.1, 5), 2)  # auto: the reference when cpp is refused
    print("OK", tuple(out.shape))
""")


@pytest.mark.parametrize("recorded", ["0.0.1+fake", "same"])
def test_import_checks_the_recorded_torch_version(recorded):
    """A recorded build version other than the loaded torch's: one clear warning naming both,
    no ``cpp`` backend, the reference serves the ops; the loaded torch's own version: ``cpp``."""
    if importlib.util.find_spec("diffaccel._C") is None:
        pytest.skip("diffaccel._C is not built")
    version = torch.__version__ if recorded == "same" else recorded
    r = _run([sys.executable, "-c", _FAKE_RECORD.format(version=version)])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "OK (2, 1, 4, 4)" in lines
    if recorded == "same":
        assert "CPP True" in lines, r.stdout
        assert not any("built against" in l for l in lines)
    else:
        assert "CPP False" in lines, r.stdout
        warned = [l for l in lines if l.startswith("WARNING") and "built against torch 0.0.1+fake" in l]
        assert len(warned) == 1 and f"torch {torch.__version__} is loaded" in warned[0]
        assert "using the PyTorch reference" in warned[0]


# ----------------------------------------------------------------------------- shipped digits
def test_shipped_digits_are_the_full_sets(mnist_dir):
    """The shipped test digits and training mean are exactly what the report computes from the
    full MNIST set, so the offline report is the same (tests/test_report.py checks the bytes)."""
    from diffaccel.mnist import shipped_digits as sd

    x, y = sd.test_digits()
    xf, yf = sd.test_digits(mnist_dir)
    n = sd.NUM_TEST_DIGITS
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, xf[:n]) and torch.equal(y, yf[:n])
    for d in (7, 2, 3):  # the Part-A sources: the first of each digit must be shipped
        assert (y == d).any()
    mean, count = sd.train_mean()
    mean_full, count_full = sd.train_mean(mnist_dir)
    assert count == count_full == 60000
    assert torch.equal(mean, mean_full)


def test_shipped_digits_missing_or_bad_file_is_said(tmp_path):
    from diffaccel.errors import FileFormatError, MissingFileError
    from diffaccel.mnist import shipped_digits as sd

    with pytest.raises(MissingFileError, match="reinstall"):
        sd.shipped_digits(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(FileFormatError, match="bad.safetensors"):
        sd.shipped_digits(bad)
