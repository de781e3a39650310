"""The demo's story: one line of progress per step, the libraries' chatter kept in a log file, and a table of
steps with their evidence at the end."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Story"]


@dataclass
class Row:
    step: str
    title: str
    state: str = "running"
    seconds: float = 0.0
    evidence: list[str] = field(default_factory=list)


class Story:
    """Runs the demo's steps: each prints a progress line, and its evidence goes into the final table.

    Without ``verbose``, whatever a step prints (Ray Train's epochs, the registry's lines) goes to ``log_path``
    instead of the terminal; warnings and errors logged by the libraries still reach the terminal.
    """

    def __init__(self, log_path: Path | None, verbose: bool, out: Any = None):
        self.log_path, self.verbose = log_path, verbose
        self.out = out or sys.stdout
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def step(self, name: str, title: str, work: Callable[..., Any], *args: Any) -> Any:
        row = Row(name, title)
        self.rows.append(row)
        self._say(f"[{len(self.rows)}] {title} ...")
        started = time.perf_counter()
        try:
            result = work(self, *args)
        except BaseException:
            row.state, row.seconds = "failed", time.perf_counter() - started
            self._say(f"    failed after {row.seconds:.0f} s" + (f"; see {self.log_path}" if self.log_path else ""))
            raise
        row.state, row.seconds = "done", time.perf_counter() - started
        for line in row.evidence:
            self._say(f"    {line}")
        return result

    def evidence(self, line: str) -> None:
        self.rows[-1].evidence.append(line)

    def note(self, line: str) -> None:
        self.notes.append(line)

    def quietly(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs ``work`` with its prints sent to the log file (unless verbose)."""
        if self.verbose or self.log_path is None:
            return work(*args, **kwargs)
        with open(self.log_path, "a") as log, contextlib.redirect_stdout(log):
            return work(*args, **kwargs)

    def add_pipeline(self, pipeline: dict[str, Any]) -> None:
        """The continuous-training pipeline's own steps, as rows of the table."""
        for step in pipeline.get("steps", []):
            evidence = step.get("evidence") or step.get("summary") or step.get("outputs") or {}
            if isinstance(evidence, dict):
                evidence = ", ".join(f"{k} {_short(v)}" for k, v in evidence.items() if v not in (None, "", [], {}))
            self.rows.append(Row(f"ct.{step.get('name')}", f"pipeline: {step.get('name')}", step.get("state", "?"),
                                 float(step.get("seconds") or 0.0), [str(evidence)] if evidence else []))

    def table(self) -> str:
        lines = [f"{'#':>2}  {'step':<16} {'state':<8} {'time':>6}  evidence", "-" * 110]
        for i, row in enumerate(self.rows, 1):
            evidence = row.evidence or ["-"]
            lines.append(f"{i:>2}  {row.step:<16} {row.state:<8} {row.seconds:>5.0f}s  {evidence[0]}")
            lines.extend(f"{'':>36}{more}" for more in evidence[1:])
        return "\n".join(lines + [""] + self.notes)

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _short(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text if len(text) <= 48 else text[:45] + "..."
