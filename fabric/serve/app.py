"""The Ray Serve application behind ``fabric serve up``: a gateway in front of the registered models.

The deployments live in :mod:`fabric.serve.gateway` and :mod:`fabric.serve.model_server`; this module binds them.

* ``ModelServer`` (per registered model): loads the version its alias points at, follows the alias when it
  moves (hot reload, no restart), and answers with dynamic batching (``@serve.batch``): concurrent requests are
  merged into one model call. With ``placement: replicas`` it is a deployment of its own (scales out, takes
  GPUs); with ``placement: gateway`` it runs inside the gateway's process (:class:`InProcess`), a hop fewer.
* ``Gateway`` (the FastAPI ingress): API keys with roles, request size limit, the V2 and MLflow protocols with
  validation against the model's features, request ids, and Prometheus metrics through ``ray.serve.metrics``.

``build_app(cfg)`` binds both; ``app_builder(args)`` is the same for Ray's own ``serve deploy`` / ``serve run``
(``import_path: fabric.serve.app:app_builder``, ``args: {config: configs/serve/tabular.yaml}``).
"""

import os
from typing import Any

from ray import serve

from fabric.config import ConfigError
from fabric.serve.config import ServeConfig
from fabric.serve.gateway import GATEWAY_MAX_ONGOING, Gateway
from fabric.serve.inference_log import default_root
from fabric.serve.keys import ENV, Keyring
from fabric.serve.model_server import InProcess, ModelServer

__all__ = ["Gateway", "InProcess", "ModelServer", "app_builder", "build_app", "run_app"]


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
        _bind_monitor(cfg, uri, log_root), keys.names,
        {"max_loaded_versions": max(route.max_loaded_versions for route in cfg.models),
         "max_shadow_in_flight": cfg.max_shadow_in_flight})


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
