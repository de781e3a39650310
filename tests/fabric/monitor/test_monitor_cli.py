"""`fabric monitor check|report|ui` through typer's CliRunner (and a real `fabric monitor ui` process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from fabric.cli import app
from tests.helpers import free_ports, wait_until_answers

MODEL = "monitor-cli"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A registered model whose version is tagged with its data commit, and 200 rows logged the gateway's way."""
    import mlflow

    from fabric import data
    from fabric.runtime import setup_mlflow
    from fabric.serve.inference_log import InferenceLog
    from fabric.tabular.sample import register_linear
    from tests.registry_models import tracking_env_restored
    from workloads.ingest_sklearn import load_frame

    with tracking_env_restored():
        setup_mlflow()
        frame = load_frame("breast_cancer")
        data.init(MODEL)
        commit = data.write(f"lakefs://{MODEL}/main/table", frame, "breast cancer table")
        version = register_linear(frame, MODEL, steps=20, tags={
            "fabric.data.uri": f"lakefs://{MODEL}/{commit}/table", "fabric.data.commit": commit})
        mlflow.MlflowClient().set_registered_model_alias(MODEL, "champion", version)
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
        root = str(tmp_path_factory.mktemp("cli-log"))
        log = InferenceLog(root, flush_rows=10**9, flush_s=10**6)
        features = frame.drop(columns=["label"]).sample(200, random_state=0)
        for i in range(0, 200, 20):
            rows = features.iloc[i:i + 20]
            out = model.predict(rows)
            log.add(f"cli-{i}", MODEL, version, "invocations", list(rows.columns), rows.to_numpy(),
                    {c: out[c].to_numpy() for c in out.columns})
        log.flush()
        yield {"root": root, "version": version}


def fabric(*args: str, code: int = 0):
    result = CliRunner().invoke(app, ["monitor", *args])
    assert result.exit_code == code, result.output
    return result


def test_check_prints_what_drifted_and_json(logged):
    text = fabric("check", MODEL, "--last", "200", "--log-root", logged["root"]).stdout
    assert text.startswith(f"{MODEL} v{logged['version']}: 0 of 30 features drifted (share 0.00; dataset drift: no)")
    assert "window: last 200 rows, 200 rows (0 labelled)" in text
    assert "column" in text and "K-S p_value" in text and "mean_radius" in text and "(prediction)" in text
    assert "quality: none (0 of 200 rows labelled; quality needs at least 20)" in text
    assert "report: " in text and ".html" in text and "MLflow run: " in text

    body = json.loads(fabric("check", MODEL, "--since", "1d", "--json", "--log-root", logged["root"]).stdout)
    assert body["rows"] == 200 and body["window"]["since"] == "1d" and body["quality"] is None
    assert set(body["columns"]["mean_radius"]) == {"drifted", "score", "method", "threshold"}
    assert Path(body["json_path"]).is_file()


def test_report_writes_into_out_with_settings_from_yaml(logged, tmp_path):
    schema = tmp_path / "schema.yaml"
    schema.write_text("columns:\n  mean_radius: {type: float, min: 0, max: 10}\n")
    config = tmp_path / "monitor.yaml"
    config.write_text(f"check:\n  last: 150\n  method: psi\n  validation_schema: {schema}\n")
    out = tmp_path / "out"
    body = json.loads(fabric("report", MODEL, "--out", str(out), "--config", str(config), "--log-root",
                             logged["root"], "--json").stdout)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].endswith(f"-v{logged['version']}.html") and files[1].endswith(".json")
    assert body["rows"] == 150 and body["html_path"] == str(out / files[0])
    assert {c["method"] for c in body["columns"].values()} == {"psi"}
    radius = body["data_quality"]["mean_radius"]  # most tumours measure more than 10: out of the schema's range
    assert radius["range"] == [0, 10] and radius["range_source"] == "schema" and radius["out_of_range"] > 50
    assert body["data_quality"]["mean_texture"]["range_source"] == "reference"
    assert body["data_quality"]["mean_texture"]["out_of_range"] == 0
    text = fabric("report", MODEL, "--out", str(out), "--last", "40", "--log-root", logged["root"]).stdout
    assert "window: last 40 rows, 40 rows" in text and str(out) in text and len(list(out.iterdir())) == 4


