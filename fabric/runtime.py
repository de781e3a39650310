"""The one place that decides where things run: Ray, MLflow, Qdrant, data and the model cache.

Each part has an embedded default that needs no server and a production setting that needs only configuration:

========== ================================================ ==========================================
part       embedded default                                  production
========== ================================================ ==========================================
compute    local Ray started in-process, CPUs pinned         ``RAY_ADDRESS`` or ``runtime.ray.address``
tracking   SQLite + artifacts under ``$FABRIC_HOME/mlflow``   ``MLFLOW_TRACKING_URI``
vectors    Qdrant local mode under ``$FABRIC_HOME/qdrant``    ``QDRANT_URL`` (+ ``QDRANT_API_KEY``)
data       local versioned store ``$FABRIC_HOME/data``        lakeFS (``LAKEFS_ENDPOINT`` / ``LAKECTL_*``)
models     cache under ``$FABRIC_HOME/models``                same cache, filled by ``fabric llm pull``
========== ================================================ ==========================================

The home is found as git finds ``.git`` (:mod:`fabric.home`); inside a Ray job, a home in the job's temporary
upload folder is refused (:class:`JobHomeError`) rather than filling a folder Ray deletes. Heavy libraries are
imported inside the functions that need them, so importing this module is cheap.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from fabric.config import ConfigError, FabricConfig, Field
from fabric.home import JobHomeError, fabric_home, locate_home, refuse_home_in_job_dir

__all__ = [
    "JobHomeError",
    "LakeFSConfig",
    "MlflowConfig",
    "RayConfig",
    "RuntimeConfig",
    "Stack",
    "cached_models",
    "fabric_home",
    "init_ray",
    "locate_home",
    "metrics_url",
    "qdrant_client",
    "resolve_stack",
    "setup_mlflow",
]


class RayConfig(FabricConfig):
    """Where Ray work runs."""

    address: str | None = Field(
        None, description="Ray cluster to connect to (host:port, ray://host:10001 or 'auto'). Empty: use "
        "RAY_ADDRESS when set, else start an embedded local Ray."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the embedded local Ray (ignored on a cluster). Empty: all of this machine's."
    )
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the embedded local Ray. Empty: Ray detects them.")
    object_store_memory_mb: int | None = Field(
        None, ge=75, description="Object store size of the embedded local Ray, in MiB. Empty: Ray's default."
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env for `fabric submit` (pip, env_vars, excludes, ...); working_dir is always "
        "the project folder.",
    )


class MlflowConfig(FabricConfig):
    """Where runs and models are tracked."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI. Empty: MLFLOW_TRACKING_URI when set, else SQLite under FABRIC_HOME."
    )
    experiment: str = Field("fabric", min_length=1, description="MLflow experiment that runs are logged to.")
    username: str | None = Field(None, description="Tracking server user (or MLFLOW_TRACKING_USERNAME).")
    password: SecretStr | None = Field(
        None, exclude=True, description="Tracking server password (or MLFLOW_TRACKING_PASSWORD); never saved."
    )


class LakeFSConfig(FabricConfig):
    """A lakeFS server; empty fields fall back to the standard LAKECTL_* / LAKEFS_* variables."""

    endpoint: str | None = Field(None, description="lakeFS URL, e.g. http://localhost:8000 (or LAKEFS_ENDPOINT).")
    access_key_id: str | None = Field(None, description="lakeFS access key id (or LAKECTL_CREDENTIALS_ACCESS_KEY_ID).")
    secret_access_key: SecretStr | None = Field(
        None, exclude=True, description="lakeFS secret key (or LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY); never saved."
    )
    storage_namespace: str = Field(
        "local://fabric/{repo}",
        description="Where lakeFS stores a new repository's objects; {repo} is replaced, e.g. s3://bucket/{repo}.",
    )

    def credentials(self) -> tuple[str | None, str | None]:
        """(access key id, secret) as given here; None where the LAKECTL_CREDENTIALS_* variables apply."""
        return self.access_key_id, _reveal(self.secret_access_key)


class RuntimeConfig(FabricConfig):
    """Where every part of the stack lives; the defaults are the embedded local stack."""

    ray: RayConfig = Field(default_factory=RayConfig, description="Ray compute.")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="MLflow tracking and registry.")
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL. Empty: QDRANT_URL when set, else Qdrant local mode under FABRIC_HOME."
    )
    qdrant_api_key: SecretStr | None = Field(
        None, exclude=True, description="Qdrant server API key (or QDRANT_API_KEY); never saved."
    )
    data_backend: Literal["auto", "local", "lakefs"] = Field(
        "auto", description="Versioned data store. auto: lakeFS when an endpoint is configured, else local."
    )
    lakefs: LakeFSConfig = Field(default_factory=LakeFSConfig, description="lakeFS server settings.")


