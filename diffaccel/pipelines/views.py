"""Invertible views for visual anagrams (SPEC A1.8 and "beyond the course").

A view ``v`` is an exact, invertible map of NCHW images with ``v.inverse(v(x)) == x``
bit for bit. Every view here is either a *permutation of pixels* (the same one for every
channel and sample) or a negation, so it maps N(0, I) noise to N(0, I) noise — the
property that lets the anagram sampler denoise ``v(x_t)`` with a model trained on
unviewed noise (Geng et al., "Visual Anagrams", 2024).

Permutation views (rotations, skew, patch/pixel permutations, jigsaw, inner circle) are
all one class, :class:`PermutationView`, defined by a function ``(H, W) -> perm`` with
``view(x).flatten(-2) = x.flatten(-2)[..., perm]``; the index is built once per size and
device. ``get_view(name, **kwargs)`` looks views up by name.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

__all__ = ["View", "IdentityView", "NegateView", "PermutationView", "get_view", "list_views", "VIEWS"]


class View:
    """``view(x)`` and ``inverse(x)`` on [N, C, H, W] tensors."""

    name = "view"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.view(x)

    def view(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class IdentityView(View):
    name = "identity"

    def view(self, x):
        return x

    def inverse(self, x):
        return x


class NegateView(View):
    """``-x``: its own inverse; N(0, I) is symmetric."""

    name = "negate"

    def view(self, x):
        return -x

    def inverse(self, x):
        return -x


def _check_nchw(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"view {name!r} needs a 4-D NCHW tensor, got {getattr(x, 'shape', type(x).__name__)}")


class PermutationView(View):
    """A fixed permutation of the H*W pixel positions, shared by all channels and samples."""

    def __init__(self, name: str, make_perm: Callable[[int, int], torch.Tensor]):
        self.name = name
        self._make_perm = make_perm
        self._cache: Dict[Tuple[int, int, torch.device], Tuple[torch.Tensor, torch.Tensor]] = {}

    def perm(self, h: int, w: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(perm, inverse perm) as int64 on ``device``; ``perm[i]`` is the source of output pixel i."""
        key = (h, w, torch.device(device or "cpu"))
        if key not in self._cache:
            p = self._make_perm(h, w).to(torch.int64).reshape(-1)
            if p.numel() != h * w or not torch.equal(torch.sort(p).values, torch.arange(h * w)):
                raise AssertionError(f"view {self.name!r} built an invalid permutation for {h}x{w}")  # a bug here
            inv = torch.empty_like(p)
            inv[p] = torch.arange(h * w)
            self._cache[key] = (p.to(key[2]), inv.to(key[2]))
        return self._cache[key]

    def _apply(self, x: torch.Tensor, which: int) -> torch.Tensor:
        _check_nchw(x, self.name)
        n, c, h, w = x.shape
        idx = self.perm(h, w, x.device)[which]
        return x.reshape(n, c, h * w)[:, :, idx].reshape(n, c, h, w)

    def view(self, x):
        return self._apply(x, 0)

    def inverse(self, x):
        return self._apply(x, 1)


# ----------------------------------------------------------------------------- permutations
def _grid(h: int, w: int) -> torch.Tensor:
    return torch.arange(h * w).reshape(h, w)


def _square(name: str, h: int, w: int) -> None:
    if h != w:
        raise ValueError(f"view {name!r} needs square images, got {h}x{w}")


def _flip(h, w):
    return _grid(h, w).flip(0)


def _rot(k: int, name: str):
    def make(h, w):
        if k % 2:
            _square(name, h, w)
        return torch.rot90(_grid(h, w), k, dims=(0, 1))
    return make


def _skew(factor: float):
    """Roll column j by ``round(factor * (j - W/2))`` rows (circular): Geng et al.'s skew view."""
    def make(h, w):
        g = _grid(h, w)
        cols = [torch.roll(g[:, j], int(round(factor * (j - w / 2)))) for j in range(w)]
        return torch.stack(cols, dim=1)
    return make


def _check_div(name: str, h: int, w: int, n: int) -> None:
    if h % n or w % n:
        raise ValueError(f"view {name!r} splits the image into {n}x{n} pieces: H and W must be divisible "
                         f"by {n}, got {h}x{w}")


