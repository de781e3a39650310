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
@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "workloads.smoke", "--config", "configs/smoke.yaml", *TINY],
        [sys.executable, "-m", "fabric", "run", "smoke", "--config", "configs/smoke.yaml", *TINY],
    ],
    ids=["python-m", "fabric-run"],
)
def test_cli_paths_give_the_api_result(command, cli_env, api_result):
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=cli_env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = last_json(out.stdout, "test_accuracy")
    assert {k: result[k] for k in METRICS} == {k: api_result[k] for k in METRICS}
