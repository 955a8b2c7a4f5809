"""Write the README's view thumbnails: ``docs/views/<view>.png``, a picture and its view side by side.

Usage (from the repository root): ``python scripts/view_thumbnails.py [--out docs/views]``.
The picture is the report's synthetic scene at IF's stage-I size (64 px), shown 2x; views act
on the canonical [-1, 1] range (so ``negate`` inverts the colours). Deterministic: the same
code writes the same bytes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffaccel.pipelines.views import get_view, list_views
from diffaccel.report.images import draw_scene, from_canonical, save_png


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/views", help="folder for the PNGs (default: docs/views)")
    p.add_argument("--size", type=int, default=64, help="picture size in pixels (default: 64)")
    p.add_argument("--scale", type=int, default=2, help="nearest-neighbour enlargement (default: 2)")
    args = p.parse_args(argv)
    x = draw_scene(args.size) * 2 - 1
    for name in list_views():
        if name == "identity":
            continue
        y = get_view(name)(x)
        path = save_png(from_canonical(torch.cat([x, y])), Path(args.out) / f"{name}.png", nrow=2,
                        scale=args.scale, pad=2)
        print(path)


if __name__ == "__main__":
    main()
