"""Crash-proof checkpoints: atomic writes, a checksum, ``weights_only`` loading, and a fallback.

File format: ``torch.save`` of an *envelope* ``{"format": "ebm_fast.checkpoint", "version": 1,
"sha256": hex, "payload": uint8 tensor}`` whose payload is the ``torch.save`` bytes of the state.
Both levels load with ``torch.load(..., weights_only=True)``, so a state may hold only tensors,
primitives and containers of them (dicts, lists, tuples); the checksum catches a corrupted payload
that the zip reader alone would load silently.

Writes are atomic: the bytes go to a temporary file in the destination's directory, are fsync-ed,
and ``os.replace`` puts them in place (then the directory is fsync-ed), so a crash leaves either the
old file or the new one, never a mix. :class:`CheckpointManager` keeps two generations, ``last.pt``
and ``prev.pt``: a save rotates ``last -> prev`` only after the new file is fully on disk, and
:meth:`CheckpointManager.load_latest` falls back to ``prev.pt`` (with one warning per process naming the
bad file and why) when ``last.pt`` is truncated, corrupt, or not the kind of state the caller resumes. A
temporary file left by a process killed during a save (``.last.pt.*.tmp``, as large as a checkpoint) is
removed by the next :meth:`CheckpointManager.save` or :meth:`CheckpointManager.remove_orphans`.

RNG helpers (:func:`rng_state`, :func:`set_rng_state`) store the torch CPU/CUDA, NumPy and Python
``random`` states as tensors, so resuming continues the same random streams.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .atomic_file import usual_file_mode

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "atomic_torch_save",
    "load_checkpoint_file",
    "rng_state",
    "set_rng_state",
    "FORMAT",
]

FORMAT = "ebm_fast.checkpoint"
VERSION = 1

# (bad file, its size and mtime) already warned about: a run reads its checkpoint twice when it resumes
# (the config, then the state), and the fallback is news only once.
_WARNED: set[tuple[str, int, int]] = set()


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (missing, truncated, corrupt, or of another format)."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems/OSes do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _serialize(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _write_temp(data: bytes, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, usual_file_mode())  # mkstemp makes 0600
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _envelope_bytes(state: dict) -> bytes:
    payload = _serialize(state)
    return _serialize({"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
                       "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)})


def atomic_torch_save(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` (tensors, primitives, containers) to ``path`` atomically, with a checksum."""
    path = Path(path)
    tmp = _write_temp(_envelope_bytes(state), path.parent, path.name)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a file written by :func:`atomic_torch_save` with ``weights_only=True``.

    Raises:
        CheckpointError: naming ``path``, when it is missing, truncated, corrupt (checksum mismatch)
            or not an ebm_fast checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        env = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, pickle errors...
        raise CheckpointError(f"checkpoint {path}: unreadable, the file is truncated or corrupt "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(env, dict) or env.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: expected an {FORMAT} file, got "
                              f"{type(env).__name__} with format {env.get('format') if isinstance(env, dict) else None!r}")
    if env.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: expected format version {VERSION}, got {env.get('version')!r}")
    payload = env.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise CheckpointError(f"checkpoint {path}: payload missing or not a uint8 tensor")
    data = payload.numpy().tobytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != env.get("sha256"):
        raise CheckpointError(f"checkpoint {path}: checksum mismatch (expected sha256 {env.get('sha256')}, "
                              f"got {digest}); the file is corrupt")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: payload does not load with weights_only=True "
                              f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict state, got {type(state).__name__}")
    return state


