"""MNIST data layer (SPEC Part B "Data"): reading, verification, limits, download.

Reads the folder named by ``$DIFFACCEL_MNIST_DIR`` (or ``../shared/data/mnist`` from the
repository root; skipped when absent). Downloads are only ever tested against an HTTP server
on 127.0.0.1 started by the test itself — never the internet.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import torch

from diffaccel.mnist import data as md

TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    env = os.environ.get(md.ENV_VAR)
    folder = Path(env) if env else REPO_ROOT / ".." / "shared" / "data" / "mnist"
    if not all((folder / (name + ".gz")).is_file() or (folder / name).is_file()
               for name in md.MNIST_FILES):
        pytest.skip(f"MNIST files not found in {folder} (set {md.ENV_VAR})")
    return folder.resolve()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    # No test may fall back to the user's cache, a configured folder, or real mirrors.
    monkeypatch.delenv(md.ENV_VAR, raising=False)
    monkeypatch.delenv(md.MIRRORS_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    md.clear_cache()
    yield
    md.clear_cache()


def _raw(mnist_dir: Path, name: str) -> bytes:
    p = mnist_dir / name
    return p.read_bytes() if p.is_file() else gzip.decompress((mnist_dir / (name + ".gz")).read_bytes())


def _copy_split(mnist_dir: Path, dest: Path, split: str, gz: bool) -> Path:
    """Copy one split's two files into ``dest``, gzipped or decompressed."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in md.MNIST_FILES.values():
        if f.split != split:
            continue
        raw = _raw(mnist_dir, f.name)
        if gz:
            (dest / (f.name + ".gz")).write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (dest / f.name).write_bytes(raw)
    return dest


def _idx(array: torch.Tensor, magic: bytes = None) -> bytes:
    """Encode a uint8 tensor as IDX (optionally with a forged 4-byte magic)."""
    header = magic if magic is not None else struct.pack(">HBB", 0, 0x08, array.dim())
    return header + struct.pack(f">{array.dim()}I", *array.shape) + array.numpy().tobytes()


def _write_tiny(dest: Path, images: torch.Tensor, labels: torch.Tensor, split="test") -> Path:
    f_img, f_lab = md._split_files(split)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f_img.name).write_bytes(_idx(images))
    (dest / f_lab.name).write_bytes(_idx(labels))
    return dest


def _tiny(n=5, size=28):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8))


# ----------------------------------------------------------------------------- table
def test_checksum_table_matches_shipped_sums(mnist_dir):
    sums = mnist_dir / "SHA256SUMS.raw"
    if not sums.is_file():
        pytest.skip("no SHA256SUMS.raw beside the data")
    listed = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    assert set(md.MNIST_FILES) == set(listed)
    for name, f in md.MNIST_FILES.items():
        assert f.sha256 == listed[name]
        assert len(_raw(mnist_dir, name)) == f.nbytes


# ----------------------------------------------------------------------------- reading
def test_train_labels_and_shapes(mnist_dir):
    images, labels = md.load_mnist("train", mnist_dir)
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == TRAIN_LABEL_COUNTS
    # Real digits: dark background, strokes saturate.
    assert images.max() == 255 and images.float().mean().item() == pytest.approx(33.3, abs=0.5)


def test_mnist_tensors_test_split_range_and_cache(mnist_dir):
    x, y = md.mnist_tensors("test", mnist_dir)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.long
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    images, labels = md.load_mnist("test", mnist_dir)
    torch.testing.assert_close(x[:, 0] * 255, images.float())
    assert torch.equal(y, labels)
    # Repeated calls are free: the very same tensors come back.
    t0 = time.perf_counter()
    x2, y2 = md.mnist_tensors("test", str(mnist_dir))
    assert x2 is x and y2 is y and time.perf_counter() - t0 < 0.5
    xh, _ = md.mnist_tensors("test", mnist_dir, dtype=torch.float64)
    assert xh.dtype == torch.float64 and torch.equal(xh.float(), x)


def test_env_var_names_the_folder(mnist_dir, monkeypatch):
    monkeypatch.setenv(md.ENV_VAR, str(mnist_dir))
    assert md.resolve_root() == mnist_dir
    _, labels = md.load_mnist("test")
    assert labels.numel() == 10000


