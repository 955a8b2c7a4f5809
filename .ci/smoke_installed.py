"""Smoke test of an installed diffaccel, run from outside the source tree (.ci/sdist_check.sh).

Checks that the installed copy (not a checkout) is imported, that the C++ backend loaded, one
op of every kernel family against the reference, the shipped digits, and a few sampling steps
of a shipped MNIST model.
"""
import os
import sys
import warnings

warnings.simplefilter("error", RuntimeWarning)  # the "C++ extension is not available" fallback fails the check

import torch

import diffaccel
from diffaccel import functional as F

here = os.path.realpath(os.getcwd())
where = os.path.realpath(diffaccel.__file__)
assert "site-packages" in where, f"diffaccel imported from {where}, not from an installed copy"
print("diffaccel", diffaccel.__version__, "from", os.path.dirname(where), "| torch", torch.__version__)
from diffaccel import _build_info  # written by setup.py next to the library

print("built against torch", _build_info.TORCH_VERSION, "| CPU ISA", _build_info.CPU_ISA,
      "| CUDA kernels", _build_info.CUDA_KERNELS, "| debug info", _build_info.DEBUG)
backends = diffaccel.available_backends()
assert "cpp" in backends, f"available_backends() = {backends}: the C++ extension did not load"

g = torch.Generator().manual_seed(0)
N, C, H, W = 3, 2, 13, 11
x, eps, eps2, z = (torch.randn(N, C, H, W, generator=g) for _ in range(4))
abar = torch.linspace(0.999, 0.01, 50)
t, t_prev = torch.tensor([49, 20, 3]), torch.tensor([40, 10, -1])
mask = (torch.rand(N, 1, H, W, generator=g) > 0.5).float()


def same(name, fn):
    a, b = fn("cpp"), fn("torch")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: cpp vs reference: {m}")
    print(f"  {name}: cpp == reference")


print("ops against the reference:")
same("add_noise (forward)", lambda b: F.add_noise(x, eps, abar, t, backend=b))
same("cfg_ddpm_step (steps)", lambda b: F.cfg_ddpm_step(x, eps, eps2, 5.0, abar, t, t_prev, noise=z, backend=b))
same("ddim_step (steps)", lambda b: F.ddim_step(x, eps, abar, t, t_prev, eta=0.5, noise=z, backend=b))
same("hybrid_combine (filters)", lambda b: F.hybrid_combine(eps, eps2, 7, 1.5, backend=b))
same("masked_project (inpainting)", lambda b: F.masked_project(x, eps, mask, z, abar, t, backend=b))
wx = torch.randn(2, 8, 12, 12, generator=g).contiguous(memory_format=torch.channels_last)
ww, wb = torch.randn(16, 8, 3, 3, generator=g), torch.randn(16, generator=g)
got = torch.ops.diffaccel.conv3x3_winograd(wx, torch.ops.diffaccel.winograd_weight(ww), wb)
torch.testing.assert_close(got, torch.nn.functional.conv2d(wx, ww, wb, padding=1), atol=1e-4, rtol=1e-4)
print("  conv3x3_winograd (conv): cpp == conv2d")

from diffaccel import mnist
from diffaccel.mnist.shipped_digits import test_digits

xt, yt = test_digits()
assert xt.shape[1:] == (1, 28, 28) and yt[:3].tolist() == [7, 2, 1], "shipped MNIST digits"
names = mnist.list_pretrained()
assert "ddpm_class" in names, names
model = mnist.load_pretrained("ddpm_class")
digits = mnist.sample(model, labels=[0, 1, 2, 3], guidance_scale=5.0, num_steps=4, seed=0)
assert digits.shape == (4, 1, 28, 28) and torch.isfinite(digits).all(), digits.shape
assert 0 <= float(digits.min()) and float(digits.max()) <= 1
print(f"mnist.sample: 4 digits in 4 steps; shipped models: {', '.join(names)}")
print("smoke test OK")
