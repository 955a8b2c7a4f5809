"""C++-specific tests of the ``diffaccel::`` operators (the ``cpp`` backend).

The generic "every op x every backend vs the reference" tests live in test_functional.py; here:
``torch.library.opcheck`` on every op and argument combination, direct ``torch.ops`` calls on
odd shapes, aliasing ``out`` with an input, reduced-precision storage, a sampling step under
``torch.compile(fullgraph=True)``, and the C++ argument checks (TORCH_CHECK_VALUE/TYPE surface
as ValueError/TypeError). Skipped as a whole when the extension is not built.
"""
from __future__ import annotations

import pytest
import torch

try:
    from diffaccel import _cpp_ops
except ImportError as e:  # not built: nothing C++-specific to test
    pytest.skip(f"diffaccel._C is not built ({e}); run `pip install --no-build-isolation -e .`",
                allow_module_level=True)

from diffaccel import functional as F
from diffaccel import reference as ref

ops = torch.ops.diffaccel
T = 1000
SHAPE = (3, 5, 17, 23)  # odd everywhere: no dimension is a multiple of a vector width
# (atol, rtol) per storage dtype; see test_functional.py for the reasoning.
TOL = {torch.float32: (1e-4, 2e-5), torch.float16: (1e-3, 2e-3), torch.bfloat16: (1e-2, 1.6e-2),
       torch.float64: (1e-4, 2e-5)}


def _abar() -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float()


def _t(n=SHAPE[0]):
    return torch.tensor([999, 500, 1, 250][:n]), torch.tensor([969, 470, -1, 0][:n])


def _images(k, shape=SHAPE, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(k)]


