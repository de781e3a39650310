"""One monitoring check: a window of the inference log against the data the model version was trained on.

Python, with the CLI equivalent under it::

    result = check("breast-cancer", last=1000)          # the champion's last 1000 logged rows
    #   fabric monitor check breast-cancer --last 1000
    result.drifted_columns, result.drift_share, result.quality, result.html_path

Steps: resolve the version (the ``champion`` unless given) and read its reference commit
(:mod:`fabric.monitor.reference`); read the window of the log (:mod:`fabric.monitor.window`); run Evidently
(:mod:`fabric.monitor.analysis`); save the snapshot as HTML and JSON, log it to MLflow and add it to the Evidently
workspace (:mod:`fabric.monitor.reports`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fabric.monitor.config import MonitorConfig, MonitorError

__all__ = ["CheckResult", "check", "run_check"]


@dataclass
class CheckResult:
    """What a check found; every figure comes from the Evidently snapshot saved at ``json_path``."""

    model: str
    version: str
    time: float  #: unix time the check ran
    rows: int  #: window rows (before sampling)
    labelled_rows: int  #: window rows with a label (before sampling)
    window: dict  #: {"last": N} or {"since": "1h", "from": ts, "to": ts}
    reference_uri: str
    reference_commit: str
    reference_rows: int
    drift_share: float  #: share of drifted feature columns
    dataset_drift: bool  #: drift_share >= the configured drift_share
    columns: dict[str, dict]  #: per feature: drifted, score, method, threshold
    drifted_columns: list[str]
    prediction_drift: dict | None  #: the same for the model's prediction column
    quality: dict | None  #: accuracy, f1, precision, recall (+roc_auc), or rmse, mae, r2; labelled rows only
    quality_note: str | None  #: why quality is missing, e.g. "12 of 500 rows labelled; ..."
    data_quality: dict  #: per feature: missing, missing_share, out_of_range + range, or new_categories
    html_path: str
    json_path: str
    mlflow_run_id: str | None
    workspace_project_id: str | None = None
    timings: dict = dataclasses.field(default_factory=dict)  #: seconds per step: reference, window, evidently, ...

    def to_dict(self) -> dict:
        """A JSON-safe dict (non-finite numbers become None)."""
        return _json_safe(dataclasses.asdict(self))


def check(model: str, *, version: str | None = None, last: int | None = None, since: str | None = None,
          cfg: MonitorConfig | None = None, log_root: str | None = None, out_dir: str | None = None,
          log_to_mlflow: bool = True, add_to_workspace: bool = True) -> CheckResult:
    """Checks ``version`` (default: the champion) of ``model`` for drift and quality; see the module docstring.

    ``last``/``since`` override the window of ``cfg`` (default :class:`MonitorConfig`: the last 1000 rows).

    Raises:
        MonitorError: unknown model or version, no inference log yet, too few rows, or reference data that
            cannot be read; the message says which.
    """
    from fabric.monitor import analysis, reports
    from fabric.monitor.reference import load_reference
    from fabric.monitor.window import read_window

    cfg = (cfg or MonitorConfig()).window(last, since)
    at, clock = time.time(), _Clock()
    _check_methods(cfg)
    ref = load_reference(model, version, cfg.max_rows, cfg.seed, cfg.validation_schema)
    clock.lap("reference")
    window = read_window(model, ref.version, ref.features, ref.outputs, last=cfg.last, since=cfg.since,
                         max_rows=cfg.max_rows, seed=cfg.seed, root=log_root, now=at)
    clock.lap("window")
    where = f"last {cfg.last} rows" if cfg.last is not None else f"the last {cfg.since}"
    if window.rows < cfg.min_rows:
        raise MonitorError(f"{model} version {ref.version}: {window.rows} logged rows in the window ({where}), "
                           f"a check needs at least {cfg.min_rows} (min_rows)")
    quality, note = window.labelled_rows >= cfg.min_labelled_rows, None
    if not quality:
        note = (f"{window.labelled_rows} of {window.rows} rows labelled; quality needs at least "
                f"{cfg.min_labelled_rows}")
    labelled = _labels_for(window.labelled, ref) if quality else None
    plan = analysis.plan(ref, cfg, quality)
    stamp = datetime.fromtimestamp(at, timezone.utc)
    snapshot = analysis.run(plan, window.current, ref.frame, labelled, timestamp=stamp, tags=["fabric"],
                            metadata={"model": model, "version": ref.version, "data_commit": ref.commit,
                                      "window": where, "rows": str(window.rows)})
    snapshot_dict = snapshot.dict()
    found = analysis.figures(snapshot_dict, plan)
    clock.lap("evidently")
    html, json_path = reports.save_snapshot(snapshot, out_dir or reports.report_dir(model), ref.version, at,
                                            snapshot_dict)
    clock.lap("files")
    result = CheckResult(
        model=model, version=ref.version, time=at, rows=window.rows, labelled_rows=window.labelled_rows,
        window=window.spec, reference_uri=ref.uri, reference_commit=ref.commit, reference_rows=ref.rows,
        drift_share=found["drift_share"], dataset_drift=found["drift_share"] >= cfg.drift_share,
        columns=found["columns"], drifted_columns=[c for c, v in found["columns"].items() if v["drifted"]],
        prediction_drift=found["prediction_drift"], quality=found["quality"] or None, quality_note=note,
        data_quality=found["data_quality"], html_path=html, json_path=json_path, mlflow_run_id=None,
        timings=clock.laps)
    if log_to_mlflow:
        result.mlflow_run_id = reports.log_to_mlflow(result)
        clock.lap("mlflow")
    if add_to_workspace:
        result.workspace_project_id = reports.add_to_workspace(snapshot, model, ref.task)
        clock.lap("workspace")
    return result


def run_check(model: str, **kwargs: Any) -> Any:
    """The check that fits ``model``'s inference log: a RAG app's groundedness check (:func:`rag.monitoring.check`)
    when its answers carry groundedness scores, else :func:`check` (drift and quality); same keyword arguments."""
    from rag.monitoring import check as check_rag
    from rag.monitoring import is_rag_log

    if is_rag_log(model, kwargs.get("log_root")):
        kwargs.pop("add_to_workspace", None)
        return check_rag(model, **kwargs)
    return check(model, **kwargs)


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = round(now - self.last, 3), now


def _labels_for(labelled: Any, ref: Any) -> Any:
    """The labelled rows with the label under the reference's label column: class indices (int64) for a
    classifier, floats for a regressor."""
    import numpy as np
    import pandas as pd

    frame = labelled.rename(columns={"label": ref.label})
    values = pd.to_numeric(frame[ref.label], errors="coerce")
    if values.isna().any():
        bad = frame[ref.label][values.isna()].iloc[0]
        raise MonitorError(f"labels of {ref.model} must be numbers for quality metrics; got e.g. {bad!r}")
    if ref.task == "classification":
        if not np.allclose(values, np.round(values)):
            raise MonitorError(f"labels of {ref.model} must be class indices (0..k-1); got e.g. "
                               f"{values[values != np.round(values)].iloc[0]!r}")
        values = values.round().astype("int64")
    frame[ref.label] = values.astype("float64") if ref.task == "regression" else values
    return frame


def _check_methods(cfg: MonitorConfig) -> None:
    """Unknown stattest names fail before any data is read, listing Evidently's."""
    names = {m for m in [cfg.method, *cfg.column_methods.values()] if m}
    if not names:
        return
    import evidently.legacy.calculations.stattests  # noqa: F401  (registers Evidently's stattests)
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    known = set(_registered_stat_tests)
    unknown = sorted(names - known)
    if unknown:
        raise MonitorError(f"unknown drift method(s) {', '.join(unknown)}; Evidently's: {', '.join(sorted(known))}")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
