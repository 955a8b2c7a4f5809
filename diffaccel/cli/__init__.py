"""The ``diffaccel`` command line: thin commands over the library.

:mod:`.main` (entry point, error reporting), :mod:`.mnist` (Part B), :mod:`.parta` (the Part A
techniques), :mod:`.demo` (the report), :mod:`.common` (what they share).
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
