"""One continuous-training run: a plain loop over named steps, each recorded in the run's state file and as an
MLflow child run of the pipeline's parent run.

Python, with the CLI equivalent under each line::

    result = run_pipeline(CTConfig.from_yaml("configs/ct/breast_cancer.yaml"))
    #   fabric ct run --config configs/ct/breast_cancer.yaml
    pipeline_status("breast-cancer-ct")
    #   fabric ct status breast-cancer-ct

A run killed at any step (its process gone) is continued by the next ``run_pipeline`` of the same pipeline, from
the step it was in; steps already done are not run again. Ray runs the steps' compute (data validation, training);
the loop itself is ordinary Python. ``FABRIC_CT_KILL_AFTER=STEP`` makes the process SIGKILL itself right after
that step's state is saved: the fault drill the tests use.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fabric.ct import release, steps
from fabric.ct.state import TERMINAL, Context, CTError, Skip, list_runs, lock, new_state, pipeline_names, save

__all__ = ["CTError", "pipeline_status", "run_pipeline"]

STEP_FUNCTIONS = {"ingest": steps.ingest, "snapshot": steps.snapshot, "validate": steps.validate,
                  "train": steps.train, "tune": steps.train, "evaluate": steps.evaluate, "register": steps.register,
                  "gate": release.gate, "canary": release.canary, "observe": release.observe,
                  "finish": release.finish}
KILL_AFTER = "FABRIC_CT_KILL_AFTER"


def run_pipeline(cfg: Any, trigger: str = "manual", reason: str | None = None, reference: str | None = None) -> dict:
    """Continues the newest unfinished run of ``cfg.name``, else starts a new one; returns its step table.

    Args:
        cfg: the pipeline's :class:`~fabric.ct.config.CTConfig`.
        trigger: what started it: ``manual``, ``alert:RULE``, ``schedule``, ``data:COMMIT``.
        reason: free text kept with the run (an alert's figures, a person's note).
        reference: a pinned ``lakefs://`` URI to use as reference data instead of the champion's training data
            (the watcher passes a watched branch's new commit).

    Returns:
        ``{"pipeline", "run_id", "status" (promoted, refused, rolled_back, approval_timeout), "steps": [...],
        "model", "champion_before", "champion_after", "challenger", "scores", "mlflow_run_id", ...}``.

    Raises:
        CTError: the pipeline cannot start (bad training config, already running) or a step failed; ``result``
            then holds the step table, with the failed step's error.
    """
    from fabric.config import ConfigError

    _ensure_tracking(cfg)
    try:
        cfg.training_config()
        cfg.ingest_configs()
    except ConfigError as exc:
        raise CTError(str(exc)) from None
    with lock(cfg.name):
        unfinished = [r for r in list_runs(cfg.name) if r["status"] not in TERMINAL]
        state = unfinished[-1] if unfinished else new_state(cfg, trigger, reason, reference)
        state["attempts"] += 1
        if state["attempts"] > 1:
            state.setdefault("resumed_by", []).append(trigger)
            print(f"[ct] {cfg.name}: continuing run {state['run_id']} (started {state['created']} by "
                  f"{state['trigger']})", flush=True)
        save(state)
        ctx = Context(cfg=cfg, state=state, folder=Path(state["folder"]))
        failure = None
        with _parent_run(state) as parent:
            try:
                _run_steps(ctx)
            except CTError as exc:
                parent["status"], failure = "FAILED", exc
            _close(state)
    if failure:
        raise CTError(str(failure), summary(state))
    return summary(state)


def _run_steps(ctx: Context) -> None:
    state = ctx.state
    for record in state["steps"]:
        if record["state"] in ("done", "skipped"):
            continue
        if state["status"] in TERMINAL:  # an earlier step ended the run
            _mark(record, "skipped", f"the run ended {state['status']} at an earlier step")
            continue
        _run_step(ctx, record)
        save(state)
        name = record["name"]
        print(f"[ct] {name} {record['state']} in {record['seconds']:.1f} s: {record['evidence']}", flush=True)
        if os.environ.get(KILL_AFTER) == name:
            print(f"[ct] fault drill: {KILL_AFTER}={name}, process {os.getpid()} kills itself now", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    if state["status"] not in TERMINAL:
        raise CTError(f"run {state['run_id']} ended its steps without an outcome")


def _run_step(ctx: Context, record: dict[str, Any]) -> None:
    """One step in its own MLflow child run; its state saved as running first, so a kill leaves a trace."""
    import mlflow

    state, name = ctx.state, record["name"]
    record.update(state="running", started=_now(), ended=None, error=None, inputs={}, outputs={})
    save(state)
    print(f"[ct] {name} ...", flush=True)
    started = time.perf_counter()
    tags = {"fabric.ct.step": name, "fabric.ct.run_id": state["run_id"]}
    with mlflow.start_run(run_name=name, nested=True, tags=tags) as child:
        record["mlflow_run_id"] = child.info.run_id
        ctx.log_inputs = lambda values: mlflow.log_params(_params(values))
        try:
            result = STEP_FUNCTIONS[name](ctx)
        except Skip as why:
            _mark(record, "skipped", str(why))
            mlflow.set_tag("fabric.ct.skipped", str(why)[:5000])
        except Exception as exc:
            error = str(exc) if isinstance(exc, CTError) else f"{type(exc).__name__}: {exc}"
            record.update(state="failed", error=error, traceback=traceback.format_exc()[-4000:], ended=_now(),
                          seconds=round(time.perf_counter() - started, 2))
            state.update(status="failed", error=f"{name}: {error}")
            save(state)
            mlflow.set_tag("fabric.ct.error", error[:5000])
            print(f"[ct] {name} failed: {error}", flush=True)
            raise CTError(f"step {name} of run {state['run_id']} failed: {error}") from None
        else:
            record.update(state="done", outputs=result.outputs, evidence=result.evidence)
            _log_outputs(result.outputs)
            state["status"] = result.end or state["status"]
        record.update(ended=_now(), seconds=round(time.perf_counter() - started, 2))


def _mark(record: dict[str, Any], state: str, evidence: str) -> None:
    record.update(state=state, evidence=evidence, ended=_now(), seconds=record.get("seconds") or 0.0)


@contextlib.contextmanager
def _parent_run(state: dict[str, Any]) -> Iterator[dict[str, str]]:
    """The pipeline's MLflow run: created with the run, re-opened by a resumed run, ended with the outcome."""
    import mlflow

    outcome = {"status": "FINISHED"}
    nested = mlflow.active_run() is not None
    if state["mlflow_run_id"]:
        run = mlflow.start_run(run_id=state["mlflow_run_id"], nested=nested)
    else:
        tags = {"fabric.workload": "continuous_training", "fabric.ct.pipeline": state["pipeline"],
                "fabric.ct.run_id": state["run_id"], "fabric.ct.trigger": state["trigger"],
                "fabric.ct.model": state["model"]}
        run = mlflow.start_run(run_name=f"ct-{state['pipeline']}-{state['run_id']}", nested=nested, tags=tags)
        state["mlflow_run_id"] = run.info.run_id
        save(state)
        mlflow.log_dict(state["config"], "ct_config.json")
    try:
        yield outcome
    except BaseException:
        outcome["status"] = "KILLED" if outcome["status"] == "FINISHED" else outcome["status"]
        raise
    finally:
        while mlflow.active_run() and mlflow.active_run().info.run_id != run.info.run_id:
            mlflow.end_run("FAILED")  # a step's run left open by an error
        mlflow.end_run(outcome["status"])


def _close(state: dict[str, Any]) -> None:
    """Records the outcome on the state file and the parent MLflow run."""
    import mlflow

    with contextlib.suppress(CTError):
        state["champion_after"] = str(steps.champion_of(state["model"]).version)
    save(state)
    mlflow.set_tags({"fabric.ct.status": state["status"], "fabric.ct.champion_before": state["champion_before"],
                     "fabric.ct.champion_after": state["champion_after"], "fabric.ct.challenger": state["challenger"]})
    scores = state["scores"]
    if scores:
        mlflow.log_metrics({f"challenger_{scores['metric']}": scores["challenger"],
                            f"champion_{scores['metric']}": scores["champion"], "recent_rows": scores["rows"]})
    mlflow.log_dict(json.loads(json.dumps(summary(state), default=str)), "ct_steps.json")


def pipeline_status(name: str | None = None, run_id: str | None = None) -> dict:
    """The step table of a run: ``run_id`` of pipeline ``name``, else its newest run (of any pipeline when no name).

    CLI: ``fabric ct status [NAME] [--run RUN_ID]``.
    """
    from fabric.ct.state import pipelines_root

    names = [name] if name else pipeline_names()
    runs = [run for n in names for run in list_runs(n)]
    if not runs:
        known = ", ".join(pipeline_names()) or "none"
        what = f"pipeline {name!r}" if name else "any pipeline"
        raise CTError(f"no runs of {what} under {pipelines_root()} (pipelines with runs: {known}); start one with "
                      "`fabric ct run --config FILE`")
    if run_id:
        matching = [run for run in runs if run["run_id"] == run_id]
        if not matching:
            raise CTError(f"no run {run_id!r} of {name or 'any pipeline'}; newest runs: "
                          + ", ".join(r["run_id"] for r in runs[-5:]))
        return summary(matching[0])
    return summary(max(runs, key=lambda r: (r["created"], r["run_id"])))


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """The run as callers see it: outcome first, then the step table (no traceback noise)."""
    keys = ("pipeline", "run_id", "status", "model", "champion_before", "champion_after", "challenger", "scores",
            "trigger", "reason", "reference", "error", "mlflow_run_id", "created", "updated", "attempts",
            "resumed_by", "folder")
    table = [{key: record.get(key) for key in ("name", "state", "seconds", "evidence", "inputs", "outputs",
                                               "started", "ended", "error", "mlflow_run_id")}
             for record in state["steps"]]
    return {**{key: state.get(key) for key in keys}, "steps": table}


def _ensure_tracking(cfg: Any) -> None:
    """Uses the tracking store the caller set, else the pipeline config's (as the registry does)."""
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    if not is_tracking_uri_set():
        from fabric.runtime import setup_mlflow

        setup_mlflow(cfg.runtime.mlflow)


def _params(values: dict[str, Any]) -> dict[str, str]:
    return {key: (value if isinstance(value, str) else json.dumps(value, default=str))[:6000]
            for key, value in values.items()}


def _log_outputs(outputs: dict[str, Any], prefix: str = "") -> None:
    """Numbers become metrics, anything else tags (``out.KEY``), nested dicts flattened with dots."""
    import mlflow

    for key, value in outputs.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) <= 40:
            _log_outputs(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            mlflow.log_metric(name, float(value))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            mlflow.set_tag(f"out.{name}", text[:5000])


def _now() -> str:
    from fabric.ct.state import _now as now

    return now()
