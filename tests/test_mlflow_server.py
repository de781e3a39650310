"""train_tabular against a real `mlflow server` process (SQLite backend, artifact serving) on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_ports, last_json, wait_until_answers

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    cli_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    folder = tmp_path_factory.mktemp("mlflow-server")
    [port] = free_ports()
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=cli_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/health", server, log.name)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
        log.close()


def test_training_run_and_registered_model_live_on_the_tracking_server(mlflow_server, cli_env):
    import mlflow
    from mlflow import MlflowClient

    env = {**cli_env, "MLFLOW_TRACKING_URI": mlflow_server}
    out = subprocess.run(
        [sys.executable, "-m", "fabric", "run", "train_tabular", "--config", "configs/tabular/train.yaml",
         "train.epochs=2", "scaling.num_workers=1", "runtime.ray.num_cpus=2", "registry.model_name=served",
         "data.uri=lakefs://server/main/breast_cancer"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = last_json(out.stdout, "data_commit")

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["fabric.data.commit"] == result["data_commit"]
    assert run.data.metrics["test_roc_auc"] == pytest.approx(result["test_metrics"]["roc_auc"], abs=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2  # rank 0 logged live to the server
    champion = client.get_model_version_by_alias("served", "champion")
    assert champion.version == result["version"]
    assert champion.tags["fabric.data.commit"] == result["data_commit"]
    # Artifacts went through the server's artifact proxy, not to a local folder of the client.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    previous = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(mlflow_server)
        holdout_path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="eval/holdout.parquet")
        model = mlflow.pyfunc.load_model("models:/served@champion")
    finally:
        mlflow.set_tracking_uri(previous)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exports it; the embedded tests must not see it
    import pandas as pd

    holdout = pd.read_parquet(holdout_path)
    predictions = model.predict(holdout.drop(columns=["label"]))
    assert ((predictions["prediction"] == holdout["label"]).mean()) == pytest.approx(
        result["test_metrics"]["accuracy"], abs=1e-6)
