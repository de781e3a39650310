"""The ``fabric`` command: a thin skin over the Python API. Heavy imports happen inside each command."""

from __future__ import annotations

from fabric.cli.main import app

__all__ = ["app"]
