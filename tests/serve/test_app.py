"""`fabric serve` on the session's Ray: V2 and MLflow protocols, auth, limits, validation, hot reload."""

from __future__ import annotations

import os

import numpy as np
import pytest
import requests

from tests.helpers import free_ports, run_serve_app
from tests.tabular_models import register_linear

pytestmark = pytest.mark.slow
MODEL = "served-bc"
SKLEARN, CUSTOM = "served-sklearn", "served-custom"  # MLflow models fabric did not train, served by alias
TOTALS = "served-totals"  # one more, logged without a signature, that answers with a dict
PREDICT_KEY, ADMIN_KEY, LABEL_KEY = "test-predict-key", "test-admin-key", "test-label-key"


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    import mlflow
    from mlflow import MlflowClient
    from ray import serve

    from fabric.runtime import setup_mlflow
    from fabric.serve.app import build_app
    from fabric.serve.config import ServeConfig
    from workloads.ingest_sklearn import load_frame

    setup_mlflow()
    frame = load_frame("breast_cancer")
    v1, v2 = register_linear(frame, MODEL, steps=2), register_linear(frame, MODEL, steps=200)
    broken = register_linear(frame, MODEL, steps=2, extra_feature="not_a_column")
    MlflowClient().set_registered_model_alias(MODEL, "champion", v1)
    _register_foreign_models(frame)
    [port] = free_ports()
    log_root = str(tmp_path_factory.mktemp("inference-log"))
    cfg = ServeConfig.from_dict({"name": "test-serve", "port": port, "max_request_bytes": 200_000,
                                 "inference_log": {"path": log_root, "flush_s": 0.5},
                                 "models": [{"name": MODEL, "reload_interval_s": 3600, "num_cpus": 0.1,
                                             "num_replicas": 2},
                                            *({"name": n, "placement": "gateway", "num_cpus": 0.05}
                                              for n in (SKLEARN, CUSTOM, TOTALS))]})
    url = run_serve_app(build_app, cfg, f"{PREDICT_KEY}:predict,{ADMIN_KEY}:admin,{LABEL_KEY}:label")
    try:
        yield {"url": url, "frame": frame, "log_root": log_root, "v1": v1, "v2": v2, "broken": broken,
               "pyfunc": {v: mlflow.pyfunc.load_model(f"models:/{MODEL}/{v}") for v in (v1, v2)},
               "foreign": {n: mlflow.pyfunc.load_model(f"models:/{n}@champion") for n in (SKLEARN, CUSTOM, TOTALS)}}
    finally:
        serve.shutdown()
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def _register_foreign_models(frame):
    """A scikit-learn pipeline logged with mlflow.sklearn and a custom PythonModel with a string input, each
    registered with a signature, and a PythonModel without one that answers with a dict; all with the alias
    champion."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    class Greeter(mlflow.pyfunc.PythonModel):  # defined here, so cloudpickle stores the class itself
        def predict(self, context, model_input, params=None):
            return pd.DataFrame({"greeting": ["hello " + w for w in model_input["word"]],
                                 "double": model_input["x"] * 2})

    class Totals(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return {"total": (model_input["a"] + model_input["b"]).tolist(), "rows": len(model_input)}

    x, y = frame.drop(columns=["label"]), frame["label"]
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    example = pd.DataFrame({"word": ["a"], "x": [1.0]})
    with mlflow.start_run(run_name="foreign-models"):
        logged = [
            mlflow.sklearn.log_model(pipeline, name="sklearn", signature=infer_signature(x, pipeline.predict(x)),
                                     registered_model_name=SKLEARN, pip_requirements=["scikit-learn"]),
            mlflow.pyfunc.log_model(name="custom", python_model=Greeter(), registered_model_name=CUSTOM,
                                    signature=infer_signature(example, Greeter().predict(None, example)),
                                    pip_requirements=["mlflow"]),  # given: inferring them takes seconds
            mlflow.pyfunc.log_model(name="totals", python_model=Totals(), registered_model_name=TOTALS,
                                    pip_requirements=["mlflow"]),
        ]
    for name, info in zip((SKLEARN, CUSTOM, TOTALS), logged, strict=True):
        MlflowClient().set_registered_model_alias(name, "champion", info.registered_model_version)


def _post(server, path, body=None, key=PREDICT_KEY, headers=None):
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    return requests.post(server["url"] + path, json=body, headers=headers, timeout=60)


def test_v2_and_invocations_match_the_registered_pyfunc(server):
    import tritonclient.http as triton

    rows = server["frame"].drop(columns=["label"]).iloc[:7]
    expected = server["pyfunc"][server["v1"]].predict(rows)

    client = triton.InferenceServerClient(url=server["url"].removeprefix("http://"))
    headers = {"Authorization": f"Bearer {PREDICT_KEY}"}
    ready = requests.get(f"{server['url']}/v2/models/{MODEL}/ready", headers=headers, timeout=30)
    assert ready.status_code == 200, ready.text
    assert client.is_server_live(headers=headers) and client.is_model_ready(MODEL, headers=headers)
    inputs = []
    for column in rows.columns:
        tensor = triton.InferInput(column, [len(rows)], "FP64")
        tensor.set_data_from_numpy(rows[column].to_numpy("float64"), binary_data=False)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(c, binary_data=False) for c in expected.columns]
    result = client.infer(MODEL, inputs, outputs=outputs, headers=headers)
    assert result.get_response()["model_version"] == server["v1"]
    np.testing.assert_array_equal(result.as_numpy("prediction"), expected["prediction"].to_numpy())
    # float32 models: another process may sum in another order (threads), so agree to float32 precision
    np.testing.assert_allclose(result.as_numpy("probability_1"), expected["probability_1"], rtol=0, atol=1e-6)
    metadata = client.get_model_metadata(MODEL, headers=headers)
    assert [i["name"] for i in metadata["inputs"]] == list(rows.columns)

    split = _post(server, "/invocations", {"dataframe_split": rows.to_dict(orient="split") | {"index": None}})
    records = _post(server, "/invocations", {"dataframe_records": rows.to_dict(orient="records")})
    assert split.status_code == records.status_code == 200, split.text
    assert split.json() == records.json()
    got = split.json()["predictions"]
    assert [r["prediction"] for r in got] == expected["prediction"].tolist()
    np.testing.assert_allclose([r["probability_1"] for r in got], expected["probability_1"], atol=1e-6)


def test_api_keys_roles_and_request_limits(server):
    body = {"dataframe_records": server["frame"].drop(columns=["label"]).iloc[:1].to_dict(orient="records")}
    assert _post(server, "/invocations", body, key=None).status_code == 401
    wrong = _post(server, "/invocations", body, key="nope")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid API key"
    assert _post(server, "/invocations", body).status_code == 200
    assert _post(server, "/invocations", body, key=ADMIN_KEY).status_code == 200  # admin may predict too
    forbidden = _post(server, f"/admin/models/{MODEL}/reload")
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["error"]
    big = {"dataframe_records": body["dataframe_records"] * 1000}
    too_big = _post(server, "/invocations", big)
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    missing = _post(server, "/invocations", {"dataframe_records": [{"mean_radius": 1.0}]})
    assert missing.status_code == 422 and "mean_texture" in missing.json()["error"]
    bad_json = requests.post(server["url"] + "/invocations", data="{not json",
                             headers={"Authorization": f"Bearer {PREDICT_KEY}"}, timeout=30)
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
    unknown = _post(server, "/v2/models/nope/infer", {"inputs": []})
    assert unknown.status_code == 404 and MODEL in unknown.json()["error"]
    any_version = _post(server, f"/v2/models/{MODEL}/versions/{server['v2']}/infer", {"inputs": []})
    assert any_version.status_code == 403 and "admin" in any_version.json()["error"]
    absent = _post(server, f"/v2/models/{MODEL}/versions/999/infer", {"inputs": []}, key=ADMIN_KEY)
    assert absent.status_code == 404 and "does not exist" in absent.json()["error"]
    assert bad_json.headers["x-request-id"]


def test_alias_move_is_picked_up_by_a_reload_without_restart(server):
    from mlflow import MlflowClient

    rows = server["frame"].drop(columns=["label"]).iloc[:5]
    body = {"dataframe_records": rows.to_dict(orient="records")}
    before = _post(server, "/v2/models/" + MODEL + "/infer", {"inputs": [
        {"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.to_numpy().ravel().tolist()}]})
    assert before.json()["model_version"] == server["v1"]
    MlflowClient().set_registered_model_alias(MODEL, "champion", server["v2"])
    reloaded = _post(server, f"/admin/models/{MODEL}/reload", key=ADMIN_KEY)
    assert reloaded.status_code == 200 and reloaded.json()["version"] == server["v2"]
    after = _post(server, "/invocations", body).json()["predictions"]
    expected = server["pyfunc"][server["v2"]].predict(rows)
    np.testing.assert_allclose([r["probability_1"] for r in after], expected["probability_1"], atol=1e-6)
    MlflowClient().set_registered_model_alias(MODEL, "champion", server["v1"])
    _post(server, f"/admin/models/{MODEL}/reload", key=ADMIN_KEY)


def _rows(server, n=1):
    return {"dataframe_records": server["frame"].drop(columns=["label"]).iloc[:n].to_dict(orient="records")}


def _get(server, path, key=ADMIN_KEY):
    return requests.get(server["url"] + path, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_canary_sends_its_share_to_the_candidate_and_finishing_makes_it_champion(server):
    from fabric import registry

    start = _post(server, f"/admin/models/{MODEL}/rollout", {"strategy": "canary", "version": server["v2"],
                                                             "percent": 20, "seed": 1}, key=ADMIN_KEY)
    assert start.status_code == 200, start.text
    assert _post(server, f"/admin/models/{MODEL}/rollout", {"strategy": "canary", "version": "1"},
                 key=ADMIN_KEY).status_code == 409
    versions = [_post(server, "/v2/models/" + MODEL + "/infer", {"inputs": [
        {"name": "x", "shape": [1, 30], "datatype": "FP64",
         "data": server["frame"].drop(columns=["label"]).iloc[0].tolist()}]}).json()["model_version"]
        for _ in range(500)]
    share = versions.count(server["v2"]) / len(versions)
    assert abs(share - 0.2) <= 4 * (0.2 * 0.8 / 500) ** 0.5, share  # 4 standard deviations
    status = _get(server, f"/admin/models/{MODEL}/rollout").json()["active"]
    assert status["routed"][server["v2"]] == versions.count(server["v2"])
    finished = _post(server, f"/admin/models/{MODEL}/rollout/finish", key=ADMIN_KEY)
    assert finished.status_code == 200 and finished.json()["outcome"] == "finished"
    assert registry.show(MODEL)["aliases"]["champion"] == server["v2"]
    assert _post(server, "/invocations", _rows(server)).status_code == 200
    actions = [e["action"] for e in registry.audit_trail(MODEL)]
    assert "rollout_canary" in actions and "rollout_canary_finished" in actions
    registry.rollback(MODEL, reason="test cleanup")
    _post(server, f"/admin/models/{MODEL}/reload", key=ADMIN_KEY)


def test_failing_canary_is_rolled_back_automatically_and_audited(server):
    from fabric import registry

    start = _post(server, f"/admin/models/{MODEL}/rollout", {"strategy": "canary", "version": server["broken"],
                                                             "percent": 50, "min_requests": 5}, key=ADMIN_KEY)
    assert start.status_code == 200, start.text
    answers = [_post(server, "/invocations", _rows(server)) for _ in range(40)]
    assert all(a.status_code == 200 for a in answers)  # failed candidate requests fell back to the live version
    state = _get(server, f"/admin/models/{MODEL}/rollout").json()
    assert state["active"] is None
    assert state["last"]["outcome"] == "rolled_back_automatically" and "error rate" in state["last"]["reason"]
    import time

    deadline = time.monotonic() + 30  # the audit entry is written off the request path
    while not (ended := [e for e in registry.audit_trail(MODEL) if e["action"] == "rollout_rolled_back_automatically"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    entry = ended[-1]
    assert entry["version"] == server["broken"] and entry["from_version"] == server["v1"]
    assert entry["actor"] == "fabric-serve" and "error rate" in entry["reason"]


def test_shadow_answers_with_live_only_and_keeps_both_answers(server):
    start = _post(server, f"/admin/models/{MODEL}/rollout", {"strategy": "shadow", "version": server["v2"]},
                  key=ADMIN_KEY)
    assert start.status_code == 200, start.text
    for i in range(10):
        answer = _post(server, "/v2/models/" + MODEL + "/infer", {"inputs": [
            {"name": "x", "shape": [1, 30], "datatype": "FP64",
             "data": server["frame"].drop(columns=["label"]).iloc[i].tolist()}]}, headers={"x-request-id": f"r{i}"})
        assert answer.json()["model_version"] == server["v1"]
    import time

    deadline = time.monotonic() + 30
    while (shadow := _get(server, f"/admin/models/{MODEL}/rollout").json()["active"]["shadow"])["compared"] < 10:
        assert time.monotonic() < deadline, shadow
        time.sleep(0.2)
    last = shadow["last"][-1]
    assert last["live_version"] == server["v1"] and last["candidate_version"] == server["v2"]
    assert last["live"] and last["candidate"] and last["error"] is None
    assert _post(server, f"/admin/models/{MODEL}/rollback", key=ADMIN_KEY).json()["outcome"] == "rolled_back"


def test_blue_green_switches_at_once_and_back(server):
    body = {"strategy": "blue_green", "version": server["v2"]}
    assert _post(server, f"/admin/models/{MODEL}/rollout", body, key=ADMIN_KEY).status_code == 200
    assert {_post(server, "/invocations", _rows(server)).status_code for _ in range(5)} == {200}
    status = _get(server, f"/admin/models/{MODEL}/rollout").json()["active"]
    assert status["routed"] == {server["v1"]: 0, server["v2"]: 5}
    assert _post(server, f"/admin/models/{MODEL}/rollback", key=ADMIN_KEY).status_code == 200
    versions = {_post(server, "/v2/models/" + MODEL + "/infer", {"inputs": [
        {"name": "x", "shape": [1, 30], "datatype": "FP64",
         "data": server["frame"].drop(columns=["label"]).iloc[0].tolist()}]}).json()["model_version"]
        for _ in range(5)}
    assert versions == {server["v1"]}
    bad = _post(server, f"/admin/models/{MODEL}/rollout", {"strategy": "sideways", "version": "2"}, key=ADMIN_KEY)
    assert bad.status_code == 422 and "strategy" in bad.json()["error"]


def test_rollout_cli_talks_to_the_admin_api(server):
    import json

    from typer.testing import CliRunner

    from fabric.cli import app

    runner = CliRunner()
    common = ["--url", server["url"], "--key", ADMIN_KEY]
    started = runner.invoke(app, ["serve", "rollout", MODEL, "--strategy", "canary", "--version", server["v2"],
                                  "--percent", "30", *common, "--json"])
    assert started.exit_code == 0, started.output
    assert json.loads(started.stdout)["percent"] == 30
    status = json.loads(runner.invoke(app, ["serve", "rollout", MODEL, *common, "--json"]).stdout)
    assert status["active"]["candidate"] == server["v2"]
    assert runner.invoke(app, ["serve", "rollback", MODEL, *common, "--reason", "cli test"]).exit_code == 0
    again = runner.invoke(app, ["serve", "rollback", MODEL, *common])
    assert again.exit_code == 1 and "no rollout in progress" in again.output
    denied = runner.invoke(app, ["serve", "rollout", MODEL, "--url", server["url"], "--key", PREDICT_KEY])
    assert denied.exit_code == 2 and "403" in denied.output


def test_ray_serve_deploy_entry_point_builds_the_same_application(server, tmp_path, monkeypatch):
    from ray.serve import Application

    from fabric.serve.app import app_builder

    config = tmp_path / "serve.yaml"
    config.write_text(f"name: built\nmodels:\n  - name: {MODEL}\n")
    monkeypatch.setenv("FABRIC_API_KEYS", f"{PREDICT_KEY}:predict")
    assert isinstance(app_builder({"config": str(config)}), Application)
    monkeypatch.delenv("FABRIC_API_KEYS")
    from fabric.config import ConfigError

    with pytest.raises(ConfigError, match="FABRIC_API_KEYS"):
        app_builder({"config": str(config)})
    monkeypatch.setenv("FABRIC_API_KEYS", f"{PREDICT_KEY}:predict")
    config.write_text(f"name: built\nmodels:\n  - name: {MODEL}\n    alias: nope\n")
    with pytest.raises(ConfigError, match=f"{MODEL}@nope is not in the registry"):
        app_builder({"config": str(config)})


def test_every_prediction_is_logged_and_late_labels_join_by_request_id(server):
    import time

    from fabric.serve.inference_log import read_log

    rows = server["frame"].drop(columns=["label"]).iloc[10:12]
    answer = _post(server, "/invocations", {"dataframe_records": rows.to_dict(orient="records")},
                   headers={"x-request-id": "log-test-1"})
    assert answer.status_code == 200
    labels = {"labels": [{"request_id": "log-test-1", "row": 0, "label": 1},
                         {"request_id": "log-test-1", "row": 1, "label": 0}]}
    assert _post(server, f"/v2/models/{MODEL}/labels", labels).status_code == 403  # a predict key may not label
    labelled = _post(server, f"/v2/models/{MODEL}/labels", labels, key=LABEL_KEY)
    assert labelled.status_code == 200 and labelled.json() == {"accepted": 2}
    assert _post(server, f"/v2/models/{MODEL}/labels", {"labels": [{"label": 1}]}, key=LABEL_KEY).status_code == 422
    deadline = time.monotonic() + 30
    while True:
        log = read_log(MODEL, root=server["log_root"])
        mine = log[log["request_id"] == "log-test-1"] if len(log) else log
        if len(mine) == 2:
            break
        assert time.monotonic() < deadline, "the inference log was not flushed"
        time.sleep(0.5)
    assert mine["label"].tolist() == [1, 0]
    assert mine["inputs"].iloc[0]["mean_radius"] == rows["mean_radius"].iloc[0]
    assert mine["outputs"].iloc[1] == answer.json()["predictions"][1]
    assert set(mine["endpoint"]) == {"invocations"} and mine["version"].iloc[0] in (server["v1"], server["v2"])


def test_fuzzed_bodies_never_get_a_5xx_and_every_4xx_explains(server):
    import json

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
    anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
    columns = list(server["frame"].drop(columns=["label"]).columns)
    v2_tensor = st.fixed_dictionaries({"name": st.sampled_from([*columns[:3], "x", ""]),
                                       "shape": st.lists(st.integers(-2, 4), max_size=3),
                                       "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "nope"]),
                                       "data": st.lists(scalars, max_size=6)})
    bodies = st.one_of(
        anything,
        st.fixed_dictionaries({"inputs": st.lists(v2_tensor, max_size=3)}),
        st.fixed_dictionaries({"dataframe_split": st.fixed_dictionaries({
            "columns": st.lists(st.sampled_from(columns[:4]), max_size=4), "data": st.lists(st.lists(scalars))})}),
        st.fixed_dictionaries({"dataframe_records": st.lists(st.dictionaries(st.sampled_from(columns[:4]), scalars))}),
    )
    paths = st.sampled_from(["/invocations", f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/labels",
                             f"/v2/models/{MODEL}/versions/999/infer"])

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=paths, body=bodies)
    def check(path, body):
        # Encoded here: Python's json writes NaN/Infinity, which strict clients refuse to send, but servers meet.
        response = requests.post(server["url"] + path, data=json.dumps(body), timeout=60, headers={
            "Authorization": f"Bearer {PREDICT_KEY}", "Content-Type": "application/json"})
        assert response.status_code < 500, (path, body, response.text)
        if response.status_code >= 400:
            assert response.json()["error"].strip(), (path, body, response.text)

    check()


def test_a_model_replica_killed_under_load_costs_under_one_percent_of_requests(server):
    import threading
    import time

    import ray

    replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and f"model-{MODEL}" in a["name"]]
    assert len(replicas) == 2, replicas
    statuses: list[int] = []

    def client() -> None:
        for _ in range(150):
            statuses.append(_post(server, "/invocations", _rows(server)).status_code)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(statuses) < 60:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
    for thread in threads:
        thread.join(timeout=300)
    assert len(statuses) == 450
    assert statuses.count(200) / len(statuses) >= 0.99, {s: statuses.count(s) for s in set(statuses)}


def test_prometheus_metrics_count_requests_errors_latency_and_batches(server):
    import time

    from fabric.runtime import metrics_url

    rows = server["frame"].drop(columns=["label"]).iloc[:2]
    body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}
    assert _post(server, f"/models/{MODEL}/invocations", body).status_code == 200
    assert _post(server, f"/models/{MODEL}/invocations", body, key="wrong-key").status_code == 401
    # routes and methods the gateway lacks: answered in its JSON shape, with a request id, and counted too
    nowhere = requests.get(server["url"] + "/nowhere", timeout=30)
    wrong_method = requests.get(server["url"] + "/invocations", timeout=30)
    assert nowhere.status_code == 404 and "no such route" in nowhere.json()["error"] and nowhere.headers["x-request-id"]
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert "POST" in wrong_method.json()["error"] and wrong_method.headers["x-request-id"]
    wanted = ("ray_fabric_requests_total", "ray_fabric_request_latency_ms_bucket", "ray_fabric_batch_size_bucket")
    deadline, lines, unrouted = time.monotonic() + 60, [], []
    while time.monotonic() < deadline:
        text = requests.get(metrics_url(), timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith(wanted) and f'model="{MODEL}"' in line]
        unrouted = [line for line in text.splitlines() if line.startswith("ray_fabric_requests_total")
                    and 'endpoint="unrouted"' in line]
        if all(any(line.startswith(name) for line in lines) for name in wanted) and any(
                'status="401"' in line for line in lines) and len(unrouted) >= 2:
            break
        time.sleep(1)
    assert {s for s in ("404", "405") if any(f'status="{s}"' in line for line in unrouted)} == {"404", "405"}, unrouted
    requests_total = [line for line in lines if line.startswith("ray_fabric_requests_total")]
    assert any('status="200"' in line and 'endpoint="invocations"' in line for line in requests_total), lines
    assert any('status="401"' in line for line in requests_total), lines
    assert any(line.startswith("ray_fabric_request_latency_ms_bucket") and 'le="+Inf"' in line for line in lines)
    assert any(line.startswith("ray_fabric_batch_size_bucket") for line in lines)


def test_a_model_placed_in_the_gateway_answers_like_its_own_deployment(server, monkeypatch):
    from mlflow import MlflowClient
    from ray import serve

    from fabric.config import ConfigError
    from fabric.serve.app import build_app
    from fabric.serve.config import ServeConfig

    with pytest.raises(ConfigError, match="placement=gateway .* num_gpus, num_replicas"):
        ServeConfig.from_dict({"models": [{"name": MODEL, "placement": "gateway", "num_gpus": 1, "num_replicas": 2}]})
    monkeypatch.setenv("FABRIC_API_KEYS", f"{PREDICT_KEY}:predict,{ADMIN_KEY}:admin")
    cfg = ServeConfig.from_dict({"name": "inline", "route_prefix": "/inline", "inference_log": {"enabled": False},
                                 "models": [{"name": MODEL, "placement": "gateway", "num_cpus": 0.1}]})
    serve.run(build_app(cfg), name="inline", route_prefix="/inline")
    inline = {**server, "url": server["url"] + "/inline"}
    try:
        rows = server["frame"].drop(columns=["label"]).iloc[:5]
        v2_body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64",
                               "data": rows.to_numpy().ravel().tolist()}]}
        for version in (server["v1"], server["v2"]):
            answer = _post(inline, f"/v2/models/{MODEL}/versions/{version}/infer", v2_body, key=ADMIN_KEY)
            assert answer.status_code == 200 and answer.json()["model_version"] == version, answer.text
            got = {o["name"]: o["data"] for o in answer.json()["outputs"]}
            expected = server["pyfunc"][version].predict(rows)
            np.testing.assert_allclose(got["probability_1"], expected["probability_1"], atol=1e-6)
        assert _post(inline, f"/v2/models/{MODEL}/infer", v2_body).json()["model_version"] == server["v1"]
        MlflowClient().set_registered_model_alias(MODEL, "champion", server["v2"])
        reloaded = _post(inline, f"/admin/models/{MODEL}/reload", key=ADMIN_KEY)
        assert reloaded.status_code == 200 and reloaded.json()["version"] == server["v2"], reloaded.text
        after = _post(inline, "/invocations", {"dataframe_records": rows.to_dict(orient="records")})
        np.testing.assert_allclose([r["probability_1"] for r in after.json()["predictions"]],
                                   server["pyfunc"][server["v2"]].predict(rows)["probability_1"], atol=1e-6)
        assert _post(inline, "/invocations", v2_body, key=None).status_code == 401
    finally:
        MlflowClient().set_registered_model_alias(MODEL, "champion", server["v1"])
        serve.delete("inline")


def _triton(server):
    import tritonclient.http as triton

    return triton, triton.InferenceServerClient(url=server["url"].removeprefix("http://"))


def test_tritonclient_defaults_send_and_get_binary_tensors_and_decode_v2_errors(server):
    triton, client = _triton(server)
    headers = {"Authorization": f"Bearer {PREDICT_KEY}"}
    rows = server["frame"].drop(columns=["label"]).iloc[:6]
    expected = server["pyfunc"][server["v1"]].predict(rows)
    tensor = triton.InferInput("x", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows.to_numpy("float64"))  # binary_data=True, the client's default
    for outputs in (None, [triton.InferRequestedOutput("prediction"), triton.InferRequestedOutput("probability_1")]):
        result = client.infer(MODEL, [tensor], outputs=outputs, headers=headers)
        np.testing.assert_array_equal(result.as_numpy("prediction"), expected["prediction"])
        np.testing.assert_allclose(result.as_numpy("probability_1"), expected["probability_1"], atol=1e-6)
        assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    with pytest.raises(triton.InferenceServerException, match="not supported") as caught:
        client.get_model_config(MODEL, headers=headers)
    assert caught.value.status() == "404"
    with pytest.raises(triton.InferenceServerException, match="mean_radius"):
        bad = triton.InferInput("mean_texture", [1], "FP64")
        bad.set_data_from_numpy(np.array([1.0]))
        client.infer(MODEL, [bad], headers=headers)


def _mlflow_bodies(rows):
    """The same rows in every input format ``mlflow models serve`` accepts: (body, content type)."""
    import json

    return {
        "dataframe_split": (json.dumps({"dataframe_split": rows.to_dict(orient="split")}), "application/json"),
        "dataframe_records": (json.dumps({"dataframe_records": rows.to_dict(orient="records")}), "application/json"),
        "instances": (json.dumps({"instances": rows.to_dict(orient="records")}), "application/json"),
        "inputs": (json.dumps({"inputs": rows.to_dict(orient="list")}), "application/json"),
        "csv": (rows.to_csv(index=False), "text/csv"),
    }


def test_invocations_take_every_input_format_of_mlflow_models_serve(server):
    import json

    from mlflow.pyfunc import scoring_server

    rows = server["frame"].drop(columns=["label"]).iloc[:4]
    expected = server["pyfunc"][server["v1"]].predict(rows)
    foreign = server["foreign"][SKLEARN]
    for fmt, (body, content_type) in _mlflow_bodies(rows).items():
        headers = {"Authorization": f"Bearer {PREDICT_KEY}", "Content-Type": content_type}
        ours = requests.post(server["url"] + "/invocations", data=body, headers=headers, timeout=60)
        assert ours.status_code == 200, (fmt, ours.text)
        assert [r["prediction"] for r in ours.json()["predictions"]] == expected["prediction"].tolist(), fmt
        # a model fabric did not train answers exactly as MLflow's own scoring server answers
        mlflow_answer = scoring_server.invocations(body, content_type, foreign, foreign.metadata.get_input_schema())
        theirs = requests.post(f"{server['url']}/models/{SKLEARN}/invocations", data=body, headers=headers, timeout=60)
        assert theirs.status_code == mlflow_answer.status == 200, (fmt, theirs.text)
        assert theirs.json() == json.loads(mlflow_answer.response), fmt
    body, _ = _mlflow_bodies(rows)["dataframe_split"]
    refused = scoring_server.invocations(body, "text/plain", foreign, foreign.metadata.get_input_schema())
    for path in ("/invocations", f"/models/{SKLEARN}/invocations"):  # a type mlflow refuses: its 415 and message
        ours = requests.post(server["url"] + path, data=body, timeout=60, headers={
            "Authorization": f"Bearer {PREDICT_KEY}", "Content-Type": "text/plain"})
        assert (ours.status_code, ours.json()["error"]) == (refused.status, refused.response) == (415, refused.response)
        assert ours.headers["x-request-id"]


def test_any_registered_mlflow_model_is_served_by_alias_with_its_signature(server):
    import pandas as pd

    triton, client = _triton(server)
    headers = {"Authorization": f"Bearer {PREDICT_KEY}"}
    rows = server["frame"].drop(columns=["label"]).iloc[:5]
    expected = server["foreign"][SKLEARN].predict(rows)
    by_column = []
    for column in rows.columns:
        tensor = triton.InferInput(column, [len(rows)], "FP64")
        tensor.set_data_from_numpy(rows[column].to_numpy("float64"))
        by_column.append(tensor)
    matrix = triton.InferInput("x", list(rows.shape), "FP64")
    matrix.set_data_from_numpy(rows.to_numpy("float64"))
    for inputs in (by_column, [matrix]):
        result = client.infer(SKLEARN, inputs, headers=headers)
        np.testing.assert_array_equal(result.as_numpy("predictions"), expected)
    metadata = client.get_model_metadata(SKLEARN, headers=headers)
    assert metadata["platform"] == "mlflow_sklearn" and [i["name"] for i in metadata["inputs"]] == list(rows.columns)
    assert metadata["outputs"] == [{"name": "predictions", "datatype": "INT64", "shape": [-1]}]  # its signature's

    words = pd.DataFrame({"word": ["ada", "bo"], "x": [1.5, -2.0]})
    word, x = triton.InferInput("word", [2], "BYTES"), triton.InferInput("x", [2], "FP64")
    word.set_data_from_numpy(words["word"].to_numpy(object))
    x.set_data_from_numpy(words["x"].to_numpy("float64"))
    result = client.infer(CUSTOM, [word, x], headers=headers)
    assert result.as_numpy("greeting").tolist() == [b"hello ada", b"hello bo"]
    assert [(o["name"], o["datatype"]) for o in client.get_model_metadata(CUSTOM, headers=headers)["outputs"]] == [
        (o["name"], o["datatype"]) for o in result.get_response()["outputs"]] == [("greeting", "BYTES"),
                                                                                  ("double", "FP64")]
    assert result.as_numpy("double").tolist() == [3.0, -4.0]
    answer = _post(server, f"/models/{CUSTOM}/invocations", {"dataframe_records": words.to_dict(orient="records")})
    assert answer.status_code == 200 and answer.json() == {"predictions": server["foreign"][CUSTOM].predict(
        words).to_dict(orient="records")}
    missing = _post(server, f"/models/{CUSTOM}/invocations", {"dataframe_records": [{"x": 1.0}]})
    assert missing.status_code == 422 and "word" in missing.json()["error"], missing.text
    # concurrent requests still answer each its own rows (they may be merged into one model call)
    import concurrent.futures

    def one(i):
        body = {"dataframe_records": [{"word": f"w{i}", "x": float(i)}]}
        return _post(server, f"/models/{CUSTOM}/invocations", body).json()["predictions"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    assert answers == [[{"greeting": f"hello w{i}", "double": 2.0 * i}] for i in range(16)]


def _logged(server, model, request_ids):
    """The inference log's rows of ``request_ids`` once they are written (polled: the log writes off the request
    path)."""
    import time

    from fabric.serve.inference_log import read_log

    deadline = time.monotonic() + 30
    while True:
        log = read_log(model, root=server["log_root"], with_labels=False)
        mine = log[log["request_id"].isin(request_ids)] if len(log) else log
        if len(mine) and set(mine["request_id"]) == set(request_ids):
            return mine.sort_values(["request_id", "row"]).reset_index(drop=True)
        assert time.monotonic() < deadline, f"no inference log rows of {model} for {request_ids}"
        time.sleep(0.5)


def test_models_fabric_did_not_train_are_in_the_inference_log(server):
    words = [{"word": "ada", "x": 1.5, "unused": 1}, {"word": "bo", "x": -2.0, "unused": 2}]
    answer = _post(server, f"/models/{CUSTOM}/invocations", {"dataframe_records": words},
                   headers={"x-request-id": "foreign-log-1"})
    assert answer.status_code == 200, answer.text
    logged = _logged(server, CUSTOM, ["foreign-log-1"])
    # the signature's input columns, each with its own type; the outputs as answered
    assert logged["inputs"].tolist() == [{"word": "ada", "x": 1.5}, {"word": "bo", "x": -2.0}]
    assert logged["outputs"].tolist() == [{"greeting": "hello ada", "double": 3.0}, {"greeting": "hello bo",
                                                                                      "double": -4.0}]


def test_a_dict_output_is_answered_as_mlflow_answers_it(server):
    import json

    from mlflow.pyfunc import scoring_server

    model = server["foreign"][TOTALS]
    body = json.dumps({"dataframe_records": [{"a": 1, "b": 2.5}, {"a": -3, "b": 0.5}]})
    headers = {"Authorization": f"Bearer {PREDICT_KEY}", "Content-Type": "application/json", "x-request-id": "totals-1"}
    ours = requests.post(f"{server['url']}/models/{TOTALS}/invocations", data=body, headers=headers, timeout=60)
    theirs = scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
    assert ours.status_code == theirs.status == 200, ours.text
    assert ours.json() == json.loads(theirs.response) == {"predictions": {"total": [3.5, -2.5], "rows": 2}}
    triton, client = _triton(server)
    auth = {"Authorization": f"Bearer {PREDICT_KEY}"}
    # no signature: one generic output in the metadata, named as /infer names an array's
    assert client.get_model_metadata(TOTALS, headers=auth)["outputs"] == [
        {"name": "predictions", "datatype": "BYTES", "shape": [-1]}]
    logged = _logged(server, TOTALS, ["totals-1"])  # features: the request's own columns; per-row outputs only
    assert logged["inputs"].tolist() == [{"a": 1, "b": 2.5}, {"a": -3, "b": 0.5}]
    assert logged["outputs"].tolist() == [{"total": 3.5}, {"total": -2.5}]
