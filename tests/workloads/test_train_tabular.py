"""train_tabular on the embedded stack: data lineage and reproducibility, fault tolerance, XGBoost, bad configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fabric.config import ConfigError
from fabric.workload import load_workload

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tabular" / "train.yaml"
TINY = ["runtime.ray.num_cpus=2", "train.epochs=2", "train.batch_size=64"]


def _write_table(repo: str, frame, message: str) -> str:
    from fabric import data

    data.init(repo)
    return data.write(f"lakefs://{repo}/main/table", frame, message)


def _breast_cancer():
    from workloads.ingest_sklearn import load_frame

    return load_frame("breast_cancer")


def _train(*overrides: str) -> dict:
    workload = load_workload("train_tabular")
    cfg = workload.load_config(CONFIG, [*TINY, *overrides])
    return workload.run(cfg)


@pytest.fixture(scope="module")
def killed_then_rerun(ray_session) -> dict:
    """Two Ray Train runs feeding two tests: the first, on the branch head, loses its rank-0 worker in epoch 1 and
    resumes from epoch 0's checkpoint; then the branch moves on and the second, pinned to the first run's commit id,
    trains again from scratch (its ONNX export, checked in the first run, is skipped)."""
    frame = _breast_cancer()
    commit_a = _write_table("repro", frame, "v1")
    first = _train("data.uri=lakefs://repro/main/table", "data.create_from=null", "registry.model_name=repro",
                   "train.fail_at_epoch=1", "scaling.max_failures=1")
    versions_after_first = [str(v.version) for v in _versions("repro")]
    commit_b = _write_table("repro", frame.sample(frac=0.7, random_state=1), "v2: fewer rows")
    again = _train(f"data.uri=lakefs://repro/{commit_a}/table", "data.create_from=null", "registry.model_name=repro",
                   "export_onnx=false")
    return {"first": first, "again": again, "commit_a": commit_a, "commit_b": commit_b,
            "versions_after_first": versions_after_first}


def _versions(name: str) -> list:
    import mlflow

    return mlflow.MlflowClient().search_model_versions(f"name = '{name}'")


@pytest.mark.slow
def test_run_records_the_commit_it_read_and_reruns_reproducibly(killed_then_rerun):
    import mlflow

    first, again, commit_a = (killed_then_rerun[k] for k in ("first", "again", "commit_a"))
    assert first["data_commit"] == commit_a
    # The branch moved on: a run pinned to A's commit id must still see A and reproduce the same metrics (those of
    # a run that resumed from a checkpoint: resuming must not change what a run learns either).
    assert killed_then_rerun["commit_b"] != commit_a
    assert again["data_commit"] == commit_a
    assert again["test_metrics"] == pytest.approx(first["test_metrics"], abs=1e-6)
    assert again["final_val_loss"] == pytest.approx(first["final_val_loss"], abs=1e-6)

    run = mlflow.get_run(first["mlflow_run_id"])
    assert run.data.tags["fabric.data.commit"] == commit_a
    assert run.data.tags["fabric.data.uri"] == f"lakefs://repro/{commit_a}/table"
    assert run.data.params["data.uri"] == "lakefs://repro/main/table"
    assert run.data.metrics["test_roc_auc"] > 0.9
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "environment.json", "eval", "onnx"} <= artifacts
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [0, 1]  # one value per epoch, logged live by rank 0
    assert first["pyfunc_parity_max_abs_diff"] == 0.0
    assert first["onnx_parity_max_abs_diff"] < 1e-4
    # The registered version carries the data commit and the metrics; the first one became champion.
    version = mlflow.MlflowClient().get_model_version("repro", first["version"])
    assert version.tags["fabric.data.commit"] == commit_a
    assert float(version.tags["fabric.metric.roc_auc"]) == pytest.approx(first["test_metrics"]["roc_auc"], abs=1e-6)
    assert first["promotion"] == "promoted"
    # The same model, the same held-out rows, no better score: the re-run is refused, with both scores named.
    assert again["promotion"] == "refused"
    assert "roc_auc=" in again["promotion_message"] and "champion" in again["promotion_message"]


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint_and_logs_one_model(killed_then_rerun, fabric_home):
    import mlflow

    result = killed_then_rerun["first"]
    run_id = result["mlflow_run_id"]
    marker = fabric_home / "ray" / f".fault-injected-{run_id}"
    assert marker.read_text().startswith("killed at epoch 1")  # the drill did kill a worker
    assert result["epochs_reported"] == 2
    # Epoch 0 was checkpointed before the kill, so it ran once: a restart from scratch would log it twice.
    steps = sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_loss"))
    assert steps == [0, 1]
    models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
    assert len(models) == 1
    assert killed_then_rerun["versions_after_first"] == [result["version"]]


@pytest.mark.slow
def test_xgboost_trains_distributed_and_registers(ray_session):
    import mlflow

    _write_table("trees", _breast_cancer(), "v1")
    result = _train("data.uri=lakefs://trees/main/table", "model.type=xgboost", "model.num_boost_round=12",
                    "registry.model_name=trees")
    assert result["model_type"] == "xgboost"
    assert result["test_metrics"]["roc_auc"] > 0.95
    assert result["pyfunc_parity_max_abs_diff"] == 0.0
    history = mlflow.MlflowClient().get_metric_history(result["mlflow_run_id"], "val_loss")
    assert len({m.step for m in history}) == 12  # one point per boosting round
    champion = mlflow.pyfunc.load_model("models:/trees@champion")
    holdout = _breast_cancer().drop(columns=["label"]).head(5)
    out = champion.predict(holdout)
    assert list(out.columns) == ["prediction", "probability_0", "probability_1"]
    assert out[["probability_0", "probability_1"]].sum(axis=1).round(6).eq(1).all()


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model.type=forest", "model.type"),
        ("train.lr=-0.1", "train.lr"),
        ("data.uri=null", "data.uri"),
        ("data.uri=s3://bucket/table", "data.uri"),
        ("scaling.num_workers=0", "scaling.num_workers"),
    ],
)
def test_bad_config_is_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_workload("train_tabular").load_config(CONFIG, [override])


def test_bad_config_fails_before_ray_starts(cli_env, tmp_path):
    missing_uri = tmp_path / "no_uri.yaml"
    missing_uri.write_text("workload: train_tabular\ndata: {label_column: label}\nmodel: {type: mlp}\n")
    for args in (["--config", str(CONFIG), "model.type=forest"], ["--config", str(CONFIG), "train.lr=-1"],
                 ["--config", str(missing_uri)]):
        proc = subprocess.run([sys.executable, "-m", "fabric", "run", "train_tabular", *args], capture_output=True,
                              text=True, env=cli_env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "error:" in proc.stderr
        assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert "data.uri" in proc.stderr and "required" in proc.stderr.lower()


def test_tune_space_keys_are_checked_before_ray_starts():
    with pytest.raises(ConfigError, match=r"tune\.space"):
        load_workload("tune_tabular").load_config(ROOT / "configs" / "tabular" / "tune.yaml",
                                                  ["tune.space={train.learning_rate: {uniform: [0.1, 0.2]}}"])
    with pytest.raises(ConfigError, match="loguniform"):
        load_workload("tune_tabular").load_config(ROOT / "configs" / "tabular" / "tune.yaml",
                                                  ["tune.space={train.lr: {lognormal: [0.1, 0.2]}}"])
