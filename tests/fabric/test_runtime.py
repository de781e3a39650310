"""fabric/runtime.py: the embedded defaults, the production settings, and the real embedded services."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric.config import ConfigError
from fabric.runtime import (
    JobHomeError,
    RuntimeConfig,
    cached_models,
    qdrant_client,
    resolve_stack,
    setup_mlflow,
)


def test_embedded_defaults_live_under_fabric_home(fabric_home):
    stack = resolve_stack()
    assert stack.home == str(fabric_home)
    assert stack.ray_address is None and stack.ray_num_cpus >= 1
    assert stack.mlflow_tracking_uri == f"sqlite:///{fabric_home}/mlflow/mlflow.db"
    assert stack.mlflow_artifact_root == (fabric_home / "mlflow" / "artifacts").as_uri()
    assert (stack.qdrant_mode, stack.qdrant) == ("local", str(fabric_home / "qdrant"))
    assert (stack.data_backend, stack.data_location) == ("local", str(fabric_home / "data"))
    assert stack.model_cache == str(fabric_home / "models")


def test_environment_selects_production_services(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("LAKEFS_ENDPOINT", "http://lakefs:8000")
    stack = resolve_stack()
    assert stack.ray_address == "10.0.0.1:6379" and stack.ray_num_cpus is None
    assert stack.mlflow_tracking_uri == "http://mlflow:5000" and stack.mlflow_artifact_root is None
    assert (stack.qdrant_mode, stack.qdrant) == ("server", "http://qdrant:6333")
    assert (stack.data_backend, stack.data_location) == ("lakefs", "http://lakefs:8000")


def test_config_wins_over_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    cfg = RuntimeConfig.from_dict({"ray": {"address": "ray://head:10001"}, "data_backend": "local"})
    monkeypatch.setenv("LAKEFS_ENDPOINT", "http://lakefs:8000")
    stack = resolve_stack(cfg)
    assert stack.ray_address == "ray://head:10001"
    assert stack.data_backend == "local"


def test_lakefs_backend_without_endpoint_is_refused():
    with pytest.raises(ConfigError, match="LAKEFS_ENDPOINT"):
        resolve_stack(RuntimeConfig(data_backend="lakefs"))


def test_embedded_mlflow_keeps_artifacts_under_home(fabric_home):
    import mlflow

    experiment_id = setup_mlflow(RuntimeConfig().mlflow.model_copy(update={"experiment": "runtime-test"}))
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_text("hello", "note.txt")
    artifact = Path(mlflow.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://")) / "note.txt"
    assert artifact.read_text() == "hello"
    assert fabric_home in artifact.parents
    assert setup_mlflow(RuntimeConfig().mlflow.model_copy(update={"experiment": "runtime-test"})) == experiment_id


def test_embedded_qdrant_is_local_mode_under_home(fabric_home):
    from qdrant_client.models import Distance, PointStruct, VectorParams

    client = qdrant_client()
    try:
        client.create_collection("runtime_test", vectors_config=VectorParams(size=2, distance=Distance.COSINE))
        client.upsert("runtime_test", [PointStruct(id=1, vector=[1.0, 0.0]), PointStruct(id=2, vector=[0.0, 1.0])])
        hits = client.query_points("runtime_test", query=[0.9, 0.1], limit=1).points
        assert hits[0].id == 1
    finally:
        client.close()
    assert (fabric_home / "qdrant").is_dir()


def test_cached_models_lists_folders_with_a_config(fabric_home):
    (fabric_home / "models" / "org" / "tiny").mkdir(parents=True)
    (fabric_home / "models" / "org" / "tiny" / "config.json").write_text("{}")
    (fabric_home / "models" / "empty").mkdir(parents=True)
    assert cached_models() == ["org/tiny"]


@pytest.fixture
def own_mlflow_uri(monkeypatch):
    """Gives MLflow's process-wide tracking URI (and the variable it exports) back after the test."""
    import mlflow

    before = mlflow.get_tracking_uri()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored (to whatever it was) after the test
    yield
    mlflow.set_tracking_uri(before)


