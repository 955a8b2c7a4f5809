"""The report's data model (:class:`Figure`) and its rendering to a self-contained ``index.html``.

A figure is a table of image cells (one cell for a single image), with optional column and
row headers: side-by-side comparisons are tables, as in the project write-up. The page uses
no scripts and no external resources (it opens from ``file://`` or any static server), and
holds no timestamps, so the same figures give the same page.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["Cell", "Figure", "SECTIONS", "render_index"]


@dataclass
class Cell:
    """One image in a figure: ``src`` relative to the report folder; ``width`` the display width
    in CSS pixels (``None``: the file's own size); ``label`` a caption under the image."""

    src: str
    label: str = ""
    width: Optional[int] = None


@dataclass
class Figure:
    """A report figure: ``section`` is the write-up item it belongs to (e.g. ``"A1.4"``).

    ``rows`` is a table of :class:`Cell` (``[[Cell(...)]]`` for one image); empty with a
    ``note`` when the figure could not be made (the note says why). ``caption`` says what it
    shows, the parameters and the seed.
    """

    section: str
    title: str
    caption: str
    rows: List[List[Cell]] = field(default_factory=list)
    col_headers: Sequence[str] = ()
    row_headers: Sequence[str] = ()
    note: str = ""

    @property
    def files(self) -> List[str]:
        return [c.src for row in self.rows for c in row]


def single(section: str, title: str, caption: str, src: str, width: Optional[int] = None) -> Figure:
    return Figure(section, title, caption, [[Cell(src, width=width)]])


#: Section titles, in write-up order (Part A, then Part B).
SECTIONS: Dict[str, str] = {
    "A": "Part A — the pretrained-model techniques on the MNIST class-conditional DDPM",
    "A1.1": "A1.1 Forward process",
    "A1.2": "A1.2 Classical denoising (Gaussian blur)",
    "A1.3": "A1.3 One-step denoising",
    "A1.4": "A1.4 Iterative denoising",
    "A1.5": "A1.5 Sampling",
    "A1.6": "A1.6 Classifier-free guidance",
    "A1.7": "A1.7 SDEdit (image-to-image)",
    "A1.7.1": "A1.7.1 Editing a hand-drawn digit",
    "A1.7.2": "A1.7.2 Inpainting",
    "A1.7.3": "A1.7.3 Class-conditional image-to-image",
    "A1.8": "A1.8 Visual anagrams",
    "A1.9": "A1.9 Hybrid images",
    "A-gif": "Part A animations",
    "A-IF": "Part A with DeepFloyd IF",
    "B": "Part B — diffusion models trained from scratch on MNIST",
    "B1.2": "B1.2 The noising process",
    "B1.2.1": "B1.2.1 Single-step denoiser",
    "B1.2.2": "B1.2.2 Out-of-distribution noise levels",
    "B1.2.3": "B1.2.3 Denoising pure noise",
    "B2.2": "B2.1–B2.3 Time-conditioned DDPM",
    "B2.5": "B2.4–B2.5 Class-conditioned DDPM",
    "B-flow": "Flow matching (time- and class-conditioned)",
    "B-gif": "Sampling animations",
    "B-samplers": "Samplers: quality against model evaluations",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.8em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #ddd;padding-bottom:.2em}
h3{margin-top:1.6em}nav ul{columns:2;font-size:.92em}.meta{color:#555;font-size:.95em}
figure{margin:1em 0 2em 0;padding:.8em;background:#fafafa;border:1px solid #e5e5e5;border-radius:6px}
figcaption{font-size:.92em;color:#333;margin-top:.6em}figcaption b{color:#000}
table.fig{border-collapse:collapse}table.fig td,table.fig th{padding:4px 6px;text-align:center;vertical-align:middle}
table.fig th{font-size:.85em;font-weight:600;color:#444}
img{image-rendering:pixelated;image-rendering:crisp-edges;display:block;margin:0 auto;background:#000}
.label{font-size:.8em;color:#555}.note{background:#fff7e0;border-left:4px solid #e8b000;padding:.6em .8em}
"""


def _figure_html(fig: Figure, number: int) -> str:
    e = html.escape
    out = [f'<figure id="fig{number}">']
    if fig.rows:
        multi = len(fig.rows) > 1 or len(fig.rows[0]) > 1 or fig.col_headers or fig.row_headers
        if multi:
            out.append('<table class="fig">')
            if fig.col_headers:
                out.append("<tr>" + ("<th></th>" if fig.row_headers else "")
                           + "".join(f"<th>{e(h)}</th>" for h in fig.col_headers) + "</tr>")
            for i, row in enumerate(fig.rows):
                cells = []
                if fig.row_headers:
                    cells.append(f"<th>{e(fig.row_headers[i]) if i < len(fig.row_headers) else ''}</th>")
                for c in row:
                    cells.append(f"<td>{_img(c)}" + (f'<div class="label">{e(c.label)}</div>' if c.label else "")
                                 + "</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</table>")
        else:
            c = fig.rows[0][0]
            out.append(_img(c) + (f'<div class="label">{e(c.label)}</div>' if c.label else ""))
    if fig.note:
        out.append(f'<p class="note">{e(fig.note)}</p>')
    out.append(f"<figcaption><b>Figure {number} ({e(fig.section)}). {e(fig.title)}.</b> {e(fig.caption)}"
               "</figcaption></figure>")
    return "\n".join(out)


def _img(c: Cell) -> str:
    w = f' width="{int(c.width)}"' if c.width else ""
    alt = html.escape(c.label or c.src)
    return f'<img src="{html.escape(c.src)}" alt="{alt}"{w} loading="eager">'


def render_index(figures: Sequence[Figure], out_dir, title: str, intro: Sequence[str] = (),
                 part_notes: Optional[Dict[str, str]] = None) -> Path:
    """Write ``out_dir/index.html``: figures grouped by section in :data:`SECTIONS` order.

    ``intro``: paragraphs under the title; ``part_notes``: ``{section: text}`` shown at the top
    of a section (e.g. what the IF section would need).
    """
    e = html.escape
    out_dir = Path(out_dir)
    part_notes = dict(part_notes or {})
    order = list(SECTIONS)
    by_sec: Dict[str, List[Figure]] = {}
    for f in figures:
        if f.section not in SECTIONS:
            raise ValueError(f"figure {f.title!r} has unknown section {f.section!r}; known: {order}")
        by_sec.setdefault(f.section, []).append(f)
    present = [s for s in order if s in by_sec or s in part_notes]
    body, toc, n = [], [], 0
    parts_done = set()
    for s in present:
        part = s[0]  # "A" or "B": each part's heading comes before its first section
        if part not in parts_done:
            parts_done.add(part)
            body.append(f'<h2 id="sec-{part}">{e(SECTIONS[part])}</h2>')
            toc.append(f'<li><a href="#sec-{part}"><b>{e(SECTIONS[part])}</b></a></li>')
        if s != part:
            anchor = "sec-" + s.replace(".", "_")
            body.append(f'<h3 id="{anchor}">{e(SECTIONS[s])}</h3>')
            toc.append(f'<li><a href="#{anchor}">{e(SECTIONS[s])}</a></li>')
        if s in part_notes:
            body.append(f'<p class="note">{e(part_notes[s])}</p>')
        for f in by_sec.get(s, []):
            n += 1
            body.append(_figure_html(f, n))
    page = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request (a 404 would be a console error)
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *[f'<p class="meta">{e(p)}</p>' for p in intro],
        "<nav><ul>", *toc, "</ul></nav>",
        *body,
        "</body></html>", "",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text("\n".join(page), encoding="utf-8")
    return path
