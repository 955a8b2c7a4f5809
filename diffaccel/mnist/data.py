"""MNIST as whole in-memory tensors: read, verify, download, shuffle (SPEC Part B "Data").

The four IDX files of the standard distribution (gzipped or not) are read from a folder named
by the caller, or ``$DIFFACCEL_MNIST_DIR``, or the download cache. Content is checked against
the SHA-256 of the *decompressed* IDX bytes, because mirrors gzip the same bytes differently.
Pixels come back as ``x = uint8 / 255`` in ``[0, 1]`` (SPEC Part B: "pixels scaled to
[0, 1]").

An epoch never touches a Python object per image: the whole split is one tensor and a
minibatch is one ``index_select`` with a slice of a ``randperm`` (:func:`iterate_minibatches`).

IDX format (big-endian): ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` uint32 sizes, then the
data in C order. MNIST uses dtype ``0x08`` (uint8): images ``[N, 28, 28]``, labels ``[N]``.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
import threading
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .checkpoint import atomic_write_bytes

__all__ = [
    "MNIST_FILES",
    "DEFAULT_MIRRORS",
    "ENV_VAR",
    "MIRRORS_ENV_VAR",
    "MNISTDataError",
    "MNISTDownloadError",
    "MNISTBatches",
    "default_cache_dir",
    "resolve_root",
    "load_mnist",
    "mnist_tensors",
    "clear_cache",
    "download_mnist",
    "iterate_minibatches",
    "num_batches",
]

PathLike = Union[str, os.PathLike]
ENV_VAR = "DIFFACCEL_MNIST_DIR"
#: Comma-separated base URLs replacing :data:`DEFAULT_MIRRORS` (e.g. an internal mirror).
MIRRORS_ENV_VAR = "DIFFACCEL_MNIST_MIRRORS"
SPLITS = ("train", "test")
IMAGE_SIZE = 28
NUM_CLASSES = 10

#: Public mirrors holding ``<name>.gz`` for every file; tried in order. The first is the one
#: torchvision uses (yann.lecun.com no longer serves the files reliably).
DEFAULT_MIRRORS: Tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# A mirror answering with more than this is not serving MNIST (largest file: 9.9 MB gzipped,
# 47 MB raw); refuse instead of filling memory.
_MAX_DOWNLOAD_BYTES = 64 << 20
_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class MNISTFile:
    """One IDX file of the distribution: its name (without ``.gz``) and what it must hold."""

    name: str
    split: str
    kind: str  # "images" | "labels"
    shape: Tuple[int, ...]
    sha256: str  # of the decompressed IDX bytes (``SHA256SUMS.raw``)

    @property
    def nbytes(self) -> int:
        """Size of the raw IDX file: 4-byte magic + 4 bytes per dim + uint8 payload."""
        n = 1
        for d in self.shape:
            n *= d
        return 4 + 4 * len(self.shape) + n


#: The four files, keyed by their raw name. Checksums are those of the decompressed files,
#: identical to the bytes of the official distribution.
MNIST_FILES: Dict[str, MNISTFile] = {
    f.name: f
    for f in (
        MNISTFile("train-images-idx3-ubyte", "train", "images", (60000, 28, 28),
                  "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        MNISTFile("train-labels-idx1-ubyte", "train", "labels", (60000,),
                  "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        MNISTFile("t10k-images-idx3-ubyte", "test", "images", (10000, 28, 28),
                  "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        MNISTFile("t10k-labels-idx1-ubyte", "test", "labels", (10000,),
                  "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    )
}


class MNISTDataError(ValueError):
    """An MNIST file on disk is truncated, corrupt, or not the expected content."""


class MNISTDownloadError(RuntimeError):
    """No mirror delivered a file with the expected content."""


# ----------------------------------------------------------------------------- locating
def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _files_of(split: Optional[str]) -> List[MNISTFile]:
    if split is not None:
        _check_split(split)
    return [f for f in MNIST_FILES.values() if split is None or f.split == split]


def _split_files(split: str) -> Tuple[MNISTFile, MNISTFile]:
    images, labels = sorted(_files_of(split), key=lambda f: f.kind)  # "images" < "labels"
    return images, labels


def _find(root: Path, f: MNISTFile) -> Optional[Path]:
    """The file's path in ``root``: the raw IDX if present (no decompression), else ``.gz``."""
    for candidate in (root / f.name, root / (f.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _missing(root: Path, split: Optional[str]) -> List[str]:
    return [f.name for f in _files_of(split) if _find(root, f) is None]


def default_cache_dir() -> Path:
    """Where :func:`load_mnist` ``(download=True)`` puts the files when no folder is named:
    ``$XDG_CACHE_HOME/diffaccel/mnist`` (``~/.cache/diffaccel/mnist`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffaccel" / "mnist"


def _dev_copy() -> Path:
    # The development checkout keeps a copy beside the repository (``../shared/data/mnist``
    # from the project root); it is only a fallback and absent on a user's machine.
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def resolve_root(root: Optional[PathLike] = None, split: Optional[str] = None,
                 download: bool = False) -> Path:
    """The folder to read MNIST from.

    Order: ``root`` if given, else ``$DIFFACCEL_MNIST_DIR`` if set (an explicit choice is never
    second-guessed), else the first of the download cache (:func:`default_cache_dir`) and the
    development copy that holds the files of ``split`` (both splits when ``None``).

    With ``download=True`` the folder need not hold the files yet: the explicit folder, or the
    cache, is returned for :func:`download_mnist` to fill. Otherwise a folder without the files
    raises ``FileNotFoundError`` saying which files are missing and how to provide them.
    """
    if split is not None:
        _check_split(split)
    if root is not None:
        candidates, source = [Path(root).expanduser()], "the folder passed as root/--data-dir"
    elif os.environ.get(ENV_VAR):
        candidates, source = [Path(os.environ[ENV_VAR]).expanduser()], f"${ENV_VAR}"
    else:
        candidates, source = [default_cache_dir(), _dev_copy()], "the default locations"
    for c in candidates:
        if c.is_dir() and not _missing(c, split):
            return c.resolve()
    if download:
        return candidates[0].resolve()
    looked = "\n".join(
        f"  {c}: " + ("no such folder" if not c.is_dir() else "missing " + ", ".join(_missing(c, split)))
        for c in candidates)
    raise FileNotFoundError(
        f"MNIST not found in {source}:\n{looked}\n"
        "Each file may be raw or gzipped (e.g. train-images-idx3-ubyte or "
        "train-images-idx3-ubyte.gz). To fix, do one of:\n"
        f"  - set {ENV_VAR}=/path/to/folder holding the four MNIST IDX files;\n"
        "  - pass that folder with --data-dir /path/to/folder (root= in Python);\n"
        "  - add --download (download=True in Python) to fetch them from the public mirrors "
        f"into {candidates[0]}.")


# ----------------------------------------------------------------------------- reading
def _decompress(data: bytes, path: Union[Path, str]) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise MNISTDataError(f"{path}: corrupt or truncated gzip data ({e}); "
                             "delete it and download it again") from e


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return _decompress(data, path) if path.suffix == ".gz" else data


def _check_sha256(raw: bytes, f: MNISTFile, where: Union[Path, str]) -> None:
    got = hashlib.sha256(raw).hexdigest()
    if got != f.sha256:
        raise MNISTDataError(
            f"{where}: SHA-256 of the decompressed content is {got}, expected {f.sha256} "
            f"for {f.name}; the file is corrupt or not the standard MNIST "
            "(delete it and download it again, or pass verify=False for an IDX variant "
            "such as Fashion-MNIST)")


def _parse_idx(raw: bytes, f: MNISTFile, where: Union[Path, str]) -> torch.Tensor:
    """Parse one IDX buffer into a uint8 tensor, checking every header field against ``f``.

    Only the layout is enforced (ndim, 28x28 images; any N), so that ``verify=False`` accepts
    same-format sets (Fashion-MNIST); ``verify=True`` pins the exact content by checksum.
    """
    ndim = len(f.shape)
    if len(raw) < 4:
        raise MNISTDataError(f"{where}: {len(raw)} bytes, too short for an IDX header "
                             f"(expected {f.nbytes} bytes for {f.name})")
    zero, dtype, got_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE or got_ndim != ndim:
        raise MNISTDataError(
            f"{where}: bad IDX magic {raw[:4].hex()}, expected 0000{_IDX_UBYTE:02x}{ndim:02x} "
            f"(uint8, {ndim}-D {f.kind}) for {f.name}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MNISTDataError(f"{where}: truncated IDX header ({len(raw)} bytes, "
                             f"expected {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if f.kind == "images" and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise MNISTDataError(f"{where}: images are {dims[1]}x{dims[2]}, expected "
                             f"{IMAGE_SIZE}x{IMAGE_SIZE} (dims {dims}, expected [N, 28, 28])")
    payload = 1
    for d in dims:
        payload *= d
    if len(raw) != header + payload:
        state = "truncated" if len(raw) < header + payload else "has trailing bytes"
        raise MNISTDataError(f"{where}: {state}: {len(raw)} bytes, but its header {list(dims)} "
                             f"needs {header + payload} bytes")
    if payload == 0:  # torch.frombuffer rejects an empty buffer
        return torch.empty(dims, dtype=torch.uint8)
    # bytearray: torch.frombuffer wants a writable buffer; one copy, no per-item work.
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).view(*dims)


def _load_file(root: Path, f: MNISTFile, verify: bool) -> torch.Tensor:
    path = _find(root, f)
    if path is None:
        raise FileNotFoundError(f"{root}: neither {f.name} nor {f.name}.gz exists")
    raw = _read_bytes(path)
    t = _parse_idx(raw, f, path)  # structural errors first: they say more than a checksum
    if verify:
        _check_sha256(raw, f, path)
    return t


def load_mnist(split: str = "train", root: Optional[PathLike] = None, download: bool = False,
               verify: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """One split as ``(images uint8 [N, 28, 28], labels int64 [N])`` (SPEC Part B "Data").

    ``root`` is resolved by :func:`resolve_root`. ``download=True`` fetches missing files
    (:func:`download_mnist`) first. ``verify`` checks the SHA-256 of the decompressed content
    against :data:`MNIST_FILES`; the IDX structure is always checked. Errors name the file.
    """
    _check_split(split)
    folder = resolve_root(root, split, download=download)
    if download and _missing(folder, split):
        download_mnist(folder, split=split)
    f_images, f_labels = _split_files(split)
    images = _load_file(folder, f_images, verify)
    labels = _load_file(folder, f_labels, verify)
    if images.shape[0] != labels.shape[0]:
        raise MNISTDataError(f"{folder}: {f_images.name} holds {images.shape[0]} images but "
                             f"{f_labels.name} holds {labels.shape[0]} labels")
    if labels.numel() and int(labels.max()) >= NUM_CLASSES:
        raise MNISTDataError(f"{folder}: {f_labels.name} has label {int(labels.max())}, "
                             f"expected 0..{NUM_CLASSES - 1}")
    return images, labels.long()


# Cache of converted splits: (resolved root, split) -> {(device, dtype): (x, y)} plus whether
# the content was checksum-verified. Tensors are shared between callers: treat as read-only.
_CACHE: Dict[Tuple[str, str], Dict] = {}
_CACHE_LOCK = threading.Lock()


def mnist_tensors(split: str = "train", root: Optional[PathLike] = None, download: bool = False,
                  device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                  verify: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """One split as whole tensors ``(x [N, 1, 28, 28] in [0, 1], y long [N])`` on ``device``.

    ``x = images / 255`` (SPEC Part B). Results are cached per ``(root, split)`` (and per
    device/dtype), so a second call costs nothing; the returned tensors are shared and must
    not be modified in place. :func:`clear_cache` frees them.
    """
    _check_split(split)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    device = torch.device(device)
    folder = resolve_root(root, split, download=download)
    key = (str(folder), split)
    with _CACHE_LOCK:
        entry = _CACHE.get(key)
        if entry is None or (verify and not entry["verified"]):
            images, labels = load_mnist(split, folder, download=download, verify=verify)
            entry = _CACHE[key] = {"verified": verify, "base": (images, labels), "views": {}}
        variant = (str(device), dtype)
        out = entry["views"].get(variant)
        if out is None:
            images, labels = entry["base"]
            # Convert on the target device: ship uint8 (4x fewer bytes), scale there.
            x = images.to(device).unsqueeze(1).to(dtype).div_(255)
            out = entry["views"][variant] = (x, labels.to(device))
        return out


def clear_cache() -> None:
    """Drop every split cached by :func:`mnist_tensors`."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------- download
def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (https mirrors)
        data = r.read(_MAX_DOWNLOAD_BYTES + 1)
    if len(data) > _MAX_DOWNLOAD_BYTES:
        raise MNISTDataError(f"{url}: response larger than {_MAX_DOWNLOAD_BYTES} bytes")
    return data


def _is_valid(path: Path, f: MNISTFile) -> bool:
    try:
        raw = _read_bytes(path)
        _parse_idx(raw, f, path)
        _check_sha256(raw, f, path)
        return True
    except (OSError, MNISTDataError):
        return False


def download_mnist(root: Optional[PathLike] = None, mirrors: Optional[Sequence[str]] = None,
                   timeout: float = 30, split: Optional[str] = None) -> Path:
    """Fetch the MNIST files (of ``split``, or all four) into ``root`` and return the folder.

    Each file present with the right content is kept. Otherwise ``<mirror><name>.gz`` is tried
    on each mirror in turn (``mirrors``, else ``$DIFFACCEL_MNIST_MIRRORS``, else
    :data:`DEFAULT_MIRRORS`) (``timeout`` seconds per connection/read); the *decompressed*
    content must match the SHA-256 in :data:`MNIST_FILES`. The verified bytes are written
    atomically as ``<name>.gz``, or as ``<name>`` decompressed when a bad raw copy is being
    replaced (raw copies are read first). Raises :class:`MNISTDownloadError` naming every
    mirror's failure when none delivers; no partial file is ever left.
    """
    if timeout is None or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if mirrors is None:
        env = os.environ.get(MIRRORS_ENV_VAR, "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or DEFAULT_MIRRORS
    mirrors = list(mirrors)
    if not mirrors:
        raise ValueError("mirrors must name at least one base URL")
    folder = Path(root).expanduser() if root is not None else resolve_root(None, split, True)
    folder.mkdir(parents=True, exist_ok=True)
    for f in _files_of(split):
        existing = _find(folder, f)
        if existing is not None and _is_valid(existing, f):
            continue
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + f.name + ".gz"
            try:
                data = _fetch(url, timeout)
                raw = _decompress(data, url)
                _check_sha256(raw, f, url)
            except (OSError, MNISTDataError) as e:  # URLError, timeouts, resets are OSErrors
                errors.append(f"  {url}: {e}")
                continue
            if existing is not None and existing.suffix != ".gz":
                atomic_write_bytes(existing, raw)
            else:
                atomic_write_bytes(folder / (f.name + ".gz"), data)
            break
        else:
            raise MNISTDownloadError(
                f"could not download {f.name} (expected decompressed SHA-256 {f.sha256}) "
                f"into {folder}; every mirror failed:\n" + "\n".join(errors) +
                f"\nCheck the network, or copy the four MNIST files into a folder and set "
                f"{ENV_VAR} (or pass --data-dir).")
    return folder.resolve()


# ----------------------------------------------------------------------------- batching
def num_batches(n: int, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
    """Batches per epoch (per rank) of :func:`iterate_minibatches` over ``n`` items."""
    per_step = batch_size * world
    return n // per_step if drop_last else -(-n // per_step)


def _check_batching(x: torch.Tensor, y: Optional[torch.Tensor], batch_size: int,
                    shard: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have one entry per row of x ({x.shape[0]}), got {y.shape[0]}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    rank, world = (0, 1) if shard is None else shard
    if not (isinstance(world, int) and isinstance(rank, int) and world >= 1 and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
    return rank, world


def _epoch_indices(n: int, batch_size: int, generator: Optional[torch.Generator],
                   drop_last: bool, rank: int, world: int) -> List[torch.Tensor]:
    """This rank's index batches for one epoch, all slices of one global permutation.

    Global step ``k`` takes ``perm[k*B*W : (k+1)*B*W]`` (``B`` = per-rank batch, ``W`` = world)
    and rank ``r`` its ``r``-th block of ``B``: the ranks' batches are disjoint and together
    are exactly the batch one process with batch ``B*W`` would see. A short last step is
    split evenly, topped up by wrapping to the start of the permutation (as
    ``DistributedSampler`` pads) so every rank runs the same number of equally sized steps.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=gen_device)
    step = batch_size * world
    full = n // step
    body = perm[: full * step].view(full, world, batch_size)[:, rank]
    batches = list(body.unbind(0))
    tail = n - full * step
    if tail and not drop_last:
        if world == 1:
            batches.append(perm[full * step:])
        else:
            per_rank = -(-tail // world)
            padded = perm[full * step:]
            if per_rank * world > tail:  # wrap: reuse the first items of this epoch's order
                padded = torch.cat([padded, perm[: per_rank * world - tail]])
            batches.append(padded.view(world, per_rank)[rank])
    return batches


def iterate_minibatches(x: torch.Tensor, y: Optional[torch.Tensor], batch_size: int,
                        generator: Optional[torch.Generator] = None, drop_last: bool = False,
                        shard: Optional[Tuple[int, int]] = None,
                        ) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Yield shuffled ``(x[idx], y[idx])`` minibatches covering one epoch.

    One ``randperm`` per epoch (from ``generator``, so a seed fixes the order), moved once to
    ``x.device``; each batch is one gather of the whole tensors — no per-item Python work, no
    host sync per batch. Without ``shard`` every index appears exactly once (the last batch
    is short unless ``drop_last``). With ``shard=(rank, world)`` (DDP) ``batch_size`` is per
    rank and each rank gets a disjoint slice of the same permutation (every rank must pass an
    identically seeded generator); see :func:`_epoch_indices`.
    """
    rank, world = _check_batching(x, y, batch_size, shard)
    batches = _epoch_indices(x.shape[0], batch_size, generator, drop_last, rank, world)
    if not batches:
        return
    # One transfer per epoch; the per-batch slices below are views of it.
    flat = torch.cat(batches).to(x.device, non_blocking=True)
    start = 0
    for b in batches:
        idx = flat[start:start + b.numel()]
        start += b.numel()
        yield x.index_select(0, idx), (None if y is None else y.index_select(0, idx.to(y.device)))


class MNISTBatches:
    """A re-iterable epoch of shuffled minibatches whose order depends only on ``(seed, epoch)``.

    ``for xb, yb in batches`` iterates one epoch; :meth:`set_epoch` (as with
    ``DistributedSampler``) picks the epoch, so a resumed run replays exactly the order an
    unbroken run would have seen, and all DDP ranks agree on the permutation.
    """

    def __init__(self, x: torch.Tensor, y: Optional[torch.Tensor], batch_size: int,
                 seed: int = 0, drop_last: bool = False,
                 shard: Optional[Tuple[int, int]] = None) -> None:
        self.rank, self.world = _check_batching(x, y, batch_size, shard)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.seed, self.drop_last, self.shard = int(seed), drop_last, shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self) -> torch.Generator:
        # seed and epoch mixed so consecutive seeds don't share shifted epoch orders.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __len__(self) -> int:
        return num_batches(self.x.shape[0], self.batch_size, self.drop_last, self.world)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        return iterate_minibatches(self.x, self.y, self.batch_size, self.generator(),
                                   self.drop_last, self.shard)
