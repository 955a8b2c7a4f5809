"""pytest-benchmark versions of the hot ops (not part of the default test run: testpaths = tests).

    python -m pytest benchmarks/test_bench_ops.py --benchmark-group-by=group
    python -m pytest benchmarks/test_bench_ops.py --benchmark-json=bench.json   # keep a record

Each benchmark times one op with a preallocated ``out=`` (how sampling loops call them) for
the eager reference and every available backend, on one 4M-element fp32 batch, and checks the
result against the reference first, so a fast wrong kernel fails instead of winning.
``benchmarks/run.py`` is the full side-by-side runner (compiled reference, copy bandwidth).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import diffaccel


def _load_runner():
    """benchmarks/run.py by path (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("diffaccel_bench_run", Path(__file__).with_name("run.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


_run = _load_runner()
SPECS, image_shape = _run.SPECS, _run.image_shape

NUMEL = 4 * 1024 * 1024
OPS = ["add_noise", "cfg_ddpm_step", "cfg_ddpm_step_if", "ddim_step", "masked_project", "gaussian_blur_8x3x256"]
BACKENDS = ["reference"] + [b for b in diffaccel.available_backends("cpu") if b != "triton"]  # no interpreter


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_bench(benchmark, op, backend):
    spec = SPECS[op]
    shape = spec.shape or image_shape(NUMEL)
    inputs = spec.inputs(shape, torch.float32, torch.device("cpu"))
    want = spec.ref(**inputs)
    benchmark.group = op
    benchmark.extra_info["bytes"] = spec.tensors_moved * want.numel() * want.element_size()
    if backend == "reference":
        got = benchmark(lambda: spec.ref(**inputs))
    else:
        out = torch.empty_like(want)
        got = benchmark(lambda: spec.api(backend, out, **inputs))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=2e-5)