class CheckpointManager:
    """Two generations of checkpoints in ``directory``: ``last.pt`` (newest) and ``prev.pt``.

    Args:
        directory: where the files live (created on the first save).
    """

    LAST = "last.pt"
    PREV = "prev.pt"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._last_is_bad = False

    @property
    def last(self) -> Path:
        return self.directory / self.LAST

    @property
    def prev(self) -> Path:
        return self.directory / self.PREV

    def exists(self) -> bool:
        """True if any generation is on disk (good or not)."""
        return self.last.exists() or self.prev.exists()

    def save(self, state: dict) -> Path:
        """Write ``state`` as the new ``last.pt``; the old ``last.pt`` becomes ``prev.pt``.

        The new bytes are on disk (fsync-ed) before anything is renamed, and ``last.pt`` exists at
        every instant once the first save is done: the old ``last.pt`` is hard-linked (or, where
        the file system has no hard links, copied) to a temporary that replaces ``prev.pt``, and
        only then does the new file replace ``last.pt`` -- each step one atomic rename, so a
        process killed anywhere in between leaves a good ``last.pt`` (the old or the new one).
        A ``last.pt`` known to be corrupt (found so by :meth:`load_latest`) is left in place until
        the new file replaces it instead of being rotated, so ``prev.pt`` stays a good one.
        """
        self.remove_orphans()
        tmp = _write_temp(_envelope_bytes(state), self.directory, self.LAST)
        keep = self.directory / f".{self.LAST}.{os.getpid()}.prev.tmp"
        try:
            if self.last.exists() and not self._last_is_bad:
                try:  # (a stale temporary of this name went with remove_orphans above)
                    os.link(self.last, keep)
                except OSError:
                    shutil.copyfile(self.last, keep)
                os.replace(keep, self.prev)
            os.replace(tmp, self.last)
        except BaseException:
            tmp.unlink(missing_ok=True)
            keep.unlink(missing_ok=True)
            raise
        self._last_is_bad = False
        _fsync_dir(self.directory)
        return self.last

    def remove_orphans(self) -> list[Path]:
        """Delete the temporary files of saves that never finished (a process killed while writing);
        returns their paths. Only this directory's ``last.pt`` temporaries are touched: one process
        writes a run's checkpoints."""
        if not self.directory.is_dir():
            return []
        gone = list(self.directory.glob(f".{self.LAST}.*.tmp"))
        for tmp in gone:
            tmp.unlink(missing_ok=True)
        return gone

    def load_latest(self, map_location: Any = "cpu",
                    check: Callable[[dict], str | None] | None = None) -> tuple[dict, Path] | None:
        """``(state, path)`` of the newest good generation, or None if there is none on disk.

        Args:
            check: ``check(state)`` returns None for a state the caller can use, else why not (e.g. a valid
                checkpoint file of another kind); such a file counts as bad.

        Falls back from a bad ``last.pt`` to ``prev.pt`` with a ``RuntimeWarning`` that names the bad file
        and the reason (once per process for the same file).

        Raises:
            CheckpointError: when files exist but none of them loads (lists every file and reason).
        """
        errors = []
        for i, path in enumerate((self.last, self.prev)):
            if not path.exists():
                continue
            try:
                state = load_checkpoint_file(path, map_location=map_location)
                reason = check(state) if check is not None else None
                if reason:
                    raise CheckpointError(f"checkpoint {path}: {reason}")
            except CheckpointError as exc:
                errors.append(str(exc))
                if i == 0:
                    self._last_is_bad = True
                continue
            if errors:
                st = self.last.stat() if self.last.exists() else None
                key = (str(self.last.resolve()), st.st_size if st else -1, st.st_mtime_ns if st else -1)
                if key not in _WARNED:
                    _WARNED.add(key)
                    warnings.warn(f"{errors[0]}; resuming from the previous good checkpoint {path}",
                                  RuntimeWarning, stacklevel=2)
            return state, path
        if errors:
            raise CheckpointError("no usable checkpoint in " f"{self.directory}: " + "; ".join(errors))
        return None


# ---- RNG states as tensors ------------------------------------------------------------------------
def rng_state() -> dict:
    """The torch CPU, CUDA (all devices, if initialised), NumPy global and Python ``random`` states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(f"checkpoint holds CUDA RNG states for {len(cuda)} devices, this machine has "
                          f"{torch.cuda.device_count()}; CUDA RNG states not restored", RuntimeWarning, stacklevel=2)
