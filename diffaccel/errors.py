"""The package's user-error types: one hierarchy, so callers (and the CLI) can tell a mistake in
what was given — an argument, a file, a folder — from a bug.

Every error a user can act on derives from :class:`DiffaccelError`. The concrete classes also
derive from the builtin an API user would expect (``ValueError``, ``TypeError``,
``FileNotFoundError``), so ``except ValueError`` keeps working. The CLI prints these as one line
(``error: ...``) and exit code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = [
    "DiffaccelError", "ArgumentError", "ArgumentTypeError", "FileFormatError", "MissingFileError",
    "CheckpointError", "DownloadError",
]


class DiffaccelError(Exception):
    """Base of every error caused by what the user gave (never by a bug in the package)."""


class ArgumentError(DiffaccelError, ValueError):
    """An argument has the right type but a value that is not allowed (shape, range, NaN, ...)."""


class ArgumentTypeError(DiffaccelError, TypeError):
    """An argument has the wrong type."""


class FileFormatError(DiffaccelError, ValueError):
    """A file exists but is not what it should be (corrupt, truncated, wrong kind, too large)."""


class MissingFileError(DiffaccelError, FileNotFoundError):
    """A file or folder the call needs is not there."""


class CheckpointError(DiffaccelError, ValueError):
    """A training checkpoint or run folder cannot be used (incomplete, corrupt, or would be overwritten)."""


class DownloadError(DiffaccelError, RuntimeError):
    """A download failed or gave a file whose checksum does not match."""
