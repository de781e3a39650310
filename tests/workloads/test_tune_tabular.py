"""tune_tabular on the embedded stack: trials as MLflow child runs, ASHA and Optuna, the best registered."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric.workload import load_workload

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_tune_logs_each_trial_as_a_child_run_and_registers_the_best(ray_session):
    import mlflow

    from fabric import data
    from workloads.ingest_sklearn import load_frame

    data.init("tuning")
    commit = data.write("lakefs://tuning/main/table", load_frame("breast_cancer"), "v1")
    workload = load_workload("tune_tabular")
    cfg = workload.load_config(ROOT / "configs" / "tabular" / "tune.yaml", [
        "data.uri=lakefs://tuning/main/table", "data.create_from=null", "train.epochs=3", "tune.num_samples=2",
        "tune.grace_period=1", "registry.model_name=tuned",
    ])
    result = workload.run(cfg)

    assert result["trials"] == 2 and result["trials_failed"] == 0
    assert set(result["best_params"]) == {"train.lr", "train.weight_decay", "model.hidden_sizes"}
    assert result["data_commit"] == commit
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'",
                                  output_format="list")
    assert len(children) == 2
    for child in children:
        assert "train.lr" in child.data.params
        # every trial reported at least the grace period's epochs, live, into its own child run
        assert mlflow.MlflowClient().get_metric_history(child.info.run_id, "val_loss")
    parent = mlflow.get_run(result["mlflow_run_id"])
    assert parent.data.tags["fabric.data.commit"] == commit
    assert parent.data.metrics["best_val_loss"] == pytest.approx(result["best_val_loss"], abs=1e-6)
    version = mlflow.MlflowClient().get_model_version("tuned", result["version"])
    assert version.run_id == result["mlflow_run_id"]
    assert version.tags["fabric.data.commit"] == commit
    assert result["promotion"] == "promoted"
