"""Helpers shared by tests that run workloads in other processes."""

from __future__ import annotations

import json
from typing import Any


def last_json(output: str, key: str) -> dict[str, Any]:
    """The last line of ``output`` that is a JSON object holding ``key`` (Ray may log after the result)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if key in data:
                return data
    raise AssertionError(f"no JSON result with {key!r} in output:\n{output[-3000:]}")
