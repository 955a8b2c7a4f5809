"""Atomic, verified files: safetensors weights (never pickles), JSON, and training checkpoints
that commit as one.

Every write goes to a temporary file in the destination folder, is flushed to disk, and then
renamed over the destination (``os.replace``), so a reader — or a run resumed after a kill at
any instant — sees the old file or the complete new one, never a mix. Files are created with
the mode a plain ``open(path, "w")`` gives (the user's umask applies).

Safetensors files written here carry a SHA-256 of their tensors and metadata in the metadata
(key ``sha256``); :func:`load_tensors` verifies it when present, so a flipped bit in a weight
is refused instead of loaded. A training checkpoint is one such file whose metadata also holds
the JSON training state (:func:`save_checkpoint` / :func:`load_checkpoint`).
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_bytes

from ..errors import CheckpointError, FileFormatError, MissingFileError

#: Metadata key of the content hash of a safetensors file written by :func:`atomic_save_tensors`.
HASH_KEY = "sha256"
#: ``format`` metadata value of a training checkpoint (:func:`save_checkpoint`).
CHECKPOINT_FORMAT = "diffaccel.checkpoint/1"
#: Temporary files of an interrupted write are named ``.<name>.<random>.tmp``.
TMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\.(.+)\.[0-9a-f]{12}\.tmp")


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    Readers see the old file or the complete new one, never a partial write; an exception
    leaves nothing behind (a killed process may leave a ``.<name>.*.tmp`` file, which
    :func:`remove_stale_temp_files` deletes). The file gets ``0o666 & ~umask``, as ``open`` does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(folder: Path, names: str = "*") -> None:
    """Delete the temporary files a killed :func:`atomic_write_bytes` left in ``folder`` for
    destinations matching the glob ``names`` (and nothing else)."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(f".*{TMP_SUFFIX}"):
            m = _TEMP_NAME.fullmatch(p.name)
            if m and fnmatch.fnmatchcase(m.group(1), names):
                with contextlib.suppress(OSError):
                    p.unlink()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def tensors_sha256(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> str:
    """SHA-256 over the metadata (without :data:`HASH_KEY`) and every tensor's name, dtype, shape
    and bytes, in key order: what :func:`atomic_save_tensors` stores and :func:`load_tensors` checks."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in metadata.items() if k != HASH_KEY}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def atomic_save_tensors(path: Path, tensors: Dict[str, torch.Tensor],
                        metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``tensors`` as one safetensors file, atomically, with their SHA-256 in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items() if k != HASH_KEY}
    meta[HASH_KEY] = tensors_sha256(tensors, meta)
    atomic_write_bytes(Path(path), _safetensors_bytes(tensors, metadata=meta))


def read_tensors(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, the content hash verified when it has one.

    Raises :class:`~diffaccel.errors.MissingFileError` if there is no file and
    :class:`~diffaccel.errors.FileFormatError` if it is not valid safetensors or its content
    does not match its hash.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no weights file at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FileFormatError(f"{path} is not a valid safetensors file (truncated or corrupt?): {e}") from e
    expected = meta.get(HASH_KEY)
    if expected is not None:
        got = tensors_sha256(tensors, meta)
        if got != expected:
            raise FileFormatError(f"{path} is corrupt: the SHA-256 of its content is {got}, but the file "
                                  f"was written with {expected}")
    return tensors, meta


def load_tensors(path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file (verified as :func:`read_tensors` does)."""
    return read_tensors(path)[0]


def load_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such file: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path} is not valid JSON (truncated or corrupt?): {e}") from e


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, tensors: Dict[str, torch.Tensor], state: dict) -> None:
    """One training checkpoint = one safetensors file: the tensors, plus the JSON ``state`` and the
    content hash in its metadata, written atomically (one commit: the rename)."""
    atomic_save_tensors(path, tensors, metadata={"format": CHECKPOINT_FORMAT,
                                                 "state": json.dumps(state, sort_keys=True)})


def load_checkpoint(path: Path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(tensors, state)`` of a checkpoint written by :func:`save_checkpoint`, hash verified.

    Raises :class:`~diffaccel.errors.CheckpointError` saying what is wrong: missing, corrupt,
    not a checkpoint, or a state that is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        tensors, meta = read_tensors(path)
    except FileFormatError as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from e
    if meta.get("format") != CHECKPOINT_FORMAT or HASH_KEY not in meta or "state" not in meta:
        raise CheckpointError(f"{path} is not a diffaccel training checkpoint (format "
                              f"{meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r} with a content hash)")
    try:
        state = json.loads(meta["state"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the training state in its metadata is not JSON: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the training state must be a JSON object, got {type(state).__name__}")
    return tensors, state


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able param_groups."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], meta: dict,
                           require_state: bool = False) -> None:
    """Inverse of :func:`optimizer_to_tensors`. ``require_state``: every parameter must have its
    state (an optimizer that has stepped), else :class:`~diffaccel.errors.CheckpointError`."""
    state: Dict[int, dict] = {}
    try:
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, pid, k = key.split(".", 2)
                state.setdefault(int(pid), {})[k] = v
        for key, v in meta.get("scalars", {}).items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"the checkpoint's optimizer entries are malformed ({e})") from e
    groups = meta.get("param_groups") if isinstance(meta, dict) else None
    if not isinstance(groups, list):
        raise CheckpointError("the checkpoint has no optimizer param_groups")
    if require_state:
        ids = [i for g in groups for i in g.get("params", [])]
        missing = [i for i in ids if not state.get(i)]
        if missing:
            raise CheckpointError(f"the checkpoint has no optimizer state for {len(missing)} of {len(ids)} "
                                  "parameters; resuming would silently restart the optimizer")
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint's optimizer state does not fit this model: {e}") from e
