"""MNIST as whole in-memory tensors: read, verify, download (SPEC Part B "Data").

The four IDX files of the standard distribution (gzipped or not) are read from a folder named
by the caller, or ``$DIFFACCEL_MNIST_DIR``, or the download cache. Content is checked against
the SHA-256 of the *decompressed* IDX bytes, because mirrors gzip the same bytes differently.
Pixels come back as ``x = uint8 / 255`` in ``[0, 1]`` (SPEC Part B: "pixels scaled to
[0, 1]").

An epoch never touches a Python object per image: the whole split is one tensor and a
minibatch is one gather with a row of a ``randperm`` (``diffaccel.mnist.train.epoch_batches``).

Reading is bounded: the IDX header is checked before the payload is read, and decompression
stops at the size the header (and, with ``verify=True``, the standard file) allows, so a
gzip bomb fails after a few bytes of output instead of filling memory.

IDX format (big-endian): ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` uint32 sizes, then the
data in C order. MNIST uses dtype ``0x08`` (uint8): images ``[N, 28, 28]``, labels ``[N]``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import threading
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import ArgumentError, ArgumentTypeError, DownloadError, FileFormatError, MissingFileError
from .checkpoint import atomic_write_bytes

__all__ = [
    "MNIST_FILES",
    "DEFAULT_MIRRORS",
    "ENV_VAR",
    "MIRRORS_ENV_VAR",
    "MNISTDataError",
    "MNISTDownloadError",
    "default_cache_dir",
    "resolve_root",
    "load_mnist",
    "mnist_tensors",
    "clear_cache",
    "download_mnist",
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


class MNISTDataError(FileFormatError):
    """An MNIST file on disk is truncated, corrupt, too large, or not the expected content."""


class MNISTDownloadError(DownloadError):
    """No mirror delivered a file with the expected content."""


# ----------------------------------------------------------------------------- locating
def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ArgumentError(f"split must be one of {SPLITS}, got {split!r}")
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


def resolve_root(root: Optional[PathLike] = None, split: Optional[str] = None,
                 download: bool = False) -> Path:
    """The folder to read MNIST from.

    Order: ``root`` if given, else ``$DIFFACCEL_MNIST_DIR`` if set (an explicit choice is never
    second-guessed), else the download cache (:func:`default_cache_dir`).

    With ``download=True`` the folder need not hold the files yet: the explicit folder, or the
    cache, is returned for :func:`download_mnist` to fill. Otherwise a folder without the files
    raises :class:`~diffaccel.errors.MissingFileError` (a ``FileNotFoundError``) saying which
    files are missing and how to provide them.
    """
    if split is not None:
        _check_split(split)
    if root is not None:
        candidates, source = [Path(root).expanduser()], "the folder passed as root/--data-dir"
    elif os.environ.get(ENV_VAR):
        candidates, source = [Path(os.environ[ENV_VAR]).expanduser()], f"${ENV_VAR}"
    else:
        candidates, source = [default_cache_dir()], "the default location"
    for c in candidates:
        if c.is_dir() and not _missing(c, split):
            return c.resolve()
    if download:
        return candidates[0].resolve()
    looked = "\n".join(
        f"  {c}: " + ("no such folder" if not c.is_dir() else "missing " + ", ".join(_missing(c, split)))
        for c in candidates)
    raise MissingFileError(
        f"MNIST not found in {source}:\n{looked}\n"
        "Each file may be raw or gzipped (e.g. train-images-idx3-ubyte or "
        "train-images-idx3-ubyte.gz). To fix, do one of:\n"
        f"  - set {ENV_VAR}=/path/to/folder holding the four MNIST IDX files;\n"
        "  - pass that folder with --data-dir /path/to/folder (root= in Python);\n"
        "  - add --download (download=True in Python) to fetch them from the public mirrors "
        f"into {candidates[0]}.")


# ----------------------------------------------------------------------------- reading
#: The most bytes an IDX file may declare when read with ``verify=False`` (same-format sets larger
#: than MNIST, e.g. EMNIST, fit); with ``verify=True`` the cap is the standard file's own size.
MAX_IDX_BYTES = 1 << 30


class _IDX:
    """One IDX file read and checked: its header bytes, its payload, and its dims."""

    def __init__(self, header: bytes, payload: bytearray, dims: Tuple[int, ...]):
        self.header, self.payload, self.dims = header, payload, dims

    def tensor(self) -> torch.Tensor:
        if not self.payload:  # torch.frombuffer rejects an empty buffer
            return torch.empty(self.dims, dtype=torch.uint8)
        return torch.frombuffer(self.payload, dtype=torch.uint8).view(*self.dims)  # no copy

    def raw(self) -> bytes:
        return self.header + bytes(self.payload)


def _read_exactly(fh: BinaryIO, n: int) -> bytearray:
    """Up to ``n`` bytes (fewer only at the end of the stream); never more than ``n`` in memory."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:  # in chunks: a decompressing reader may buffer a whole request
        k = fh.readinto(view[got:got + (1 << 20)])
        if not k:
            break
        got += k
    del view
    if got < n:
        del buf[got:]
    return buf