def _patches(h: int, w: int, n: int) -> torch.Tensor:
    """[n*n, ph, pw] pixel-index tiles of the grid."""
    g = _grid(h, w)
    ph, pw = h // n, w // n
    return g.reshape(n, ph, n, pw).permute(0, 2, 1, 3).reshape(n * n, ph, pw)


def _unpatch(tiles: torch.Tensor, n: int) -> torch.Tensor:
    _, ph, pw = tiles.shape
    return tiles.reshape(n, n, ph, pw).permute(0, 2, 1, 3).reshape(n * ph, n * pw)


def _patch_permute(num_patches: int, seed: int):
    def make(h, w):
        _check_div("patch_permute", h, w, num_patches)
        tiles = _patches(h, w, num_patches)
        order = torch.randperm(tiles.shape[0], generator=torch.Generator().manual_seed(seed))
        return _unpatch(tiles[order], num_patches)
    return make


def _pixel_permute(seed: int):
    def make(h, w):
        return torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    return make


def _jigsaw(num_pieces: int, seed: int):
    """Square jigsaw pieces: move every piece AND turn it by a seeded multiple of 90 degrees."""
    def make(h, w):
        _check_div("jigsaw", h, w, num_pieces)
        _square("jigsaw", h // num_pieces, w // num_pieces)
        gen = torch.Generator().manual_seed(seed)
        tiles = _patches(h, w, num_pieces)
        order = torch.randperm(tiles.shape[0], generator=gen)
        turns = torch.randint(0, 4, (tiles.shape[0],), generator=gen)
        moved = torch.stack([torch.rot90(tiles[i], int(k), dims=(0, 1)) for i, k in zip(order.tolist(), turns)])
        return _unpatch(moved, num_pieces)
    return make


def _inner_circle(quarter_turns: int, radius: float):
    """Rotate the pixels of the centred disc by ``quarter_turns * 90`` degrees; the ring stays.

    Pixel centres sit at ``(i - (H-1)/2, j - (W-1)/2)``; a disc around the centre is mapped
    onto itself by quarter turns, so this is an exact permutation.
    """
    def make(h, w):
        _square("inner_circle", h, w)
        g = _grid(h, w)
        rotated = torch.rot90(g, quarter_turns, dims=(0, 1))
        c = (h - 1) / 2
        yy, xx = torch.meshgrid(torch.arange(h) - c, torch.arange(w) - c, indexing="ij")
        inside = (yy ** 2 + xx ** 2) <= (radius * h / 2) ** 2
        return torch.where(inside, rotated, g)
    return make


# ----------------------------------------------------------------------------- registry
VIEWS: Dict[str, Callable[..., View]] = {
    "identity": lambda: IdentityView(),
    "flip": lambda: PermutationView("flip", _flip),  # upside down: the H axis (SPEC A1.8)
    "rotate_cw": lambda: PermutationView("rotate_cw", _rot(-1, "rotate_cw")),
    "rotate_ccw": lambda: PermutationView("rotate_ccw", _rot(1, "rotate_ccw")),
    "rotate_180": lambda: PermutationView("rotate_180", _rot(2, "rotate_180")),
    "negate": lambda: NegateView(),
    "skew": lambda factor=1.5: PermutationView("skew", _skew(factor)),
    "patch_permute": lambda num_patches=4, seed=0: PermutationView("patch_permute", _patch_permute(num_patches, seed)),
    "pixel_permute": lambda seed=0: PermutationView("pixel_permute", _pixel_permute(seed)),
    "jigsaw": lambda num_pieces=4, seed=0: PermutationView("jigsaw", _jigsaw(num_pieces, seed)),
    "inner_circle": lambda quarter_turns=1, radius=0.75: PermutationView(
        "inner_circle", _inner_circle(quarter_turns, radius)),
}


def list_views() -> list:
    return sorted(VIEWS)


def get_view(name, **kwargs) -> View:
    """The view called ``name`` (a :class:`View` is passed through); unknown names list the choices."""
    if isinstance(name, View):
        return name
    if not isinstance(name, str) or name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; choose one of {list_views()}")
    return VIEWS[name](**kwargs)