def test_default_experiment_of_a_new_store_keeps_artifacts_under_home(tmp_path, monkeypatch, own_mlflow_uri):
    import mlflow

    home = tmp_path / "home"
    monkeypatch.setenv("FABRIC_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    setup_mlflow(RuntimeConfig().mlflow.model_copy(update={"experiment": "first"}))
    default = mlflow.get_experiment("0")
    assert default.artifact_location.startswith((home / "mlflow" / "artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()


def test_tracking_uri_exported_by_mlflow_is_still_the_embedded_store(fabric_home, own_mlflow_uri):
    """mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI: that is our own store, not a server's."""
    import mlflow

    mlflow.set_tracking_uri(resolve_stack().mlflow_tracking_uri)
    assert resolve_stack().mlflow_artifact_root == (fabric_home / "mlflow" / "artifacts").as_uri()
    experiment_id = setup_mlflow(RuntimeConfig().mlflow.model_copy(update={"experiment": "after-export"}))
    assert mlflow.get_experiment(experiment_id).artifact_location.startswith((fabric_home / "mlflow").as_uri())


@pytest.fixture
def inside_a_ray_job(tmp_path, monkeypatch):
    """This process as a Ray job's driver: Ray's job variable set, the working directory Ray's upload folder."""
    job_dir = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    job_dir.mkdir(parents=True)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.delenv("FABRIC_HOME")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(job_dir)
    return job_dir


def test_a_ray_job_without_fabric_home_is_refused(inside_a_ray_job, monkeypatch, tmp_path):
    with pytest.raises(JobHomeError, match="FABRIC_HOME") as refused:
        resolve_stack()
    assert "MLflow tracking store and data store" in str(refused.value)
    assert "MLFLOW_TRACKING_URI" in str(refused.value)
    monkeypatch.setenv("FABRIC_HOME", str(tmp_path / "shared"))
    assert resolve_stack().home == str(tmp_path / "shared")


def test_a_ray_job_with_servers_for_tracking_and_data_needs_no_home(inside_a_ray_job, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("LAKEFS_ENDPOINT", "http://lakefs:8000")
    assert resolve_stack().data_backend == "lakefs"
    monkeypatch.delenv("LAKEFS_ENDPOINT")
    with pytest.raises(JobHomeError, match="data store"):
        resolve_stack()


def test_credentials_are_secret_and_never_saved():
    cfg = RuntimeConfig.from_dict({
        "lakefs": {"endpoint": "http://lakefs:8000", "access_key_id": "AKID", "secret_access_key": "lakefs-s3cret"},
        "mlflow": {"username": "me", "password": "mlflow-s3cret"},
        "qdrant_api_key": "qdrant-s3cret",
    })
    assert cfg.lakefs.credentials() == ("AKID", "lakefs-s3cret")
    assert cfg.mlflow.password.get_secret_value() == "mlflow-s3cret"
    for shown in (cfg.to_yaml(), repr(cfg), str(cfg.model_dump()), str(cfg.model_dump(mode="json"))):
        assert "s3cret" not in shown
    assert RuntimeConfig.from_dict(cfg.model_dump(mode="json")).lakefs.secret_access_key is None  # env applies


def test_a_bad_secret_value_is_not_echoed_in_the_error():
    with pytest.raises(ConfigError) as refused:
        RuntimeConfig.from_dict({"lakefs": {"secret_access_key": 12345678}})
    assert "lakefs.secret_access_key" in str(refused.value) and "12345678" not in str(refused.value)
    assert "(a secret, not shown)" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        RuntimeConfig.from_yaml(None, ["mlflow.password=12345678"])
    assert "(from override 'mlflow.password=...')" in str(refused.value) and "12345678" not in str(refused.value)
