"""diffaccel: fast diffusion sampling and training, and the CS180 "fun with diffusion models" project."""
from . import functional, reference
from . import _backends
from . import samplers
from .functional import available_backends
from ._backends import cpu_capability

_backends.cpp_ops()  # load the compiled ops now; without them: one warning, and the reference is used

__version__ = "0.1.0"
__all__ = ["functional", "reference", "samplers", "available_backends", "cpu_capability", "__version__"]
