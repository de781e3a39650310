"""Small file primitives shared by the stores and state files: atomic replacement and an exclusive lock.

Both writers sync the new file's data to disk before renaming it into place, so after a crash or power loss a
name never points at a file whose contents were lost.

Example:
    >>> atomic_write(Path("state.json"), json.dumps(state))   # readers see the old file or the new one, never half
    >>> atomic_copy(Path("part-00000.parquet"), Path("objects/ab/abcd.parquet"))
    >>> with locked(Path(".lock")):                           # one process at a time, across processes
    ...     ...
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["TEMP_SUFFIX", "atomic_copy", "atomic_write", "locked"]

#: Ends the name of every temp file the writers here leave behind when their process is killed (``.NAME.XYZ.tmp``).
TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a synced temp file in the same folder and ``os.replace``."""
    _replace_synced(path, lambda handle: handle.write(text.encode()))


def atomic_copy(source: Path, path: Path) -> None:
    """Copies the file ``source`` to ``path`` as :func:`atomic_write` writes: synced, then renamed into place."""
    with open(source, "rb") as src:
        _replace_synced(path, lambda handle: shutil.copyfileobj(src, handle, 1 << 20))


def _replace_synced(path: Path, fill: Callable[[IO[bytes]], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path`` (created if missing) for the block; the kernel drops it when the
    process dies."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
