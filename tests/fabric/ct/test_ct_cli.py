"""fabric/ct without training: config checks, the CLI's errors, a snapshot with too few labels, the watcher."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from fabric.cli import app
from fabric.config import ConfigError
from fabric.ct import CTConfig, CTError, due, pipeline_status, run_pipeline, watch
from tests.fabric.ct.helpers import ct_dict, log_labelled_rows

runner = CliRunner()


def _write(tmp_path, data, name="ct.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_errors_name_the_field(tmp_path):
    base = ct_dict("bad-one", "m", str(tmp_path), None)
    with pytest.raises(ConfigError, match="gate.metric: .*unknown metric 'auc'"):
        CTConfig.from_dict({**base, "gate": {"metric": "auc"}})
    with pytest.raises(ConfigError, match="labels.since: .*not a duration"):
        CTConfig.from_dict({**base, "labels": {"since": "yesterday"}})
    with pytest.raises(ConfigError, match="observe_timeout_s .* must be at least observe_s"):
        CTConfig.from_dict({**base, "serving": {"observe_s": 60, "observe_timeout_s": 10}})
    with pytest.raises(ConfigError, match="name: String should match pattern"):
        CTConfig.from_dict({**base, "name": "Has Spaces"})
    cfg = CTConfig.from_dict({**base, "train_overrides": ["train.epochs=0"]})
    with pytest.raises(ConfigError, match="train.epochs: .*greater than or equal to 1.*train.epochs=0"):
        cfg.training_config()
    trained = cfg.model_copy(update={"train_overrides": ["train.epochs=2"]}).training_config("lakefs://r/abc/t")
    assert (trained.data.uri, trained.data.create_from, trained.registry.model_name) == ("lakefs://r/abc/t", None, None)


def test_cli_bad_config_and_unknown_runs_exit_2(tmp_path):
    bad = _write(tmp_path, {**ct_dict("bad-cli", "m", str(tmp_path), None), "gate": {"mode": "sometimes"}})
    out = runner.invoke(app, ["ct", "run", "--config", str(bad)])
    assert out.exit_code == 2 and "error:" in out.stderr and "gate.mode" in out.stderr
    missing = _write(tmp_path, {**ct_dict("bad-cli", "m", str(tmp_path), None), "train_config": "nope.yaml"}, "m.yaml")
    out = runner.invoke(app, ["ct", "run", "--config", str(missing)])
    assert out.exit_code == 2 and "config file not found: nope.yaml" in out.stderr
    out = runner.invoke(app, ["ct", "status", "never-ran"])
    assert out.exit_code == 2 and "no runs of pipeline 'never-ran'" in out.stderr and "fabric ct run" in out.stderr
    out = runner.invoke(app, ["ct", "watch", "--config", str(_write(tmp_path, ct_dict("w", "m", "x", None), "w.yaml"))])
    assert out.exit_code == 2 and "no triggers to watch" in out.stderr


def test_too_few_labelled_rows_fail_the_snapshot_with_a_clear_message(tmp_path):
    from mlflow import MlflowClient

    from fabric import data
    from fabric.runtime import setup_mlflow
    from tests.tabular_models import register_linear
    from workloads.ingest_sklearn import load_frame

    setup_mlflow()
    frame = load_frame("breast_cancer")
    data.init("ctfew")
    commit = data.write("lakefs://ctfew/main/table", frame, "breast cancer")
    version = register_linear(frame, "ct-few", steps=2)
    client = MlflowClient()
    client.set_registered_model_alias("ct-few", "champion", version)
    client.set_model_version_tag("ct-few", version, "fabric.data.uri", f"lakefs://ctfew/{commit}/table")
    log_labelled_rows("ct-few", str(tmp_path), frame, n=10, seed=0, prefix="few")
    path = _write(tmp_path, ct_dict("ct-few", "ct-few", str(tmp_path), None))
    out = runner.invoke(app, ["ct", "run", "--config", str(path)])
    assert out.exit_code == 2, out.output
    assert "only 10 newly labelled rows of ct-few" in out.stderr and "labels.min_rows is 50" in out.stderr
    assert "snapshot  failed" in out.stdout  # the step table is printed too
    first = pipeline_status("ct-few")
    assert first["status"] == "failed" and [s["state"] for s in first["steps"]][:2] == ["failed", "pending"]
    assert first["steps"][0]["inputs"]["reference_uri"] == f"lakefs://ctfew/{commit}/table"
    status = runner.invoke(app, ["ct", "status", "ct-few", "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["run_id"] == first["run_id"]
    # A failed run is over: the next attempt is a new run (here failing the same way, through the Python API).
    with pytest.raises(CTError, match="only 10 newly labelled rows") as err:
        run_pipeline(CTConfig.from_yaml(path))
    assert err.value.result["run_id"] != first["run_id"] and err.value.result["status"] == "failed"


def test_watch_is_due_on_a_new_commit_of_its_branch_and_on_schedule(tmp_path):
    from fabric import data
    from workloads.ingest_sklearn import load_frame

    frame = load_frame("breast_cancer")
    data.init("ctwatch")
    data.write("lakefs://ctwatch/main/table", frame, "first")
    cfg = CTConfig.from_dict({**ct_dict("ct-watch", "m", str(tmp_path), None),
                              "triggers": {"data_branch": "lakefs://ctwatch/main/table", "schedule_s": 3600}})
    assert due(cfg)["trigger"] == "schedule"  # never ran: the schedule is due; the branch head is only recorded
    assert due(cfg.model_copy(update={"triggers": cfg.triggers.model_copy(update={"schedule_s": None})})) is None
    head = data.write("lakefs://ctwatch/main/table", frame.head(300), "second")
    job = due(cfg)
    assert job == {"trigger": f"data:{head[:12]}", "reference": f"lakefs://ctwatch/{head}/table", "head": head}

    # The loop acts on it once: the run (here failing fast, model m has no champion) is recorded with its trigger,
    # the head is remembered whatever the outcome, and the next look finds nothing new to do.
    branch_only = cfg.model_copy(update={"triggers": cfg.triggers.model_copy(update={"schedule_s": None})})
    [result] = watch(branch_only, once=True)
    assert result["status"] == "failed" and "has no champion" in result["error"]
    assert pipeline_status("ct-watch")["trigger"] == f"data:{head[:12]}"
    assert due(branch_only) is None and watch(branch_only, once=True) == []


def test_approval_mode_waits_for_fabric_models_approve_and_never_promotes_twice(tmp_path, cli_env):
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from mlflow import MlflowClient

    from fabric import registry
    from fabric.ct import release
    from fabric.ct.state import Context, Skip, new_state
    from fabric.registry import APPROVAL_TAG
    from fabric.runtime import setup_mlflow
    from tests.tabular_models import register_linear
    from workloads.ingest_sklearn import load_frame

    setup_mlflow()
    frame = load_frame("breast_cancer")
    v1, v2, v3 = (register_linear(frame, "ct-approve", steps=s) for s in (2, 100, 100))
    client = MlflowClient()
    client.set_registered_model_alias("ct-approve", "champion", v1)
    cfg = CTConfig.from_dict({**ct_dict("ct-approve", "ct-approve", str(tmp_path), None),
                              "gate": {"mode": "approval", "metric": "accuracy", "poll_s": 0.2}})

    def context(version: str, champion: str, cfg: CTConfig) -> Context:  # a run's state after its register step
        state = new_state(cfg, "manual", None, None)
        scores = {"metric": "accuracy", "margin": 0.0, "rows": 60, "challenger": 0.95, "champion": 0.5}
        state.update(champion_before=champion, challenger=version, scores=scores)
        return Context(cfg=cfg, state=state, folder=Path(state["folder"]))

    def approve_when_pending() -> None:  # a person runs the CLI once the version shows up as pending
        while client.get_model_version("ct-approve", v2).tags.get(APPROVAL_TAG) != "pending":
            threading.Event().wait(0.2)
        subprocess.run([sys.executable, "-m", "fabric", "models", "approve", "ct-approve", v2, "--reason", "ok"],
                       env=cli_env, check=True, capture_output=True, timeout=120)

    approver = threading.Thread(target=approve_when_pending)
    approver.start()
    ctx = context(v2, v1, cfg)
    gated = release.gate(ctx)
    approver.join()
    assert gated.outputs["decision"] == "approved" and gated.end is None
    assert client.get_model_version_by_alias("ct-approve", "champion").version == int(v2)
    with pytest.raises(Skip, match="already the champion"):
        release.canary(ctx)
    finished = release.finish(ctx)  # approval crowned it: finish must not promote again
    assert finished.end == "promoted" and finished.outputs["action"] == "none"
    trail = [e for e in registry.audit_trail("ct-approve") if e.get("version") == v2]
    assert [e["action"] for e in trail] == ["register", "pending_approval", "approve"]
    assert trail[1]["ct_run_id"] == ctx.state["run_id"] and trail[1]["challenger_score"] == 0.95

    impatient = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"approval_timeout_s": 0.5})})
    timed_out = release.gate(context(v3, v2, impatient))
    assert timed_out.end == "approval_timeout"
    assert client.get_model_version("ct-approve", v3).tags[APPROVAL_TAG] == "pending"
