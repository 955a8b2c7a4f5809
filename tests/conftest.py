"""Shared test set-up: Triton's interpreter on CPU-only machines, the ``gpu`` marker, data dirs.

The environment switch must be set before anything imports ``triton`` (Triton reads
``TRITON_INTERPRET`` when kernels are defined), so it lives at the top of this file, which
pytest imports before any test module. ``import torch`` does not import triton, so asking
torch whether CUDA exists first is safe.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # No GPU: run the Triton kernels through Triton's (numpy) interpreter so they are tested too.
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

# The library looks for MNIST only where it is told (root=, $DIFFACCEL_MNIST_DIR, its download
# cache); the development checkout keeps a copy beside the repository, named here for every test.
_DEV_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"
if not os.environ.get("DIFFACCEL_MNIST_DIR") and _DEV_MNIST.is_dir():
    os.environ["DIFFACCEL_MNIST_DIR"] = str(_DEV_MNIST)

try:  # property-based tests (tests/test_fuzz.py): fixed and derandomized in CI, no per-example deadline
    from hypothesis import settings

    settings.register_profile("ci", max_examples=100, derandomize=True, deadline=None, print_blob=True)
    settings.register_profile("dev", max_examples=40, deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # the suite skips itself without hypothesis
    pass


def pytest_configure(config):
    # Also declared in pyproject.toml; repeated so this file works when run from elsewhere.
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: longer CPU tests")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The raw MNIST files (``*-idx?-ubyte.gz``): ``$DIFFACCEL_MNIST_DIR``, else ``../shared/data/mnist``."""
    env = os.environ.get("DIFFACCEL_MNIST_DIR")
    path = Path(env) if env else _DEV_MNIST
    if not path.is_dir():
        pytest.skip(f"MNIST not found at {path} (set DIFFACCEL_MNIST_DIR)")
    return path
