"""The ``cpp`` backend: diffaccel's C++ operators (``torch.ops.diffaccel.*``).

Importing this module loads the compiled extension ``diffaccel._C`` (built by ``setup.py``),
whose only job is to register the operators: schemas in ``csrc/diffaccel.cpp``, CPU kernels in
``csrc/cpu/``, CUDA kernels (where built) in ``csrc/cuda/``. Raises ImportError when the
extension is missing or unusable; :mod:`diffaccel._backends` catches it, warns once and falls
back to the reference.

Each op writes into ``out`` and returns nothing, so the fake (meta) kernels registered here
have nothing to compute: ``torch.compile`` traces the ops through ``auto_functionalize``.
"""
from __future__ import annotations

import importlib.util

import torch

if importlib.util.find_spec("diffaccel._C") is None:
    raise ImportError("diffaccel._C is not built; build it with `pip install --no-build-isolation -e .`")


def build_mismatch(info, torch_version: str):
    """Why the extension described by ``info`` (``diffaccel._build_info``, written by setup.py
    next to the library) cannot serve the loaded torch, or None when it can.

    C++ extensions have no stable ABI across torch releases: one built against another torch may
    fail to load, or load and misbehave. The recorded version must equal the loaded one exactly
    (local build tags such as ``+cpu`` / ``+cu130`` included). A build without the record (older
    builds) is not refused here; loading it still fails cleanly on a missing symbol.
    """
    built = getattr(info, "TORCH_VERSION", None)
    if info is None or built is None or built == torch_version:
        return None
    return (f"diffaccel._C was built against torch {built} but torch {torch_version} is loaded; "
            "rebuild it against this torch: `pip install --no-build-isolation --force-reinstall --no-deps "
            "diffaccel` (or `pip install --no-build-isolation -e .` in a checkout)")


try:
    from . import _build_info
except ImportError:  # built before the record existed, or by CMake / build_ext without setup.py's command
    _build_info = None
_mismatch = build_mismatch(_build_info, torch.__version__)
if _mismatch:
    raise ImportError(_mismatch)
try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.diffaccel.*)
except ImportError as e:  # built, but not loadable here (ABI / torch version mismatch)
    raise ImportError(f"diffaccel._C does not load ({e}); rebuild it with "
                      "`pip install --no-build-isolation -e .` against this torch") from e

_OPS = ("add_noise", "predict_x0", "cfg_combine", "ddpm_step", "ddim_step", "gaussian_filter", "masked_project")
# Ops an extension built from an older tree may lack (functional.py then falls back to the reference
# under backend="auto"): registered, and used, only where the loaded library defines them.
_SOLVER_OPS = ("dpmpp_2m_step", "unipc_step", "heun_step")


def _check_cpu_isa() -> None:
    """Refuse (ImportError, so the reference is used) a single-level AVX2 build, from before the
    kernels were dispatched at run time (no ``cpu_capability`` op), on a CPU without AVX2."""
    if getattr(_C, "cpu_isa", "generic") != "avx2" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return
    try:
        torch.ops.diffaccel.cpu_capability  # noqa: B018  (runtime dispatch: every level is safe)
    except (AttributeError, RuntimeError):
        raise ImportError(
            "diffaccel._C was built for AVX2 only but this CPU lacks it; rebuild it with "
            "`pip install --no-build-isolation -e .`") from None


_check_cpu_isa()


def _fake(*args, **kwargs):
    """Every diffaccel op mutates ``out`` in place and returns nothing: no shapes to infer."""
    return None


def _kernel_keys(name: str) -> frozenset:
    """The dispatch keys ("CPU", "CUDA") with a kernel for diffaccel::name in the loaded library."""
    try:
        return frozenset(k for k in ("CPU", "CUDA")
                         if torch._C._dispatch_has_kernel_for_dispatch_key(f"diffaccel::{name}", k))
    except RuntimeError:  # no such op in this build
        return frozenset()


_KERNELS = {name: _kernel_keys(name) for name in _OPS + _SOLVER_OPS}

for _name in _OPS + _SOLVER_OPS:
    if _KERNELS[_name]:
        torch.library.register_fake(f"diffaccel::{_name}")(_fake)


# The CPU Winograd convolution of the MNIST UNet (csrc/cpu/conv_ops.cpp) returns new tensors.
@torch.library.register_fake("diffaccel::winograd_weight")
def _winograd_weight_fake(weight):
    return weight.new_empty((36, weight.shape[1], weight.shape[0]), dtype=torch.float32)


@torch.library.register_fake("diffaccel::conv3x3_winograd")
def _conv3x3_winograd_fake(x, weight, bias):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[2], h, w)).contiguous(memory_format=torch.channels_last)

_ops = torch.ops.diffaccel


def has_cuda_kernels() -> bool:
    """Whether this build has the CUDA kernels (setup.py builds them where a toolkit exists)."""
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"diffaccel::{n}", "CUDA") for n in _OPS)


class Backend:
    """``torch.ops.diffaccel.*`` behind the low-level convention of ``functional._TorchBackend``."""

    name = "cpp"

    @staticmethod
    def supports(device: torch.device) -> bool:
        device = torch.device(device)
        if device.type == "cpu":
            return True
        return device.type == "cuda" and has_cuda_kernels()

    @staticmethod
    def has_op(name: str, device: torch.device) -> bool:
        """Whether this build has a kernel of ``name`` for ``device`` (see _SOLVER_OPS)."""
        return ("CUDA" if device.type == "cuda" else "CPU") in _KERNELS.get(name, ())

    # The calls of _OPS (add_noise, ..., gaussian_filter: out = blur(low) + (high - blur(high)),
    # either input None) are the ops themselves, set below. The solver ops, which an older build
    # may lack (_SOLVER_OPS; has_op says which exist), are looked up at the call.
    @staticmethod
    def dpmpp_2m_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, clip_x0, th_ratio, th_max,
                      out, x0_out, noise=None):
        _ops.dpmpp_2m_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, clip_x0, th_ratio, th_max,
                           out, x0_out, noise)

    @staticmethod
    def unipc_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, x_last, x0_prev2, t_last2,
                   predictor_order, clip_x0, th_ratio, th_max, out, x0_out, x_corr_out):
        _ops.unipc_step(x_t, eps_u, eps_c, scale, abar, t, t_prev, x0_prev, t_last, x_last, x0_prev2, t_last2,
                        predictor_order, clip_x0, th_ratio, th_max, out, x0_out, x_corr_out)

    @staticmethod
    def heun_step(x, v, v_next, dt, out):
        _ops.heun_step(x, v, v_next, dt, out)


# The ops every build has are the backend's calls themselves: their arguments are the schema's
# (csrc/diffaccel.cpp), in the low-level order of functional._TorchBackend.
for _name in _OPS:
    setattr(Backend, _name, staticmethod(getattr(_ops, _name)))
