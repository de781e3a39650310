"""The gateway deployment, the FastAPI ingress of ``fabric serve up``: API keys with roles, the request size limit,
the V2 and MLflow protocols with validation against the model's features, request ids, Prometheus metrics through
``ray.serve.metrics``, rollouts (canary, shadow, blue-green), the inference log and its labels route, and the
monitor's admin routes. It calls the :mod:`~fabric.serve.model_server` deployments.
"""

import asyncio
import importlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from fabric.config import ConfigError
from fabric.serve.access import authorize, read_body, read_json
from fabric.serve.errors import classify, load_error, unrouted, version_exists
from fabric.serve.inference_log import default_root
from fabric.serve.keys import Keyring
from fabric.serve.model_server import InProcess
from fabric.serve.protocols import (
    RequestError,
    mlflow_response,
    output_columns,
    records,
    v2_metadata,
    v2_response,
)
from fabric.serve.pyfunc_io import KIND, loggable
from fabric.serve.rollout import Rollout, RolloutRequest
from fabric.serve.traffic import Traffic
from fabric.serve.wire import decode_mlflow, decode_v2, encode_v2, mlflow_content_type

__all__ = ["GATEWAY_MAX_ONGOING", "Gateway", "api"]

log = logging.getLogger("ray.serve")
INFO_TTL_S = 2.0
RETRIES = 3  # model calls retried when their replica died
GATEWAY_MAX_ONGOING = 256
REPLICA: dict[str, Any] = {}  # the gateway of this replica's process, for requests no route takes


api = FastAPI(title="fabric model serving", description="KServe V2 and MLflow scoring endpoints for registered "
              "models. Send `Authorization: Bearer KEY`.")


@api.exception_handler(StarletteHTTPException)
async def unrouted_request(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """A route or method the gateway lacks (Starlette's 404 and 405, raised before any gateway method runs):
    answered by this replica's gateway like any failure, in the JSON error shape with an x-request-id, counted.
    Registered before ``@serve.ingress(api)``, which freezes a copy of the app."""
    error = unrouted(exc.status_code, request.method, request.url.path, exc.headers)
    gateway = REPLICA.get("gateway")
    if gateway is None:  # pragma: no cover - a gateway is built before it takes requests
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)

    async def work(_: str) -> Any:
        raise error

    return await gateway._serve(request, "unrouted", "-", work)


