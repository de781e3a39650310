"""``fabric serve up|status|down``: registered models on Ray Serve."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fabric.cli._output import JSON_OPTION, emit, fail

app = typer.Typer(help="Serve registered models on Ray Serve (KServe V2 and MLflow protocols).", no_args_is_help=True)


@app.command()
def up(
    config: Path = typer.Argument(..., help="Serve config, e.g. configs/serve/tabular.yaml."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted key=value overrides.", show_default=False),
    detach: bool = typer.Option(False, "--detach", help="Deploy and return (on a cluster: RAY_ADDRESS or "
                                "runtime.ray.address). Default: serve in the foreground until Ctrl-C."),
) -> None:
    """Deploy the config's models; print the endpoints. Foreground on the embedded Ray, Ctrl-C stops cleanly."""
    import signal
    import threading

    from fabric.config import ConfigError
    from fabric.serve.config import ServeConfig

    try:
        cfg = ServeConfig.from_yaml(config, overrides or [])
    except ConfigError as exc:
        fail(str(exc))
    from ray import serve

    from fabric.runtime import init_ray, resolve_stack, setup_mlflow
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
        print(f"serving {', '.join(m.name + '@' + m.alias for m in cfg.models)} as application {cfg.name!r}:")
        print(f"  {base}/invocations  MLflow scoring ({cfg.models[0].name})")
        for model in cfg.models:
            print(f"  {base}/v2/models/{model.name}/infer  KServe V2")
        print(f"  {base}/v2/health/ready  {base}/docs (OpenAPI)", flush=True)
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
