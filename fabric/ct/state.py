"""Where a pipeline run keeps its state: ``FABRIC_HOME/ct/NAME/RUN_ID/state.json``, rewritten atomically after
every step, so a killed run can continue from the step it was in.

The file holds the run (trigger, status, champion before and after, challenger, scores, MLflow run id) and one
record per step: its state (pending, running, done, skipped, failed), inputs, outputs, evidence (one line for
the step table), start and end time. Files the steps write (the held-out rows) sit in the same folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["CTError", "Context", "Skip", "StepResult", "TERMINAL", "list_runs", "lock", "new_state", "pipeline_names",
           "pipelines_root", "save", "step_names"]

STATE_FILE = "state.json"
#: How a finished run ended; any other status (``running``) is a run that can be resumed.
TERMINAL = ("promoted", "refused", "rolled_back", "approval_timeout", "failed")


class CTError(RuntimeError):
    """A pipeline cannot start or a step failed; the message says which and why. ``result`` is the run's step table
    when a run exists (None when the run never started)."""

    def __init__(self, message: str, result: dict[str, Any] | None = None):
        super().__init__(message)
        self.result = result


class Skip(Exception):  # noqa: N818 -- a signal, not an error
    """Raised by a step that does not apply to this run (recorded as skipped, with the reason)."""


@dataclass
class StepResult:
    """What a step produced: its outputs, one line of evidence, and ``end`` when the run ends with it."""

    outputs: dict[str, Any] = field(default_factory=dict)
    evidence: str = ""
    end: str | None = None  #: a TERMINAL status: the run stops here and the remaining steps are skipped


@dataclass
class Context:
    """What a step sees: the config, the run's state and folder, and a way to record its inputs at once."""

    cfg: Any
    state: dict[str, Any]
    folder: Path
    log_inputs: Any = None  #: callback(dict) that logs the inputs to the step's MLflow run

    def step(self, name: str) -> dict[str, Any]:
        return next(s for s in self.state["steps"] if s["name"] == name)

    def outputs(self, name: str) -> dict[str, Any]:
        return self.step(name)["outputs"]

    def record_inputs(self, current: str, **values: Any) -> None:
        """Saves the step's inputs in the state file (and its MLflow run) before its work starts."""
        self.step(current)["inputs"].update(values)
        save(self.state)
        if self.log_inputs:
            self.log_inputs(values)


def pipelines_root() -> Path:
    from fabric.runtime import fabric_home

    return fabric_home() / "ct"


def step_names(tune: bool, ingest: bool = False) -> list[str]:
    first = ["ingest"] if ingest else []
    return [*first, "snapshot", "validate", "tune" if tune else "train", "evaluate", "register", "gate", "canary",
            "observe", "finish"]


def new_state(cfg: Any, trigger: str, reason: str | None, reference: str | None) -> dict[str, Any]:
    """A fresh run: a sortable id (time, then random), every step pending."""
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    folder = pipelines_root() / cfg.name / run_id
    folder.mkdir(parents=True, exist_ok=False)
    return {
        "pipeline": cfg.name, "run_id": run_id, "status": "running", "trigger": trigger, "reason": reason,
        "model": cfg.model, "reference": reference, "created": _now(), "updated": _now(), "folder": str(folder),
        "config": cfg.model_dump(mode="json"), "mlflow_run_id": None, "champion_before": None,
        "champion_after": None, "challenger": None, "scores": {}, "error": None, "attempts": 0,
        "steps": [{"name": name, "state": "pending", "inputs": {}, "outputs": {}, "evidence": "", "started": None,
                   "ended": None, "seconds": None, "error": None, "mlflow_run_id": None}
                  for name in step_names(cfg.tune, bool(cfg.ingest))],
    }


def save(state: dict[str, Any]) -> None:
    """Writes the state file atomically: a reader (``fabric ct status``) never sees half a file."""
    state["updated"] = _now()
    from fabric.files import atomic_write

    atomic_write(Path(state["folder"]) / STATE_FILE, json.dumps(state, indent=2, default=str))


def list_runs(name: str) -> list[dict[str, Any]]:
    """Every run of pipeline ``name``, oldest first."""
    folder = pipelines_root() / name
    runs = []
    for path in sorted(folder.glob(f"*/{STATE_FILE}")) if folder.is_dir() else []:
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a run folder whose first save never happened
    return sorted(runs, key=lambda r: r["run_id"])


def pipeline_names() -> list[str]:
    root = pipelines_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@contextlib.contextmanager
def lock(name: str) -> Iterator[None]:
    """Holds the pipeline's lock for one run: a second process gets CTError instead of running the same steps.

    The kernel drops the lock when its process dies, so a killed run never blocks the next one.
    """
    import fcntl

    folder = pipelines_root() / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CTError(f"pipeline {name} is already running ({holder}); wait for it or see `fabric ct status "
                          f"{name}`") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
