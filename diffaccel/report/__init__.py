"""The report: every deliverable rendered to PNGs/GIFs and one ``index.html``.

* :func:`demo.run_demo` — ``diffaccel demo --out DIR``: Part A (MNIST, and IF when given) + Part B;
* :func:`partb.write_partb_figures` — ``diffaccel mnist figures --out DIR``: Part B only;
* :mod:`.parta` — the Part-A figures for any denoiser; :mod:`.html` — figure records and the page;
  :mod:`.images` — the hand-drawn digit and scene (files are written by :mod:`diffaccel.imageio`).
"""
from .html import Cell, Figure, render_index

__all__ = ["Cell", "Figure", "render_index", "run_demo", "write_partb_figures"]


def run_demo(*args, **kwargs):
    """See :func:`diffaccel.report.demo.run_demo` (imported lazily: it pulls in torch and the models)."""
    from .demo import run_demo as _run

    return _run(*args, **kwargs)


def write_partb_figures(*args, **kwargs):
    """See :func:`diffaccel.report.partb.write_partb_figures`."""
    from .partb import write_partb_figures as _w

    return _w(*args, **kwargs)
