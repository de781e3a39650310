"""``fabric serve up|status|down``: registered models, LLM APIs (``kind: llm``) and RAG chains (``kind: rag``) on
Ray Serve."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fabric.cli._output import JSON_OPTION, emit, fail

app = typer.Typer(help="Serve registered models (KServe V2 and MLflow protocols), LLM APIs and RAG chains on Ray "
                  "Serve.", no_args_is_help=True)


@app.command()
def up(
    config: Path = typer.Argument(..., help="Serve config, e.g. configs/serve/tabular.yaml."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted key=value overrides.", show_default=False),
    detach: bool = typer.Option(False, "--detach", help="Deploy and return (on a cluster: RAY_ADDRESS or "
                                "runtime.ray.address). Default: serve in the foreground until Ctrl-C."),
) -> None:
    """Deploy the config's models; print the endpoints. Foreground on the embedded Ray, Ctrl-C stops cleanly.

    A config with ``kind: llm`` deploys an OpenAI-compatible LLM API (llm.serving) instead of tabular models;
    ``kind: rag`` the RAG chain over a Qdrant collection (rag.serving).
    """
    import signal
    import threading

    from fabric.config import ConfigError
    from fabric.config_kinds import SERVE_KINDS, kind_of, load_kind
    from fabric.serve.keys import Keyring

    try:
        kind = kind_of(config) or "serve"  # serve configs written before `kind: serve` have none
        if kind not in SERVE_KINDS:
            raise ConfigError(f"{config} is a {kind!r} config; fabric serve up takes kinds {', '.join(SERVE_KINDS)}")
        cfg = load_kind(config, overrides or [], kind)
        Keyring.load(cfg.auth.keys_file)  # a malformed FABRIC_API_KEYS fails here, before Ray starts
    except ConfigError as exc:
        fail(str(exc))
    from ray import serve

    from fabric.runtime import init_ray, metrics_url, resolve_stack, setup_mlflow

    if kind == "llm":
        from llm.serving.build import build_llm_app as build_app
        from llm.serving.build import endpoints
    elif kind == "rag":
        from rag.serving.build import build_rag_app as build_app
        from rag.serving.build import endpoints
    else:
        from fabric.serve.app import build_app

    stack = resolve_stack(cfg.runtime)
    if detach and not stack.ray_address:
        fail("--detach needs a Ray cluster (RAY_ADDRESS or runtime.ray.address): an embedded Ray ends with this "
             "process")
    try:
        init_ray(cfg.runtime.ray)
        setup_mlflow(cfg.runtime.mlflow)
        application = build_app(cfg)
    except ConfigError as exc:
        fail(str(exc))
    stop = threading.Event()
    if not detach:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(application, name=cfg.name, route_prefix=cfg.route_prefix)
        base = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
        if kind in ("llm", "rag"):
            print("\n".join(endpoints(cfg)), flush=True)
        else:
            print(f"serving {', '.join(m.name + '@' + m.alias for m in cfg.models)} as application {cfg.name!r}:")
            print(f"  {base}/invocations  MLflow scoring ({cfg.models[0].name})")
            for model in cfg.models:
                print(f"  {base}/v2/models/{model.name}/infer  KServe V2")
            print(f"  {base}/v2/health/ready  {base}/docs (OpenAPI)")
        print(f"  {metrics_url()}  Prometheus metrics of this node", flush=True)
        if detach:
            return
        print("Ctrl-C stops the application.", flush=True)
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if not detach:
            print("stopping ...", flush=True)
            serve.shutdown()
            print("stopped", flush=True)


@app.command()
def status(
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address. Default: RAY_ADDRESS."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Applications and deployments on the cluster, with their states."""
    import os

    if not (address or os.environ.get("RAY_ADDRESS")):
        fail("no cluster: set RAY_ADDRESS or --address (an embedded `fabric serve up` answers GET /v2/health/ready)")
    import ray
    from ray import serve

    ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=False)
    details = serve.status()
    data = {
        name: {"status": str(app.status.value if hasattr(app.status, "value") else app.status),
               "deployments": {d: str(s.status.value if hasattr(s.status, "value") else s.status)
                               for d, s in app.deployments.items()}}
        for name, app in details.applications.items()
    }
    emit(data, as_json)


@app.command()
def down(
    name: Optional[str] = typer.Argument(None, help="Application to delete. Default: every application."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address. Default: RAY_ADDRESS."),
) -> None:
    """Delete a served application (or all of them) from the cluster."""
    import os

    if not (address or os.environ.get("RAY_ADDRESS")):
        fail("no cluster: set RAY_ADDRESS or --address (stop a foreground `fabric serve up` with Ctrl-C)")
    import ray
    from ray import serve

    ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=False)
    if name:
        serve.delete(name)
        print(f"deleted {name}")
    else:
        serve.shutdown()
        print("deleted every application and stopped Serve")


URL_OPTION = typer.Option("http://127.0.0.1:8000", "--url", envvar="FABRIC_SERVE_URL",
                          help="The served application's base URL (or FABRIC_SERVE_URL).")
KEY_OPTION = typer.Option(None, "--key", envvar="FABRIC_ADMIN_KEY", help="An admin API key (or FABRIC_ADMIN_KEY).")


def _admin(method: str, url: str, key: str | None, body: dict | None = None, reason: str | None = None) -> dict:
    """One call to the application's admin API; HTTP errors become `error: ...` with the server's message."""
    import json
    import urllib.error
    import urllib.request

    if not key:
        fail("an admin API key is needed: --key or FABRIC_ADMIN_KEY")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if reason:
        headers["X-Reason"] = reason
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        fail(f"{exc.code}: {message}", code=1 if exc.code == 409 else 2)
    except OSError as exc:
        fail(f"cannot reach {url}: {exc}")


@app.command()
def rollout(
    model: str = typer.Argument(..., help="Served model name."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="canary, shadow or blue_green. Omit for status."),
    version: Optional[str] = typer.Option(None, "--version", help="Candidate version."),
    percent: float = typer.Option(10.0, "--percent", help="canary: share of traffic for the candidate."),
    finish: bool = typer.Option(False, "--finish", help="Make the candidate champion and end the rollout."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why, for the audit trail."),
    url: str = URL_OPTION,
    key: Optional[str] = KEY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Start a canary/shadow/blue-green rollout, show its state, or finish it."""
    base = f"{url.rstrip('/')}/admin/models/{model}/rollout"
    if finish:
        result = _admin("POST", f"{base}/finish", key, reason=reason)
    elif strategy:
        if not version:
            fail("--version is needed to start a rollout")
        result = _admin("POST", base, key, {"strategy": strategy, "version": version, "percent": percent},
                        reason=reason)
    else:
        result = _admin("GET", base, key)
    emit(result, as_json)


@app.command()
def rollback(
    model: str = typer.Argument(..., help="Served model name."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why, for the audit trail."),
    url: str = URL_OPTION,
    key: Optional[str] = KEY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """End the model's rollout now: all traffic back to the live version."""
    emit(_admin("POST", f"{url.rstrip('/')}/admin/models/{model}/rollback", key, reason=reason), as_json)
