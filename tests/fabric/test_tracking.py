"""fabric/tracking.py: a run saves the config that produced it, and never the credentials in it."""

from __future__ import annotations

import mlflow

from fabric.runtime import setup_mlflow
from fabric.tracking import start_run
from fabric.workload import WorkloadConfig


def test_saved_config_and_params_leave_credentials_out(fabric_home):
    cfg = WorkloadConfig.from_dict({"runtime": {
        "lakefs": {"access_key_id": "AKID", "secret_access_key": "lakefs-s3cret"},
        "mlflow": {"experiment": "tracking-test"},
        "qdrant_api_key": "qdrant-s3cret",
    }})
    setup_mlflow(cfg.runtime.mlflow)
    with start_run(cfg, run_name="secrets") as run:
        pass
    saved = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml")
    assert "access_key_id: AKID" in saved and "s3cret" not in saved
    assert not any("s3cret" in str(v) for v in mlflow.get_run(run.info.run_id).data.params.values())