def _read_idx(fh: BinaryIO, f: MNISTFile, where: Union[Path, str], limit: int,
              size: Optional[int] = None) -> _IDX:
    """Read one IDX stream, checking every header field against ``f`` *before* the payload.

    Only the layout is enforced (ndim, 28x28 images; any N), so that ``verify=False`` accepts
    same-format sets (Fashion-MNIST); ``verify=True`` pins the exact content by checksum. The
    payload read is capped at what the header declares, which must be at most ``limit`` bytes;
    ``size`` (the file size of an uncompressed file) is checked before anything is read.
    """
    ndim = len(f.shape)
    magic = fh.read(4)
    if len(magic) < 4:
        raise MNISTDataError(f"{where}: {len(magic)} bytes, too short for an IDX header "
                             f"(expected {f.nbytes} bytes for {f.name})")
    zero, dtype, got_ndim = struct.unpack(">HBB", magic)
    if zero != 0 or dtype != _IDX_UBYTE or got_ndim != ndim:
        raise MNISTDataError(
            f"{where}: bad IDX magic {magic.hex()}, expected 0000{_IDX_UBYTE:02x}{ndim:02x} "
            f"(uint8, {ndim}-D {f.kind}) for {f.name}")
    sizes = fh.read(4 * ndim)
    header = magic + sizes
    if len(sizes) < 4 * ndim:
        raise MNISTDataError(f"{where}: truncated IDX header ({len(header)} bytes, expected {4 + 4 * ndim})")
    dims = struct.unpack(f">{ndim}I", sizes)
    if f.kind == "images" and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise MNISTDataError(f"{where}: images are {dims[1]}x{dims[2]}, expected "
                             f"{IMAGE_SIZE}x{IMAGE_SIZE} (dims {dims}, expected [N, 28, 28])")
    payload = 1
    for d in dims:
        payload *= d
    total = len(header) + payload
    if total > limit:
        raise MNISTDataError(f"{where}: its header {list(dims)} declares {total} bytes, more than the "
                             f"{limit} bytes allowed for {f.name} (not MNIST, or a decompression bomb)")
    if size is not None and size != total:
        state = "truncated" if size < total else "has trailing bytes"
        raise MNISTDataError(f"{where}: {state}: {size} bytes, but its header {list(dims)} "
                             f"needs {total} bytes")
    data = _read_exactly(fh, payload)
    if len(data) < payload:
        raise MNISTDataError(f"{where}: truncated: {len(header) + len(data)} bytes, but its header "
                             f"{list(dims)} needs {total} bytes")
    if fh.read(1):
        raise MNISTDataError(f"{where}: has trailing bytes: more than the {total} bytes its header "
                             f"{list(dims)} needs")
    return _IDX(header, data, dims)


def _gzip_error(where: Union[Path, str], e: BaseException) -> MNISTDataError:
    return MNISTDataError(f"{where}: corrupt or truncated gzip data ({e}); delete it and download it again")


def _read_file(path: Path, f: MNISTFile, limit: int) -> _IDX:
    if path.suffix != ".gz":
        with open(path, "rb") as fh:
            return _read_idx(fh, f, path, limit, size=os.fstat(fh.fileno()).st_size)
    try:
        with gzip.open(path, "rb") as fh:
            return _read_idx(fh, f, path, limit)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise _gzip_error(path, e) from e


def _gunzip_download(data: bytes, f: MNISTFile, url: str) -> _IDX:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            return _read_idx(fh, f, url, f.nbytes)
    except (OSError, EOFError, zlib.error) as e:
        raise _gzip_error(url, e) from e


def _check_sha256(idx: _IDX, f: MNISTFile, where: Union[Path, str]) -> None:
    h = hashlib.sha256(idx.header)
    h.update(idx.payload)
    got = h.hexdigest()
    if got != f.sha256:
        raise MNISTDataError(
            f"{where}: SHA-256 of the decompressed content is {got}, expected {f.sha256} "
            f"for {f.name}; the file is corrupt or not the standard MNIST "
            "(delete it and download it again, or pass verify=False for an IDX variant "
            "such as Fashion-MNIST)")


def _load_file(root: Path, f: MNISTFile, verify: bool) -> torch.Tensor:
    path = _find(root, f)
    if path is None:
        raise MissingFileError(f"{root}: neither {f.name} nor {f.name}.gz exists")
    idx = _read_file(path, f, f.nbytes if verify else MAX_IDX_BYTES)  # structure first: it says more
    if verify:
        _check_sha256(idx, f, path)
    return idx.tensor()


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
        raise ArgumentTypeError(f"dtype must be a floating dtype, got {dtype}")
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
        _check_sha256(_read_file(path, f, f.nbytes), f, path)
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
        raise ArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if mirrors is None:
        env = os.environ.get(MIRRORS_ENV_VAR, "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or DEFAULT_MIRRORS
    mirrors = list(mirrors)
    if not mirrors:
        raise ArgumentError("mirrors must name at least one base URL")
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
                idx = _gunzip_download(data, f, url)
                _check_sha256(idx, f, url)
            except (OSError, MNISTDataError) as e:  # URLError, timeouts, resets are OSErrors
                errors.append(f"  {url}: {e}")
                continue
            if existing is not None and existing.suffix != ".gz":
                atomic_write_bytes(existing, idx.raw())
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
