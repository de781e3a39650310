"""`fabric serve` on the session's Ray: V2 and MLflow protocols, auth, limits, validation, hot reload."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.slow
MODEL = "served-bc"
PREDICT_KEY, ADMIN_KEY = "test-predict-key", "test-admin-key"


def _log_version(frame, steps: int) -> str:
    """Trains fabric's linear tabular model for ``steps`` full-batch steps and registers it; returns the version."""
    import mlflow
    import torch

    from fabric import registry
    from fabric.tabular.models import build_torch_model, save_model_dir
    from fabric.tabular.pyfunc import TabularPyfunc

    features = [c for c in frame.columns if c != "label"]
    x = frame[features].to_numpy("float32")
    meta = {"model_type": "linear", "task": "classification", "features": features, "label_column": "label",
            "n_outputs": 2, "hidden_sizes": [], "dropout": 0.0, "mean": x.mean(0).tolist(),
            "std": (x.std(0) + 1e-6).tolist()}
    torch.manual_seed(0)
    model = build_torch_model(meta)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    labels = torch.from_numpy(frame["label"].to_numpy())
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with mlflow.start_run(), tempfile.TemporaryDirectory() as tmp:
        folder = save_model_dir(Path(tmp) / "model", meta, model.eval())
        info = mlflow.pyfunc.log_model(name="model", python_model=TabularPyfunc(),
                                       artifacts={"model_dir": str(folder)}, pip_requirements=["llmops-fabric"])
    return registry.register(info.model_uri, MODEL, tags={"fabric.task": "classification"})


@pytest.fixture(scope="module")
def server(ray_session):
    import mlflow
    from mlflow import MlflowClient
    from ray import serve

    from fabric.runtime import setup_mlflow
    from fabric.serve.app import build_app
    from fabric.serve.config import ServeConfig
    from workloads.ingest_sklearn import load_frame

    setup_mlflow()
    frame = load_frame("breast_cancer")
    v1, v2 = _log_version(frame, 2), _log_version(frame, 200)
    MlflowClient().set_registered_model_alias(MODEL, "champion", v1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = ServeConfig.from_dict({"name": "test-serve", "port": port, "max_request_bytes": 200_000,
                                 "models": [{"name": MODEL, "reload_interval_s": 3600, "num_cpus": 0.1}]})
    previous = os.environ.get("FABRIC_API_KEYS")
    os.environ["FABRIC_API_KEYS"] = f"{PREDICT_KEY}:predict,{ADMIN_KEY}:admin"
    try:
        app = build_app(cfg)
    finally:
        os.environ.pop("FABRIC_API_KEYS") if previous is None else os.environ.update(FABRIC_API_KEYS=previous)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name="test-serve", route_prefix="/")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "frame": frame, "v1": v1, "v2": v2,
               "pyfunc": {v: mlflow.pyfunc.load_model(f"models:/{MODEL}/{v}") for v in (v1, v2)}}
    finally:
        serve.shutdown()
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def _post(server, path, body=None, key=PREDICT_KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(server["url"] + path, json=body, headers=headers, timeout=60, **kwargs)


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
