"""batch_predict: a registered model scores a versioned dataset on an actor pool; predictions become a commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric.workload import load_workload
from tests.tabular_models import register_linear

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_predictions_are_committed_to_a_branch_with_their_lineage(ray_session):
    import mlflow
    from mlflow import MlflowClient

    from fabric import data
    from fabric.runtime import setup_mlflow
    from workloads.ingest_sklearn import load_frame

    setup_mlflow()
    frame = load_frame("breast_cancer")
    version = register_linear(frame, "batch-bc", steps=100)
    MlflowClient().set_registered_model_alias("batch-bc", "champion", version)
    data.init("scoring")
    source = data.write("lakefs://scoring/main/table", frame, "v1")

    workload = load_workload("batch_predict")
    cfg = workload.load_config(ROOT / "configs" / "tabular" / "batch_predict.yaml", [
        "data.uri=lakefs://scoring/main/table", "model.name=batch-bc", "output.uri=lakefs://scoring/scored/preds",
        "actors=2", "batch_size=100",
    ])
    result = workload.run(cfg)

    assert result["version"] == version and result["input"] == f"lakefs://scoring/{source}/table"
    scored = data.read(result["output_uri"]).to_pandas().sort_values("mean_radius", kind="stable")
    assert len(scored) == len(frame)
    assert {"label", "prediction", "probability_0", "probability_1"} <= set(scored.columns)
    expected = mlflow.pyfunc.load_model(f"models:/batch-bc/{version}").predict(frame.drop(columns=["label"]))
    merged = frame.assign(expected=expected["probability_1"].to_numpy()).sort_values("mean_radius", kind="stable")
    assert scored["probability_1"].to_numpy() == pytest.approx(merged["expected"].to_numpy(), abs=1e-6)
    commit = data.log("lakefs://scoring/scored", limit=1)[0]
    assert commit.id == result["output_commit"] and commit.metadata["model_version"] == version
    assert data.resolve("lakefs://scoring/main") == source  # main did not move
    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.tags["fabric.output.commit"] == result["output_commit"]


def test_any_mlflow_model_scores_a_batch_whatever_its_output(tmp_path):
    """The predictor of batch_predict, without Ray: a scikit-learn model (array out, signature), and custom
    PythonModels answering with a dict and a 2-D array."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from fabric.runtime import setup_mlflow
    from workloads.batch_predict import Predictor
    from workloads.ingest_sklearn import load_frame

    class Scores(mlflow.pyfunc.PythonModel):  # a dict of columns and a 2-D array
        def predict(self, context, model_input, params=None):
            return {"score": model_input["mean_radius"].to_numpy() * 2,
                    "pair": np.column_stack([model_input["mean_radius"], -model_input["mean_radius"]])}

    setup_mlflow()
    frame = load_frame("breast_cancer").iloc[:40]
    x = frame.drop(columns=["label"])
    estimator = LogisticRegression(max_iter=5000).fit(x, frame["label"])
    with mlflow.start_run(run_name="batch-any-model"):
        uris = [mlflow.sklearn.log_model(estimator, name="sk", signature=infer_signature(x),
                                         pip_requirements=["scikit-learn"]).model_uri,  # no slow inference
                mlflow.pyfunc.log_model(name="scores", python_model=Scores(), pip_requirements=["mlflow"]).model_uri]
    batch = frame.iloc[5:15]
    sklearn = Predictor(uris[0], mlflow.get_tracking_uri(), ["label"])(batch)
    assert sklearn["prediction"].tolist() == estimator.predict(batch.drop(columns=["label"])).tolist()
    assert sklearn.index.equals(batch.index) and sklearn["label"].equals(batch["label"])
    scores = Predictor(uris[1], mlflow.get_tracking_uri(), ["label"])(batch)
    assert scores["score"].tolist() == (batch["mean_radius"] * 2).tolist()
    assert scores["pair_1"].tolist() == (-batch["mean_radius"]).tolist()
    assert isinstance(scores, pd.DataFrame) and len(scores) == len(batch)
