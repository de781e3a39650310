"""What `fabric serve up` deploys: registered models by alias, their replicas and batching, auth and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from fabric.config import FabricConfig, Field, load_yaml
from fabric.monitor.alerts import MonitorSpec
from fabric.runtime import RuntimeConfig

__all__ = ["AuthConfig", "AutoscalingConfig", "InferenceLogConfig", "ModelRoute", "ServeConfig", "ServeMonitorConfig"]


class AutoscalingConfig(FabricConfig):
    """Ray Serve autoscaling of a model's replicas."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(4, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(8.0, gt=0, description="Requests in flight per replica to aim for.")


class ModelRoute(FabricConfig):
    """One registered model served under its name: /v2/models/NAME/infer and (the first model) /invocations."""

    name: str = Field(..., min_length=1, description="Registered model name in the MLflow registry.")
    alias: str = Field("champion", min_length=1, description="Alias to serve; the server follows it when it moves.")
    num_replicas: int = Field(1, ge=1, description="Replicas (ignored when autoscaling is set).")
    autoscaling: AutoscalingConfig | None = Field(None, description="Autoscale replicas instead of a fixed number.")
    max_batch_size: int = Field(32, ge=1, description="Requests merged into one model call (@serve.batch).")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="How long a batch waits to fill.")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (a cluster with GPUs).")
    reload_interval_s: float = Field(5.0, gt=0, description="How often replicas check whether the alias moved.")
    max_loaded_versions: int = Field(
        3, ge=2, description="Versions a replica keeps loaded; beyond it the least recently used one is unloaded, "
        "never the live version or a rollout's candidate.")
    placement: Literal["replicas", "gateway"] = Field(
        "replicas", description="replicas: the model runs in its own deployment (scales out, GPUs, autoscaling). "
        "gateway: loaded inside the HTTP gateway's process, one hop fewer per request, for small CPU models; "
        "it then has the gateway's replicas and CPUs.",
    )

    @model_validator(mode="after")
    def _placement(self) -> ModelRoute:
        if self.placement == "gateway":
            clashes = {"autoscaling": self.autoscaling is not None, "num_gpus": self.num_gpus > 0,
                       "num_replicas": self.num_replicas > 1}
            clashing = [name for name, clash in clashes.items() if clash]
            if clashing:
                raise ValueError(f"{self.name}: placement=gateway runs the model in the gateway, so "
                                 f"{', '.join(clashing)} cannot apply; use placement=replicas")
        return self


class AuthConfig(FabricConfig):
    """API keys with roles: `predict` for inference, `admin` for rollouts and reloads (and inference)."""

    required: bool = Field(
        True, description="Refuse requests without a valid key. With no keys configured the app will not start."
    )
    keys_file: str | None = Field(
        None, description="File of `KEY:ROLE[:NAME]` or `sha256:HEX:ROLE[:NAME]` lines, added to FABRIC_API_KEYS "
        "(KEY:ROLE[:NAME],...); NAME is who the audit trail says acted with the key."
    )


class InferenceLogConfig(FabricConfig):
    """Every prediction written to Parquet in batches, for monitoring (see fabric.serve.inference_log)."""

    enabled: bool = Field(True, description="Write the inference log.")
    path: str | None = Field(None, description="Root folder or URI (s3://...). Empty: FABRIC_HOME/inference.")
    flush_rows: int = Field(512, ge=1, description="Rows buffered before a file is written.")
    flush_s: float = Field(5.0, gt=0, description="Seconds at most between writes.")


class ServeMonitorConfig(FabricConfig):
    """Checks the serving app runs on a schedule, and their alert rules (see fabric.serve.monitoring)."""

    interval_s: float = Field(300.0, ge=1, description="Seconds between two checks of a model.")
    first_check_s: float = Field(60.0, ge=0, description="Seconds after start before the first check.")
    num_cpus: float = Field(0.25, ge=0, description="CPUs of the Monitor deployment.")
    specs: list[MonitorSpec] = Field(
        default_factory=list, description="What to watch: monitor spec files (configs/monitor/*.yaml) or the same "
        "mappings inline. Empty: every served model, with no alert rules (checks and gauges only).")

    @field_validator("specs", mode="before")
    @classmethod
    def _load_files(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        loaded = []
        for item in value:
            if isinstance(item, str):
                item = load_yaml(item)
                ct = item.get("ct")
                if isinstance(ct, dict) and isinstance(ct.get("config"), str):  # replicas may run elsewhere
                    item["ct"] = {**ct, "config": str(Path(ct["config"]).resolve())}
            loaded.append(item)
        return loaded


class ServeConfig(FabricConfig):
    """A Ray Serve application of registered models."""

    kind: Literal["serve"] = Field("serve", description="Marks a serve config of registered models "
                                   "(`kind: llm` is an LLM API); see fabric.config_kinds.")
    name: str = Field("fabric", min_length=1, description="Ray Serve application name.")
    route_prefix: str = Field("/", description="HTTP path the application is mounted at.")
    host: str = Field("127.0.0.1", description="Address the HTTP proxy listens on (0.0.0.0 on a cluster).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Ray Serve proxy.")
    models: list[ModelRoute] = Field(..., min_length=1, description="The models to serve; the first answers "
                                     "/invocations.")
    max_request_bytes: int = Field(1_048_576, ge=1, description="Larger request bodies get 413.")
    max_shadow_in_flight: int = Field(
        16, ge=1, description="Shadow calls to a candidate running at once per gateway replica; past it a request "
        "is not shadowed (counted as skipped in the rollout's state).")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys.")
    inference_log: InferenceLogConfig = Field(default_factory=InferenceLogConfig, description="Prediction log.")
    log_payloads: Literal[False, True] = Field(
        False, description="Write request inputs and outputs to the server log (never keys). Off by default."
    )
    monitor: ServeMonitorConfig | None = Field(
        None, description="Scheduled monitoring of the served models: checks, alert rules, Prometheus gauges. "
        "Empty: no scheduled checks.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Where Ray and MLflow are.")

    @model_validator(mode="after")
    def _unique_names(self) -> ServeConfig:
        names = [m.name for m in self.models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"models: each name once; repeated: {', '.join(duplicated)}")
        unserved = [spec.model for spec in (self.monitor.specs if self.monitor else []) if spec.model not in names]
        if unserved:
            raise ValueError(f"monitor.specs: {', '.join(unserved)} not served by this app; served: {', '.join(names)}")
        return self
