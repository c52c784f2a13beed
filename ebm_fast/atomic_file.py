"""Writing files so that a crash never leaves half of one.

:func:`atomic_write` writes into a temporary file in the target's directory, fsyncs it and
``os.replace``-s it onto the target; :func:`usual_file_mode` is the mode such a file gets
(``tempfile.mkstemp`` creates 0600). :mod:`ebm_fast.checkpoint` uses the same mode for its files.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "usual_file_mode"]


def usual_file_mode() -> int:
    """The mode a plainly created file gets under the process umask (``0o666 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file atomically: ``write(fileobj)`` into a temporary file in the
    same directory, fsync, then ``os.replace`` onto ``path``.

    A reader never sees a partial file; on error the temporary file is removed
    and ``path`` is left untouched.  Returns ``Path(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, usual_file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
