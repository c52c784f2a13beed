"""What every ``ebm-fast`` command shares: a parser whose errors are one line, the wrapper that turns a
user's mistake into one line on stderr and exit status 2, and checks run before long work starts.

A mistake (a missing or unreadable file, a bad image, an unknown device, a malformed expression, an
unwritable output, a number out of range) is reported as ``ebm-fast COMMAND: error: WHAT`` and status 2,
never a traceback; a bug still raises.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Callable

__all__ = ["UsageError", "Parser", "command", "writable_file", "writable_dir", "existing_file", "set_threads",
           "at_least", "check_realism"]


class UsageError(Exception):
    """A user's mistake, reported in one line with exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: ...``) and exit status 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(message)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean a mistake in the command line or its files."""
    from PIL import UnidentifiedImageError  # Pillow is a dependency

    from ..checkpoint import CheckpointError

    return UsageError, ValueError, OSError, CheckpointError, UnidentifiedImageError


def _one_line(exc: BaseException) -> str:
    if all(hasattr(exc, a) for a in ("reason", "column", "text")):  # an expression error: say where, in one line
        return f"{exc.reason} at column {exc.column} of {exc.text!r}"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return " ".join(text.split())  # a message over several lines becomes one


def command(name: str) -> Callable:
    """Decorate a command's ``main(argv) -> int``: user mistakes become one line on stderr and status 2;
    Ctrl-C status 130. ``name`` is what the user typed after ``ebm-fast`` (``"eval models"``)."""

    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return int(main(argv) or 0)
            except _user_errors() as exc:
                print(f"ebm-fast {name}: error: {_one_line(exc)}", file=sys.stderr)
                return 2
            except SystemExit as exc:  # argparse's --help (0), or a library's exit with a message
                if isinstance(exc.code, str):
                    print(f"ebm-fast {name}: error: {' '.join(exc.code.split())}", file=sys.stderr)
                    return 2
                return int(exc.code or 0)
            except KeyboardInterrupt:
                print(f"ebm-fast {name}: interrupted", file=sys.stderr)
                return 130

        return run

    return wrap


def existing_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` if it is a file; a UsageError naming ``flag`` otherwise."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {p}: {'is a folder' if p.is_dir() else 'no such file'}")
    return p


def writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create the folder ``path`` if needed and check that files can be written in it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {p}: exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {p}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {p}: the folder is not writable")
    return p


def writable_file(path: str | os.PathLike, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Check, before any long work, that the file ``path`` can be written (its folder is created);
    ``suffixes``: the endings it may have."""
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {p}: expected a file ending in {' or '.join(suffixes)}")
    if p.is_dir():
        raise UsageError(f"{flag} {p}: is a folder, expected a file path")
    writable_dir(p.parent if str(p.parent) else ".", flag + " folder")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{flag} {p}: the file is not writable")
    return p


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` of a ``--threads`` option (None: torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads: expected an integer >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def at_least(value, low, flag: str):
    """``value`` if it is ``>= low``, else a UsageError naming ``flag``."""
    if value is not None and value < low:
        raise UsageError(f"{flag}: expected a number >= {low}, got {value}")
    return value


def check_realism(renders: int, samples: int, unit: str) -> None:
    """``--realism RENDERS`` with ``--n SAMPLES`` per ``unit``: 0 (off), or at least 2 of each (a Fréchet
    distance needs two rows a set); a UsageError otherwise."""
    at_least(renders, 0, "--realism")
    if renders and (renders < 2 or samples < 2):
        raise UsageError(f"--realism: the distance needs at least 2 renders and 2 samples a {unit}, got "
                         f"--realism {renders} and --n {samples}")
