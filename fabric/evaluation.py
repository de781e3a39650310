"""Evaluation metrics shared by training, tuning and the registry's promotion gate.

Every tabular model fabric logs answers ``predict(frame)`` with a DataFrame holding a ``prediction`` column and,
for classification, one ``probability_<class>`` column per class. :func:`score` turns that output and the true
labels into the metrics the registry compares, so a model is always judged the same way, whoever computes it.

Example:
    >>> score("classification", [0, 1, 1], pd.DataFrame({"prediction": [0, 1, 0],
    ...       "probability_0": [.9, .2, .6], "probability_1": [.1, .8, .4]}))["accuracy"]
    0.6666666666666666
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = [
    "HIGHER_IS_BETTER",
    "NumericalInstabilityError",
    "Task",
    "beats",
    "check_finite",
    "classification_metrics",
    "default_metric",
    "known_metric",
    "regression_metrics",
    "score",
]

Task = Literal["classification", "regression"]

#: Whether a larger value of each metric is better; the promotion gate uses it to orient margins.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "roc_auc": True,
    "r2": True,
    "rmse": False,
    "mae": False,
}


class NumericalInstabilityError(ValueError):
    """A model produced NaN or infinite outputs."""


def known_metric(value: str | None) -> str | None:
    """``value`` when it is None or a metric the promotion gate can compare; ValueError listing them otherwise."""
    if value is not None and value not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {value!r}; known: {', '.join(sorted(HIGHER_IS_BETTER))}")
    return value


def default_metric(task: Task) -> str:
    """The metric the promotion gate compares when none is configured."""
    return "roc_auc" if task == "classification" else "rmse"


def check_finite(values: Any, what: str = "model outputs") -> None:
    """Raises :class:`NumericalInstabilityError` naming how many values are NaN or infinite."""
    array = np.asarray(values, dtype="float64")
    bad = ~np.isfinite(array)
    if bad.any():
        raise NumericalInstabilityError(
            f"{what}: {int(bad.sum())} of {array.size} values are NaN or infinite "
            f"({int(np.isnan(array).sum())} NaN); the model is numerically unstable"
        )


def classification_metrics(y_true: Any, probabilities: Any) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (binary, or macro-averaged) and ROC-AUC (one-vs-rest) from class scores."""
    from sklearn import metrics

    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype="float64")
    n_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    average = "binary" if n_classes == 2 else "macro"
    result = {
        "accuracy": metrics.accuracy_score(y_true, predicted),
        "precision": metrics.precision_score(y_true, predicted, average=average, zero_division=0),
        "recall": metrics.recall_score(y_true, predicted, average=average, zero_division=0),
        "f1": metrics.f1_score(y_true, predicted, average=average, zero_division=0),
    }
    if len(np.unique(y_true)) > 1:
        if n_classes == 2:
            result["roc_auc"] = metrics.roc_auc_score(y_true, probabilities[:, 1])
        else:
            result["roc_auc"] = metrics.roc_auc_score(
                y_true, probabilities, multi_class="ovr", labels=list(range(n_classes))
            )
    return {name: float(value) for name, value in result.items()}


def regression_metrics(y_true: Any, predicted: Any) -> dict[str, float]:
    """RMSE, MAE and R²."""
    from sklearn import metrics

    y_true, predicted = np.asarray(y_true, dtype="float64"), np.asarray(predicted, dtype="float64")
    return {
        "rmse": float(np.sqrt(metrics.mean_squared_error(y_true, predicted))),
        "mae": float(metrics.mean_absolute_error(y_true, predicted)),
        "r2": float(metrics.r2_score(y_true, predicted)),
    }


def probability_columns(output: Any) -> list[str]:
    """The ``probability_<k>`` columns of a model's output, ordered by class index."""
    columns = [c for c in output.columns if str(c).startswith("probability_")]
    return sorted(columns, key=lambda c: int(str(c).rsplit("_", 1)[1]))


def score(task: Task, y_true: Any, output: Any) -> dict[str, float]:
    """The task's metrics from a model's ``predict`` output (a DataFrame, see the module docstring)."""
    if task == "classification":
        columns = probability_columns(output)
        if not columns:
            raise ValueError("a classifier's output needs probability_<class> columns; got " + ", ".join(output))
        check_finite(output[columns].to_numpy())
        return classification_metrics(y_true, output[columns].to_numpy())
    check_finite(output["prediction"].to_numpy())
    return regression_metrics(y_true, output["prediction"].to_numpy())


def beats(metric: str, challenger: float, champion: float, margin: float = 0.0) -> bool:
    """Whether ``challenger`` is better than ``champion`` on ``metric`` by at least ``margin`` (a tie never is)."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(sorted(HIGHER_IS_BETTER))}")
    gain = challenger - champion if HIGHER_IS_BETTER[metric] else champion - challenger
    return gain > 0 and gain >= margin