@dataclass(frozen=True)
class Stack:
    """The resolved stack: what each part of a :class:`RuntimeConfig` means on this machine now."""

    home: str
    ray_address: str | None
    ray_num_cpus: int | None
    mlflow_tracking_uri: str
    mlflow_artifact_root: str | None
    qdrant: str
    qdrant_mode: Literal["server", "local"]
    data_backend: Literal["local", "lakefs"]
    data_location: str
    model_cache: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_stack(cfg: RuntimeConfig | None = None) -> Stack:
    """Decides, without starting anything, where each part of the stack runs.

    Raises :class:`JobHomeError` inside a Ray job whose embedded stores would land in its working directory.
    """
    cfg = cfg or RuntimeConfig()
    home = fabric_home()
    embedded_tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    ray_address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: our own embedded URI there is no server.
    tracking = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking == embedded_tracking:
        tracking = None
    qdrant_url = cfg.qdrant_url or os.environ.get("QDRANT_URL")
    lakefs_endpoint = _lakefs_endpoint(cfg.lakefs)
    backend = cfg.data_backend
    if backend == "auto":
        backend = "lakefs" if lakefs_endpoint else "local"
    if backend == "lakefs" and not lakefs_endpoint:
        raise ConfigError(
            "runtime.data_backend is 'lakefs' but no endpoint is set: set runtime.lakefs.endpoint or LAKEFS_ENDPOINT"
        )
    if not tracking or backend == "local":
        refuse_home_in_job_dir(home, tracking is None, backend == "local")
    return Stack(
        home=str(home),
        ray_address=ray_address,
        ray_num_cpus=None if ray_address else (cfg.ray.num_cpus or os.cpu_count()),
        mlflow_tracking_uri=tracking or embedded_tracking,
        mlflow_artifact_root=None if tracking else (home / "mlflow" / "artifacts").as_uri(),
        qdrant=qdrant_url or str(home / "qdrant"),
        qdrant_mode="server" if qdrant_url else "local",
        data_backend=backend,
        data_location=lakefs_endpoint if backend == "lakefs" else str(home / "data"),
        model_cache=str(home / "models"),
    )


def init_ray(cfg: RayConfig | None = None, log_to_driver: bool = True) -> dict[str, float]:
    """Connects to the configured Ray cluster or starts an embedded one; returns the cluster's resources.

    Does nothing when Ray is already initialised in this process (a test session, a Ray job's driver).
    The embedded Ray runs its dashboard on a free local port, and every worker is told its address
    (``RAY_API_SERVER_ADDRESS``): Ray Train's placement-group cleaner asks the State API whether a
    controller is still alive, and without it a trial that Tune stops early would keep its CPUs forever. The
    explicit address also stops the State API from finding another Ray started later on the same machine.
    Workers also get ``FABRIC_HOME`` as this process resolves it, since Ray Train and Tune run them in per-run
    folders where ``./.fabric`` would be a new, empty home (and the model cache would be filled again).
    """
    import ray

    from fabric.logs import apply, log_file

    if log_file() is not None:  # a quiet command: Ray Data, Serve and Train set up their handlers on import, so
        import ray.data  # noqa: F401
        import ray.serve  # noqa: F401
        import ray.train  # noqa: F401
    apply()  # ... then route them as the command asked
    cfg = cfg or RayConfig()
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=log_to_driver)
        else:
            port = _free_port()
            ray.init(
                address="local",  # never attach to a stray `ray start` cluster by accident
                num_cpus=cfg.num_cpus or os.cpu_count(),
                num_gpus=cfg.num_gpus,
                object_store_memory=cfg.object_store_memory_mb * 1024**2 if cfg.object_store_memory_mb else None,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=port,
                # Ray Train and Tune move workers into run folders: the home goes to them as an absolute path.
                runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
                                          "FABRIC_HOME": str(fabric_home())}},
                log_to_driver=log_to_driver,
            )
    return ray.cluster_resources()


def metrics_url() -> str:
    """Where this node's Ray exports Prometheus metrics (Ray Serve's and ``ray.serve.metrics``' own)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_mlflow(cfg: MlflowConfig | None = None) -> str:
    """Points MLflow at the configured tracking store and returns the experiment id (creating it if needed).

    On the embedded store, artifacts live under ``$FABRIC_HOME/mlflow/artifacts`` rather than ``./mlruns``: the
    store's own ``Default`` experiment's too.
    """
    import mlflow

    from fabric.logs import apply

    apply()
    cfg = cfg or MlflowConfig()
    stack = resolve_stack(RuntimeConfig(mlflow=cfg))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if cfg.username:  # MLflow's clients read basic-auth credentials only from these variables
        os.environ["MLFLOW_TRACKING_USERNAME"] = cfg.username
    if cfg.password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = cfg.password.get_secret_value()
    if stack.mlflow_artifact_root:
        _create_embedded_store(stack)
    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = f"{stack.mlflow_artifact_root}/{cfg.experiment}" if stack.mlflow_artifact_root else None
        experiment_id = mlflow.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def qdrant_client(cfg: RuntimeConfig | None = None) -> Any:
    """A ``QdrantClient`` for the configured server, or local mode (a folder) under FABRIC_HOME."""
    from qdrant_client import QdrantClient

    stack = resolve_stack(cfg)
    if stack.qdrant_mode == "server":
        api_key = _reveal((cfg or RuntimeConfig()).qdrant_api_key) or os.environ.get("QDRANT_API_KEY")
        return QdrantClient(url=stack.qdrant, api_key=api_key)
    Path(stack.qdrant).mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=stack.qdrant)


def cached_models(cfg: RuntimeConfig | None = None) -> list[str]:
    """Names of the models in the local model cache (folders holding a ``config.json``)."""
    cache = Path(resolve_stack(cfg).model_cache)
    if not cache.is_dir():
        return []
    return sorted(str(p.parent.relative_to(cache)) for p in cache.rglob("config.json"))


def _lakefs_endpoint(cfg: LakeFSConfig) -> str | None:
    return cfg.endpoint or os.environ.get("LAKEFS_ENDPOINT") or os.environ.get("LAKECTL_SERVER_ENDPOINT_URL")


def _create_embedded_store(stack: Stack) -> None:
    """Creates the embedded SQLite store once, with its Default experiment's artifacts under the home.

    MLflow would otherwise create it on first use with ``./mlruns`` of whichever folder that was.
    """
    Path(stack.home, "mlflow", "artifacts").mkdir(parents=True, exist_ok=True)
    if Path(stack.home, "mlflow", "mlflow.db").exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(stack.mlflow_tracking_uri, stack.mlflow_artifact_root)


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None
