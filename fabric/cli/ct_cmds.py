"""``fabric ct run|status|watch``: the continuous-training pipeline from the shell, thin over :mod:`fabric.ct`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fabric.cli._output import JSON_OPTION, emit, fail

app = typer.Typer(
    help="Continuous training: retrain on newly labelled data, judge on recent rows, canary, promote; resumable.",
    no_args_is_help=True,
)

CONFIG_OPTION = typer.Option(..., "--config", "-c", help="Pipeline config, e.g. configs/ct/breast_cancer.yaml.")
OVERRIDES_ARG = typer.Argument(None, help="Dotted key=value overrides, e.g. gate.margin=0.01.", show_default=False)


@app.command()
def run(
    config: Path = CONFIG_OPTION,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    reason: Optional[str] = typer.Option(None, "--reason", help="Why this run, kept with it."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the pipeline, or continue its unfinished run, and print the step table.

    Exit status: 0 promoted; 1 refused, rolled back or not approved in time; 2 bad config or a failed step.
    """
    from fabric.ct import CTError, run_pipeline

    cfg = _load(config, overrides)
    try:
        with _progress_to_stderr(as_json):
            result = run_pipeline(cfg, trigger="manual", reason=reason)
    except CTError as exc:
        if exc.result:
            emit(exc.result, as_json, table_text)
        fail(str(exc))
    emit(result, as_json, table_text)
    if result["status"] != "promoted":
        raise typer.Exit(1)


@app.command()
def status(
    name: Optional[str] = typer.Argument(None, help="Pipeline name. Default: the newest run of any pipeline."),
    run_id: Optional[str] = typer.Option(None, "--run", help="A run id. Default: the pipeline's newest run."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The step table of a run: each step's state, seconds and evidence (commits, runs, versions, scores)."""
    from fabric.ct import CTError, pipeline_status

    try:
        result = pipeline_status(name, run_id)
    except CTError as exc:
        fail(str(exc))
    emit(result, as_json, table_text)


@app.command()
def watch(
    config: Path = CONFIG_OPTION,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    once: bool = typer.Option(False, "--once", help="Check the triggers once, run if due, and exit."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the pipeline on its schedule and on new commits of its watched data branch (Ctrl-C stops)."""
    from fabric.ct import CTError
    from fabric.ct import watch as watch_triggers

    cfg = _load(config, overrides)
    try:
        with _progress_to_stderr(as_json):
            results = watch_triggers(cfg, once=once)
    except CTError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return
    emit({"runs": results}, as_json, lambda d: "\n\n".join(map(table_text, d["runs"])) or "nothing due")


def _progress_to_stderr(as_json: bool) -> Any:
    """With --json, stdout carries only the JSON document: progress lines go to stderr."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def _load(config: Path, overrides: list[str] | None) -> Any:
    """The validated pipeline config, with MLflow pointed at its store (Ray starts when a step needs it)."""
    from fabric.config import ConfigError
    from fabric.runtime import setup_mlflow
    from fabric.workload import load_workload

    try:
        cfg = load_workload("continuous_training").load_config(config, overrides or [])
        setup_mlflow(cfg.runtime.mlflow)
    except ConfigError as exc:
        fail(str(exc))
    return cfg


def table_text(result: dict[str, Any]) -> str:
    """A run as text: the outcome, then one line per step with its evidence."""
    if "steps" not in result:
        return f"{result.get('pipeline')}: {result.get('status')} ({result.get('error')})"
    lines = [f"pipeline {result['pipeline']}  run {result['run_id']}  status {result['status']}  "
             f"trigger {result['trigger']}"]
    move = (f"champion {result['champion_before'] or '-'} -> {result['champion_after'] or '-'}, challenger "
            f"{result['challenger'] or '-'}")
    scores = result.get("scores") or {}
    if scores:
        move += (f"; {scores['metric']} challenger {scores['challenger']:.4f} vs champion {scores['champion']:.4f} "
                 f"on {scores['rows']} recent rows")
    lines.append(f"model {result['model']}: {move}")
    rows = [["step", "state", "seconds", "evidence"]]
    for step in result["steps"]:
        seconds = "-" if step["seconds"] is None else f"{step['seconds']:.1f}"
        rows.append([step["name"], step["state"], seconds, step["error"] or step["evidence"] or "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += ["  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)), row[3]]) for row in rows]
    lines.append(f"MLflow run {result['mlflow_run_id']}; state {result['folder']}/state.json")
    return "\n".join(lines)
