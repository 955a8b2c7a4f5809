"""The CPU Winograd F(4x4, 3x3) convolution (``diffaccel::conv3x3_winograd``, csrc/cpu/conv_ops.cpp)
and the MNIST UNet rewrite that uses it (``diffaccel.mnist.inference.WinogradConv3x3``).

Reference: ``torch.nn.functional.conv2d`` in float64. Winograd's transforms round differently
from a direct convolution (F(4x4, 3x3)'s output rows and columns 3 carry the x8 terms), so the
tolerance is relative to the output's scale: measured up to 5e-6 here, against about 1e-6 for
oneDNN's direct convolution; a wrong tile, padding or transform is off by O(1).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

try:
    from diffaccel import _cpp_ops  # noqa: F401
except ImportError as e:
    pytest.skip(f"diffaccel._C is not built ({e})", allow_module_level=True)

from diffaccel.mnist.inference import (WinogradConv3x3, guided_unet, optimize_for_inference, use_winograd)
from diffaccel.mnist.models import UNet, UNetConfig

ops = torch.ops.diffaccel


def _conv_case(n, cin, cout, h, w, seed=0, channels_last=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / (3 * cin ** 0.5)
    bias = torch.randn(cout, generator=g)
    return x, weight, bias


def _assert_conv_close(y, x, weight, bias):
    expected = nn.functional.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    scale = expected.abs().amax().clamp(min=1.0)
    torch.testing.assert_close(y.double() / scale, expected / scale, atol=2e-5, rtol=0)


# Odd everything: channels not a multiple of the vector width, sides not multiples of the 4x4
# tile (partial tiles on the bottom/right), a single row/column, more tiles than one GEMM block.
@pytest.mark.parametrize("shape", [(1, 17, 9, 13, 6), (2, 5, 3, 7, 9), (3, 64, 64, 28, 28), (2, 64, 64, 14, 14),
                                   (2, 128, 128, 7, 7), (1, 8, 16, 1, 5), (40, 16, 24, 12, 12)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_winograd_matches_conv2d(shape, with_bias):
    n, cin, cout, h, w = shape
    x, weight, bias = _conv_case(n, cin, cout, h, w)
    bias = bias if with_bias else None
    y = ops.conv3x3_winograd(x, ops.winograd_weight(weight), bias)
    assert y.shape == (n, cout, h, w) and y.is_contiguous(memory_format=torch.channels_last)
    _assert_conv_close(y, x, weight, bias)


def test_winograd_takes_any_layout_and_threads():
    x, weight, bias = _conv_case(3, 24, 16, 11, 10, channels_last=False)
    u = ops.winograd_weight(weight)
    _assert_conv_close(ops.conv3x3_winograd(x, u, bias), x, weight, bias)  # NCHW input
    xs = torch.randn(3, 11, 10, 48)[..., ::2].permute(0, 3, 1, 2)  # strided, neither layout
    _assert_conv_close(ops.conv3x3_winograd(xs, u, bias), xs, weight, bias)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.conv3x3_winograd(x, u, bias)
        torch.set_num_threads(2)
        assert torch.equal(one, ops.conv3x3_winograd(x, u, bias))  # blocks are independent
    finally:
        torch.set_num_threads(threads)


def test_winograd_opcheck():
    x, weight, bias = _conv_case(2, 16, 8, 9, 6)
    torch.library.opcheck(ops.winograd_weight.default, (weight,))
    u = ops.winograd_weight(weight)
    torch.library.opcheck(ops.conv3x3_winograd.default, (x, u, bias))
    torch.library.opcheck(ops.conv3x3_winograd.default, (x, u, None))


def test_winograd_bad_inputs():
    x, weight, bias = _conv_case(2, 16, 8, 9, 6)
    u = ops.winograd_weight(weight)
    with pytest.raises(ValueError, match=r"weight must be \[Cout, Cin, 3, 3\]"):
        ops.winograd_weight(torch.randn(8, 16, 5, 5))
    with pytest.raises(TypeError, match="float32"):
        ops.conv3x3_winograd(x.double(), u, bias)
    with pytest.raises(ValueError, match="winograd_weight"):
        ops.conv3x3_winograd(x, ops.winograd_weight(torch.randn(8, 12, 3, 3)), bias)  # Cin mismatch
    with pytest.raises(ValueError, match="bias"):
        ops.conv3x3_winograd(x, u, torch.randn(9))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        ops.conv3x3_winograd(x[0], u, bias)


# ----------------------------------------------------------------------------- the module
def test_module_matches_and_falls_back():
    conv = nn.Conv2d(32, 16, 3, 1, 1)
    wconv = WinogradConv3x3(conv)
    x = torch.randn(2, 32, 10, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _assert_conv_close(wconv(x), x, conv.weight, conv.bias)
        xd = x.double()  # another dtype: the convolution itself
        conv64 = copy.deepcopy(conv).double()
        assert torch.equal(WinogradConv3x3(conv64)(xd), conv64(xd))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 autocast: oneDNN's bf16 conv
            assert wconv(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="3x3, stride 1"):
        WinogradConv3x3(nn.Conv2d(32, 16, 3, 2, 1))


def test_use_winograd_swaps_only_eligible_layers():
    model = optimize_for_inference(UNet(UNetConfig(hidden=16, conditioning="time")), winograd=True)
    kinds = [(type(m).__name__, getattr(m, "in_channels", None)) for m in model.modules()]
    swapped = [m for m in model.modules() if isinstance(m, WinogradConv3x3)]
    # enc0's 1 -> D conv, the strided down convs and the D -> 1 head stay direct convolutions.
    assert len(swapped) == 11
    assert ("Conv2d", 1) in kinds
    assert all(m.conv.stride == (1, 1) for m in swapped)
    assert not any(isinstance(m, WinogradConv3x3) for m in use_winograd(nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1))))


@pytest.mark.parametrize("guided", [False, True], ids=["unet", "guided"])
def test_unet_with_winograd_matches_direct(guided):
    torch.manual_seed(0)
    net = UNet(UNetConfig(hidden=16, conditioning="class")).eval()
    x = torch.randn(5, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    t, c = torch.rand(5), nn.functional.one_hot(torch.tensor([0, 3, 9, 1, 2]), 10).float()
    with torch.no_grad():
        if guided:
            direct, fast = guided_unet(net, winograd=False)(x, t, c, 5.0), guided_unet(net, winograd=True)(x, t, c, 5.0)
        else:
            direct = optimize_for_inference(net, winograd=False)(x, t, c)
            fast = optimize_for_inference(net, winograd=True)(x, t, c)
    assert not torch.equal(fast, direct)  # really another algorithm
    torch.testing.assert_close(fast, direct, atol=1e-4 * direct.abs().max().item(), rtol=0)


def test_winograd_module_compiles_fullgraph():
    conv = nn.Conv2d(16, 16, 3, 1, 1)
    model = nn.Sequential(WinogradConv3x3(conv), nn.GELU()).eval()
    x = torch.randn(2, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
