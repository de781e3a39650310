"""Quiet terminals: the libraries' INFO logs go to a file under the fabric home, warnings and errors stay visible.

Ray, Ray Data, Ray Train, Ray Serve, MLflow, Alembic and Evidently each log at INFO to the terminal, which buries
the few lines a user needs. Every ``fabric`` command calls :func:`quiet` first (``fabric --verbose ...`` does
not): from then on those loggers write INFO to ``FABRIC_HOME/logs/COMMAND-TIME.log`` and only WARNING and above
to the terminal. The libraries install their own handlers when they are imported, so the places that import
them (``fabric.runtime.init_ray``, ``setup_mlflow``) call :func:`apply` again afterwards.

Example:
    >>> path = quiet("demo")    # `fabric demo` prints this path
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["LIBRARIES", "apply", "log_file", "quiet"]

LIBRARIES = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "mlflow", "alembic", "evidently", "urllib3",
             "filelock", "httpx", "torch", "fabric")
#: Python warnings (deprecations, hints) go to the file only: they are for developers of the libraries.
FILE_ONLY = ("py.warnings",)
_state: dict[str, logging.Handler | Path | None] = {"handler": None, "path": None}


def quiet(name: str) -> Path:
    """Starts sending the libraries' INFO logs to a new file named after ``name``; returns the file's path.

    Called again in the same process (tests invoking several commands), it keeps the first file.
    """
    from fabric.runtime import fabric_home

    if _state["path"] is not None:
        return _state["path"]  # type: ignore[return-value]
    folder = fabric_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    handler = logging.FileHandler(path, delay=True)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _state.update(handler=handler, path=path)
    logging.captureWarnings(True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in FILE_ONLY:
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [handler], False
    apply()
    return path


def log_file() -> Path | None:
    """The file :func:`quiet` chose, or None when logs go to the terminal."""
    return _state["path"]  # type: ignore[return-value]


def apply() -> None:
    """Routes the libraries' loggers as :func:`quiet` asked (a no-op when it was not called)."""
    handler = _state["handler"]
    if handler is None:
        return
    for library in LIBRARIES:
        logger = logging.getLogger(library)
        terminals = [h for h in logger.handlers
                     if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        for terminal in terminals:
            terminal.setLevel(max(terminal.level, logging.WARNING))
        if not terminals:
            terminal = _Terminal()
            terminal.setLevel(logging.WARNING)
            terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(terminal)
        if handler not in logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False


class _Terminal(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (as ``logging.lastResort`` does), so a stream that
    was replaced and closed meanwhile (a test runner's capture) is never written to."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass
