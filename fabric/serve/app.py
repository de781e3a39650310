"""The Ray Serve application behind ``fabric serve up``: a gateway in front of the registered models.

* ``ModelServer`` (per registered model): loads the version its alias points at, follows the alias when it
  moves (hot reload, no restart), and answers with dynamic batching (``@serve.batch``): concurrent requests are
  merged into one model call. With ``placement: replicas`` it is a deployment of its own (scales out, takes
  GPUs); with ``placement: gateway`` it runs inside the gateway's process (:class:`InProcess`), a hop fewer.
* ``Gateway`` (the FastAPI ingress): API keys with roles, request size limit, the V2 and MLflow protocols with
  validation against the model's features, request ids, and Prometheus metrics through ``ray.serve.metrics``.

``build_app(cfg)`` binds both; ``app_builder(args)`` is the same for Ray's own ``serve deploy`` / ``serve run``
(``import_path: fabric.serve.app:app_builder``, ``args: {config: configs/serve/tabular.yaml}``).
"""

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from fabric.config import ConfigError
from fabric.serve.config import ModelRoute, ServeConfig
from fabric.serve.inference_log import default_root
from fabric.serve.keys import ENV, Keyring, hash_key
from fabric.serve.protocols import (
    RequestError,
    matrix_from_mlflow,
    matrix_from_v2,
    mlflow_response,
    output_columns,
    records,
    v2_metadata,
    v2_response,
)
from fabric.serve.rollout import Rollout, RolloutRequest

__all__ = ["Gateway", "ModelServer", "app_builder", "build_app", "run_app"]

log = logging.getLogger("ray.serve")
INFO_TTL_S = 2.0
RETRIES = 3  # model calls retried when their replica died
GATEWAY_MAX_ONGOING = 256


@serve.deployment
class ModelServer:
    """One registered model: the version behind its alias, batched predictions, hot reload on alias moves."""

    def __init__(self, route: dict, tracking_uri: str):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        self.route = ModelRoute(**route)
        self.models: dict[str, tuple[dict[str, Any], Any]] = {}
        self.live = self._alias_version()
        self._load(self.live)
        self._batched.set_max_batch_size(self.route.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.route.batch_wait_timeout_s)
        from ray.serve.metrics import Histogram

        self.batch_sizes = Histogram("fabric_batch_size", description="Rows merged into one model call.",
                                     boundaries=[1, 2, 4, 8, 16, 32, 64, 128], tag_keys=("model", "version"))
        threading.Thread(target=self._follow_alias, daemon=True, name="follow-alias").start()

    def _alias_version(self) -> str:
        from mlflow import MlflowClient

        return str(MlflowClient().get_model_version_by_alias(self.route.name, self.route.alias).version)

    def _load(self, version: str) -> None:
        import mlflow.pyfunc

        if version in self.models:
            return
        pyfunc = mlflow.pyfunc.load_model(f"models:/{self.route.name}/{version}")
        inner = pyfunc.unwrap_python_model()
        if not hasattr(inner, "meta"):
            raise TypeError(f"{self.route.name} version {version} is not a fabric tabular model")
        self.models[version] = (inner.meta, inner.model)

    def _follow_alias(self) -> None:
        while True:
            time.sleep(self.route.reload_interval_s)
            try:
                self.reload()
            except Exception as exc:  # a registry hiccup must not kill the replica; the live model stays
                log.warning("fabric: could not check alias %s@%s: %s", self.route.name, self.route.alias, exc)

    def reload(self) -> dict[str, str]:
        """Loads the version the alias points at now and makes it live (a no-op if unchanged)."""
        version = self._alias_version()
        if version != self.live:
            self._load(version)
            previous, self.live = self.live, version
            log.info("fabric: %s@%s moved from version %s to %s", self.route.name, self.route.alias, previous, version)
        return {"model": self.route.name, "alias": self.route.alias, "version": self.live}

    def load(self, version: str) -> dict[str, Any]:
        """Loads ``version`` now (a rollout's candidate), so its first request does not pay for it."""
        self._load(str(version))
        return {"model": self.route.name, "version": str(version), "loaded": sorted(self.models)}

    def meta(self, version: str) -> dict[str, Any]:
        """What the gateway validates requests against: the features and task of ``version``."""
        self._load(str(version))
        meta, _ = self.models[str(version)]
        return {k: meta[k] for k in ("features", "task", "n_outputs", "model_type")}

    def info(self) -> dict[str, Any]:
        meta, _ = self.models[self.live]
        return {"name": self.route.name, "alias": self.route.alias, "live": self.live, "loaded": sorted(self.models),
                "meta": {k: meta[k] for k in ("features", "task", "n_outputs", "model_type")}}

    async def predict(self, matrix: np.ndarray, version: str | None = None) -> tuple[str, np.ndarray]:
        """The raw outputs (class probabilities, or predictions) for ``matrix``'s rows, and the version used."""
        return await self._batched((version or self.live, matrix))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
        from fabric.tabular.models import raw_outputs

        results: list[Any] = [None] * len(items)
        for version in {v for v, _ in items}:
            if version not in self.models:
                self._load(version)
            meta, model = self.models[version]
            positions = [i for i, (v, _) in enumerate(items) if v == version]
            matrices = [items[i][1] for i in positions]
            output = raw_outputs(meta, model, np.concatenate(matrices))
            self.batch_sizes.observe(len(output), tags={"model": self.route.name, "version": version})
            start = 0
            for i, matrix in zip(positions, matrices, strict=True):
                results[i] = (version, output[start:start + len(matrix)])
                start += len(matrix)
        return results


