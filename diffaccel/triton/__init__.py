"""Triton kernels for diffaccel's hot paths (the ``"triton"`` backend).

:mod:`diffaccel.triton.kernels` holds the ``@triton.jit`` kernels and their host launchers;
:mod:`diffaccel.triton.ops` registers them as ``torch.ops.diffaccel.*_triton`` through
``torch.library.triton_op`` and exposes the backend object ``Backend``. Nothing here is
imported eagerly: importing this package does not need Triton, importing ``ops`` does
(and raises ``ImportError`` without it; ``diffaccel._backends`` then leaves the backend out).

On a machine without a GPU the kernels run through Triton's interpreter: set
``TRITON_INTERPRET=1`` before Triton is first imported.
"""
