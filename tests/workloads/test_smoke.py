"""workloads/smoke.py: the same result through the Python API, `python -m` and `fabric run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from fabric.workload import load_workload
from tests.helpers import last_json

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train.epochs=2", "train.lr=0.5", "train.batch_size=16", "data.dataset=wine", "runtime.ray.num_cpus=2"]
METRICS = ("dataset", "train_rows", "test_rows", "epochs", "final_train_loss", "test_accuracy")


@pytest.fixture(scope="module")
def api_result(ray_session):
    workload = load_workload("smoke")
    return workload.run(workload.load_config(ROOT / "configs" / "smoke.yaml", TINY))


@pytest.mark.slow
def test_python_api_trains_scores_and_logs(api_result):
    assert api_result["dataset"] == "wine" and api_result["epochs"] == 2
    assert api_result["train_rows"] + api_result["test_rows"] == 178
    assert api_result["test_accuracy"] > 0.8
    run = mlflow.get_run(api_result["mlflow_run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(api_result["test_accuracy"])
    assert run.data.params["train.epochs"] == "2"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "environment.json", "checkpoint"} <= artifacts
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 2


@pytest.mark.slow
def test_python_m_in_a_new_process_gives_the_api_result(cli_env, api_result):
    """A fresh process that starts its own Ray, as a user types it."""
    command = [sys.executable, "-m", "workloads.smoke", "--config", "configs/smoke.yaml", *TINY]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=cli_env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = last_json(out.stdout, "test_accuracy")
    assert {k: result[k] for k in METRICS} == {k: api_result[k] for k in METRICS}


@pytest.mark.slow
def test_fabric_run_gives_the_api_result(api_result, monkeypatch):
    """`fabric run` in this process, on the session's Ray: the command's own code (workload lookup, config and
    overrides, the JSON line) without a second Ray start-up, which the `python -m` test above and
    tests/test_mlflow_server.py (`fabric run train_tabular` in a new process) already pay for."""
    from typer.testing import CliRunner

    from fabric.cli import app

    monkeypatch.chdir(ROOT)
    out = CliRunner().invoke(app, ["run", "smoke", "--config", "configs/smoke.yaml", *TINY])
    assert out.exit_code == 0, out.output[-3000:]
    result = last_json(out.stdout, "test_accuracy")
    assert {k: result[k] for k in METRICS} == {k: api_result[k] for k in METRICS}
    assert result["mlflow_run_id"] != api_result["mlflow_run_id"]  # it did train again


@pytest.fixture(scope="module")
def versioned(ray_session):
    """The breast cancer table committed by the ingest workload, on a repository of this test module."""
    ingest = load_workload("ingest_sklearn")
    cfg = ingest.load_config(ROOT / "configs" / "data" / "ingest_breast_cancer.yaml", ["uri=lakefs://smoke-t/main/bc"])
    return ingest.run(cfg)


@pytest.mark.slow
def test_versioned_run_validates_and_records_the_commit(versioned):
    assert versioned["rows"] == 569 and len(versioned["commit"]) == 64
    from fabric import data

    moved = data.write("lakefs://smoke-t/main/other", data.head("lakefs://smoke-t/main/bc", n=5), "branch moves on")
    workload = load_workload("smoke")
    cfg = workload.load_config(ROOT / "configs" / "smoke_versioned.yaml",
                               ["data.uri=lakefs://smoke-t/main/bc", "train.epochs=1", "train.num_workers=1"])
    result = workload.run(cfg)
    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.tags["fabric.data.commit"] == moved  # the head when the run started, recorded as an id
    assert run.data.tags["fabric.data.uri"] == f"lakefs://smoke-t/{moved}/bc"
    assert run.data.metrics["validation_ok"] == 1.0 and run.data.metrics["validation_rows"] == 569
    assert result["test_accuracy"] > 0.8


@pytest.mark.slow
def test_versioned_run_stops_on_bad_data_before_training(versioned, tmp_path):
    from fabric import data

    bad = data.head("lakefs://smoke-t/main/bc", n=600)
    bad.loc[:9, "mean_radius"] = -1.0
    data.write("lakefs://smoke-t/main/bad", bad, "corrupted copy")
    workload = load_workload("smoke")
    cfg = workload.load_config(ROOT / "configs" / "smoke_versioned.yaml", ["data.uri=lakefs://smoke-t/main/bad"])
    with pytest.raises(data.DataValidationError, match=r"column mean_radius: min \(>= 0.0\): 10 bad rows"):
        workload.run(cfg)
    failed = mlflow.search_runs(filter_string="tags.`fabric.data.uri` LIKE '%/bad'", output_format="list")[0]
    assert failed.info.status == "FAILED"
    assert "train_loss" not in failed.data.metrics and failed.data.metrics["validation_ok"] == 0.0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(failed.info.run_id)}
    assert "validation.json" in artifacts and "checkpoint" not in artifacts
