"""The serving app's `monitor:` section: scheduled checks inside the app, the admin routes that show and run them,
the Prometheus gauges, and the request outcomes that feed error-rate rules."""

from __future__ import annotations

import time

import pytest
import requests

from tests.helpers import free_ports, run_serve_app

pytestmark = pytest.mark.slow
MODEL = "monitored-bc"
PREDICT_KEY, ADMIN_KEY = "mon-predict-key", "mon-admin-key"


@pytest.fixture(scope="module")
def app(ray_session, tmp_path_factory):
    from mlflow import MlflowClient
    from ray import serve

    from fabric import data
    from fabric.runtime import metrics_url, setup_mlflow
    from fabric.serve.app import build_app
    from fabric.serve.config import ServeConfig
    from fabric.tabular.sample import register_linear
    from workloads.ingest_sklearn import load_frame

    setup_mlflow()
    frame = load_frame("breast_cancer")
    data.init("monitored")
    commit = data.write("lakefs://monitored/main/bc", frame, "reference rows")
    version = register_linear(frame, MODEL, steps=50)
    client = MlflowClient()
    for key, value in {"fabric.data.uri": f"lakefs://monitored/{commit}/bc", "fabric.data.commit": commit,
                       "fabric.label_column": "label"}.items():
        client.set_model_version_tag(MODEL, version, key, value)
    client.set_registered_model_alias(MODEL, "champion", version)
    [port] = free_ports()
    log_root = str(tmp_path_factory.mktemp("monitored-log"))
    cfg = ServeConfig.from_dict({
        "name": "test-monitored", "port": port, "inference_log": {"path": log_root, "flush_s": 0.3},
        "models": [{"name": MODEL, "placement": "gateway", "reload_interval_s": 3600}],
        "monitor": {"interval_s": 3600, "first_check_s": 3600, "specs": [{
            "model": MODEL, "check": {"last": 200, "min_rows": 40},
            "rules": [{"name": "drift", "when": "drift_share_above", "threshold": 0.1},
                      {"name": "errors", "when": "error_rate_above", "threshold": 0.5}]}]},
    })
    url = run_serve_app(build_app, cfg, f"{PREDICT_KEY}:predict,{ADMIN_KEY}:admin")
    try:
        yield {"url": url, "frame": frame, "version": version, "metrics": metrics_url()}
    finally:
        serve.shutdown()


def _send(app, rows):
    for start in range(0, len(rows), 10):
        body = {"dataframe_records": rows.iloc[start:start + 10].to_dict(orient="records")}
        response = requests.post(f"{app['url']}/models/{MODEL}/invocations", json=body, timeout=60,
                                 headers={"Authorization": f"Bearer {PREDICT_KEY}"})
        assert response.status_code == 200, response.text


def _admin(app, method, path):
    return requests.request(method, app["url"] + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120)


def test_monitor_routes_need_an_admin_key_and_say_when_there_is_too_little_data(app):
    denied = requests.get(app["url"] + "/admin/monitor", headers={"Authorization": f"Bearer {PREDICT_KEY}"},
                          timeout=30)
    assert denied.status_code == 403
    status = _admin(app, "GET", "/admin/monitor").json()
    assert status["models"] == [MODEL] and status["interval_s"] == 3600
    early = _admin(app, "POST", f"/admin/models/{MODEL}/monitor/check").json()
    assert "error" in early and MODEL in early["error"]  # no log yet: said, not a 500
    assert _admin(app, "POST", "/admin/models/nope/monitor/check").status_code == 404


def test_a_shifted_window_is_checked_by_the_app_fires_and_shows_as_gauges(app):
    rows = app["frame"].drop(columns=["label"]).sample(200, random_state=0).reset_index(drop=True)
    for column in ("mean_radius", "mean_area", "worst_area", "mean_perimeter"):
        rows[column] = rows[column] * 10
    _send(app, rows)
    time.sleep(1.5)  # the inference log flushes every 0.3 s
    outcome = _admin(app, "POST", f"/admin/models/{MODEL}/monitor/check").json()
    check = outcome["check"]
    assert check["version"] == app["version"] and check["rows"] == 200
    assert {"mean_radius", "mean_area", "worst_area", "mean_perimeter"} <= set(check["drifted_columns"])
    assert [a["rule"] for a in outcome["alerts"]] == ["drift"]
    assert outcome["requests"] == 20 and outcome["error_rate"] == 0.0  # the gateway's tally reached the monitor
    shown = _admin(app, "GET", f"/admin/models/{MODEL}/monitor").json()
    assert shown["last"]["check"]["drift_share"] == check["drift_share"]
    again = _admin(app, "POST", f"/admin/models/{MODEL}/monitor/check").json()
    assert again["alerts"] == [] and again["suppressed"] == ["drift"]  # one drift fires once
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = requests.get(app["metrics"], timeout=10).text
        if "fabric_drift_share" in text and "fabric_column_drifted" in text:
            break
        time.sleep(1)
    gauge = [line for line in text.splitlines() if line.startswith("ray_fabric_drift_share{")]
    assert gauge and any(f'model="{MODEL}"' in line for line in gauge), text[-2000:]
    drifted = [line for line in text.splitlines()
               if line.startswith("ray_fabric_column_drifted{") and 'column="mean_area"' in line]
    assert drifted and drifted[0].rstrip().endswith("1.0")
