"""How every CLI command prints: human text by default, one JSON document with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer

JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document instead of text.")


def emit(data: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Prints ``data`` as JSON, or as ``human(data)`` text."""
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(human(data) if human else _plain(data))


def fail(message: str, code: int = 2) -> NoReturn:
    """Prints ``error: message`` on stderr and exits with ``code``."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _plain(data: Any, indent: int = 0) -> str:
    if not isinstance(data, dict):
        return str(data)
    pad = "  " * indent
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(_plain(value, indent + 1))
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: {', '.join(map(str, value)) or '-'}")
        else:
            lines.append(f"{pad}{key}: {'-' if value is None else value}")
    return "\n".join(lines)
