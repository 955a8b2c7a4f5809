"""diffaccel: fast diffusion sampling and training, and the CS180 "fun with diffusion models" project."""
from . import functional, reference
from .functional import available_backends

__version__ = "0.1.0"
__all__ = ["functional", "reference", "available_backends", "__version__"]
