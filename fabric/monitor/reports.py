"""Where a check's snapshot goes: HTML and JSON files, an MLflow monitoring run, and the local Evidently workspace.

Layout under the fabric home::

    monitor/reports/MODEL/<UTC time>-v<VERSION>.html|.json   one pair per check (or in the check's out_dir)
    monitor/workspace/                                         Evidently's workspace: one project per model

``fabric monitor ui`` serves that workspace with Evidently's own UI, whose project dashboards plot the drift share
and the quality of every check over time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fabric.files import atomic_write, locked

__all__ = ["EXPERIMENT", "add_to_workspace", "experiment_id", "log_to_mlflow", "report_dir", "save_snapshot",
           "workspace_dir"]

EXPERIMENT = "fabric-monitor"


def workspace_dir() -> Path:
    """The local Evidently workspace: ``$FABRIC_HOME/monitor/workspace``."""
    from fabric.runtime import fabric_home

    return fabric_home() / "monitor" / "workspace"


def report_dir(model: str) -> Path:
    """Where a model's reports go by default: ``$FABRIC_HOME/monitor/reports/MODEL``."""
    from fabric.runtime import fabric_home

    return fabric_home() / "monitor" / "reports" / model


def save_snapshot(snapshot: Any, folder: str | Path, version: str, at: float,
                  snapshot_dict: dict | None = None) -> tuple[str, str]:
    """Writes ``<UTC time>-v<version>.html`` and ``.json`` (``snapshot.dict()``, or ``snapshot_dict`` when the
    caller already has it) into ``folder``; returns both paths."""
    from evidently.legacy.utils import NumpyEncoder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(at))}-v{version}"
    n = 1
    while (folder / f"{stem}.html").exists() or (folder / f"{stem}.json").exists():  # two checks in one second
        n += 1
        stem = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(at))}-v{version}-{n}"
    html, json_path = folder / f"{stem}.html", folder / f"{stem}.json"
    snapshot.save_html(str(html))
    json_path.write_text(json.dumps(snapshot.dict() if snapshot_dict is None else snapshot_dict, cls=NumpyEncoder),
                         encoding="utf-8")  # what snapshot.save_json writes
    return str(html), str(json_path)


def log_to_mlflow(result: Any) -> str:
    """Logs a :class:`~fabric.monitor.CheckResult` as a run of the ``fabric-monitor`` experiment; returns its id.

    Uses the client API, so a run active in the caller (a training or pipeline step) is left alone.
    """
    import mlflow

    experiment = experiment_id()  # sets up the configured tracking store before the client reads it
    client = mlflow.MlflowClient()
    tags = {"fabric.model": result.model, "fabric.model_version": result.version,
            "fabric.data.commit": result.reference_commit, "fabric.data.uri": result.reference_uri,
            "fabric.monitor.window": ", ".join(f"{k}={v}" for k, v in result.window.items()),
            "fabric.monitor.dataset_drift": str(result.dataset_drift).lower()}
    run = client.create_run(experiment, tags=tags, run_name=f"monitor-{result.model}-v{result.version}")
    metrics = {"drift_share": result.drift_share, "drifted_columns": len(result.drifted_columns), "rows": result.rows,
               "labelled_rows": result.labelled_rows, "reference_rows": result.reference_rows}
    if result.prediction_drift and result.prediction_drift.get("score") is not None:
        metrics["prediction_drift_score"] = result.prediction_drift["score"]
    metrics.update({k: v for k, v in (result.quality or {}).items() if v is not None})
    stamp = int(result.time * 1000)
    client.log_batch(run.info.run_id, metrics=[mlflow.entities.Metric(k, float(v), stamp, 0)
                                               for k, v in metrics.items()])
    for path in (result.html_path, result.json_path):
        client.log_artifact(run.info.run_id, path, "report")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def experiment_id() -> str:
    """The ``fabric-monitor`` experiment; on the embedded store its artifacts live under the fabric home, as
    :func:`fabric.runtime.setup_mlflow` places every experiment's there (never in ``./mlruns``)."""
    import mlflow

    from fabric.registry import mlflow_client
    from fabric.runtime import resolve_stack

    client = mlflow_client()  # sets up the configured store (the embedded one with its layout) when none is set
    stack = resolve_stack()
    root = stack.mlflow_artifact_root if mlflow.get_tracking_uri() == stack.mlflow_tracking_uri else None
    for _ in range(2):  # another process may create it between the lookup and the create
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(EXPERIMENT, artifact_location=f"{root}/{EXPERIMENT}" if root else None)
        except mlflow.exceptions.MlflowException:
            continue
    raise RuntimeError(f"could not create the MLflow experiment {EXPERIMENT}")


def add_to_workspace(snapshot: Any, model: str, task: str) -> str:
    """Adds ``snapshot`` to the model's project in :func:`workspace_dir` (found by name, else created with a
    dashboard of drift share and quality over time); returns the project id.

    Evidently's ``Workspace(path)`` parses every snapshot of every project when it opens, so a check would slow
    down with each one before it. The project is found through the workspace's light file state instead, and the
    snapshot file is written as ``Workspace.add_run`` writes it (``<project>/snapshots/<id>.json``, the
    ``SnapshotModel``), atomically, so a running ``fabric monitor ui`` never reads half of it. Only the first
    check of a model opens the full workspace, to create its project and dashboard.
    """
    from evidently.legacy.core import new_id
    from evidently.legacy.utils import NumpyEncoder
    from evidently.ui.storage.local.base import LocalState

    folder = workspace_dir()
    folder.mkdir(parents=True, exist_ok=True)
    state = LocalState(str(folder))
    with locked(folder / ".fabric.lock"):  # checks of several processes share the workspace
        project_id = next((p for p in state.list_projects() if _project_name(state, p) == model), None)
        if project_id is None:
            from evidently.ui.workspace import Workspace

            project = Workspace(str(folder)).create_project(
                model, description=f"fabric monitoring checks of model {model}")
            _add_panels(project, task)
            project_id = project.id
    snapshots = folder / str(project_id) / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    atomic_write(snapshots / f"{new_id()}.json", json.dumps(snapshot.to_snapshot_model().dict(), cls=NumpyEncoder))
    return str(project_id)


def _project_name(state: Any, project_id: Any) -> str | None:
    try:
        return state.read_project(project_id).name
    except (OSError, ValueError):  # a half-created or foreign folder
        return None


def _add_panels(project: Any, task: str) -> None:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    project.dashboard.add_panel(line_plot_panel(
        title="Share of drifted features", size="half",
        values=[PanelMetric(legend="share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"})]))
    metric = "RMSE" if task == "regression" else "Accuracy"
    project.dashboard.add_panel(line_plot_panel(title=f"{metric} (labelled rows)", size="half",
                                                values=[PanelMetric(legend=metric.lower(), metric=metric)]))
