"""The triggers nobody pulls by hand: a schedule, new commits on a watched data branch, and new commits on the
documents' branches of the pipeline's ``ingest`` configs (the run's first step re-ingests them).

``fabric ct watch --config FILE`` checks them every ``triggers.poll_s`` seconds and runs the pipeline in its
process when one is due (a killed run is continued first). It is a loop, not a scheduler service: run it under
whatever keeps processes alive (systemd, a Kubernetes Deployment, a Ray job). The branch head it last acted on is
kept in ``FABRIC_HOME/ct/NAME/watch.json`` (the documents' heads beside it); the first check only records them, so
starting the watcher does not retrain on data that was already there.

Example:
    >>> due(cfg)          # what would run now, or None
    {'trigger': 'data:4f2c9a1b0d3e', 'reference': 'lakefs://demo/4f2c.../breast_cancer', 'head': '4f2c...'}
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from fabric.ct.state import TERMINAL, CTError, list_runs, pipelines_root
from fabric.files import atomic_write

__all__ = ["due", "watch"]

WATCH_FILE = "watch.json"


def due(cfg: Any, now: float | None = None) -> dict[str, Any] | None:
    """The run that is due now (``trigger``, ``reference``, ``head``), or None. Reads; records only a first head."""
    from fabric import data

    runs = list_runs(cfg.name)
    if runs and runs[-1]["status"] not in TERMINAL:
        return {"trigger": "resume", "reference": None, "head": None}
    if cfg.triggers.data_branch:
        store = data.open_store(cfg.runtime)
        head = data.resolve(cfg.triggers.data_branch, store=store)
        seen = _seen(cfg.name)
        if seen.get("head") is None:
            remember(cfg.name, head)
        elif seen["head"] != head:
            pinned = str(data.DataURI.parse(cfg.triggers.data_branch).at(head))
            return {"trigger": f"data:{head[:12]}", "reference": pinned, "head": head}
    docs = _docs_due(cfg)
    if docs:
        return docs
    if cfg.triggers.schedule_s:
        last = max((datetime.fromisoformat(r["created"]).timestamp() for r in runs), default=None)
        if last is None or (now or time.time()) - last >= cfg.triggers.schedule_s:
            return {"trigger": "schedule", "reference": None, "head": None}
    return None


def watch(cfg: Any, once: bool = False) -> list[dict[str, Any]]:
    """Runs the pipeline whenever :func:`due` says so; ``once``: check once and return. Returns the runs' tables.

    A failed run is printed and the watch goes on (the next trigger starts a new run).
    """
    from fabric.ct.pipeline import run_pipeline

    if not (cfg.triggers.schedule_s or cfg.triggers.data_branch or cfg.ingest):
        raise CTError(f"pipeline {cfg.name} has no triggers to watch: set triggers.schedule_s, "
                      "triggers.data_branch or ingest in its config")
    results = []
    while True:
        job = due(cfg)
        if job:
            if job["head"]:
                remember(cfg.name, job["head"])  # acted on, whatever the run's outcome: no retrigger loop
            if job.get("docs"):
                remember_docs(cfg.name, job["docs"])
            print(f"[ct] watch: {cfg.name} is due ({job['trigger']})", flush=True)
            try:
                results.append(run_pipeline(cfg, trigger=job["trigger"], reference=job["reference"]))
            except CTError as exc:
                print(f"[ct] watch: run failed: {exc}", flush=True)
                results.append(exc.result or {"pipeline": cfg.name, "status": "failed", "error": str(exc)})
        if once:
            return results
        time.sleep(cfg.triggers.poll_s)


def remember(name: str, head: str) -> None:
    """Records the watched branch's head as handled."""
    _record(name, head=head)


def remember_docs(name: str, heads: dict[str, str]) -> None:
    """Records the documents' branch heads (URI -> commit) as handled."""
    _record(name, docs={**_seen(name).get("docs", {}), **heads})


def _record(name: str, **changes: Any) -> None:
    """Rewrites ``watch.json`` with ``changes`` over what it held."""
    path = pipelines_root() / name / WATCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({**_seen(name), **changes, "seen_at": time.time()}))


def _docs_due(cfg: Any) -> dict[str, Any] | None:
    """A run when an ``ingest`` config's documents branch has a commit the watcher has not acted on."""
    from fabric import data

    if not cfg.ingest:
        return None
    store, heads = data.open_store(cfg.runtime), {}
    for settings in cfg.ingest_configs():
        try:
            heads[settings.uri] = data.resolve(settings.uri, store=store)
        except data.NotFoundError:  # nothing there yet: the first run's ingest step seeds it
            continue
    seen = _seen(cfg.name).get("docs", {})
    first = {uri: head for uri, head in heads.items() if uri not in seen}
    if first:
        remember_docs(cfg.name, first)
    moved = {uri: head for uri, head in heads.items() if uri in seen and seen[uri] != head}
    if not moved:
        return None
    return {"trigger": "docs:" + ",".join(head[:12] for head in moved.values()), "reference": None, "head": None,
            "docs": moved}


def _seen(name: str) -> dict[str, Any]:
    path = pipelines_root() / name / WATCH_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