@pytest.mark.parametrize(("args", "message"), [
    (["check", "nope"], "error: unknown model 'nope'; registered models:"),
    (["check", MODEL, "--since", "soon"], "error: time span 'soon' is not like 30m"),
    (["check", MODEL, "--last", "5", "--since", "1h"], "error: give either last (rows) or since"),
    (["check", MODEL, "--last", "10"], "error: monitor-cli version 1: 10 logged rows in the window"),
    (["check", MODEL, "--version", "7"], "error: model monitor-cli has no version '7'; versions: 1"),
])
def test_bad_input_exits_2_without_a_traceback(logged, args, message):
    out = fabric(*args, "--log-root", logged["root"], code=2)
    assert message in out.stderr and "Traceback" not in out.output


@pytest.mark.slow
def test_ui_serves_the_workspace_projects_and_snapshots(logged, cli_env, tmp_path):
    fabric("check", MODEL, "--last", "100", "--log-root", logged["root"])  # at least one snapshot in the workspace
    [port] = free_ports()
    log = tmp_path / "ui.log"
    with open(log, "w") as handle:
        server = subprocess.Popen([str(Path(sys.executable).parent / "fabric"), "monitor", "ui", "--port", str(port)],
                                  stdout=handle, stderr=subprocess.STDOUT, env=cli_env)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/api/projects", server, str(log), timeout=120)
        projects = requests.get(f"http://127.0.0.1:{port}/api/projects", timeout=30).json()
        [project] = [p for p in projects if p["name"] == MODEL]
        snapshots = requests.get(f"http://127.0.0.1:{port}/api/projects/{project['id']}/snapshots", timeout=30)
        assert snapshots.status_code == 200 and len(snapshots.json()) >= 1
        assert any(np.isclose(m.get("value", {}).get("share", -1), 0.0) for m in _metrics(port, project["id"]))
        dashboard = requests.get(f"http://127.0.0.1:{port}/api/v2/dashboards/{project['id']}", timeout=30).json()
        assert "Share of drifted features" in json.dumps(dashboard) and "Accuracy" in json.dumps(dashboard)
        assert f"Evidently UI on http://127.0.0.1:{port}" in log.read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _metrics(port: int, project_id: str) -> list[dict]:
    """The DriftedColumnsCount values of the project's snapshots, read back through the UI's download route."""
    found = []
    for snapshot in requests.get(f"http://127.0.0.1:{port}/api/projects/{project_id}/snapshots", timeout=30).json():
        body = requests.get(f"http://127.0.0.1:{port}/api/projects/{project_id}/{snapshot['id']}/download",
                            params={"report_format": "json"}, timeout=30)
        if body.status_code == 200:
            found += [m for m in body.json().get("metrics", []) if "DriftedColumnsCount" in str(m.get("config"))]
    return found


def test_check_with_a_monitor_spec_fires_its_rules_once(logged, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {MODEL}\ncheck: {{last: 200}}\nrules:\n"
                    "  - {name: labels-late, when: too_few_labels, threshold: 20, actions: [log]}\n"
                    "  - {name: any-drift, when: drift_share_above, threshold: 0.5}\n")
    text = fabric("check", MODEL, "--config", str(spec), "--log-root", logged["root"]).stdout
    assert "alert labels-late: " in text and "0 of 200 rows labelled" in text and "log ok" in text
    assert "any-drift" not in text  # nothing drifted: that rule stays quiet
    body = json.loads(fabric("check", MODEL, "--config", str(spec), "--json", "--log-root", logged["root"]).stdout)
    assert body["alerts"] == [] and body["suppressed"] == ["labels-late"]  # one cool-down: fired once
    other = tmp_path / "other.yaml"
    other.write_text("model: another-model\nrules: []\n")
    assert "watches model 'another-model'" in fabric("check", MODEL, "--config", str(other), code=2).output
