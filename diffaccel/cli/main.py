"""The ``diffaccel`` command line.

* ``diffaccel mnist train|train-classifier|sample|eval|figures|list`` — Part B (SPEC Part B);
* ``diffaccel demo`` — every result into one folder with an ``index.html``;
* ``diffaccel forward|blur-denoise|one-step|iterative|sample|cfg|sdedit|img2img|inpaint|anagram|hybrid|upsample``
  — the Part A techniques (SPEC A0-A1.9) on DeepFloyd IF or on the shipped MNIST models.

Every command writes into ``--out``; bad input prints ``diffaccel: error: ...`` and exits with 2.
"""
from __future__ import annotations

import argparse
import linecache
import os
import re
import sys
from typing import Optional, Sequence

from ..errors import DiffaccelError
from .common import HelpFormatter, Parser
from .demo import add_demo_parser
from .mnist import add_mnist_parsers
from .parta import add_technique_parsers

__all__ = ["build_parser", "main", "is_user_error"]

#: Builtin types the package's checked APIs raise for bad arguments, files and folders (before
#: every one of them derives from :class:`~diffaccel.errors.DiffaccelError`).
CHECKED_TYPES = (ValueError, TypeError, KeyError, OSError)
_RAISE = re.compile(r"(^|:\s*)raise\b")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="diffaccel", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_mnist_parsers(sub)
    add_demo_parser(sub)
    add_technique_parsers(sub)
    return parser


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is an error in what the user gave (printed as one line) rather than a bug.

    User errors are: every :class:`~diffaccel.errors.DiffaccelError`; and a ``ValueError``,
    ``TypeError``, ``KeyError`` or ``OSError`` raised by a ``raise`` statement in the diffaccel
    package itself — the checks at the entry of its APIs, which name the argument or file.
    The same types raised anywhere else (inside torch, Pillow, the standard library, or by the
    interpreter for a wrong call or a missing key in our own code) are bugs: they keep their
    traceback.
    """
    if isinstance(e, DiffaccelError):
        return True
    if not isinstance(e, CHECKED_TYPES):
        return False
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    if module != "diffaccel" and not module.startswith("diffaccel."):
        return False
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()
    return bool(_RAISE.search(line))


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:  # str(KeyError) quotes its message
        return str(e.args[0])
    return str(e) or type(e).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for a usage or input error).

    A user error (:func:`is_user_error`) is printed as one line ``diffaccel: error: ...``;
    anything else propagates with its traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or an argparse usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else 0
    try:
        args.func(args)
    except BrokenPipeError:  # `diffaccel mnist list | head`: the reader left; stop quietly, as ls does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the closed pipe
    except Exception as e:
        if not is_user_error(e):
            raise
        print(f"diffaccel: error: {_message(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
