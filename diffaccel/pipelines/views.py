"""Invertible views for visual anagrams (SPEC A1.8 and "beyond the course").

A view ``v`` is an exact, invertible map of NCHW images with ``v.inverse(v(x)) == x`` bit
for bit: a fixed permutation of the pixel positions (the same for every channel and
sample), optionally times -1. Such a map is a signed permutation matrix, hence orthogonal,
so it takes N(0, I) noise to N(0, I) noise — the property that lets the anagram sampler
denoise ``v(x_t)`` with a model trained on unviewed noise (Geng et al., "Visual Anagrams:
Generating Multi-View Optical Illusions with Diffusion Models", CVPR 2024). The views and
their settings are those of its reference code (``visual_anagrams/views``) at 64 px, except
that our jigsaw draws its own piece shapes; at 256 px ours are the 64-px views on 4x4 blocks
(see Sizes), where the reference redraws skew, inner circle, square hinge and jigsaw finer:

=============  ==============================================================================
identity       nothing
flip           upside down (the H axis; SPEC A1.8)
rotate_cw/ccw  a quarter turn; ``rotate_180`` a half turn
negate         ``-x`` (see the channel rule below)
skew           column ``j`` rolled down by ``int(1.5 * (j - H // 2))`` rows (truncated, circular)
patch_permute  an 8x8 grid of patches, shuffled (seeded)
pixel_permute  every pixel shuffled (seeded)
jigsaw         a 4x4 jigsaw puzzle with knobs and holes, pieces shuffled within their class
               (corners, edges, interior) and turned with their shape
inner_circle   the centred disc of radius 3/8 H turned 180 degrees, the ring stays
square_hinge   a 3x3 grid of sub-squares, each turned a quarter in place, clockwise and
               counter-clockwise in a checkerboard (leftover rows/columns stay put)
=============  ==============================================================================

**Channel rule.** ``view`` acts on every channel alike (in IF's stage II that is the noisy
image and the upscaled stage-I image concatenated, as in the reference). The inverse is
applied to model *outputs*: noise-estimate channels get the full inverse (sign included),
the learned-variance channels only the spatial part — a variance does not change sign when
the image does. ``inverse(out, noise_channels=3)`` applies the rule to IF's 6-channel
output; :meth:`View.inverse_variance` is the variance part alone, and
:func:`combine_estimates` is the anagram combine of per-view estimates with this rule.

**Sizes.** A permutation view is built for a ``base_size`` (default 64, IF's stage-I
size, where the reference defines its views). At a multiple ``m * base_size`` it is the
base-size permutation acting on ``m x m`` pixel blocks, so nearest-neighbour upsampling
commutes with it: ``upsample(view(x)) == view(upsample(x))`` from 64 to 256 px (IF's
stage II sees the arrangement stage I made). At any other size (MNIST's 28 px, say), or
with ``base_size=None``, the permutation is built at the image's own size. ``perm(h, w)``
builds the index once per size and device. ``get_view(name, **options)`` looks views up
by name.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import ArgumentError, ArgumentTypeError

__all__ = [
    "View", "IdentityView", "NegateView", "PermutationView", "get_view", "list_views", "VIEWS", "BASE_SIZE",
    "combine_estimates", "jigsaw_pieces", "JIGSAW_CLASSES",
]

#: IF stage I's size, at which the reference defines its views.
BASE_SIZE = 64


def _check_nchw(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"view {name!r} needs a 4-D NCHW tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ArgumentError(f"view {name!r} needs a 4-D NCHW tensor, got shape {tuple(x.shape)}")


class View:
    """``view(x)`` and ``inverse(x)`` on [N, C, H, W] tensors: ``sign * P x`` for a pixel permutation P.

    Subclasses give the spatial part (``_move`` / ``_unmove``) and ``sign`` (+1 or -1).
    """

    name = "view"
    sign = 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.view(x)

    def _move(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _unmove(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """The viewed image, every channel alike."""
        _check_nchw(x, self.name)
        y = self._move(x)
        return -y if self.sign < 0 else y

    def inverse(self, x: torch.Tensor, noise_channels: Optional[int] = None) -> torch.Tensor:
        """Undo the view. ``noise_channels=k``: only channels ``[:k]`` are noise estimates; the
        rest (IF's learned-variance channels) get the spatial inverse without the sign."""
        _check_nchw(x, self.name)
        y = self._unmove(x)
        if self.sign > 0:
            return y
        if noise_channels is None:
            return -y
        c = x.shape[1]
        if isinstance(noise_channels, bool) or not isinstance(noise_channels, int) or not 0 <= noise_channels <= c:
            raise ArgumentError(f"noise_channels must be an int in [0, {c}] (the leading noise-estimate channels "
                                f"of this {c}-channel tensor), got {noise_channels!r}")
        return torch.cat([-y[:, :noise_channels], y[:, noise_channels:]], dim=1)

    def inverse_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the view on a predicted variance: the spatial inverse only (a variance keeps its sign)."""
        _check_nchw(x, self.name)
        return self._unmove(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class IdentityView(View):
    name = "identity"


class NegateView(View):
    """``-x``: its own inverse; N(0, I) is symmetric. Variance channels keep their sign."""

    name = "negate"
    sign = -1


class PermutationView(View):
    """A fixed permutation of the H*W pixel positions, shared by all channels and samples.

    ``make_perm(h, w)`` gives ``perm`` with ``view(x).flatten(-2) = x.flatten(-2)[..., perm]``
    at the size it is built for; see the module docstring for ``base_size``.
    """

    def __init__(self, name: str, make_perm: Callable[[int, int], torch.Tensor],
                 base_size: Optional[int] = BASE_SIZE):
        if base_size is not None and (isinstance(base_size, bool) or not isinstance(base_size, int)
                                      or base_size < 1):
            raise ArgumentError(f"base_size must be a positive int or None (build at every size), got {base_size!r}")
        self.name = name
        self.base_size = base_size
        self._make_perm = make_perm
        self._cache: Dict[Tuple[int, int, torch.device], Tuple[torch.Tensor, torch.Tensor]] = {}

    def block(self, h: int, w: int) -> int:
        """The block side ``m``: at (h, w) the view is its (h/m, w/m) permutation on m x m blocks."""
        b = self.base_size
        if b is None or h % b or h // b < 2 or w % (h // b):
            return 1
        return h // b

    def _native(self, h: int, w: int) -> torch.Tensor:
        p = self._make_perm(h, w).to(torch.int64).reshape(-1)
        if p.numel() != h * w or not torch.equal(torch.sort(p).values, torch.arange(h * w)):
            raise AssertionError(f"view {self.name!r} built an invalid permutation for {h}x{w}")  # a bug here
        return p

    def perm(self, h: int, w: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(perm, inverse perm) as int64 on ``device``; ``perm[i]`` is the source of output pixel i."""
        key = (h, w, torch.device(device or "cpu"))
        if key not in self._cache:
            m = self.block(h, w)
            if m == 1:
                p = self._native(h, w)
            else:  # output pixel (R, C) comes from block p[R // m, C // m], same offset in the block
                bh, bw = h // m, w // m
                src = self._native(bh, bw).reshape(bh, bw)
                sr = (src // bw).repeat_interleave(m, 0).repeat_interleave(m, 1)
                sc = (src % bw).repeat_interleave(m, 0).repeat_interleave(m, 1)
                off_r = torch.arange(h).remainder(m)[:, None]
                off_c = torch.arange(w).remainder(m)[None, :]
                p = ((sr * m + off_r) * w + sc * m + off_c).reshape(-1)
            inv = torch.empty_like(p)
            inv[p] = torch.arange(h * w)
            self._cache[key] = (p.to(key[2]), inv.to(key[2]))
        return self._cache[key]

    def _index(self, x: torch.Tensor, which: int) -> torch.Tensor:
        n, c, h, w = x.shape
        idx = self.perm(h, w, x.device)[which]
        return x.reshape(n, c, h * w)[:, :, idx].reshape(n, c, h, w)

    def _move(self, x):
        return self._index(x, 0)

    def _unmove(self, x):
        return self._index(x, 1)


def combine_estimates(views: Sequence[View], eps: Sequence[torch.Tensor],
                      variances: Optional[Sequence[torch.Tensor]] = None
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The anagram combine: ``eps = mean_i inverse_i(eps_i)`` (Geng et al. 2024), and for a
    learned variance ``var = mean_i inverse_variance_i(var_i)`` (the reference's channel rule).

    ``eps[i]`` (and ``variances[i]``) is the model's output on ``views[i].view(x_t)``.
    """
    if len(eps) != len(views) or (variances is not None and len(variances) != len(views)):
        raise ArgumentError(f"need one estimate per view: {len(views)} views, {len(eps)} estimates"
                            + ("" if variances is None else f", {len(variances)} variances"))
    k = len(views)
    e = sum(v.inverse(x) for v, x in zip(views, eps)) / k
    var = None if variances is None else sum(v.inverse_variance(x) for v, x in zip(views, variances)) / k
    return e, var


# ----------------------------------------------------------------------------- permutations
def _grid(h: int, w: int) -> torch.Tensor:
    return torch.arange(h * w).reshape(h, w)


def _square(name: str, h: int, w: int) -> None:
    if h != w:
        raise ArgumentError(f"view {name!r} needs square images, got {h}x{w}")


def _flip(h, w):
    return _grid(h, w).flip(0)


def _rot(k: int, name: str):
    def make(h, w):
        if k % 2:
            _square(name, h, w)
        return torch.rot90(_grid(h, w), k, dims=(0, 1))
    return make


def _skew(factor: float):
    """Roll column j down by ``int(factor * (j - H // 2))`` rows (truncated toward zero, circular).

    The reference's skew view, whose centre is ``H // 2`` although it indexes columns.
    """
    def make(h, w):
        g = _grid(h, w)
        return torch.stack([torch.roll(g[:, j], int(factor * (j - h // 2))) for j in range(w)], dim=1)
    return make


def _check_div(name: str, h: int, w: int, n: int) -> None:
    if h % n or w % n:
        raise ArgumentError(f"view {name!r} splits the image into {n}x{n} pieces: H and W must be divisible "
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


def _inner_circle(quarter_turns: int, radius: float):
    """Turn the pixels of the centred disc by ``quarter_turns * 90`` degrees; the ring stays.

    Pixel centres sit at ``(i - (H-1)/2, j - (W-1)/2)``; the disc of radius ``radius * H/2``
    around the centre is mapped onto itself by quarter turns, so this is an exact permutation.
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


def _square_hinge(h, w):
    """3x3 sub-squares of side ``H // 3``, each turned a quarter in place: clockwise where
    ``(row + col)`` is even, counter-clockwise where odd; leftover rows / columns stay."""
    _square("square_hinge", h, w)
    if h < 3:
        raise ArgumentError(f"view 'square_hinge' needs images of at least 3x3 pixels, got {h}x{w}")
    q = h // 3
    g = _grid(h, w)
    out = g.clone()
    for i in range(3):
        for j in range(3):
            k = -1 if (i + j) % 2 == 0 else 1  # torch.rot90: k = -1 turns clockwise on screen
            out[i * q:(i + 1) * q, j * q:(j + 1) * q] = torch.rot90(g[i * q:(i + 1) * q, j * q:(j + 1) * q], k)
    return out


# ----------------------------------------------------------------------------- jigsaw
#: The piece classes of the 4x4 jigsaw, by piece id // 4 (edge pieces come in two
#: translation-congruent kinds, "e" and "f", sharing one class).
JIGSAW_CLASSES = ("corner", "edge", "edge", "interior")
# One representative cell per kind: corner c0, edges e0 and f0 (f0 is e0 moved one cell
# right), interior i0. Piece id = 4 * kind + k is the representative turned k quarters
# clockwise about the image centre. Layout:  c0 e0 f0 c1 / f3 i0 i1 e1 / e3 i3 i2 f1 / c3 f2 e2 c2.
_JIG_REPS = ((0, 0), (0, 1), (0, 2), (1, 1))


def _rot_cw(u: torch.Tensor, v: torch.Tensor, k) -> Tuple[torch.Tensor, torch.Tensor]:
    """Turn centred coordinates (u right, v down) ``k`` quarters clockwise on screen (k may be a tensor)."""
    k = torch.as_tensor(k).remainder(4)
    ou, ov = u.clone(), v.clone()
    for q, (a, b) in enumerate(((u, v), (-v, u), (-u, -v), (v, -u))):
        sel = k == q
        ou, ov = torch.where(sel, a, ou), torch.where(sel, b, ov)
    return ou, ov


def jigsaw_pieces(size: int) -> torch.Tensor:
    """The [size, size] map of piece ids (0..15) of the 4x4 jigsaw; ``JIGSAW_CLASSES[id // 4]`` is the class.

    Every interior cut carries a round knob at its middle that sticks out of one piece into
    the other: around the border all knobs point clockwise, edge pieces knob into the
    interior and the interior pieces knob clockwise into each other. The pattern is exactly
    invariant under a quarter turn (so the four pieces of a kind are turns of each other)
    and each edge's two pieces are translates of each other: a piece placed on any piece of
    its class, turned with it, fills it exactly. Knobs are discs in integer doubled
    coordinates (exact at every size), shrunk until no two overlap; at 8 px and below there
    is no room for them and the pieces are squares.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 4 or size % 4:
        raise ArgumentError(f"the jigsaw needs a square image whose side is a multiple of 4, got {size!r}")
    s = size // 4
    S = 2 * s  # a cell's side in doubled coordinates (pixel centres at odd offsets from the centre)
    ids = torch.empty(4, 4, dtype=torch.int64)
    for kind, (r, c) in enumerate(_JIG_REPS):
        for k in range(4):
            ids[r, c] = 4 * kind + k
            r, c = c, 3 - r  # a quarter turn clockwise
    label = ids.repeat_interleave(s, 0).repeat_interleave(s, 1)
    ax = 2 * torch.arange(size) + 1 - size
    V, U = torch.meshgrid(ax, ax, indexing="ij")
    # (cut middle u, v, knob direction du, dv, owner id) for the six knobs of one quarter
    reps = [(-S, -3 * s, 1, 0, 0), (0, -3 * s, 1, 0, 4), (S, -3 * s, 1, 0, 8),
            (-s, -S, 0, 1, 4), (s, -S, 0, 1, 8), (0, -s, 1, 0, 12)]
    d = max(1, round(0.36 * s))  # knob centre past the cut: 0.18 of a cell
    r2 = int((0.4 * s) ** 2)  # knob radius 0.2 of a cell
    while True:
        discs = []
        for mu, mv, du, dv, owner in reps if r2 >= 0 else ():
            for k in range(4):
                cu, cv = _rot_cw(torch.tensor(mu + d * du), torch.tensor(mv + d * dv), k)
                discs.append(((U - cu) ** 2 + (V - cv) ** 2 <= r2, owner - owner % 4 + (owner + k) % 4))
        if not discs or int(sum(m.to(torch.int64) for m, _ in discs).max()) <= 1:
            break
        r2 -= 1  # knobs that touch: make them smaller
    for m, owner in discs:
        label = torch.where(m, torch.tensor(owner), label)
    # a bug check: a quarter turn of the picture puts piece 4q+k where piece 4q+k+1 is
    turned = torch.rot90(label, -1, dims=(0, 1))
    if not torch.equal(label, turned - turned % 4 + (turned % 4 + 1) % 4):
        raise AssertionError("jigsaw pattern is not invariant under a quarter turn")
    return label


def _jigsaw(seed: int):
    """Shuffle the 16 pieces within their class (corners, edges, interior); each piece is
    moved by the rigid motion that takes its own place onto its new one."""
    def make(h, w):
        _square("jigsaw", h, w)
        label = jigsaw_pieces(h).reshape(-1)
        gen = torch.Generator().manual_seed(seed)
        target = torch.empty(16, dtype=torch.int64)
        for group in (torch.arange(0, 4), torch.arange(4, 12), torch.arange(12, 16)):
            target[group] = group[torch.randperm(group.numel(), generator=gen)]
        S = 2 * (h // 4)
        ax = 2 * torch.arange(h) + 1 - h
        V, U = torch.meshgrid(ax, ax, indexing="ij")
        U, V = U.reshape(-1), V.reshape(-1)
        tgt = target[label]
        # back to the representative: undo the turn, then the e -> f shift ...
        u, v = _rot_cw(U, V, -(label % 4))
        u = u - S * (label // 4 == 2)
        # ... and on to the target piece
        u = u + S * (tgt // 4 == 2)
        u, v = _rot_cw(u, v, tgt % 4)
        dest = ((v + h - 1) // 2) * h + (u + h - 1) // 2
        perm = torch.empty_like(dest)
        perm[dest] = torch.arange(h * h)  # the output at dest is the input at src
        return perm
    return make


# ----------------------------------------------------------------------------- registry
def _identity():
    return IdentityView()


def _negate():
    return NegateView()


def _perm_view(name: str, make):
    def build(base_size: Optional[int] = BASE_SIZE):
        return PermutationView(name, make, base_size)
    return build


def _skew_view(factor: float = 1.5, base_size: Optional[int] = BASE_SIZE):
    return PermutationView("skew", _skew(factor), base_size)


def _patch_permute_view(num_patches: int = 8, seed: int = 0, base_size: Optional[int] = BASE_SIZE):
    if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 1:
        raise ArgumentError(f"num_patches must be a positive int (patches per side), got {num_patches!r}")
    return PermutationView("patch_permute", _patch_permute(num_patches, int(seed)), base_size)


def _pixel_permute_view(seed: int = 0, base_size: Optional[int] = BASE_SIZE):
    return PermutationView("pixel_permute", _pixel_permute(int(seed)), base_size)


def _jigsaw_view(seed: int = 0, base_size: Optional[int] = BASE_SIZE):
    return PermutationView("jigsaw", _jigsaw(int(seed)), base_size)


def _inner_circle_view(quarter_turns: int = 2, radius: float = 0.75, base_size: Optional[int] = BASE_SIZE):
    if isinstance(quarter_turns, bool) or not isinstance(quarter_turns, int) or quarter_turns % 4 == 0:
        raise ArgumentError(f"quarter_turns must be an int that is not a multiple of 4, got {quarter_turns!r}")
    if not 0 < radius <= 1:
        raise ArgumentError(f"radius must be in (0, 1] (a fraction of half the side), got {radius!r}")
    return PermutationView("inner_circle", _inner_circle(quarter_turns, float(radius)), base_size)


VIEWS: Dict[str, Callable[..., View]] = {
    "identity": _identity,
    "flip": _perm_view("flip", _flip),  # upside down: the H axis (SPEC A1.8)
    "rotate_cw": _perm_view("rotate_cw", _rot(-1, "rotate_cw")),
    "rotate_ccw": _perm_view("rotate_ccw", _rot(1, "rotate_ccw")),
    "rotate_180": _perm_view("rotate_180", _rot(2, "rotate_180")),
    "negate": _negate,
    "skew": _skew_view,
    "patch_permute": _patch_permute_view,
    "pixel_permute": _pixel_permute_view,
    "jigsaw": _jigsaw_view,
    "inner_circle": _inner_circle_view,
    "square_hinge": _perm_view("square_hinge", _square_hinge),
}


def list_views() -> List[str]:
    return sorted(VIEWS)


def get_view(name, **options) -> View:
    """The view called ``name`` with its ``options`` (a :class:`View` is passed through).

    Unknown names list the choices; unknown options list the view's own.
    """
    if isinstance(name, View):
        if options:
            raise ArgumentError(f"options {sorted(options)} apply to a view name, not to the view object {name!r}")
        return name
    if not isinstance(name, str) or name not in VIEWS:
        raise ArgumentError(f"unknown view {name!r}; choose one of {list_views()}")
    make = VIEWS[name]
    allowed = list(inspect.signature(make).parameters)
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ArgumentError(f"view {name!r} has no option(s) {bad}; its options are {allowed or 'none'}")
    return make(**options)
