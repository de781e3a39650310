"""Tiny real models for the registry tests, logged once per test session into the throwaway MLflow store.

Each is a scikit-learn pipeline on the breast_cancer data wrapped as a pyfunc that answers the training workload's
contract (a ``prediction`` column and ``probability_<k>`` columns), in a run that also logs ``eval/holdout.parquet``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import mlflow
import numpy as np
import pandas as pd

LABEL = "target"


class ProbabilityModel(mlflow.pyfunc.PythonModel):
    """A fitted classifier behind the pyfunc contract of fabric's tabular models."""

    def __init__(self, estimator: Any):
        self.estimator = estimator

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        proba = self.estimator.predict_proba(model_input)
        output = pd.DataFrame({f"probability_{k}": proba[:, k] for k in range(proba.shape[1])})
        output.insert(0, "prediction", proba.argmax(axis=1))
        return output


class RegressionModel(mlflow.pyfunc.PythonModel):
    def __init__(self, estimator: Any):
        self.estimator = estimator

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"prediction": self.estimator.predict(model_input)})


@contextlib.contextmanager
def tracking_env_restored() -> Iterator[None]:
    """Undoes ``mlflow.set_tracking_uri`` exporting MLFLOW_TRACKING_URI, which would make every later `fabric`
    subprocess of the test session see a tracking server (``fabric doctor`` would report mode: server)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


@functools.cache
def logged_models() -> dict[str, dict[str, Any]]:
    """name -> {"uri", "tags", "auc"}: fair (40 clean rows), worse (20 rows, 40% flipped labels), better (all rows),
    a regression pair: reg_good (linear) and reg_mean (predicts the mean), and no_holdout (its run lacks one)."""
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fabric.runtime import setup_mlflow

    setup_mlflow()
    x, y = _frame(load_breast_cancer(return_X_y=True))
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    holdout = x_test.assign(**{LABEL: y_test})
    noisy = y_train.to_numpy()[:20].copy()
    flip = np.random.default_rng(0).random(20) < 0.4
    noisy[flip] = 1 - noisy[flip]
    models = {}
    for name, rows, labels in [("fair", 40, y_train[:40]), ("worse", 20, noisy), ("better", None, y_train)]:
        estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        estimator.fit(x_train[:rows], labels)
        auc = float(roc_auc_score(y_test, estimator.predict_proba(x_test)[:, 1]))
        uri = _log(name, ProbabilityModel(estimator), holdout)
        models[name] = {"uri": uri, "auc": auc, "tags": _tags("classification", {"roc_auc": auc})}

    x, y = _frame(load_diabetes(return_X_y=True))
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    holdout = x_test.assign(**{LABEL: y_test})
    for name, estimator in [("reg_good", LinearRegression()), ("reg_mean", DummyRegressor())]:
        uri = _log(name, RegressionModel(estimator.fit(x_train, y_train)), holdout)
        models[name] = {"uri": uri, "tags": _tags("regression", {})}
    uri = _log("no_holdout", RegressionModel(estimator), None)
    models["no_holdout"] = {"uri": uri, "tags": _tags("regression", {})}
    return models


def _frame(data: tuple[np.ndarray, np.ndarray]) -> tuple[pd.DataFrame, pd.Series]:
    x, y = data
    return pd.DataFrame(x, columns=[f"f{i:02d}" for i in range(x.shape[1])]), pd.Series(y, name=LABEL)


def _log(name: str, model: mlflow.pyfunc.PythonModel, holdout: pd.DataFrame | None) -> str:
    import tempfile
    from pathlib import Path

    with mlflow.start_run(run_name=f"registry-test-{name}"):
        # explicit requirements: inferring them would load the model in a subprocess, seconds per model
        info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=["scikit-learn", "pandas"])
        if holdout is None:
            return info.model_uri
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "holdout.parquet")
            holdout.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path="eval")
    return info.model_uri


def _tags(task: str, metrics: dict[str, float]) -> dict[str, str]:
    return {
        "fabric.task": task,
        "fabric.label_column": LABEL,
        "fabric.data.uri": "lakefs://tests/main/breast_cancer",
        "fabric.data.commit": "0" * 64,
        **{f"fabric.metric.{k}": str(v) for k, v in metrics.items()},
    }