class InProcess:
    """A :class:`ModelServer` inside the gateway's own process, called like a DeploymentHandle
    (``await model.predict.remote(...)``): one hop fewer per request, for small CPU models
    (``placement: gateway``). Blocking calls (loading from the registry) run in a worker thread."""

    def __init__(self, route: dict, tracking_uri: str):
        self.server = ModelServer.func_or_class(route, tracking_uri)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.server, name)
        call = method if asyncio.iscoroutinefunction(method) else lambda *args: asyncio.to_thread(method, *args)
        bound = _InProcessMethod(call)
        setattr(self, name, bound)  # later lookups find it without __getattr__ (predict is on every request)
        return bound


class _InProcessMethod:
    def __init__(self, call: Any):
        self.remote = call


api = FastAPI(title="fabric model serving", description="KServe V2 and MLflow scoring endpoints for registered "
              "models. Send `Authorization: Bearer KEY`.")


@serve.deployment
@serve.ingress(api)
class Gateway:
    """HTTP front: auth, limits, protocols, metrics; calls the model deployments."""

    def __init__(self, models: dict[str, Any], aliases: dict[str, str], tracking_uri: str, hashed_keys: dict[str, str],
                 auth_required: bool, max_request_bytes: int, log_payloads: bool = False,
                 inference_log: dict | None = None, monitor: Any = None):
        from ray.serve.metrics import Counter, Histogram

        # A model in its own deployment comes as a DeploymentHandle; one placed in the gateway as its route.
        self.handles = {name: InProcess(m, tracking_uri) if isinstance(m, dict) else m for name, m in models.items()}
        self.aliases, self.tracking_uri = aliases, tracking_uri
        self.metas: dict[tuple[str, str], dict[str, Any]] = {}
        self.default = next(iter(models))
        self.keys = Keyring(hashed_keys)
        self.auth_required = auth_required
        self.max_request_bytes = max_request_bytes
        self.log_payloads = log_payloads
        self.requests = Counter("fabric_requests", description="Requests by model, version, endpoint and status.",
                                tag_keys=("model", "version", "endpoint", "status"))
        self.latency = Histogram("fabric_request_latency_ms", description="Request latency in milliseconds.",
                                 boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
                                 tag_keys=("model", "version", "endpoint"))
        self.infos: dict[str, dict[str, Any]] = {}
        self.rollouts: dict[str, Rollout] = {}
        self.ended: dict[str, dict[str, Any]] = {}  # the last ended rollout of each model, and why
        self.monitor = monitor
        self.tally = None
        if monitor is not None:
            from fabric.serve.monitoring import RequestTally

            self.tally = RequestTally(monitor)
        self.inference_log = None
        if inference_log and inference_log.get("enabled"):
            from fabric.serve.inference_log import InferenceLog

            self.inference_log = InferenceLog(inference_log.get("path"), inference_log["flush_rows"],
                                              inference_log["flush_s"])

    # -- helpers ---------------------------------------------------------------------------------------------

    async def _info(self, name: str) -> dict[str, Any]:
        """The live version (the alias, read from the registry here, so every replica serves the same one) and
        its features; refreshed every few seconds, which is how an alias move reaches traffic without a restart."""
        if name not in self.handles:
            raise RequestError(f"model {name!r} is not served here; served: {', '.join(self.handles)}", 404)
        cached = self.infos.get(name)
        if cached is None or time.monotonic() - cached["_at"] > INFO_TTL_S:
            try:
                live = await asyncio.to_thread(self._alias_version, name)
            except Exception as exc:  # the registry is unreachable: keep serving what was live
                if cached is None:
                    live = (await self.handles[name].info.remote())["live"]
                else:
                    live = cached["live"]
                log.warning("fabric: could not read %s@%s from the registry: %s", name, self.aliases[name], exc)
            if (name, live) not in self.metas:
                self.metas[(name, live)] = await self.handles[name].meta.remote(live)
            cached = self.infos[name] = {"live": live, "meta": self.metas[(name, live)], "loaded": [live],
                                         "_at": time.monotonic()}
        return cached

    def _alias_version(self, name: str) -> str:
        from mlflow import MlflowClient

        return str(MlflowClient(self.tracking_uri).get_model_version_by_alias(name, self.aliases[name]).version)

    def _authorize(self, request: Request, role: str) -> str:
        """Checks the request's key has ``role``; returns who it is for the audit trail (never the key)."""
        if not self.auth_required:
            return request.headers.get("x-actor") or "anonymous"
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if not key:
            raise RequestError("missing API key: send `Authorization: Bearer KEY`", 401)
        granted = self.keys.role(key)
        if granted is None:
            raise RequestError("invalid API key", 401)
        if not Keyring.allows(granted, role):
            raise RequestError(f"this key has role {granted!r}; this endpoint needs {role!r}", 403)
        return request.headers.get("x-actor") or f"{granted}-key:{hash_key(key)[:8]}"

    async def _json(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise RequestError(f"request body of {declared} bytes is over the limit of {self.max_request_bytes}", 413)
        body = await request.body()
        if len(body) > self.max_request_bytes:
            raise RequestError(f"request body of {len(body)} bytes is over the limit of {self.max_request_bytes}", 413)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"body is not valid JSON: {exc}", 400) from None

    async def _serve(self, request: Request, endpoint: str, name: str, work: Any) -> JSONResponse:
        """Runs ``work()`` with auth, errors as 4xx JSON, a request id, metrics and optional payload logging."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        started, version, status = time.perf_counter(), "-", 200
        try:
            version, body = await work(request_id)
            response = JSONResponse(body)
        except RequestError as exc:
            status = exc.status
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            response = JSONResponse({"error": str(exc)}, status_code=status, headers=headers)
        response.headers["x-request-id"] = request_id
        if self.tally is not None and endpoint in ("v2_infer", "invocations"):
            self.tally.add(name, status)
        self.requests.inc(tags={"model": name, "version": version, "endpoint": endpoint, "status": str(status)})
        self.latency.observe((time.perf_counter() - started) * 1000,
                             tags={"model": name, "version": version, "endpoint": endpoint})
        return response

    async def _predict(self, request: Request, name: str, parse: Any, version: str | None = None,
                       request_id: str = "-", endpoint: str = "") -> tuple[str, dict[str, np.ndarray]]:
        """Auth, parse and validate, route (rollouts), call the model; returns the version and output columns."""
        self._authorize(request, "predict")
        info = await self._info(name)
        features = info["meta"]["features"]
        matrix = parse(await self._json(request), features)
        rollout = self.rollouts.get(name)
        if version is not None:
            try:
                await self.handles[name].load.remote(version)
            except Exception:
                raise RequestError(f"version {version!r} of {name} does not exist or cannot be loaded", 404) from None
        if version is not None or rollout is None:
            used, raw = await self._call(name, matrix, version or info["live"])
        else:
            used, raw = await self._routed(name, rollout, matrix, request)
        columns = output_columns(info["meta"]["task"], raw)
        if self.log_payloads:
            log.info("fabric payload %s v%s in=%s out=%s", name, used, matrix.tolist(), records(columns))
        if self.inference_log is not None:
            self.inference_log.add(request_id, name, used, endpoint, features, matrix, columns)
        return used, columns

    async def _call(self, name: str, matrix: np.ndarray, version: str | None) -> tuple[str, np.ndarray]:
        """A model call, retried on another replica when the one it went to died (a crash, a node lost)."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        for attempt in range(RETRIES + 1):
            try:
                return await self.handles[name].predict.remote(matrix, version)
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                if attempt == RETRIES:
                    raise
                log.warning("fabric: a %s replica died mid-request; retrying on another one", name)
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _timed(self, name: str, version: str, matrix: np.ndarray) -> tuple[bool, float, Any]:
        started = time.perf_counter()
        try:
            _, raw = await self._call(name, matrix, version)
            return True, (time.perf_counter() - started) * 1000, raw
        except Exception as exc:  # a failing candidate: counted, and the request falls back to live
            return False, (time.perf_counter() - started) * 1000, exc

    async def _routed(self, name: str, rollout: Rollout, matrix: np.ndarray, request: Request) -> Any:
        """A request during a rollout: route it, time it, fall back to live on a candidate failure, judge."""
        chosen = rollout.route(request.headers.get("x-routing-key"))
        ok, ms, raw = await self._timed(name, chosen, matrix)
        rollout.record(chosen, ok, ms)
        if not ok and chosen != rollout.live:
            log.warning("fabric: candidate %s v%s failed (%s); answered by live v%s", name, chosen,
                        type(raw).__name__, rollout.live)
            chosen = rollout.live
            ok, ms, raw = await self._timed(name, chosen, matrix)
            rollout.record(chosen, ok, ms)
        if rollout.shadowing and ok:
            request_id = request.headers.get("x-request-id") or "-"
            asyncio.get_running_loop().create_task(self._shadow(name, rollout, matrix, raw, request_id))
        await self._judge(name, rollout)
        if not ok:
            raise raw
        return chosen, raw

    async def _shadow(self, name: str, rollout: Rollout, matrix: np.ndarray, live: np.ndarray,
                      request_id: str) -> None:
        ok, ms, raw = await self._timed(name, rollout.candidate, matrix)
        rollout.record(rollout.candidate, ok, ms)
        task = (await self._info(name))["meta"]["task"]
        rollout.record_shadow(request_id, records(output_columns(task, live)),
                              records(output_columns(task, raw)) if ok else None,
                              None if ok else f"{type(raw).__name__}: {raw}")
        log.info("fabric shadow %s request %s: live v%s vs candidate v%s: %s", name, request_id, rollout.live,
                 rollout.candidate, "agree" if rollout.shadows[-1]["agree"] else "differ")
        await self._judge(name, rollout)

    async def _judge(self, name: str, rollout: Rollout) -> None:
        reason = rollout.verdict()
        if reason and self.rollouts.get(name) is rollout:
            await self._end(name, "rolled_back_automatically", reason, "fabric-serve")

    async def _end(self, name: str, outcome: str, reason: str, actor: str) -> dict[str, Any]:
        rollout = self.rollouts.pop(name)
        state = {**rollout.status(), "outcome": outcome, "reason": reason, "ended": time.time()}
        self.ended[name] = state
        log.warning("fabric: rollout of %s v%s ended: %s (%s)", name, rollout.candidate, outcome, reason)
        from fabric import registry

        await asyncio.to_thread(
            registry.record_event, name, f"rollout_{outcome}", rollout.candidate, from_version=rollout.live,
            actor=actor, reason=reason, strategy=rollout.request.strategy, windows=state["windows"])
        return state

    # -- KServe Open Inference Protocol v2 ---------------------------------------------------------------------

    @api.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> dict[str, bool]:
        for name in self.handles:
            await self._info(name)
        return {"ready": True}

    @api.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        import importlib.metadata

        return {"name": "fabric", "version": importlib.metadata.version("llmops-fabric"), "extensions": []}

    @api.get("/v2/models/{name}")
    async def model_metadata(self, name: str, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            self._authorize(request, "predict")
            info = await self._info(name)
            return info["live"], v2_metadata(name, info["loaded"], info["meta"])

        return await self._serve(request, "metadata", name, work)

    @api.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            info = await self._info(name)
            return info["live"], {"name": name, "ready": True}

        return await self._serve(request, "ready", name, work)

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> JSONResponse:
        async def work(request_id: str) -> Any:
            used, columns = await self._predict(request, name, matrix_from_v2, None, request_id, "v2_infer")
            return used, v2_response(name, used, columns, request_id)

        return await self._serve(request, "v2_infer", name, work)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(self, name: str, version: str, request: Request) -> JSONResponse:
        async def work(request_id: str) -> Any:
            used, columns = await self._predict(request, name, matrix_from_v2, version, request_id, "v2_infer")
            return used, v2_response(name, used, columns, request_id)

        return await self._serve(request, "v2_infer", name, work)

    # -- MLflow scoring protocol -------------------------------------------------------------------------------

    @api.post("/invocations")
    async def invocations(self, request: Request) -> JSONResponse:
        async def work(request_id: str) -> Any:
            used, columns = await self._predict(request, self.default, matrix_from_mlflow, None, request_id,
                                                "invocations")
            return used, mlflow_response(columns)

        return await self._serve(request, "invocations", self.default, work)

    @api.post("/models/{name}/invocations")
    async def model_invocations(self, name: str, request: Request) -> JSONResponse:
        async def work(request_id: str) -> Any:
            used, columns = await self._predict(request, name, matrix_from_mlflow, None, request_id, "invocations")
            return used, mlflow_response(columns)

        return await self._serve(request, "invocations", name, work)

    @api.post("/v2/models/{name}/labels")
    async def labels(self, name: str, request: Request) -> JSONResponse:
        """Late ground truth: ``{"labels": [{"request_id": ..., "label": ..., "row": 0}, ...]}``."""
        async def work(_: str) -> Any:
            self._authorize(request, "predict")
            info = await self._info(name)
            body = await self._json(request)
            if not isinstance(body, dict) or not isinstance(body.get("labels"), list) or not body["labels"]:
                raise RequestError("labels: a non-empty list of {request_id, label} objects is required")
            from fabric.serve.inference_log import default_root, write_labels

            root = (self.inference_log.root if self.inference_log else None) or default_root()
            try:
                await asyncio.to_thread(write_labels, name, body["labels"], root)
            except ValueError as exc:
                raise RequestError(str(exc)) from None
            return info["live"], {"accepted": len(body["labels"])}

        return await self._serve(request, "labels", name, work)

    # -- admin ---------------------------------------------------------------------------------------------------

    @api.post("/admin/models/{name}/rollout")
    async def start_rollout(self, name: str, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            actor = self._authorize(request, "admin")
            info = await self._info(name)
            try:
                wanted = RolloutRequest.from_dict(await self._json(request), source="rollout request")
            except ConfigError as exc:
                raise RequestError(str(exc), 422) from None
            if name in self.rollouts:
                raise RequestError(f"{name} already has a {self.rollouts[name].request.strategy} rollout of "
                                   f"version {self.rollouts[name].candidate}; roll it back or finish it first", 409)
            if wanted.version == info["live"]:
                raise RequestError(f"version {wanted.version} is already live", 409)
            try:
                await self.handles[name].load.remote(wanted.version)
            except Exception as exc:
                raise RequestError(f"version {wanted.version} of {name} cannot be loaded: {exc}", 422) from None
            rollout = self.rollouts[name] = Rollout(wanted, info["live"], actor)
            from fabric import registry

            await asyncio.to_thread(registry.record_event, name, f"rollout_{wanted.strategy}", wanted.version,
                                    from_version=info["live"], actor=actor, reason=request.headers.get("x-reason"),
                                    percent=wanted.percent)
            return info["live"], rollout.status()

        return await self._serve(request, "rollout", name, work)

    @api.get("/admin/models/{name}/rollout")
    async def rollout_status(self, name: str, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            self._authorize(request, "admin")
            info = await self._info(name)
            rollout = self.rollouts.get(name)
            return info["live"], {"active": rollout.status() if rollout else None, "last": self.ended.get(name)}

        return await self._serve(request, "rollout", name, work)

    @api.post("/admin/models/{name}/rollback")
    async def rollback_rollout(self, name: str, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            actor = self._authorize(request, "admin")
            info = await self._info(name)
            if name not in self.rollouts:
                raise RequestError(f"{name} has no rollout in progress", 409)
            reason = request.headers.get("x-reason") or "rolled back by an admin"
            return info["live"], await self._end(name, "rolled_back", reason, actor)

        return await self._serve(request, "rollout", name, work)

    @api.post("/admin/models/{name}/rollout/finish")
    async def finish_rollout(self, name: str, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            actor = self._authorize(request, "admin")
            await self._info(name)
            rollout = self.rollouts.get(name)
            if rollout is None:
                raise RequestError(f"{name} has no rollout in progress", 409)
            from fabric import registry

            reason = request.headers.get("x-reason") or f"{rollout.request.strategy} rollout finished"
            await asyncio.to_thread(registry.set_champion, name, rollout.candidate, actor=actor, reason=reason,
                                    action=f"rollout_{rollout.request.strategy}_finished")
            self.infos.pop(name, None)
            self.rollouts.pop(name, None)
            self.ended[name] = {**rollout.status(), "outcome": "finished", "reason": reason, "ended": time.time()}
            return (await self._info(name))["live"], self.ended[name]

        return await self._serve(request, "rollout", name, work)

    @api.get("/admin/monitor")
    async def monitor_status(self, request: Request) -> JSONResponse:
        """The last scheduled check of every watched model (the serve config's ``monitor:`` section)."""
        async def work(_: str) -> Any:
            self._authorize(request, "admin")
            return "-", await self._monitor().status.remote()

        return await self._serve(request, "monitor", "-", work)

    @api.get("/admin/models/{name}/monitor")
    async def model_monitor(self, name: str, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            self._authorize(request, "admin")
            info = await self._info(name)
            return info["live"], await self._monitor().status.remote(name)

        return await self._serve(request, "monitor", name, work)

    @api.post("/admin/models/{name}/monitor/check")
    async def model_monitor_check(self, name: str, request: Request) -> JSONResponse:
        """Runs the model's check (and its alert rules) now instead of at the next scheduled time."""
        async def work(_: str) -> Any:
            self._authorize(request, "admin")
            info = await self._info(name)
            if name not in (await self._monitor().status.remote())["models"]:
                raise RequestError(f"{name} is not watched: add it to the serve config's monitor.specs", 404)
            await self.tally.flush()
            return info["live"], await self._monitor().check_now.remote(name)

        return await self._serve(request, "monitor", name, work)

    def _monitor(self) -> Any:
        if self.monitor is None:
            raise RequestError("this app has no monitor: add a `monitor:` section to its serve config", 404)
        return self.monitor

    @api.post("/admin/models/{name}/reload")
    async def reload(self, name: str, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            self._authorize(request, "admin")
            await self._info(name)
            self.infos.pop(name, None)  # read the alias again now rather than within INFO_TTL_S
            live = (await self._info(name))["live"]
            return live, {"model": name, "alias": self.aliases[name], "version": live}

        return await self._serve(request, "reload", name, work)


def build_app(cfg: ServeConfig, tracking_uri: str | None = None) -> Any:
    """The bound application for ``cfg`` (keys read and hashed here; the plain keys never leave this process)."""
    import mlflow

    keys = Keyring.load(cfg.auth.keys_file)
    if cfg.auth.required and not len(keys):
        raise ConfigError("auth.required is true but no API keys are configured: set FABRIC_API_KEYS=KEY:ROLE[,...] "
                          "or auth.keys_file (or auth.required=false for an open endpoint)")
    uri = tracking_uri or mlflow.get_tracking_uri()
    _check_aliases(cfg, uri)
    models: dict[str, Any] = {}
    for route in cfg.models:
        if route.placement == "gateway":
            models[route.name] = route.model_dump()
            continue
        options: dict[str, Any] = {
            "name": f"model-{route.name}",
            "ray_actor_options": {"num_cpus": route.num_cpus, "num_gpus": route.num_gpus},
            "max_ongoing_requests": max(4 * route.max_batch_size, 16),
        }
        if route.autoscaling:
            options["autoscaling_config"] = route.autoscaling.model_dump()
        else:
            options["num_replicas"] = route.num_replicas
        models[route.name] = ModelServer.options(**options).bind(route.model_dump(), uri)
    # The gateway only awaits the model calls: let it hold many requests, so they reach @serve.batch together.
    inline_cpus = sum(route.num_cpus for route in cfg.models if route.placement == "gateway")
    log_root = cfg.inference_log.path or default_root()
    return Gateway.options(ray_actor_options={"num_cpus": 0.25 + inline_cpus},
                           max_ongoing_requests=GATEWAY_MAX_ONGOING).bind(
        models, {route.name: route.alias for route in cfg.models}, uri, keys.hashed, cfg.auth.required,
        cfg.max_request_bytes, cfg.log_payloads, {**cfg.inference_log.model_dump(), "path": log_root},
        _bind_monitor(cfg, uri, log_root))


def run_app(build: Any, cfg: Any, api_keys: str) -> str:
    """Runs ``build(cfg)`` on Ray Serve at ``cfg.host:cfg.port`` as application ``cfg.name`` with ``api_keys``
    (``KEY:ROLE,...``), read only while the app is built, so the rest of the process never sees them; returns
    its URL. Ray must be up; the caller shuts Serve down. (``fabric demo`` and the tests serve this way.)"""
    previous = os.environ.get(ENV)
    os.environ[ENV] = api_keys
    try:
        app = build(cfg)
    finally:
        os.environ.pop(ENV) if previous is None else os.environ.update({ENV: previous})
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app, name=cfg.name, route_prefix="/")
    return f"http://{cfg.host}:{cfg.port}"


def _bind_monitor(cfg: ServeConfig, tracking_uri: str, log_root: str) -> Any:
    """The Monitor deployment of the config's ``monitor:`` section (None without one)."""
    if cfg.monitor is None:
        return None
    from fabric.serve.monitoring import Monitor

    specs = [spec.model_dump() for spec in cfg.monitor.specs] or [{"model": route.name} for route in cfg.models]
    return Monitor.options(name="monitor", ray_actor_options={"num_cpus": cfg.monitor.num_cpus}).bind(
        specs, cfg.monitor.interval_s, cfg.monitor.first_check_s, tracking_uri, log_root)


def _check_aliases(cfg: ServeConfig, tracking_uri: str) -> None:
    """Fails before anything deploys when a model's alias does not resolve in the registry, naming it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    for route in cfg.models:
        try:
            client.get_model_version_by_alias(route.name, route.alias)
        except MlflowException as exc:
            known = ", ".join(sorted(m.name for m in client.search_registered_models(max_results=50))) or "none"
            raise ConfigError(f"models: {route.name}@{route.alias} is not in the registry at {tracking_uri} "
                              f"({str(exc).splitlines()[0]}); registered models: {known}. Train and register it "
                              "first (make demo registers breast-cancer), or fix the name or alias.") from None


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point for Ray's ``serve deploy``/``serve run``: ``args: {config: PATH, overrides: [k=v, ...]}``."""
    from fabric.runtime import setup_mlflow

    cfg = ServeConfig.from_yaml(args["config"], list(args.get("overrides") or []))
    setup_mlflow(cfg.runtime.mlflow)
    return build_app(cfg)
