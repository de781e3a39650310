"""What ``fabric serve up configs/serve/llm.yaml`` deploys: one base model behind an OpenAI-compatible API.

The YAML says ``kind: llm``; ``engine`` picks the implementation: ``transformers`` (embedded, CPU, batched, LoRA
adapters from the MLflow registry) or ``vllm`` (Ray Serve LLM's own vLLM deployments, GPUs).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from fabric.config import FabricConfig, Field
from fabric.runtime import RuntimeConfig
from fabric.serve.config import AuthConfig, AutoscalingConfig

__all__ = ["LLMLimits", "LLMModel", "LLMServeConfig", "TransformersEngineConfig", "VllmEngineConfig"]

CLOUD_PREFIXES = ("s3://", "gs://", "abfss://", "azure://")
VLLM_AUTH_REFUSAL = (
    "auth.required is true, but engine: vllm serves Ray Serve LLM's own OpenAI router, which checks no API keys "
    "(nor limits.max_tokens or limits.max_request_bytes); fabric's key-checking gateway fronts only engine: "
    "transformers. Set auth.required=false and keep host on a private address (127.0.0.1, or a cluster-internal "
    "one behind a proxy that checks keys), or use engine: transformers")


class LLMModel(FabricConfig):
    """The base model: the name clients send as ``model`` and where its weights come from."""

    id: str = Field("smollm2-135m-instruct", min_length=1, pattern=r"^[^:\s]+$",
                    description="Name clients send as `model` (adapters: `ID:ADAPTER`). No colon.")
    source: str = Field("smollm2-135m-instruct", min_length=1,
                        description="transformers: a source for llm.models.resolve_model (offline). vllm: a local "
                        "path or a Hugging Face id the cluster can read.")


class LLMLimits(FabricConfig):
    """Per-request and per-server limits; requests over them get an OpenAI-style 4xx that says which."""

    max_context_tokens: int = Field(2048, ge=16, description="Prompt tokens plus max_tokens may not exceed this.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(128, ge=1, description="max_tokens of a request that gives none.")
    max_concurrent_requests: int = Field(32, ge=1, description="Requests in flight at once; more get 429.")
    max_request_bytes: int = Field(1_048_576, ge=1, description="Larger request bodies get 413.")
    request_timeout_s: float = Field(300.0, gt=0, description="A request not answered (or a stream not finished) "
                                     "within this many seconds is cancelled: 504, or an error event in a stream.")

    @model_validator(mode="after")
    def _consistent(self) -> LLMLimits:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) must be at most max_tokens "
                             f"({self.max_tokens})")
        if self.max_tokens >= self.max_context_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be below max_context_tokens "
                             f"({self.max_context_tokens}) to leave room for a prompt")
        return self


class TransformersEngineConfig(FabricConfig):
    """The embedded engine: Hugging Face transformers on CPU (or one GPU), with continuous batching."""

    max_batch_size: int = Field(8, ge=1, description="Requests decoded together in one padded batch.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="How long an idle engine waits for more requests before its first step (requests "
        "that arrive later join the running batch between steps anyway).")
    num_replicas: int = Field(1, ge=1, description="Engine replicas (each holds the model).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per engine replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per engine replica (the model is moved to cuda).")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per replica. Empty: num_cpus rounded "
                                      "up (Ray would otherwise pin one thread).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights' dtype.")
    max_adapters_per_replica: int = Field(4, ge=1, description="LoRA adapters kept loaded per replica (LRU).")


class VllmEngineConfig(FabricConfig):
    """Ray Serve LLM (``ray.serve.llm``) with vLLM: the fields become an ``LLMConfig``."""

    accelerator_type: str | None = Field(None, description="Ray accelerator type to schedule on (A10G, L4, H100...).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one replica shards the model over.")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages of one replica.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    dtype: str = Field("auto", description="vLLM dtype (auto, bfloat16, float16).")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="More vLLM engine arguments, passed as "
                                          "given (they win over the fields above).")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Replica autoscaling.")
    lora_path: str | None = Field(None, description="Cloud folder of LoRA adapters (s3://, gs://): enables "
                                  "`model=BASE:ADAPTER`. Ray Serve LLM rejects local paths.")
    max_adapters_per_replica: int = Field(4, ge=1, description="LoRA adapters kept loaded per replica.")


class LLMServeConfig(FabricConfig):
    """An OpenAI-compatible LLM application on Ray Serve (`/v1/models`, `/v1/chat/completions`, `/v1/completions`)."""

    kind: Literal["llm"] = Field("llm", description="Marks an LLM serve config (tabular configs have no kind).")
    name: str = Field("llm", min_length=1, description="Ray Serve application name.")
    route_prefix: str = Field("/", description="HTTP path the application is mounted at.")
    host: str = Field("127.0.0.1", description="Address the HTTP proxy listens on: loopback only by default; "
                      "0.0.0.0 (all interfaces) only when other machines must reach it.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Ray Serve proxy.")
    engine: Literal["transformers", "vllm"] = Field("transformers", description="transformers (embedded, CPU) or "
                                                    "vllm (ray.serve.llm, GPUs).")
    model: LLMModel = Field(default_factory=LLMModel, description="The base model.")
    limits: LLMLimits = Field(default_factory=LLMLimits, description="Request and server limits.")
    transformers: TransformersEngineConfig = Field(default_factory=TransformersEngineConfig,
                                                   description="Settings of the transformers engine.")
    vllm: VllmEngineConfig = Field(default_factory=VllmEngineConfig, description="Settings of the vLLM engine.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys, checked by the gateway of the "
                             "transformers engine; engine: vllm cannot check them and refuses required: true.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Where Ray and MLflow are.")

    @model_validator(mode="after")
    def _engine_settings(self) -> LLMServeConfig:
        lora = self.vllm.lora_path
        if self.engine == "vllm" and lora and not lora.startswith(CLOUD_PREFIXES):
            raise ValueError(f"vllm.lora_path {lora!r}: Ray Serve LLM loads adapters from cloud storage only "
                             f"({', '.join(CLOUD_PREFIXES)}); copy the adapters there")
        if self.engine == "vllm" and self.auth.required:
            raise ValueError(VLLM_AUTH_REFUSAL)
        return self