@serve.deployment
@serve.ingress(api)
class Gateway:
    """HTTP front: auth, limits, protocols, metrics; calls the model deployments."""

    def __init__(self, models: dict[str, Any], aliases: dict[str, str], tracking_uri: str, hashed_keys: dict[str, str],
                 auth_required: bool, max_request_bytes: int, log_payloads: bool = False,
                 inference_log: dict | None = None, monitor: Any = None, key_names: dict[str, str] | None = None,
                 limits: dict[str, int] | None = None):
        from ray.serve.metrics import Counter, Histogram

        # A registry that is down answers 503 within seconds rather than after MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # A model in its own deployment comes as a DeploymentHandle; one placed in the gateway as its route.
        self.handles = {name: InProcess(m, tracking_uri) if isinstance(m, dict) else m for name, m in models.items()}
        self.aliases, self.tracking_uri = aliases, tracking_uri
        self.metas: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()  # LRU of versions' features
        self.default = next(iter(models))
        self.keys = Keyring(hashed_keys, key_names)
        limits = limits or {}
        self.max_loaded_versions = limits.get("max_loaded_versions", 4)
        self.traffic = Traffic(tracking_uri, self._answer, limits.get("max_shadow_in_flight", 16))
        self.rollouts, self.ended = self.traffic.rollouts, self.traffic.ended
        self._version_exists = lambda name, version: version_exists(self.tracking_uri, name, version)
        self.auth_required = auth_required
        self.max_request_bytes = max_request_bytes
        self.log_payloads = log_payloads
        self.requests = Counter("fabric_requests", description="Requests by model, version, endpoint and status.",
                                tag_keys=("model", "version", "endpoint", "status"))
        self.latency = Histogram("fabric_request_latency_ms", description="Request latency in milliseconds.",
                                 boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
                                 tag_keys=("model", "version", "endpoint"))
        self.infos: dict[str, dict[str, Any]] = {}
        self.refreshing: set[str] = set()  # models whose registry state is being read
        self.monitor = monitor
        self.tally = None
        if monitor is not None:
            from fabric.serve.monitoring import RequestTally

            self.tally = RequestTally(monitor)
        # The module's own dict: Serve's ingress pickles this class by value, with copies of the globals it uses.
        importlib.import_module(__name__).REPLICA["gateway"] = self
        self.inference_log = None
        if inference_log and inference_log.get("enabled"):
            from fabric.serve.inference_log import InferenceLog

            self.inference_log = InferenceLog(inference_log.get("path"), inference_log["flush_rows"],
                                              inference_log["flush_s"])

    # -- helpers ---------------------------------------------------------------------------------------------

    async def _info(self, name: str) -> dict[str, Any]:
        """The live version (the alias, read from the registry here, so every replica serves the same one) and
        its features. Once known, a stale answer is used while one refresh at a time reads the registry in the
        background (a slow or unreachable registry never holds up a request); an alias move, and a rollout
        started or ended by another gateway replica or before a restart, reach traffic within seconds."""
        if name not in self.handles:
            raise RequestError(f"model {name!r} is not served here; served: {', '.join(self.handles)}", 404)
        cached = self.infos.get(name)
        if cached is None:
            return await self._refresh(name)
        if time.monotonic() - cached["_at"] > INFO_TTL_S and name not in self.refreshing:
            self.refreshing.add(name)
            self.traffic.in_background(self._refresh(name))
        return cached

    async def _refresh(self, name: str) -> dict[str, Any]:
        try:
            try:
                live, saved = await asyncio.to_thread(self.traffic.registry_state, name, self.aliases[name])
                self.traffic.adopt(name, saved)
            except Exception as exc:  # the registry is unreachable: keep serving what was live
                cached = self.infos.get(name)
                live = cached["live"] if cached else (await self.handles[name].info.remote())["live"]
                log.warning("fabric: could not read %s@%s from the registry: %s", name, self.aliases[name], exc)
            meta = await self._version_meta(name, live)
            cached = self.infos[name] = {"live": live, "meta": meta, "loaded": [live], "_at": time.monotonic()}
            return cached
        finally:
            self.refreshing.discard(name)

    async def _version_meta(self, name: str, version: str) -> dict[str, Any]:
        """The features and task of ``version`` (loading it); 404 when it does not exist, 503 when it exists but
        cannot be loaded or the registry cannot say. Kept for the last ``max_loaded_versions`` versions used."""
        key = (name, str(version))
        if key in self.metas:
            self.metas.move_to_end(key)
            return self.metas[key]
        try:
            meta = await self.handles[name].meta.remote(str(version))
        except Exception as exc:
            raise await load_error(name, str(version), exc, self._version_exists, self.tracking_uri) from None
        self.metas[key] = meta
        self._evict_metas(name)
        return meta

    def _evict_metas(self, name: str) -> None:
        """Forgets the least recently used versions of ``name`` beyond the bound, never the live or candidate."""
        keep = {(self.infos.get(name) or {}).get("live")}
        if name in self.rollouts:
            keep |= {self.rollouts[name].live, self.rollouts[name].candidate}
        for key in [k for k in self.metas if k[0] == name]:
            if sum(k[0] == name for k in self.metas) <= self.max_loaded_versions:
                break
            if key[1] not in keep:
                del self.metas[key]

    def _authorize(self, request: Request, role: str) -> str:
        return authorize(self.keys, self.auth_required, request, role)

    async def _json(self, request: Request) -> Any:
        return await read_json(request, self.max_request_bytes)

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.max_request_bytes)

    async def _serve(self, request: Request, endpoint: str, name: str, work: Any) -> JSONResponse:
        """Runs ``work()`` with a request id, metrics and any failure as a JSON error (see fabric.serve.errors)."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        started, version, status = time.perf_counter(), "-", 200
        try:
            version, body = await work(request_id)
            response = body if isinstance(body, Response) else JSONResponse(body)
        except Exception as exc:
            status, message = classify(exc, self.tracking_uri, request_id)
            if status == 500:
                log.exception("fabric: request %s to %s failed", request_id, endpoint)
            elif status >= 500:
                log.warning("fabric: request %s to %s: %s", request_id, endpoint, message)
            headers = exc.headers if isinstance(exc, RequestError) else None  # Allow of a 405
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else headers
            response = JSONResponse({"error": message}, status_code=status, headers=headers)
        response.headers["x-request-id"] = request_id
        if self.tally is not None and endpoint in ("v2_infer", "invocations"):
            self.tally.add(name, status)
        self.requests.inc(tags={"model": name, "version": version, "endpoint": endpoint, "status": str(status)})
        self.latency.observe((time.perf_counter() - started) * 1000,
                             tags={"model": name, "version": version, "endpoint": endpoint})
        return response

    async def _predict(self, request: Request, name: str, parse: Any, version: str | None = None,
                       request_id: str = "-", endpoint: str = "") -> tuple[str, dict[str, np.ndarray]]:
        """Auth, route (a rollout, or the version asked for), parse and validate against the features of the
        version that answers, call the model; returns that version and the output columns."""
        self._authorize(request, "predict" if version is None else "admin")
        info = await self._info(name)
        body = await self._body(request)
        rollout = self.rollouts.get(name) if version is None else None
        if rollout is not None:
            key = request.headers.get("x-routing-key")
            used, meta, matrix, raw = await self.traffic.routed(name, rollout, body, parse, key, request_id)
        else:
            used = info["live"] if version is None else str(version)
            meta, matrix, raw = await self._answer(name, used, body, parse)
        columns = output_columns(meta["task"], raw)
        self._log(request_id, name, used, endpoint, meta, matrix, columns)
        return used, columns

    def _log(self, request_id: str, name: str, version: str, endpoint: str, meta: dict, data: Any,
             columns: dict[str, np.ndarray]) -> None:
        """The request's rows to the payload log and the inference log; a model served through its pyfunc logs
        its table's columns (see pyfunc_io.loggable). Never fails or delays the prediction."""
        try:
            rows = loggable(data, meta, columns) if meta["task"] == KIND else (meta["features"], data, columns)
            if rows is None:  # tensors: not a table the log can hold
                return
            if self.log_payloads:
                log.info("fabric payload %s v%s in=%s out=%s", name, version, np.asarray(rows[1]).tolist(),
                         records(rows[2]))
            if self.inference_log is not None:
                self.inference_log.add(request_id, name, version, endpoint, *rows)
        except Exception as exc:  # the log never fails a prediction
            log.warning("fabric: inference log skipped request %s: %s", request_id, exc)

    async def _answer(self, name: str, version: str, body: Any, parse: Any) -> tuple[dict, np.ndarray, Any]:
        """``body`` parsed against ``version``'s own features and answered by it: (meta, matrix, raw outputs)."""
        meta = await self._version_meta(name, version)
        matrix = parse(body, meta)
        _, raw = await self._call(name, matrix, version)
        return meta, matrix, raw

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

    def __del__(self) -> None:
        """Serve calls this when the replica drains or shuts down: the buffered inference log rows are written."""
        if getattr(self, "inference_log", None) is not None:
            self.inference_log.close()

    # -- KServe Open Inference Protocol v2 ---------------------------------------------------------------------

    @api.get("/v2/health/live")
    async def live(self, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            return "-", {"live": True}

        return await self._serve(request, "live", "-", work)

    @api.get("/v2/health/ready")
    async def ready(self, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            for name in self.handles:
                await self._info(name)
            return "-", {"ready": True}

        return await self._serve(request, "ready", "-", work)

    @api.get("/v2")
    async def server_metadata(self, request: Request) -> JSONResponse:
        async def work(_: str) -> Any:
            import importlib.metadata

            return "-", {"name": "fabric", "version": importlib.metadata.version("llmops-fabric"), "extensions": []}

        return await self._serve(request, "metadata", "-", work)

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
            used, columns = await self._predict(request, name, lambda body, meta: decode_v2(body, meta, request),
                                                None, request_id, "v2_infer")
            return used, encode_v2(v2_response(name, used, columns, request_id), request)

        return await self._serve(request, "v2_infer", name, work)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(self, name: str, version: str, request: Request) -> JSONResponse:
        """Any version, whatever the alias or rollout says (tests, comparisons): an ``admin`` key only."""
        async def work(request_id: str) -> Any:
            used, columns = await self._predict(request, name, lambda body, meta: decode_v2(body, meta, request),
                                                version, request_id, "v2_infer")
            return used, encode_v2(v2_response(name, used, columns, request_id), request)

        return await self._serve(request, "v2_infer", name, work)

    # -- MLflow scoring protocol -------------------------------------------------------------------------------

    @api.post("/invocations")
    async def invocations(self, request: Request) -> JSONResponse:
        return await self._invocations(request, self.default)

    @api.post("/models/{name}/invocations")
    async def model_invocations(self, name: str, request: Request) -> JSONResponse:
        return await self._invocations(request, name)

    async def _invocations(self, request: Request, name: str) -> JSONResponse:
        async def work(request_id: str) -> Any:
            self._authorize(request, "predict")
            mlflow_content_type(request.headers.get("content-type"))  # 415 before a version parses (and counts) it
            used, columns = await self._predict(request, name, lambda body, meta: decode_mlflow(body, meta, request),
                                                None, request_id, "invocations")
            return used, mlflow_response(columns)

        return await self._serve(request, "invocations", name, work)

    @api.post("/v2/models/{name}/labels")
    async def labels(self, name: str, request: Request) -> JSONResponse:
        """Late ground truth: ``{"labels": [{"request_id": ..., "label": ..., "row": 0}, ...]}``; a ``label`` key."""
        async def work(_: str) -> Any:
            self._authorize(request, "label")
            info = await self._info(name)
            body = await self._json(request)
            if not isinstance(body, dict) or not isinstance(body.get("labels"), list) or not body["labels"]:
                raise RequestError("labels: a non-empty list of {request_id, label} objects is required")
            from fabric.serve.inference_log import write_labels

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
            await self._version_meta(name, wanted.version)  # loads it: 404 if it does not exist, 503 if it fails
            rollout = Rollout(wanted, info["live"], actor)
            problem = await self.traffic.save(name, rollout)
            if problem:  # a rollout that a restart would forget is not started
                raise RequestError(f"{problem}; the rollout was not started", 503)
            self.rollouts[name] = rollout
            audit = await self.traffic.record(name, f"rollout_{wanted.strategy}", wanted.version, actor=actor,
                                              from_version=info["live"], reason=request.headers.get("x-reason"),
                                              percent=wanted.percent)
            return info["live"], {**rollout.status(), **({"warnings": [audit]} if audit else {})}

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
            rollout = self.rollouts[name]
            state = self.traffic.stop(name, "rolled_back", reason)
            return info["live"], await self.traffic.after_end(name, rollout, state, actor)

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
            self.rollouts.pop(name, None)
            self.ended[name] = {**rollout.status(), "outcome": "finished", "reason": reason, "ended": time.time()}
            problem = await self.traffic.save(name, None)
            self.infos.pop(name, None)
            state = {**self.ended[name], **({"warnings": [problem]} if problem else {})}
            return (await self._info(name))["live"], state

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