@pytest.mark.parametrize("gz", [False, True])
def test_raw_and_gzipped_copies_load_identically(mnist_dir, tmp_path, gz):
    ref_images, ref_labels = md.load_mnist("test", mnist_dir)
    folder = _copy_split(mnist_dir, tmp_path / "copy", "test", gz=gz)
    images, labels = md.load_mnist("test", folder)  # verify=True: checksums of content
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def test_resolve_root_explains_what_to_do(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as e:
        md.load_mnist("train", empty)
    msg = str(e.value)
    for needle in (str(empty), "train-images-idx3-ubyte", md.ENV_VAR, "--data-dir", "--download"):
        assert needle in msg
    monkeypatch.setenv(md.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=rf"\${md.ENV_VAR}.*\n.*no such folder"):
        md.resolve_root()
    with pytest.raises(FileNotFoundError, match="default location"):
        monkeypatch.delenv(md.ENV_VAR)
        md.resolve_root()
    with pytest.raises(ValueError, match="split must be one of"):
        md.load_mnist("val", empty)


# ----------------------------------------------------------------------------- corruption
def test_truncated_raw_file(mnist_dir, tmp_path):
    folder = _copy_split(mnist_dir, tmp_path, "test", gz=False)
    p = folder / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(md.MNISTDataError, match=r"t10k-images-idx3-ubyte: truncated: 5000 bytes.*7840016"):
        md.load_mnist("test", folder)
    with pytest.raises(ValueError, match="truncated"):  # also without checksums
        md.load_mnist("test", folder, verify=False)


def test_truncated_and_garbage_gzip(mnist_dir, tmp_path):
    folder = _copy_split(mnist_dir, tmp_path, "test", gz=True)
    p = folder / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(md.MNISTDataError, match=r"t10k-labels-idx1-ubyte\.gz: corrupt or truncated gzip"):
        md.load_mnist("test", folder)
    p.write_bytes(b"this is not gzip at all")
    with pytest.raises(md.MNISTDataError, match=r"t10k-labels-idx1-ubyte\.gz: corrupt or truncated gzip"):
        md.load_mnist("test", folder)


@pytest.mark.parametrize("gz", [False, True])
def test_flipped_byte_fails_checksum(mnist_dir, tmp_path, gz):
    f = md.MNIST_FILES["t10k-images-idx3-ubyte"]
    raw = bytearray(_raw(mnist_dir, f.name))
    raw[20000] ^= 0x01
    folder = _copy_split(mnist_dir, tmp_path, "test", gz=gz)
    target = folder / (f.name + (".gz" if gz else ""))
    target.write_bytes(gzip.compress(bytes(raw), compresslevel=1) if gz else bytes(raw))
    with pytest.raises(md.MNISTDataError) as e:
        md.load_mnist("test", folder)
    assert f.name in str(e.value) and f.sha256 in str(e.value) and "SHA-256" in str(e.value)
    images, _ = md.load_mnist("test", folder, verify=False)  # structure is still fine
    assert images.flatten()[20000 - 16].item() == raw[20000]


def test_bad_magic(mnist_dir, tmp_path):
    folder = _copy_split(mnist_dir, tmp_path, "test", gz=False)
    p = folder / "t10k-labels-idx1-ubyte"
    raw = bytearray(p.read_bytes())
    raw[2] = 0x0D  # float32 dtype code
    p.write_bytes(bytes(raw))
    with pytest.raises(md.MNISTDataError, match=r"t10k-labels-idx1-ubyte: bad IDX magic 00000d01, expected 00000801"):
        md.load_mnist("test", folder, verify=False)


def test_structural_errors_without_checksums(tmp_path):
    images, labels = _tiny()
    ok = _write_tiny(tmp_path / "ok", images, labels)
    got_images, got_labels = md.load_mnist("test", ok, verify=False)  # any N is accepted
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels.long())
    with pytest.raises(md.MNISTDataError, match="SHA-256"):
        md.load_mnist("test", ok)  # ... but it is not MNIST

    wrong_size = _write_tiny(tmp_path / "size", _tiny(size=32)[0], labels)
    with pytest.raises(md.MNISTDataError, match=r"images are 32x32, expected 28x28"):
        md.load_mnist("test", wrong_size, verify=False)

    wrong_ndim = tmp_path / "ndim"
    _write_tiny(wrong_ndim, images, labels)
    (wrong_ndim / "t10k-labels-idx1-ubyte").write_bytes(_idx(labels.view(5, 1)))
    with pytest.raises(md.MNISTDataError, match="bad IDX magic 00000802, expected 00000801"):
        md.load_mnist("test", wrong_ndim, verify=False)

    mismatch = _write_tiny(tmp_path / "count", images, labels[:4])
    with pytest.raises(md.MNISTDataError, match="5 images but t10k-labels-idx1-ubyte holds 4 labels"):
        md.load_mnist("test", mismatch, verify=False)

    bad_label = _write_tiny(tmp_path / "label", images, torch.tensor([0, 1, 2, 3, 11], dtype=torch.uint8))
    with pytest.raises(md.MNISTDataError, match="label 11, expected 0..9"):
        md.load_mnist("test", bad_label, verify=False)

    trailing = _write_tiny(tmp_path / "trailing", images, labels)
    with open(trailing / "t10k-images-idx3-ubyte", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(md.MNISTDataError, match="has trailing bytes"):
        md.load_mnist("test", trailing, verify=False)

    empty = _write_tiny(tmp_path / "tiny-header", images, labels)
    (empty / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0")
    with pytest.raises(md.MNISTDataError, match="too short for an IDX header"):
        md.load_mnist("test", empty, verify=False)


# ----------------------------------------------------------------------------- download
class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list  # set per server

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def _serve(directory: Path, lifetime_s: float = 60.0):
    """Serve ``directory`` on 127.0.0.1 (random port) in a thread; stops on exit, or by
    itself after ``lifetime_s`` should a test hang."""
    handler = type("Handler", (_Handler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(lifetime_s, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", handler.requests
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(5)
        assert not thread.is_alive()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there now


def _files(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_from_local_mirror(mnist_dir, tmp_path):
    dest = tmp_path / "dest"
    with _serve(mnist_dir) as (url, requests):
        assert md.download_mnist(dest, mirrors=[url], timeout=10) == dest.resolve()
        assert _files(dest) == sorted(n + ".gz" for n in md.MNIST_FILES)
        assert len(requests) == 4
        md.download_mnist(dest, mirrors=[url], timeout=10)  # all present and valid: no fetch
        assert len(requests) == 4
    _, labels = md.load_mnist("train", dest)
    assert torch.bincount(labels).tolist() == TRAIN_LABEL_COUNTS


def test_load_with_download_uses_mirror_env(mnist_dir, tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    with _serve(mnist_dir) as (url, requests):
        monkeypatch.setenv(md.MIRRORS_ENV_VAR, url)
        x, y = md.mnist_tensors("test", dest, download=True)
        assert x.shape == (10000, 1, 28, 28)
        assert sorted(requests) == ["/t10k-images-idx3-ubyte.gz", "/t10k-labels-idx1-ubyte.gz"]
    # Nothing named: downloads go to the cache folder.
    with _serve(mnist_dir) as (url, _):
        monkeypatch.setenv(md.MIRRORS_ENV_VAR, url)
        md.load_mnist("test", download=True)
    assert _files(md.default_cache_dir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _corrupt_mirror(mnist_dir: Path, folder: Path) -> Path:
    """A mirror with good test images but test labels that decompress fine and hold one
    flipped byte (and no train files: 404)."""
    folder.mkdir()
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", folder)
    raw = bytearray(_raw(mnist_dir, "t10k-labels-idx1-ubyte"))
    raw[100] ^= 0xFF
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    return folder


def test_download_rejects_corrupt_files_and_leaves_nothing(mnist_dir, tmp_path):
    bad = _corrupt_mirror(mnist_dir, tmp_path / "bad")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    dest = tmp_path / "dest"
    with _serve(bad) as (url, _):
        with pytest.raises(md.MNISTDownloadError) as e:
            md.download_mnist(dest, mirrors=[url], timeout=5, split="test")
        msg = str(e.value)
        assert "t10k-labels-idx1-ubyte" in msg and url in msg and "SHA-256" in msg
        assert md.MNIST_FILES["t10k-labels-idx1-ubyte"].sha256 in msg
        # The good file was kept; of the bad one there is no trace (no file, no temp file).
        assert _files(dest) == ["t10k-images-idx3-ubyte.gz"]
        with pytest.raises(md.MNISTDownloadError, match=r"train-images-idx3-ubyte.*\n.*404"):
            md.download_mnist(dest, mirrors=[url], timeout=5, split="train")
    with _serve(garbage) as (url, _):
        with pytest.raises(md.MNISTDownloadError, match="corrupt or truncated gzip"):
            md.download_mnist(dest, mirrors=[url], timeout=5, split="test")
    assert _files(dest) == ["t10k-images-idx3-ubyte.gz"]


def test_download_falls_back_to_next_mirror(mnist_dir, tmp_path):
    bad = _corrupt_mirror(mnist_dir, tmp_path / "bad")
    dest = tmp_path / "dest"
    dead = f"http://127.0.0.1:{_dead_port()}/"
    with _serve(bad) as (bad_url, bad_requests), _serve(mnist_dir) as (good_url, good_requests):
        md.download_mnist(dest, mirrors=[dead, bad_url, good_url], timeout=5, split="test")
    assert bad_requests == ["/t10k-images-idx3-ubyte.gz", "/t10k-labels-idx1-ubyte.gz"]
    assert good_requests == ["/t10k-labels-idx1-ubyte.gz"]
    md.load_mnist("test", dest)  # verified content


def test_download_dead_server_and_hanging_server_fail_fast(tmp_path):
    dest = tmp_path / "dest"
    t0 = time.perf_counter()
    with pytest.raises(md.MNISTDownloadError, match=r"(?s)127\.0\.0\.1.*(refused|Errno)"):
        md.download_mnist(dest, mirrors=[f"http://127.0.0.1:{_dead_port()}/"], timeout=5)
    assert time.perf_counter() - t0 < 5
    # A server that accepts connections but never answers: the timeout bounds the wait.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        t0 = time.perf_counter()
        with pytest.raises(md.MNISTDownloadError, match="timed out"):
            md.download_mnist(dest, mirrors=[f"http://127.0.0.1:{s.getsockname()[1]}/"],
                              timeout=0.5, split="test")
        assert time.perf_counter() - t0 < 5
    assert _files(dest) == []
    with pytest.raises(ValueError, match="timeout must be a positive"):
        md.download_mnist(dest, mirrors=["http://127.0.0.1:1/"], timeout=0)


def test_download_replaces_corrupt_raw_copy_in_place(mnist_dir, tmp_path):
    dest = _copy_split(mnist_dir, tmp_path / "dest", "test", gz=False)
    p = dest / "t10k-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(md.MNISTDataError):
        md.load_mnist("test", dest)
    with _serve(mnist_dir) as (url, requests):
        md.download_mnist(dest, mirrors=[url], timeout=5, split="test")
    assert requests == ["/t10k-labels-idx1-ubyte.gz"]
    assert _files(dest) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    assert hashlib.sha256(p.read_bytes()).hexdigest() == md.MNIST_FILES[p.name].sha256


def test_failed_write_leaves_no_partial_file(mnist_dir, tmp_path, monkeypatch):
    dest = tmp_path / "dest"

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(md.os, "replace", boom)
    with _serve(mnist_dir) as (url, _):
        with pytest.raises(OSError, match="simulated"):
            md.download_mnist(dest, mirrors=[url], timeout=5, split="test")
    assert _files(dest) == []


# ----------------------------------------------------------------------------- limits
def _gzip_bomb(dest: Path, name: str, header: bytes, raw_mb: int = 1024) -> Path:
    """A ~1 MB ``<name>.gz`` that decompresses to ``header`` + ``raw_mb`` MiB of zeros (gzip
    members concatenated: a valid stream, cheap to build)."""
    member = gzip.compress(b"\0" * (16 << 20), compresslevel=9)
    path = dest / (name + ".gz")
    with open(path, "wb") as fh:
        fh.write(gzip.compress(header))
        for _ in range(raw_mb // 16):
            fh.write(member)
    return path


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("header", ["garbage", "valid-standard", "huge"])
def test_gzip_bomb_fails_fast_in_bounded_memory(tmp_path, verify, header):
    import tracemalloc

    f = md.MNIST_FILES["t10k-images-idx3-ubyte"]
    head = {"garbage": b"\0" * 16,
            "valid-standard": struct.pack(">HBB3I", 0, 8, 3, 10000, 28, 28),  # then 1 GiB too many
            "huge": struct.pack(">HBB3I", 0, 8, 3, 4_000_000, 28, 28)}[header]  # declares 3.1 GB
    bomb = _gzip_bomb(tmp_path, f.name, head)
    assert bomb.stat().st_size < 2 << 20
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_raw_labels_stub())
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(md.MNISTDataError, match=r"t10k-images-idx3-ubyte\.gz: (bad IDX magic|has trailing"
                                                     r"|its header .* declares)"):
            md.load_mnist("test", tmp_path, verify=verify)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < f.nbytes + (8 << 20)  # at most the one file MNIST can be, never the bomb's GiB
    assert time.perf_counter() - t0 < 20


def _raw_labels_stub() -> bytes:
    return _idx(torch.zeros(10000, dtype=torch.uint8))


def test_raw_file_size_is_checked_before_reading(tmp_path):
    images, labels = _tiny()
    folder = _write_tiny(tmp_path, images, labels)
    p = folder / "t10k-images-idx3-ubyte"
    with open(p, "ab") as fh:  # a sparse 2 GB tail: reading it would take 2 GB
        fh.truncate(2 << 30)
    with pytest.raises(md.MNISTDataError, match=r"has trailing bytes: 2147483648 bytes"):
        md.load_mnist("test", folder, verify=False)


def test_data_errors_are_the_package_error_types():
    from diffaccel import errors

    assert issubclass(md.MNISTDataError, errors.FileFormatError) and issubclass(md.MNISTDataError, ValueError)
    assert issubclass(md.MNISTDownloadError, errors.DownloadError)
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        md.mnist_tensors("test", dtype=torch.int32)
