"""The Evidently side of a check: which metrics run on which frames, and the figures read back from the snapshot.

One snapshot per check. Its drift part runs on the window's rows against the reference: Evidently's
``DataDriftPreset`` over the features (its column types, inferred from the reference, and its default stattest
per column unless the config names one), ``ValueDrift`` of the ``prediction`` column, and per feature the
missing values, the values out of range (the validation schema's min/max when known, else the reference's) and
the values outside the known categories. Classification or regression quality runs on the labelled rows only, in
a second ``Report.run`` (Evidently 0.7 cannot leave unlabelled rows out of one run when probabilities are given),
whose results are then added to the same snapshot. Every figure in a :class:`~fabric.monitor.CheckResult` is read
from ``snapshot.dict()``; drift per column is Evidently's own drift test verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Plan", "figures", "plan", "run"]

V2 = "evidently:metric_v2:"
QUALITY = {"classification": {"Accuracy": "accuracy", "F1Score": "f1", "Precision": "precision", "Recall": "recall",
                              "RocAuc": "roc_auc"},
           "regression": {"RMSE": "rmse", "MAE": "mae", "R2Score": "r2"}}


@dataclass
class Plan:
    """The metrics of one check and the column definitions Evidently gets (built from the reference)."""

    features: list[str]
    drift_definition: Any
    drift_metrics: list[Any]
    reference_dataset: Any = None  #: evidently Dataset of the reference's features and prediction
    quality_definition: Any = None
    quality_metrics: list[Any] = field(default_factory=list)
    quality_columns: list[str] = field(default_factory=list)
    ranges: dict[str, dict[str, Any]] = field(default_factory=dict)  #: per column: left, right, source


def plan(reference: Any, cfg: Any, quality: bool) -> Plan:
    """The metrics for ``reference`` (a :class:`~fabric.monitor.reference.Reference`) under ``cfg``."""
    from evidently import DataDefinition, Dataset
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    features = reference.features
    inferred = Dataset.from_pandas(reference.frame[[*features, "prediction"]], data_definition=DataDefinition())
    methods = {c: m for c, m in cfg.column_methods.items() if c in features}
    metrics: list[Any] = [
        DataDriftPreset(columns=features, drift_share=cfg.drift_share, method=cfg.method,
                        per_column_method=methods or None, threshold=cfg.threshold),
        ValueDrift(column="prediction", method=cfg.column_methods.get("prediction", cfg.method),
                   threshold=cfg.threshold),
    ]
    result = Plan(features=features, drift_definition=inferred.data_definition, drift_metrics=metrics,
                  reference_dataset=inferred)
    _plan_data_quality(result, reference, set(inferred.data_definition.categorical_columns or []))
    if quality:
        _plan_quality(result, reference)
    return result


def _plan_data_quality(result: Plan, reference: Any, categorical: set[str]) -> None:
    """Per feature: missing values, and values outside the schema's (else the reference's) range or categories."""
    from evidently.metrics import MissingValueCount, OutListValueCount, OutRangeValueCount

    for column in result.features:
        result.drift_metrics.append(MissingValueCount(column=column))
        rule = reference.schema.columns.get(column) if reference.schema is not None else None
        if rule is not None and rule.allowed is not None:
            values, source = list(rule.allowed), "schema"
        elif column in categorical:
            values, source = reference.categories.get(column) or sorted(
                reference.frame[column].dropna().unique().tolist()), "reference"
        else:
            low, high = reference.limits.get(column) or (reference.frame[column].min(), reference.frame[column].max())
            has_rule = rule is not None and (rule.min is not None or rule.max is not None)
            left = rule.min if has_rule and rule.min is not None else _finite(low)
            right = rule.max if has_rule and rule.max is not None else _finite(high)
            result.drift_metrics.append(OutRangeValueCount(column=column, left=left, right=right))
            result.ranges[column] = {"left": left, "right": right, "source": "schema" if has_rule else "reference"}
            continue
        result.drift_metrics.append(OutListValueCount(column=column, values=values))
        result.ranges[column] = {"categories": values, "source": source}


def _plan_quality(result: Plan, reference: Any) -> None:
    """Quality metrics on the labelled rows. A binary classifier's ``probability_1`` also gives ROC AUC; with
    more classes only the predicted labels are used (Evidently wants probability columns named by class)."""
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification, Regression
    from evidently import metrics as m

    label = reference.label
    if reference.task == "regression":
        columns, numerical, categorical = [label, "prediction"], [label, "prediction"], []
        tasks = {"regression": [Regression(target=label, prediction="prediction")]}
        result.quality_metrics = [m.RMSE(), m.MAE(), m.R2Score()]
    else:
        binary = sorted(c for c in reference.outputs if c.startswith("probability_")) == ["probability_0",
                                                                                          "probability_1"]
        probas = ["probability_1"] if binary else []
        columns, numerical, categorical = [label, "prediction", *probas], probas, [label, "prediction"]
        task = (BinaryClassification(target=label, prediction_labels="prediction", prediction_probas="probability_1",
                                     pos_label=1) if binary
                else MulticlassClassification(target=label, prediction_labels="prediction", prediction_probas=None))
        tasks = {"classification": [task]}
        result.quality_metrics = [m.Accuracy(), m.F1Score(), m.Precision(), m.Recall(), *([m.RocAuc()] * binary)]
    result.quality_columns = columns
    result.quality_definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical,
                                               text_columns=[], datetime_columns=[], unknown_columns=[],
                                               list_columns=[], **tasks)


def run(p: Plan, current: Any, reference: Any, labelled: Any | None, metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None, timestamp: Any = None) -> Any:
    """Runs Evidently: the drift report on ``current`` vs ``reference``, and the quality report on ``labelled``
    (when given) vs ``reference``; returns one snapshot holding both."""
    from evidently import Dataset, Report

    columns = [*p.features, "prediction"]
    drift = Report(p.drift_metrics, metadata=metadata or {}, tags=tags or [], include_tests=True).run(
        Dataset.from_pandas(current[columns], data_definition=p.drift_definition), p.reference_dataset,
        timestamp=timestamp)
    if labelled is not None and p.quality_metrics:
        quality = Report(p.quality_metrics, include_tests=True).run(
            Dataset.from_pandas(labelled[p.quality_columns], data_definition=p.quality_definition),
            Dataset.from_pandas(reference[p.quality_columns], data_definition=p.quality_definition))
        _append(drift, quality)
    return drift


def _append(snapshot: Any, other: Any) -> None:
    """Adds ``other``'s metrics, widgets and tests to ``snapshot`` (Evidently 0.7.23's Snapshot internals)."""
    from evidently.core.report import metric_tests_stats, metric_tests_widget

    snapshot._metrics.update(other._metrics)
    snapshot._top_level_metrics += [m for m in other._top_level_metrics if m not in snapshot._top_level_metrics]
    snapshot._snapshot_item += other._snapshot_item
    snapshot._widgets += other._widgets
    tests = snapshot.tests_results
    snapshot._tests_widgets = [metric_tests_stats(tests), metric_tests_widget(tests)] if tests else []


def figures(snapshot_dict: dict[str, Any], p: Plan) -> dict[str, Any]:
    """CheckResult's figures from ``snapshot.dict()``: drift per column and of the prediction, the drift share,
    quality and data quality."""
    verdicts = {t["metric_config"]["metric_id"]: t["status"] for t in snapshot_dict["tests"] if t["id"] == "drift"}
    out: dict[str, Any] = {"columns": {}, "prediction_drift": None, "drift_share": None, "quality": {},
                           "data_quality": {c: {} for c in p.features}}
    names = {**QUALITY["classification"], **QUALITY["regression"]}
    for metric in snapshot_dict["metrics"]:
        config, value = metric["config"], metric["value"]
        kind, column = config["type"].removeprefix(V2), config.get("column")
        if kind == "DriftedColumnsCount":
            out["drift_share"], out["drifted_count"] = float(value["share"]), int(value["count"])
        elif kind == "ValueDrift":
            entry = {"drifted": verdicts.get(metric["id"]) == "FAIL", "score": _number(value),
                     "method": config.get("method"), "threshold": config.get("threshold")}
            if column == "prediction":
                out["prediction_drift"] = entry
            else:
                out["columns"][column] = entry
        elif kind in names:
            out["quality"][names[kind]] = _number(value["mean"] if isinstance(value, dict) else value)
        elif kind == "MissingValueCount" and column in out["data_quality"]:
            out["data_quality"][column].update(missing=int(value["count"]), missing_share=_number(value["share"]))
        elif kind == "OutRangeValueCount" and column in out["data_quality"]:
            out["data_quality"][column].update(out_of_range=int(value["count"]), range=[config["left"],
                                               config["right"]], range_source=p.ranges[column]["source"])
        elif kind == "OutListValueCount" and column in out["data_quality"]:
            out["data_quality"][column].update(new_categories=int(value["count"]),
                                               categories_source=p.ranges[column]["source"])
    return out


def _number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _finite(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0
