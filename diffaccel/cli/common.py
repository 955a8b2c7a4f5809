"""What every command shares: parser construction, argument types, output paths, image writing.

Argument types reject bad values while parsing (argparse prints ``diffaccel ...: error:
argument --x: ...`` and exits with 2); checks that need a loaded model raise :class:`CLIError`.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ArgumentError

__all__ = ["CLIError", "Parser", "HelpFormatter", "add_parser", "positive_int", "finite_float", "device_arg",
           "out_path",
           "out_dir", "write_png", "write_gif", "cat", "import_report", "SAMPLERS", "add_sampler_arg",
           "sampler_kwargs", "optional_kwarg"]

#: Every sampler name the library knows (``diffaccel.samplers``); ``--sampler`` passes it through.
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "euler", "heun")


class CLIError(ArgumentError):
    """A bad command line or input for the command: printed as ``diffaccel: error: ...``, exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples in descriptions as written; show an option's default where it has one."""

    def _get_help_string(self, action):
        help = action.help or ""
        if (not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and "default" not in help
                and (action.option_strings or action.nargs in ("?", "*"))):
            help += " (default: %(default)s)"
        return help


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: MESSAGE (see PROG --help)``), exit 2;
    its subcommands' parsers are of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def add_parser(sub, name: str, help: str, description: str = "", parents=()):
    """A subcommand whose description is its help line (capitalised) followed by ``description``."""
    return sub.add_parser(name, help=help, description=(help[0].upper() + help[1:] + ".\n\n" + description).strip(),
                          formatter_class=HelpFormatter, parents=list(parents))


# ----------------------------------------------------------------------------- argument types
def positive_int(name: str):
    """An argparse type: an int >= 1."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {v}")
        return v
    return parse


def finite_float(s: str) -> float:
    """An argparse type: a finite float (NaN or Inf as a scale or rate would silently give black images)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s!r}")
    return v


def device_arg(s: str) -> str:
    """An argparse type: a torch device this torch can use (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...)."""
    import torch

    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{s!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?)")
            raise argparse.ArgumentTypeError(f"{s!r}: {why} (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{s!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{s!r}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{s!r}: only cpu, cuda and mps devices are supported")
    return s


def add_sampler_arg(p, help: str = "sampling loop (default: the model's own: DDPM steps, or Euler for flow)") -> None:
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help=help)


def sampler_kwargs(args, fn) -> dict:
    """``{"sampler": NAME}`` for library function ``fn`` when ``--sampler`` was given, else ``{}``
    (the library picks its default)."""
    if getattr(args, "sampler", None) is None:
        return {}
    return optional_kwarg(fn, "sampler", args.sampler, "--sampler")


def optional_kwarg(fn, name: str, value, flag: str) -> dict:
    """``{name: value}`` if library function ``fn`` takes ``name``, else a clear error about ``flag``
    (a flag for a library feature this installation does not have yet)."""
    import inspect

    if name not in inspect.signature(fn).parameters:
        raise CLIError(f"{flag} is not supported by this installation's {fn.__module__}.{fn.__name__}")
    return {name: value}


# ----------------------------------------------------------------------------- outputs
def _check_writable(p: Path, what: str) -> None:
    """The nearest existing folder at or above ``p`` must be one this process can write into."""
    q = p.absolute()
    while not q.exists() and q != q.parent:
        q = q.parent
    if not q.is_dir():
        raise CLIError(f"{what} {str(p)!r}: {str(q)!r} is a file, not a folder")
    if not os.access(q, os.W_OK | os.X_OK):
        raise CLIError(f"{what} {str(p)!r}: no permission to write into {str(q)!r}")


def out_path(path: str, suffixes: Sequence[str], what: str = "--out") -> Path:
    """``path`` as an output file with one of ``suffixes`` (not an existing directory, in a writable place)."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise CLIError(f"{what} {path!r} must end in one of {', '.join(suffixes)}")
    if p.exists() and p.is_dir():
        raise CLIError(f"{what} {path!r} is a directory; give a file name")
    _check_writable(p.parent, what)
    return p


def out_dir(path: str) -> Path:
    """``path`` as an output folder, created if missing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out {path!r} exists and is not a directory")
    _check_writable(p, "--out")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out {path!r}: cannot create the folder ({e.strerror or e})") from None
    return p


def write_png(x, path, value_range=(-1.0, 1.0), nrow: Optional[int] = None, quiet: bool = False) -> Path:
    """An image or grid as PNG (:func:`diffaccel.imageio.save_png`: upscaled by the one rule, unused
    grid cells black); prints the path unless ``quiet``. Part A images are in [-1, 1]."""
    from ..imageio import save_png

    p = save_png(x, path, value_range=value_range, nrow=nrow, pad_value=value_range[0])
    if not quiet:
        print(p)
    return p


def write_gif(frames, path, value_range=(-1.0, 1.0), nrow: Optional[int] = None) -> Path:
    """A denoising run as GIF (:func:`diffaccel.imageio.save_gif`); prints the path."""
    from ..imageio import save_gif

    if not frames:
        raise CLIError("--gif: the run produced no frames")
    p = save_gif(frames, path, value_range=value_range, nrow=nrow, pad_value=value_range[0])
    print(p)
    return p


def cat(xs):
    """Images from several calls as one CPU batch (for a strip or grid)."""
    import torch

    return torch.cat([x.detach().float().cpu() for x in xs])


def import_report(name: str):
    """``diffaccel.report.<name>``, or a clear error where this installation has no report."""
    try:
        return importlib.import_module(f"diffaccel.report.{name}")
    except ModuleNotFoundError as e:
        if e.name and (e.name == "diffaccel.report" or e.name.startswith(f"diffaccel.report.{name}")):
            raise CLIError(f"diffaccel.report.{name} is not available in this installation") from None
        raise
