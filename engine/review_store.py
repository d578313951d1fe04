"""The storage layer under ``engine.review``: locked JSONL appends, tolerant reads, atomic ``.npz`` files.

Nothing here knows what a review is; ``engine.review.ReviewStore`` builds on these primitives. The rules
they keep (DESIGN.md §4):

* ``reviews.jsonl`` is only ever appended to, one whole line per ``os.write`` on an ``O_APPEND``
  descriptor, under an exclusive ``filelock.FileLock`` shared by every process using the folder, then
  ``os.fsync``-ed before the caller is told the record exists.
* A line torn by a crash is never repaired in place (that would mean rewriting the file): the next append
  starts with a newline so its own line is intact, and readers skip the torn fragment with a warning.
* Prepared inputs are written to a temporary file in the same folder and moved into place with
  ``os.replace``, so a reader sees either no file or a complete one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.errors import Mu2Error

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 60.0
# filelock polls a contended lock; its 50 ms default would make writers sharing a folder wait needlessly.
_POLL_S = 0.005


def json_default(value: object) -> object:
    """``json.dumps`` fallback for numpy scalars/arrays and paths that end up in sampling dicts or specs."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextlib.contextmanager
def folder_lock(lock_path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the folder's exclusive write lock (across threads and processes).

    Raises
    ------
    Mu2Error
        When the lock cannot be taken within ``timeout`` seconds or the lock file cannot be created.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=timeout, poll_interval=_POLL_S)
    except Timeout as err:
        raise Mu2Error(
            f"the reviews folder {lock_path.parent} stayed locked for {timeout:.0f} s; another Mu2 process "
            f"may be stuck writing to it — close it, or remove {lock_path.name} if no Mu2 is running"
        ) from err
    except OSError as err:
        raise Mu2Error(f"cannot lock the reviews folder {lock_path.parent}: {err}; is it writable?") from err
    try:
        yield
    finally:
        lock.release()


def append_line(path: Path, line: bytes) -> None:
    """Append one complete line to ``path`` and flush it to disk. Call only while holding ``folder_lock``.

    If the file does not end with a newline (the previous writer crashed mid-line) the append starts with
    one, so the torn fragment stays on its own line and this record is parseable.
    """
    if not line.endswith(b"\n") or b"\n" in line[:-1]:
        raise ValueError("append_line expects exactly one newline-terminated line")
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and _last_byte(fd, size) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        # A regular-file write is normally complete in one call; loop anyway so a short write (disk full,
        # signal) is finished or raised rather than silently leaving a shorter line.
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def _last_byte(fd: int, size: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, 1, size - 1)
    os.lseek(fd, size - 1, os.SEEK_SET)  # Windows: no pread; O_APPEND still forces writes to the end
    return os.read(fd, 1)


def fsync_dir(folder: Path) -> None:
    """Make a new or renamed directory entry durable (POSIX); a no-op where folders cannot be opened."""
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


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for every intact JSON-object line of ``path`` (1-based numbers).

    Damaged lines — torn by a crash, not UTF-8, not JSON, or not an object — are skipped with a warning
    naming the line; reading never raises for them. A missing file yields nothing.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    lines = data.split(b"\n")
    terminated = data.endswith(b"\n")
    if terminated:
        lines.pop()  # the empty string after the final newline
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            last = number == len(lines) and not terminated
            why = "is incomplete (a write was interrupted or is still in progress)" if last else "is damaged"
            log.warning("%s line %d %s and was skipped: %s", path.name, number, why, err)
            continue
        if not isinstance(obj, dict):
            log.warning("%s line %d is not a JSON object and was skipped", path.name, number)
            continue
        yield number, obj


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a compressed ``.npz`` at ``path`` so that readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_stale_temporaries(folder: Path, older_than_s: float = 3600.0) -> None:
    """Delete ``.tmp-*`` files a killed writer left behind; young ones may still be being written."""
    cutoff = time.time() - older_than_s
    for tmp in folder.glob(".tmp-*"):
        with contextlib.suppress(OSError):  # gone already, or a read-only share: harmless either way
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` written by ``write_npz_atomic`` (no pickles are ever loaded).

    Raises
    ------
    Mu2Error
        When the file is missing or unreadable.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except FileNotFoundError as err:
        raise Mu2Error(f"no stored model input {path.name} in {path.parent}") from err
    except (OSError, ValueError) as err:
        raise Mu2Error(f"the stored model input {path} is unreadable ({err}); draft that case again") from err
