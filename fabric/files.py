"""Small file primitives shared by the stores and state files: atomic replacement and an exclusive lock.

Example:
    >>> atomic_write(Path("state.json"), json.dumps(state))   # readers see the old file or the new one, never half
    >>> with locked(Path(".lock")):                           # one process at a time, across processes
    ...     ...
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "locked"]


def atomic_write(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a synced temp file in the same folder and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
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
