"""fabric/monitor/alerts.py: rules fire on a check's figures, once per cool-down, call a real webhook with the
documented body, and start the continuous-training pipeline."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from fabric.config import ConfigError
from fabric.monitor import CheckResult
from fabric.monitor.alerts import AlertRule, MonitorSpec, alerts_dir, evaluate, run_spec
from tests.helpers import free_ports


def result(model="alerted", version="3", drift_share=0.4, quality=None, labelled=0, rows=200) -> CheckResult:
    columns = {"mean_radius": {"drifted": True, "score": 0.001, "method": "ks", "threshold": 0.05},
               "mean_texture": {"drifted": False, "score": 0.6, "method": "ks", "threshold": 0.05}}
    return CheckResult(
        model=model, version=version, time=time.time(), rows=rows, labelled_rows=labelled, window={"last": rows},
        reference_uri="lakefs://demo/abc/t", reference_commit="abc", reference_rows=500, drift_share=drift_share,
        dataset_drift=drift_share >= 0.5, columns=columns,
        drifted_columns=[c for c, s in columns.items() if s["drifted"]], prediction_drift=None, quality=quality,
        quality_note=None if quality else "no labelled rows", data_quality={}, html_path="/tmp/r.html",
        json_path="/tmp/r.json", mlflow_run_id=None)


@pytest.fixture
def webhook():
    """A real HTTP server on loopback that keeps every JSON body posted to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    [port] = free_ports()
    server = HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}/hook", received
    server.shutdown()


def test_each_condition_fires_on_its_figures_only():
    drift = AlertRule(name="d", when="drift_share_above", threshold=0.3)
    assert evaluate(drift, result(drift_share=0.4))["drifted_columns"] == ["mean_radius"]
    assert evaluate(drift, result(drift_share=0.3)) is None
    column = AlertRule(name="c", when="column_drifted", column="mean_radius")
    assert evaluate(column, result())["score"] == 0.001
    assert evaluate(AlertRule(name="c2", when="column_drifted", column="mean_texture"), result()) is None
    quality = AlertRule(name="q", when="quality_below", metric="accuracy", threshold=0.9)
    assert evaluate(quality, result(quality={"accuracy": 0.8}, labelled=50))["value"] == 0.8
    assert evaluate(quality, result(quality={"accuracy": 0.95}, labelled=50)) is None
    assert evaluate(quality, result(quality=None)) is None  # no labels: nothing to judge, no false alarm
    errors = AlertRule(name="e", when="error_rate_above", threshold=0.05)
    assert evaluate(errors, result(), error_rate=0.1) == {"error_rate": 0.1, "threshold": 0.05}
    assert evaluate(errors, result(), error_rate=None) is None
    labels = AlertRule(name="l", when="too_few_labels", threshold=20)
    assert evaluate(labels, result(labelled=5))["labelled_rows"] == 5
    assert evaluate(labels, result(labelled=20)) is None


def test_rules_are_validated_before_anything_runs():
    with pytest.raises(ConfigError, match="needs column"):
        MonitorSpec.from_dict({"model": "m", "rules": [{"name": "x", "when": "column_drifted"}]})
    with pytest.raises(ConfigError, match="share between 0 and 1"):
        MonitorSpec.from_dict({"model": "m", "rules": [{"name": "x", "when": "drift_share_above", "threshold": 30}]})
    with pytest.raises(ConfigError, match="no webhook.url"):
        MonitorSpec.from_dict({"model": "m", "rules": [{"name": "x", "when": "drift_share_above", "threshold": 0.3,
                                                        "actions": ["webhook"]}]})
    with pytest.raises(ConfigError, match="repeated: x"):
        rule = {"name": "x", "when": "too_few_labels", "threshold": 3}
        MonitorSpec.from_dict({"model": "m", "rules": [rule, rule]})


def test_an_alert_fires_once_per_cooldown_and_posts_the_documented_body(webhook):
    url, received = webhook
    spec = MonitorSpec.from_dict({"model": "alerted", "webhook": {"url": url}, "rules": [
        {"name": "feature-drift", "when": "drift_share_above", "threshold": 0.3, "cooldown_s": 60,
         "actions": ["log", "webhook"]}]})
    first = run_spec(spec, result=result(), now=1000.0)
    again = run_spec(spec, result=result(), now=1030.0)
    later = run_spec(spec, result=result(), now=1061.0)
    other_version = run_spec(spec, result=result(version="4"), now=1031.0)
    assert [a["rule"] for a in first["alerts"]] == ["feature-drift"]
    assert again["alerts"] == [] and again["suppressed"] == ["feature-drift"]
    assert len(later["alerts"]) == 1 and len(other_version["alerts"]) == 1
    assert len(received) == 3
    body = received[0]
    assert {"rule", "when", "model", "version", "figures", "message", "report", "time"} <= set(body)
    assert body["rule"] == "feature-drift" and body["model"] == "alerted" and body["version"] == "3"
    assert body["figures"]["drift_share"] == 0.4 and body["figures"]["drifted_columns"] == ["mean_radius"]
    assert body["report"] == {"html": "/tmp/r.html", "json": "/tmp/r.json"}
    assert first["alerts"][0]["actions"]["webhook"] == {"ok": True, "url": url, "status": 204}
    events = (alerts_dir() / "events.jsonl").read_text().splitlines()
    assert sum(json.loads(e)["model"] == "alerted" for e in events) == 3


def test_a_webhook_that_is_down_is_recorded_and_does_not_stop_the_other_actions():
    [port] = free_ports()
    spec = MonitorSpec.from_dict({"model": "down", "webhook": {"url": f"http://127.0.0.1:{port}/", "timeout_s": 1},
                                  "rules": [{"name": "r", "when": "drift_share_above", "threshold": 0.1,
                                             "actions": ["webhook", "log"]}]})
    [alert] = run_spec(spec, result=result(model="down"))["alerts"]
    assert alert["actions"]["webhook"]["ok"] is False and "ConnectionError" in alert["actions"]["webhook"]["error"]
    assert alert["actions"]["log"] == {"ok": True}


@pytest.mark.slow
def test_the_ct_action_starts_the_pipeline_in_its_own_process(ray_session, tmp_path):
    """The serving app's choice: `python -m workloads.continuous_training` on the same Ray, told why it runs."""
    import yaml

    from fabric.ct import CTError, pipeline_status
    from tests.fabric.ct.helpers import ct_dict

    config = tmp_path / "ct.yaml"  # a model with no champion: the run starts, then its snapshot step says why
    config.write_text(yaml.safe_dump(ct_dict("alert-started", "no-champion-model", str(tmp_path / "log"), None)))
    spec = MonitorSpec.from_dict({"model": "alerted", "ct": {"config": str(config)}, "rules": [
        {"name": "feature-drift", "when": "drift_share_above", "threshold": 0.3, "actions": ["ct"]}]})
    [alert] = run_spec(spec, result=result(version="ct"))["alerts"]
    started = alert["actions"]["ct"]
    assert started["ok"] and started["mode"] == "process"
    deadline, status = time.monotonic() + 240, {}
    while status.get("status") in (None, "running") and time.monotonic() < deadline:
        time.sleep(2)
        try:
            status = pipeline_status("alert-started")
        except CTError:  # the process has not created its run yet
            pass
    assert status["trigger"] == "alert:feature-drift"
    assert status["reason"].startswith("alerted vct: 40% of features drifted")
    snapshot = status["steps"][0]
    assert snapshot["name"] == "snapshot" and snapshot["state"] == "failed"
    assert "no-champion-model" in snapshot["error"], snapshot
    assert "no-champion-model" in open(started["log"]).read()
