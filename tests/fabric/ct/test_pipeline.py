"""The continuous-training pipeline end to end on the session's Ray: a real champion trained by train_tabular,
drifted production rows with late labels, and the pipeline's runs: killed and resumed, refused, canaried."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from typer.testing import CliRunner

from fabric.cli import app
from tests.fabric.ct.helpers import ROOT, SHIFT_A, SHIFT_B, TINY, TRAIN, ct_dict, log_labelled_rows
from tests.helpers import free_ports

pytestmark = pytest.mark.slow
MODEL, REPO = "ct-bc", "ctbc"
STEPS = ["snapshot", "validate", "train", "evaluate", "register", "gate", "canary", "observe", "finish"]
PROMOTIONS = ("promote", "approve", "ct_promote", "rollout_canary_finished")


@pytest.fixture(scope="module")
def champion(ray_session, tmp_path_factory):
    """breast-cancer committed to a repository, and a champion trained on it by train_tabular (Ray Train)."""
    from fabric import data
    from fabric.runtime import setup_mlflow
    from fabric.tabular import TabularConfig, train_model
    from workloads.ingest_sklearn import load_frame

    setup_mlflow()
    frame = load_frame("breast_cancer")
    data.init(REPO)
    data.write(f"lakefs://{REPO}/main/table", frame, "breast cancer")
    cfg = TabularConfig.from_yaml(TRAIN, [*TINY, f"data.uri=lakefs://{REPO}/main/table", "data.create_from=null",
                                         "data.validation_schema=null", f"registry.model_name={MODEL}"])
    summary = train_model(cfg)
    assert summary["promotion"] == "promoted"
    return {"frame": frame, "log_root": str(tmp_path_factory.mktemp("ct-inference-log"))}


def _champion() -> str:
    from mlflow import MlflowClient

    return str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version)


def _versions_of_run(run_id: str) -> list[str]:
    from mlflow import MlflowClient

    return [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{MODEL}'")
            if v.tags.get("fabric.ct.run_id") == run_id]


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_ports()[0]}"  # nothing listens there: connection refused


def test_killed_after_register_resumes_and_promotes_once_without_a_serving_app(champion, tmp_path, cli_env):
    import mlflow
    import ray

    from fabric import data, registry
    from fabric.ct import pipeline_status

    before = _champion()
    log_labelled_rows(MODEL, champion["log_root"], champion["frame"], n=200, seed=1, prefix="kill", shift=SHIFT_A)
    config = ct_dict("ct-kill", MODEL, champion["log_root"], _closed_port_url(),
                     runtime={"ray": {"address": ray.get_runtime_context().gcs_address}})
    path = tmp_path / "ct.yaml"
    path.write_text(yaml.safe_dump(config))
    # A real kill: the workload's process SIGKILLs itself right after the register step's state is saved.
    killed = subprocess.run([sys.executable, "-m", "workloads.continuous_training", "--config", str(path)],
                            cwd=ROOT, env={**cli_env, "FABRIC_CT_KILL_AFTER": "register"}, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    halfway = pipeline_status("ct-kill")
    assert halfway["status"] == "running" and [s["state"] for s in halfway["steps"]] == ["done"] * 5 + ["pending"] * 4
    run_id, version = halfway["run_id"], halfway["challenger"]
    assert _versions_of_run(run_id) == [version] and _champion() == before

    # Started again (through the CLI): it continues at the gate and promotes the version registered before the kill.
    again = CliRunner().invoke(app, ["ct", "run", "--config", str(path), "--json"])
    assert again.exit_code == 0, again.output
    result = json.loads(again.stdout)
    assert (result["run_id"], result["status"], result["attempts"], result["resumed_by"]) == (
        run_id, "promoted", 2, ["manual"])
    assert [s["state"] for s in result["steps"]] == ["done"] * 6 + ["skipped"] * 2 + ["done"]
    assert "connection refused" in result["steps"][6]["evidence"]
    assert (result["champion_before"], result["challenger"], result["champion_after"]) == (before, version, version)
    assert _versions_of_run(run_id) == [version] and _champion() == version
    trail = [e for e in registry.audit_trail(MODEL) if e.get("version") == version]
    assert [e["action"] for e in trail].count("register") == 1
    assert [e["action"] for e in trail if e["action"] in PROMOTIONS] == ["ct_promote"]
    scores = result["scores"]
    assert scores["metric"] == "accuracy" and scores["challenger"] > scores["champion"] and scores["rows"] == 60

    # The snapshot: a commit on ct-MODEL-RUN holding the reference rows plus the 140 labelled rows not held out.
    snap = result["steps"][0]["outputs"]
    assert snap["branch"] == f"ct-{MODEL}-{run_id}"
    assert data.resolve(f"lakefs://{REPO}/{snap['branch']}") == snap["commit"]
    assert (snap["reference_rows"], snap["new_rows"], snap["holdout_rows"]) == (569, 140, 60)
    assert data.read(snap["uri"]).count() == 709
    tags = mlflow.MlflowClient().get_model_version(MODEL, version).tags
    assert tags["fabric.data.commit"] == snap["commit"] and tags["fabric.ct.run_id"] == run_id
    # MLflow: one parent run, a child run per step (both processes' steps under the same parent).
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'",
                                  search_all_experiments=True, output_format="list")
    assert sorted(r.info.run_name for r in children) == sorted(STEPS)
    status = CliRunner().invoke(app, ["ct", "status", "ct-kill"])
    assert status.exit_code == 0, status.output
    assert f"run {run_id}  status promoted" in status.stdout and f"commit {snap['commit'][:12]}" in status.stdout
    assert "canary    skipped" in status.stdout and f"version {version}" in status.stdout


def test_worse_challenger_is_not_promoted_and_the_reason_is_audited(champion):
    from fabric import registry
    from fabric.ct import CTConfig, run_pipeline

    before = _champion()
    log_labelled_rows(MODEL, champion["log_root"], champion["frame"], n=120, seed=3, prefix="worse")
    cfg = CTConfig.from_dict(ct_dict("ct-worse", MODEL, champion["log_root"], _closed_port_url(),
                                     train_overrides=[*TINY, "train.epochs=1", "train.lr=0.000001"]))
    result = run_pipeline(cfg, trigger="alert:test", reason="a test")
    assert result["status"] == "refused" and _champion() == before
    assert [s["state"] for s in result["steps"]] == ["done"] * 6 + ["skipped"] * 3
    version, scores = result["challenger"], result["scores"]
    assert _versions_of_run(result["run_id"]) == [version]
    refusal = [e for e in registry.audit_trail(MODEL) if e["action"] == "promotion_refused"
               and e.get("ct_run_id") == result["run_id"]]
    assert len(refusal) == 1
    entry = refusal[0]
    assert (entry["version"], entry["from_version"], entry["metric"], entry["rows"]) == (version, before, "accuracy",
                                                                                          scores["rows"])
    assert entry["challenger_score"] == scores["challenger"] < entry["champion_score"] == scores["champion"]
    assert "does not beat champion version" in entry["reason"] and entry["margin"] == 0.0


def test_canary_through_the_serving_app_then_the_challenger_is_champion(champion, tmp_path, monkeypatch):
    import requests
    from ray import serve

    from fabric import registry
    from fabric.ct import CTConfig, run_pipeline
    from fabric.serve.app import build_app
    from fabric.serve.config import ServeConfig
    from tests.helpers import run_serve_app

    before = _champion()
    [port] = free_ports()
    serve_cfg = ServeConfig.from_dict({"name": "ct-serve", "port": port, "inference_log": {"path": str(tmp_path)},
                                       "models": [{"name": MODEL, "num_cpus": 0.1}]})
    url = run_serve_app(build_app, serve_cfg, "ct-admin-key:admin")
    monkeypatch.setenv("CT_TEST_ADMIN_KEY", "ct-admin-key")
    headers = {"Authorization": "Bearer ct-admin-key"}
    body = {"dataframe_records": champion["frame"].drop(columns=["label"]).head(1).to_dict(orient="records")}
    stop, answered = threading.Event(), []

    def traffic() -> None:  # users keep calling the model while a rollout runs
        while not stop.is_set():
            rollout = requests.get(f"{url}/admin/models/{MODEL}/rollout", headers=headers, timeout=30).json()
            if rollout.get("active"):
                answered.append(requests.post(f"{url}/invocations", json=body, headers=headers, timeout=30).json())
            time.sleep(0.05 if rollout.get("active") else 0.5)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        log_labelled_rows(MODEL, champion["log_root"], champion["frame"], n=200, seed=5, prefix="canary", shift=SHIFT_B)
        cfg = CTConfig.from_dict(ct_dict("ct-canary", MODEL, champion["log_root"], url, serving={
            "url": url, "admin_key_env": "CT_TEST_ADMIN_KEY", "canary_percent": 50, "observe_s": 3,
            "min_requests": 5, "poll_s": 0.5, "observe_timeout_s": 120}))
        result = run_pipeline(cfg)
    finally:
        stop.set()
        thread.join(timeout=60)
        serve.shutdown()
    assert result["status"] == "promoted", result["error"]
    assert [s["state"] for s in result["steps"]] == ["done"] * 9
    version = result["challenger"]
    observed = result["steps"][7]["outputs"]
    assert observed["verdict"] == "passed" and observed["candidate_requests"] >= 5 and observed["observed_s"] >= 3
    assert _champion() == version and result["champion_before"] == before
    trail = [e for e in registry.audit_trail(MODEL) if e.get("version") == version]
    actions = [e["action"] for e in trail]
    assert "rollout_canary" in actions and [a for a in actions if a in PROMOTIONS] == ["rollout_canary_finished"]
    assert "continuous training ct-canary" in trail[-1]["reason"]
    assert {v for a in answered for v in [a.get("model_version")] if v} or answered  # traffic got answers
