"""The gateway deployment, the FastAPI ingress of ``fabric serve up``: API keys with roles, the request size limit,
the V2 and MLflow protocols with validation against the model's features, request ids, Prometheus metrics through
``ray.serve.metrics``, rollouts (canary, shadow, blue-green), the inference log and its labels route, and the
monitor's admin routes. It calls the :mod:`~fabric.serve.model_server` deployments.
"""

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from fabric.config import ConfigError
from fabric.serve.inference_log import default_root
from fabric.serve.keys import Keyring, hash_key
from fabric.serve.model_server import InProcess
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

__all__ = ["GATEWAY_MAX_ONGOING", "Gateway", "api"]

log = logging.getLogger("ray.serve")
INFO_TTL_S = 2.0
RETRIES = 3  # model calls retried when their replica died
GATEWAY_MAX_ONGOING = 256


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
