"""fabric/serve/gateway.py without Ray Serve: the Gateway class on fake model handles, called as its routes are.

Every failure gets a JSON body, a request id and a metric; requests are parsed against the version that answers;
versions' features are bounded; /versions/V/infer needs an admin key; shadows are capped; audit and inference log
failures never reach a prediction; a rollout is saved in the registry and taken up again after a restart.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
from starlette.requests import Request

from fabric.serve.gateway import Gateway
from fabric.serve.keys import hash_key

ADMIN, PREDICT, LABEL = "admin-secret", "predict-secret", "label-secret"
GatewayClass = next(c for c in Gateway.func_or_class.__mro__[1:] if c.__name__ == "Gateway")
FEATURES = {"1": ["a", "b"], "2": ["b", "a", "c"], "3": ["a", "b", "z"], "4": ["a", "b"], "5": ["a", "b"]}


class _Method:
    def __init__(self, call: Any):
        self.remote = call


class FakeModel:
    """A DeploymentHandle stand-in: version V predicts sum(feature_value * position weight) by feature name,
    so a matrix in the wrong column order gives a wrong answer."""

    def __init__(self, live: str = "1"):
        self.live, self.calls, self.gate = live, [], None
        self.meta, self.predict, self.info = _Method(self._meta), _Method(self._predict), _Method(self._info)

    async def _meta(self, version: str) -> dict[str, Any]:
        if version not in FEATURES:
            raise RuntimeError(f"cannot load version {version}")
        return {"features": FEATURES[version], "task": "regression", "n_outputs": 1, "model_type": "linear"}

    async def _predict(self, matrix: np.ndarray, version: str) -> tuple[str, np.ndarray]:
        self.calls.append(version)
        if self.gate is not None and version != self.live:
            await self.gate.wait()
        weights = {"a": 1.0, "b": 10.0, "c": 100.0}
        if "z" in FEATURES[version]:
            raise RuntimeError("this version is broken")
        return version, matrix @ np.array([weights[f] for f in FEATURES[version]])

    async def _info(self) -> dict[str, Any]:
        return {"live": self.live}


class Recorder:
    def __init__(self):
        self.seen: list[dict[str, str]] = []

    def inc(self, tags: dict[str, str]) -> None:
        self.seen.append(tags)

    def observe(self, value: float, tags: dict[str, str]) -> None:
        pass


def gateway(live: str = "1", saved: dict | None = None, **limits: int) -> Any:
    model = FakeModel(live)
    g = GatewayClass({"m": model}, {"m": "champion"}, "http://registry.invalid", {hash_key(ADMIN): "admin",
                     hash_key(PREDICT): "predict", hash_key(LABEL): "label"}, True, 100_000, key_names={hash_key(ADMIN): "alice"},
                     limits=limits or None)
    g.requests, g.latency, g.model = Recorder(), Recorder(), model
    g.traffic.registry_state = lambda name, alias: (model.live, saved)
    g._version_exists = lambda name, version: version in FEATURES
    g.traffic.save = lambda name, rollout: _none()
    return g


def request(body: Any = None, key: str | None = PREDICT, **headers: str) -> Request:
    raw = json.dumps(body).encode() if body is not None else b""
    pairs = {**({"authorization": f"Bearer {key}"} if key else {}), **{k.replace("_", "-"): v for k, v in
                                                                        headers.items()}}
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(k.encode(), v.encode()) for k, v in pairs.items()]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request(scope, receive)


def answer(response: Any) -> tuple[int, Any]:
    return response.status_code, json.loads(response.body)


def records(**columns: float) -> dict[str, Any]:
    return {"dataframe_records": [columns]}


def v2(**columns: float) -> dict[str, Any]:
    return {"inputs": [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in columns.items()]}


@pytest.fixture
def audit(monkeypatch):
    """The audit entries the gateway writes, captured instead of going to a registry."""
    entries: list[dict[str, Any]] = []

    def record_event(name, action, version=None, **fields):
        entries.append({"name": name, "action": action, "version": version, **fields})

    monkeypatch.setattr("fabric.registry.record_event", record_event)
    return entries


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_any_failure_is_json_with_a_request_id_and_counted():
    from mlflow.exceptions import MlflowException

    g = gateway()

    async def go() -> list[Any]:
        out = []
        for error in (ValueError("boom"), MlflowException("Max retries exceeded: connection refused"),
                      ConnectionError("refused")):
            async def work(_: str, error: Exception = error) -> Any:
                raise error
            out.append(await g._serve(request(x_request_id="rid-1"), "v2_infer", "m", work))
        return out

    crashed, registry_down, refused = run(go())
    status, body = answer(crashed)
    assert status == 500 and "ValueError" in body["error"] and "rid-1" in body["error"]
    assert crashed.headers["x-request-id"] == "rid-1"
    for response in (registry_down, refused):
        status, body = answer(response)
        assert status == 503 and "registry" in body["error"] and "unreachable" in body["error"]
    assert [t["status"] for t in g.requests.seen] == ["500", "503", "503"]


def test_a_version_that_does_not_exist_is_404_one_that_cannot_load_503_registry_down_503():
    g = gateway()
    loads = g.model.meta.remote
    g.model.meta = _Method(lambda version: loads(version) if version == "1" else _fail(RuntimeError("disk full")))

    def call(version: str) -> tuple[int, Any]:
        return answer(run(g.infer_version("m", version, request({"inputs": [{"name": "a", "shape": [1],
                                                                            "datatype": "FP64", "data": [1]}]},
                                                                 key=ADMIN))))

    status, body = call("99")
    assert status == 404 and "does not exist" in body["error"]
    status, body = call("2")
    assert status == 503 and "exists but cannot be loaded" in body["error"] and "disk full" in body["error"]

    def registry_down(name: str, version: str) -> bool:
        raise ConnectionError("connection refused")

    g._version_exists = registry_down
    status, body = call("2")
    assert status == 503 and "registry" in body["error"]
    assert {t["endpoint"] for t in g.requests.seen} == {"v2_infer"} and len(g.requests.seen) == 3


async def _fail(exc: Exception) -> Any:
    raise exc


def test_versions_infer_needs_an_admin_key():
    g = gateway()
    body = records(a=1.0, b=2.0, c=3.0)
    status, payload = answer(run(g.infer_version("m", "2", request(v2(a=1.0, b=2.0, c=3.0), key=PREDICT))))
    assert status == 403 and "admin" in payload["error"]
    status, payload = answer(run(g.model_invocations("m", request(body, key=ADMIN))))
    assert status == 200


def test_labels_need_a_label_key_which_may_not_predict(fabric_home):
    g = gateway()
    body = {"labels": [{"request_id": "r1", "label": 1}]}
    status, payload = answer(run(g.labels("m", request(body, key=PREDICT))))
    assert status == 403 and "this endpoint needs 'label'" in payload["error"]
    for key in (LABEL, ADMIN):
        assert answer(run(g.labels("m", request(body, key=key)))) == (200, {"accepted": 1})
    status, payload = answer(run(g.model_invocations("m", request(records(a=1.0, b=2.0), key=LABEL))))
    assert status == 403 and "this endpoint needs 'predict'" in payload["error"]


def test_requests_are_parsed_against_the_features_of_the_version_that_answers(audit):
    g = gateway()
    body = records(a=1.0, b=2.0, c=3.0)  # version 2 takes b, a, c in that order
    status, payload = answer(run(g.infer_version("m", "2", request(v2(a=1.0, b=2.0, c=3.0), key=ADMIN))))
    assert status == 200 and payload["model_version"] == "2"
    assert payload["outputs"][0]["data"] == [321.0]
    status, payload = answer(run(g.model_invocations("m", request(body))))  # live version 1: a, b
    assert status == 200 and payload["predictions"] == [{"prediction": 21.0}]

    started = run(g.start_rollout("m", request({"strategy": "canary", "version": "2", "percent": 100},
                                               key=ADMIN)))
    assert started.status_code == 200, started.body
    status, payload = answer(run(g.model_invocations("m", request(body))))
    assert status == 200 and payload["predictions"] == [{"prediction": 321.0}]  # by the canary, in its order
    # a request the canary cannot take (no c) is answered by the live version, and counts against the canary
    status, payload = answer(run(g.model_invocations("m", request(records(a=1.0, b=2.0)))))
    assert status == 200 and payload["predictions"] == [{"prediction": 21.0}]
    assert g.rollouts["m"].windows["2"].summary()["error_rate"] > 0
    status, payload = answer(run(g.model_invocations("m", request(records(b=2.0)))))  # fits neither: 422
    assert status == 422 and "a" in payload["error"]


def test_features_of_at_most_max_loaded_versions_are_kept_never_the_live_one():
    g = gateway(max_loaded_versions=2)
    for version, body in (("2", v2(a=1.0, b=1.0, c=1.0)), ("4", v2(a=1.0, b=1.0)), ("5", v2(a=1.0, b=1.0))):
        assert run(g.infer_version("m", version, request(body, key=ADMIN))).status_code == 200
    kept = [v for _, v in g.metas]
    assert len(kept) == 2 and "1" in kept and "5" in kept


def test_shadow_calls_are_capped_and_counted_and_never_delay_the_answer(audit):
    g = gateway(max_shadow_in_flight=1)

    async def go() -> Any:
        g.model.gate = asyncio.Event()  # the candidate hangs until released
        started = await g.start_rollout("m", request({"strategy": "shadow", "version": "4"}, key=ADMIN))
        assert started.status_code == 200, started.body
        answers = [await asyncio.wait_for(g.model_invocations("m", request(records(a=1.0, b=2.0))), 5)
                   for _ in range(3)]
        state = g.rollouts["m"].status()["shadow"]
        in_flight = len(g.traffic.shadow_tasks)
        g.model.gate.set()
        await asyncio.gather(*g.traffic.shadow_tasks)
        return answers, state, in_flight, g.rollouts["m"].status()["shadow"]

    answers, during, in_flight, after = run(go())
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert in_flight == 1 and during["skipped"] == 2 and during["compared"] == 0
    assert after["compared"] == 1 and after["last"][0]["agree"]


def test_a_failing_audit_write_never_fails_a_prediction(monkeypatch):
    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("registry down")

    monkeypatch.setattr("fabric.registry.record_event", down)
    g = gateway()
    started = run(g.start_rollout("m", request({"strategy": "canary", "version": "3", "percent": 100,
                                               "min_requests": 2}, key=ADMIN)))
    status, body = answer(started)
    assert status == 200 and "audit entry not written" in body["warnings"][0]

    async def go() -> list[int]:
        codes = [(await g.model_invocations("m", request(records(a=1.0, b=2.0, z=0.0)))).status_code
                 for _ in range(6)]
        await asyncio.gather(*g.traffic.background)
        return codes

    assert run(go()) == [200] * 6  # the broken candidate was rolled back; its audit write failed quietly
    assert "m" not in g.rollouts and g.ended["m"]["outcome"] == "rolled_back_automatically"


async def _none() -> None:
    return None


def test_the_audit_names_the_admin_key_not_a_header(audit):
    g = gateway()
    body = {"strategy": "canary", "version": "2"}
    assert run(g.start_rollout("m", request(body, key=ADMIN, x_actor="mallory"))).status_code == 200
    assert audit[-1]["actor"] == "alice" and g.rollouts["m"].actor == "alice"


def test_a_rollout_is_saved_in_the_registry_and_taken_up_after_a_restart():
    from fabric import registry

    client = registry.mlflow_client()
    name = "gateway-rollout-state"
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    import mlflow

    first = gateway()
    first.traffic.tracking_uri = mlflow.get_tracking_uri()
    first.rollouts.clear()
    from fabric.serve.rollout import Rollout, RolloutRequest
    from fabric.serve.traffic import Traffic

    rollout = Rollout(RolloutRequest(strategy="canary", version="2", percent=30), live="1", actor="alice")
    assert run(Traffic.save(first.traffic, name, rollout)) is None
    saved = json.loads(client.get_registered_model(name).tags["fabric.rollout"])

    restarted = gateway(saved=saved)  # a new replica reading the same registry state
    run(restarted._info("m"))
    again = restarted.rollouts["m"]
    assert (again.candidate, again.live, again.actor, again.request.percent) == ("2", "1", "alice", 30.0)
    assert again.started == rollout.started

    assert run(Traffic.save(first.traffic, name, None)) is None
    assert "fabric.rollout" not in client.get_registered_model(name).tags


def test_a_model_server_unloads_the_least_recently_used_version_never_live_or_candidate(monkeypatch):
    from types import SimpleNamespace

    import mlflow.pyfunc

    from fabric.serve.config import ModelRoute
    from fabric.serve.model_server import ModelServer

    loaded: list[str] = []

    def load_model(uri: str) -> Any:
        loaded.append(uri.rsplit("/", 1)[1])
        inner = SimpleNamespace(meta={"features": ["a"], "task": "regression"}, model=object())
        return SimpleNamespace(unwrap_python_model=lambda: inner)

    monkeypatch.setattr(mlflow.pyfunc, "load_model", load_model)
    server = object.__new__(ModelServer.func_or_class)  # its state only: no registry, no alias thread
    server.route, server.live = ModelRoute(name="m", max_loaded_versions=4), "1"
    server.models, server.pinned = OrderedDict(), {"2"}  # 1 is live, 2 a rollout's candidate
    for version in ("1", "2", "3", "4", "3", "5"):  # 3 used again, so 4 is the least recently used
        server._load(version)
    assert sorted(server.models) == ["1", "2", "3", "5"] and loaded == ["1", "2", "3", "4", "5"]
    for version in ("6", "7"):
        server._load(version)
    assert sorted(server.models) == ["1", "2", "6", "7"]


def test_a_slow_registry_never_holds_up_a_request_once_the_live_version_is_known():
    import threading
    import time

    g = gateway()
    release, reads = threading.Event(), []

    def hanging(name: str, alias: str) -> tuple[str, None]:
        reads.append(name)
        release.wait(10)
        return "2", None

    async def go() -> tuple[list[int], float]:
        await g._info("m")
        g.traffic.registry_state, g.infos["m"]["_at"] = hanging, 0.0  # stale, and the registry hangs
        started = time.monotonic()
        codes = [(await g.model_invocations("m", request(records(a=1.0, b=2.0)))).status_code for _ in range(5)]
        took = time.monotonic() - started
        release.set()
        await asyncio.gather(*g.traffic.background)
        return codes, took

    codes, took = run(go())
    assert codes == [200] * 5 and took < 5 and reads == ["m"]  # one refresh in flight, answered meanwhile
    assert g.infos["m"]["live"] == "2"  # the refresh landed once the registry answered


class FakePyfunc:
    """A model fabric did not train, as its handle answers: it greets each word and scores each row twice."""

    def __init__(self, schema: str | None):
        self.meta, self.predict = _Method(self._meta), _Method(self._predict)
        self.info, self.schema = _Method(self._info), schema

    async def _meta(self, version: str) -> dict[str, Any]:
        return {"task": "pyfunc", "model_type": "python_function", "features": ["word", "x"] if self.schema else None,
                "n_outputs": None, "schema": self.schema, "inputs": []}

    async def _predict(self, data: Any, version: str) -> tuple[str, dict[str, np.ndarray]]:
        greeting = np.array([f"hello {w}" for w in data["word"]], dtype=object)
        return version, {"greeting": greeting, "scores": np.ones((len(data), 2))}

    async def _info(self) -> dict[str, Any]:
        return {"live": "1"}


def test_a_model_served_through_its_pyfunc_is_in_the_inference_log(tmp_path):
    """Its table's columns (the signature's, else the request's), each with its own type, and its outputs with
    one value per row (a 2-D output split into NAME_k)."""
    from mlflow.types import ColSpec, Schema

    from fabric.serve.inference_log import read_log

    schema = Schema([ColSpec("string", "word"), ColSpec("double", "x")]).to_json()
    g = GatewayClass({"signed": FakePyfunc(schema), "unsigned": FakePyfunc(None)},
                     {"signed": "champion", "unsigned": "champion"}, "http://registry.invalid", {}, False, 100_000,
                     inference_log={"enabled": True, "path": str(tmp_path), "flush_rows": 10**6, "flush_s": 10**6})
    g.requests, g.latency = Recorder(), Recorder()
    g.traffic.registry_state = lambda name, alias: ("1", None)
    rows = [{"word": "ada", "x": 1.5, "extra": 7}, {"word": "bo", "x": -2.0, "extra": 8}]
    for name in ("signed", "unsigned"):
        status, _ = answer(run(g.model_invocations(name, request({"dataframe_records": rows}, x_request_id=name))))
        assert status == 200
    g.inference_log.close()
    signed, unsigned = read_log("signed", root=str(tmp_path)), read_log("unsigned", root=str(tmp_path))
    assert signed["inputs"].tolist() == [{"word": "ada", "x": 1.5}, {"word": "bo", "x": -2.0}]
    assert unsigned["inputs"].tolist() == rows  # no signature: the request's own columns
    assert signed["outputs"].iloc[1] == {"greeting": "hello bo", "scores_0": 1.0, "scores_1": 1.0}
    assert set(signed["request_id"]) == {"signed"} and set(signed["endpoint"]) == {"invocations"}


def test_an_unknown_content_type_is_a_415_and_never_counts_against_a_canary(audit):
    g = gateway()
    started = run(g.start_rollout("m", request({"strategy": "canary", "version": "4", "percent": 100},
                                               key=ADMIN)))
    assert started.status_code == 200, started.body
    status, body = answer(run(g.model_invocations("m", request(records(a=1.0, b=2.0), content_type="text/plain"))))
    assert status == 415 and "Got 'text/plain'" in body["error"]
    assert g.model.calls == [] and g.rollouts["m"].windows["4"].summary()["requests"] == 0
    assert g.requests.seen[-1]["status"] == "415"


def test_a_route_or_method_the_gateway_lacks_is_answered_in_its_json_shape_and_counted():
    from starlette.exceptions import HTTPException

    from fabric.serve.gateway import Gateway, unrouted_request

    # where Starlette sends its 404s and 405s, in the copy of the app that @serve.ingress froze and Serve runs
    init = Gateway.func_or_class.__init__
    cells = dict(zip(init.__code__.co_freevars, init.__closure__, strict=True))
    frozen = cells["frozen_app_or_func"].cell_contents
    assert frozen.exception_handlers[HTTPException] is unrouted_request
    g = gateway()

    def ask(method: str, path: str, status: int, headers: dict | None = None) -> Any:
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"gw"), (b"x-request-id", b"lost-1")]}
        return run(unrouted_request(Request(scope), HTTPException(status, headers=headers)))

    cases = [("GET", "/invocations", 405, {"Allow": "POST"}), ("POST", "/nowhere", 404, None),
             ("GET", "/v2/models/m/config", 404, None)]
    for method, path, status, headers in cases:
        response = ask(method, path, status, headers)
        code, body = answer(response)
        assert code == status and body["error"] and response.headers["x-request-id"] == "lost-1", (path, body)
    assert ask("GET", "/invocations", 405, {"Allow": "POST"}).headers["allow"] == "POST"
    assert "not supported" in answer(ask("GET", "/v2/models/m/config", 404))[1]["error"]  # V2's shape
    assert [t["status"] for t in g.requests.seen if t["endpoint"] == "unrouted"] == ["405", "404", "404", "405", "404"]