def _close(actual, expected):
    atol, rtol = TOL[expected.dtype]
    # Values of x0_hat-like outputs grow like 1/sqrt(abar_t): compare relative to their scale.
    scale = expected.float().abs().amax().clamp(min=1.0)
    torch.testing.assert_close(actual.float() / scale, expected.float() / scale, atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------- opcheck
def _opcheck_cases(dtype):
    x, e, ec, nz, pv = _images(5, (2, 3, 8, 9), dtype)
    pv = pv.clamp(-1, 1)
    m = (torch.rand(1, 1, 8, 9) > 0.5).to(dtype)
    ab, (t, tp) = _abar(), _t(2)
    o = lambda: torch.empty_like(x)  # noqa: E731
    yield "add_noise", (x, nz, ab, t, o())
    yield "predict_x0", (x, e, ab, t, o())
    yield "cfg_combine", (e, ec, 7.5, o())
    for cond in (None, ec):
        for noise, var, pvar in ((None, 0, None), (nz, 0, None), (nz, 1, None), (nz, 2, pv)):
            yield "ddpm_step", (x, e, cond, 3.0, ab, t, tp, noise, var, pvar, 0.0, 0.0, 0.0, o())
        yield "ddpm_step", (x, e, cond, 3.0, ab, t, tp, nz, 0, None, 1.0, 0.0, 0.0, o())  # clip
        yield "ddpm_step", (x, e, cond, 3.0, ab, t, tp, nz, 2, pv, 0.0, 0.95, 1.5, o())  # threshold
        yield "ddim_step", (x, e, cond, 3.0, ab, t, tp, 0.0, None, o())
        yield "ddim_step", (x, e, cond, 3.0, ab, t, tp, 0.7, nz, o())
    yield "gaussian_filter", (x, None, 5, 1.5, o())
    yield "gaussian_filter", (None, e, 5, 1.5, o())
    yield "gaussian_filter", (x, e, 7, 2.0, o())
    yield "masked_project", (x, e, m, nz, ab, t, o())


OPCHECK = [pytest.param(name, args, id=f"{str(dtype).removeprefix('torch.')}-{name}-{i}")
           for dtype in (torch.float32, torch.float16)
           for i, (name, args) in enumerate(_opcheck_cases(dtype))]


@pytest.mark.parametrize("name,args", OPCHECK)
def test_opcheck(name, args):
    torch.library.opcheck(getattr(ops, name).default, args)


# ----------------------------------------------------------------------------- direct calls
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_direct_ops_match_reference(dtype):
    x, e, ec, nz, pv = _images(5, dtype=dtype)
    pv = pv.clamp(-1, 1)
    ab, (t, tp) = _abar(), _t()
    out = torch.empty_like(x)

    ops.add_noise(x, nz, ab, t, out)
    _close(out, ref.add_noise(x, nz, ab, t))
    ops.predict_x0(x, e, ab, t, out)
    _close(out, ref.predict_x0(x, e, ab, t))
    ops.cfg_combine(e, ec, 7.0, out)
    _close(out, ref.cfg_combine(e, ec, 7.0))
    eps = ref.cfg_combine(e.float(), ec.float(), 7.0)  # fused: the guided eps stays float32
    ops.ddpm_step(x, e, ec, 7.0, ab, t, tp, nz, 2, pv, 0.0, 0.995, 1.5, out)
    _close(out, ref.ddpm_step(x, eps, ab, t, tp, noise=nz, variance="learned_range",
                              predicted_variance=pv, dynamic_threshold=(0.995, 1.5)))
    ops.ddim_step(x, e, ec, 7.0, ab, t, tp, 0.5, nz, out)
    _close(out, ref.ddim_step(x, eps, ab, t, tp, eta=0.5, noise=nz))
    ops.gaussian_filter(x, e, 9, 2.0, out)
    _close(out, ref.hybrid_combine(x, e, 9, 2.0))
    m = (torch.rand(1, SHAPE[1], *SHAPE[2:]) > 0.5).to(dtype)
    ops.masked_project(x, e, m, nz, ab, t, out)
    _close(out, ref.masked_project(x, e, m, nz, ab, t))


# The kernel selects among all |x0_hat| of a sample up to 4096 values per sample, above that
# within a bracket estimated from a strided subsample of 4096 values (exact fallback when the
# bracket misses). Shapes: below the switch; above it with whole samples per thread (batch 2);
# above it with one sample split over the threads (batch 1); float16/bfloat16 storage.
@pytest.mark.parametrize("shape", [(2, 3, 31, 29), (2, 3, 60, 61), (1, 3, 300, 301)],
                         ids=["select", "bracket", "bracket-split"])
@pytest.mark.parametrize("ratio", [0.001, 0.5, 0.9, 0.995, 1.0])
def test_dynamic_threshold_quantile_matches_torch_quantile(ratio, shape):
    # Large values so the quantile (not the clamp to 1) sets s; odd per-sample size.
    x, e, ec = _images(3, shape)
    x = x * 40
    ab, (t, tp) = _abar(), _t(shape[0])
    out = torch.empty_like(x)
    ops.ddpm_step(x, e, ec, 2.0, ab, t, tp, None, 0, None, 0.0, ratio, 1e6, out)
    eps = ref.cfg_combine(e.float(), ec.float(), 2.0)
    _close(out, ref.ddpm_step(x, eps, ab, t, tp, dynamic_threshold=(ratio, 1e6)))
    # Ties: every |x0_hat| equal, so the whole sample sits inside the bracket.
    x.fill_(3.0)
    e.zero_()
    ops.ddpm_step(x, e, None, 1.0, ab, t, tp, None, 0, None, 0.0, ratio, 1e6, out)
    _close(out, ref.ddpm_step(x, e, ab, t, tp, dynamic_threshold=(ratio, 1e6)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_dynamic_threshold_bracket_reduced_precision_and_ties(dtype, batch):
    # Few distinct values (many ties around the quantile), above the bracket switch, and batch
    # sizes that take both schedules (whole samples per thread, or every thread on a sample).
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(batch, 3, 40, 50, generator=g) * 4).round().mul(10).to(dtype)
    e = (torch.randn(batch, 3, 40, 50, generator=g)).to(dtype)
    nz = torch.randn(batch, 3, 40, 50, generator=g).to(dtype)
    ab = _abar()
    t = torch.linspace(100, 999, batch).long()
    out = torch.empty_like(x)
    for ratio in (0.95, 0.5):
        ops.ddpm_step(x, e, None, 1.0, ab, t, t - 30, nz, 1, None, 0.0, ratio, 1e6, out)
        _close(out, ref.ddpm_step(x, e, ab, t, t - 30, noise=nz, variance="fixed_large",
                                  dynamic_threshold=(ratio, 1e6)))


@pytest.mark.parametrize("where", ["unaligned", "aliased"])
def test_dynamic_threshold_streaming_output(where):
    # 2 x 4M float32 values = 32 MiB of output: large enough that the thresholded step writes with
    # streaming stores. `out` starts one float past a 32-byte boundary (the scalar head before the
    # aligned stores), or is x_t itself (streamed over the input it was computed from).
    shape = (2, 4, 1024, 1024)
    x, e, ec, nz, pv = _images(5, shape)
    x, pv = x * 40, pv.clamp(-1, 1)
    ab, (t, tp) = _abar(), _t(2)
    eps = ref.cfg_combine(e, ec, 3.0)
    expected = ref.ddpm_step(x, eps, ab, t, tp, noise=nz, variance="learned_range", predicted_variance=pv,
                             dynamic_threshold=(0.95, 1.5))
    if where == "unaligned":
        out = torch.empty(x.numel() + 16)[1:x.numel() + 1].view(shape)
        assert out.data_ptr() % 32 != 0
    else:
        out = x
    ops.ddpm_step(x, e, ec, 3.0, ab, t, tp, nz, 2, pv, 0.0, 0.95, 1.5, out)
    _close(out, expected)


@pytest.mark.parametrize("ratio", [0.95, 0.3])
def test_dynamic_threshold_bracket_miss_falls_back_exactly(ratio):
    # 3 * 128 * 128 = 49152 values per sample: the subsample takes every 12th, so it sees only
    # the even positions. Odd positions hold much larger values, so the bracket estimated from the
    # subsample misses the true quantile (0.95: among the large values; 0.3: values the subsample
    # never saw, below its own range) and the exact fallback must answer.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 128, 128, generator=g) * 0.1
    x.view(2, -1)[:, 1::2] = 50 + torch.rand(2, 3 * 128 * 128 // 2, generator=g) * 10
    if ratio < 0.5:
        x.view(2, -1)[:, 0::2] += 5.0  # the subsample's values all lie above the 0.3 quantile
        x.view(2, -1)[:, 1::2] = torch.rand(2, 3 * 128 * 128 // 2, generator=g)
    e = torch.zeros_like(x)
    ab, (t, tp) = _abar(), _t(2)
    out = torch.empty_like(x)
    ops.ddpm_step(x, e, None, 1.0, ab, t, tp, None, 0, None, 0.0, ratio, 1e6, out)
    _close(out, ref.ddpm_step(x, e, ab, t, tp, dynamic_threshold=(ratio, 1e6)))


@pytest.mark.parametrize("shape", [(4, 1, 1, 1), (3, 1, 1, 2), (1, 1, 1, 5)], ids=str)
def test_dynamic_threshold_tiny_samples(shape):
    x, e = _images(2, shape)
    x = x * 40
    ab, (t, tp) = _abar(), _t(shape[0])
    t, tp = t.repeat(2)[: shape[0]], tp.repeat(2)[: shape[0]]
    out = torch.empty_like(x)
    for ratio in (0.001, 0.5, 0.95, 1.0):  # (ratio 0 turns thresholding off)
        ops.ddpm_step(x, e, None, 1.0, ab, t, tp, None, 0, None, 0.0, ratio, 1e6, out)
        _close(out, ref.ddpm_step(x, e, ab, t, tp, dynamic_threshold=(ratio, 1e6)))


@pytest.mark.parametrize("shape", [(2, 3, 31, 29), (2, 3, 60, 61)], ids=["select", "bracket"])
def test_dynamic_threshold_nan_sample_is_nan_like_torch_quantile(shape):
    # torch.quantile is NaN when a sample holds a NaN, so that sample's step is NaN; the other
    # sample is unaffected.
    x, e = _images(2, shape)
    x = x * 40
    e[0, 1, 2, 3] = float("nan")
    ab, (t, tp) = _abar(), _t(2)
    out = torch.empty_like(x)
    ops.ddpm_step(x, e, None, 1.0, ab, t, tp, None, 0, None, 0.0, 0.95, 1.5, out)
    expected = ref.ddpm_step(x, e, ab, t, tp, dynamic_threshold=(0.95, 1.5))
    assert expected[0].isnan().all() and out[0].isnan().all()
    _close(out[1:], expected[1:])


@pytest.mark.parametrize("op", ["ddpm_step", "ddim_step", "add_noise", "gaussian_filter", "masked_project"])
def test_out_may_alias_input(op):
    x, e, nz = _images(3)
    ab, (t, tp) = _abar(), _t()
    m = (torch.rand(SHAPE[0], 1, *SHAPE[2:]) > 0.5).float()
    expected = {
        "ddpm_step": lambda: ref.ddpm_step(x, e, ab, t, tp, noise=nz, clip_x0=1.0),
        "ddim_step": lambda: ref.ddim_step(x, e, ab, t, tp, eta=1.0, noise=nz),
        "add_noise": lambda: ref.add_noise(x, nz, ab, t),
        "gaussian_filter": lambda: ref.hybrid_combine(e, x, 7, 1.0),  # out aliases `high`
        "masked_project": lambda: ref.masked_project(x, e, m, nz, ab, t),
    }[op]()
    inplace = x.clone()
    call = {
        "ddpm_step": lambda: ops.ddpm_step(inplace, e, None, 1.0, ab, t, tp, nz, 0, None, 1.0, 0.0, 0.0, inplace),
        "ddim_step": lambda: ops.ddim_step(inplace, e, None, 1.0, ab, t, tp, 1.0, nz, inplace),
        "add_noise": lambda: ops.add_noise(inplace, nz, ab, t, inplace),
        "gaussian_filter": lambda: ops.gaussian_filter(e, inplace, 7, 1.0, inplace),
        "masked_project": lambda: ops.masked_project(inplace, e, m, nz, ab, t, inplace),
    }[op]
    call()
    _close(inplace, expected)


def test_noise_only_where_t_positive_and_batch_one_parallel():
    # A single large sample (split over threads) plus the t == 0 rule of the reference.
    x, e, nz = _images(3, (1, 3, 300, 301))
    ab = _abar()
    out = torch.empty_like(x)
    for t, tp in ((torch.tensor([0]), torch.tensor([-1])), (torch.tensor([10]), torch.tensor([5]))):
        ops.ddpm_step(x, e, None, 1.0, ab, t, tp, nz, 1, None, 0.0, 0.0, 0.0, out)
        _close(out, ref.ddpm_step(x, e, ab, t, tp, noise=nz, variance="fixed_large"))


def test_gaussian_filter_kernel_equals_image_limit():
    # kernel_size // 2 == min(H, W) - 1: every reflected index is used.
    x = _images(1, (2, 2, 6, 40))[0]
    out = torch.empty_like(x)
    ops.gaussian_filter(x, None, 11, 3.0, out)
    _close(out, ref.gaussian_blur(x, 11, 3.0))


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", [(1, 1, 70, 131), (2, 3, 40, 130), (1, 1, 17, 37)],
                         ids=["one-plane", "planes", "narrow"])
def test_gaussian_filter_33_taps_both_schedules(shape, dtype):
    # One plane (fewer planes than threads: both passes over rows through a temporary) and many
    # planes (whole planes per task through a tile); widths with full 64-float steps and tails.
    lo, hi = _images(2, shape, dtype)
    out = torch.empty_like(lo)
    ops.gaussian_filter(lo, hi, 33, 2.0, out)
    _close(out, ref.hybrid_combine(lo, hi, 33, 2.0))
    ops.gaussian_filter(None, hi, 33, 2.0, out)
    _close(out, ref.highpass(hi, 33, 2.0))
    inplace = lo.clone()  # out aliases low
    ops.gaussian_filter(inplace, None, 33, 2.0, inplace)
    _close(inplace, ref.gaussian_blur(lo, 33, 2.0))


def test_compiled_sampling_step_has_no_graph_break():
    torch._dynamo.reset()
    ab = _abar()
    x, eu, ec, nz = _images(4, (2, 3, 16, 16))

    def step(x, eu, ec, t, t_prev, noise):
        x0 = F.predict_x0(x, eu, ab, t, backend="cpp")
        x = F.cfg_ddpm_step(x, eu, ec, 5.0, ab, t, t_prev, noise=noise, clip_x0=1.0, backend="cpp")
        return F.hybrid_combine(x, x0, 5, 1.0, backend="cpp")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for t0 in (999, 500):
        t, tp = torch.full((2,), t0), torch.full((2,), t0 - 30)
        torch.testing.assert_close(compiled(x, eu, ec, t, tp, nz), step(x, eu, ec, t, tp, nz))


# ----------------------------------------------------------------------------- C++ checks
def test_cpp_checks_bad_t():
    x, e = _images(2)
    ab, out = _abar(), torch.empty_like(x)
    with pytest.raises(ValueError, match=r"t must be in \[0, 999\].*got 1000"):
        ops.add_noise(x, e, ab, torch.tensor([0, 1, 1000]), out)
    with pytest.raises(ValueError, match=r"t must be in \[0, 999\].*got -1"):
        ops.predict_x0(x, e, ab, torch.tensor([-1, 1, 2]), out)
    with pytest.raises(ValueError, match=r"t_prev must be in \[-1, 999\].*got -2"):
        ops.ddim_step(x, e, None, 1.0, ab, torch.tensor([5, 5, 5]), torch.tensor([-2, 1, 1]), 0.0, None, out)
    with pytest.raises(ValueError, match=r"t must have shape \[N\]"):
        ops.add_noise(x, e, ab, torch.tensor([1, 2]), out)
    with pytest.raises(TypeError, match="t must be int64"):
        ops.add_noise(x, e, ab, torch.tensor([1, 2, 3], dtype=torch.int32), out)


def test_cpp_checks_name_the_argument():
    x, e = _images(2)
    ab, t, out = _abar(), torch.tensor([1, 2, 3]), torch.empty_like(x)
    with pytest.raises(ValueError, match="noise must have shape"):
        ops.add_noise(x, e[:, :2].contiguous(), ab, t, out)
    with pytest.raises(TypeError, match="eps_cond must have dtype"):
        ops.cfg_combine(x, e.half(), 1.0, out)
    with pytest.raises(TypeError, match="alphas_cumprod must be float32"):
        ops.add_noise(x, e, ab.double(), t, out)
    with pytest.raises(ValueError, match="out must be contiguous"):
        ops.add_noise(x, e, ab, t, torch.empty(SHAPE[::-1]).permute(3, 2, 1, 0))
    with pytest.raises(ValueError, match="needs predicted_variance"):
        ops.ddpm_step(x, e, None, 1.0, ab, t, t - 1, e, 2, None, 0.0, 0.0, 0.0, out)
    with pytest.raises(ValueError, match="mask must have shape"):
        ops.masked_project(x, e, torch.ones(1, 2, *SHAPE[2:]), e, ab, t, out)
    with pytest.raises(ValueError, match="kernel_size must be an odd"):
        ops.gaussian_filter(x, None, 4, 1.0, out)
    with pytest.raises(ValueError, match="too large"):
        ops.gaussian_filter(x, None, 35, 1.0, out)


def test_backend_supports():
    assert _cpp_ops.Backend.supports(torch.device("cpu"))
    assert _cpp_ops.Backend.supports(torch.device("cuda")) == _cpp_ops.has_cuda_kernels()
    assert "cpp" in F.available_backends("cpu")
