"""The GPU engine: Ray Serve LLM's own vLLM deployments and OpenAI router (``ray.serve.llm.build_openai_app``).

Our YAML becomes one ``LLMConfig``: the model's id and source, vLLM's engine arguments (context length from
``limits.max_context_tokens``, parallelism, memory), autoscaling, and dynamic LoRA loading from cloud storage
(``model="BASE:ADAPTER"``, as for the transformers engine). ``ray.serve.llm`` raises ImportError when vLLM is
not installed, so it is imported only here, only when the app is built.

Ray Serve LLM's OpenAI router checks no API keys and none of ``limits`` but the context length
(``max_model_len``) and the requests in flight (``max_num_seqs``, ``max_ongoing_requests``); it does not sit
behind fabric's gateway. So a vllm config with ``auth.required: true`` (the default) is refused when it is
loaded, before anything starts, rather than serve an open endpoint that looks protected: set
``auth.required=false`` and keep ``host`` on a private address, behind a proxy that checks keys.

Example:
    >>> cfg = LLMServeConfig.from_yaml("configs/serve/llm_vllm_gpu.yaml")
    >>> llm_config_dict(cfg)["engine_kwargs"]["tensor_parallel_size"]
    2
"""

from __future__ import annotations

from typing import Any

from fabric.config import ConfigError
from llm.serving.config import VLLM_AUTH_REFUSAL, LLMServeConfig

__all__ = ["build_vllm_app", "check_vllm_auth", "llm_config_dict"]


def llm_config_dict(cfg: LLMServeConfig) -> dict[str, Any]:
    """The ``LLMConfig`` arguments for ``cfg`` (plain data: checkable without vLLM, usable in a RayService)."""
    settings, limits = cfg.vllm, cfg.limits
    engine_kwargs = {
        "max_model_len": limits.max_context_tokens,
        "max_num_seqs": limits.max_concurrent_requests,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "dtype": settings.dtype,
        **settings.engine_kwargs,
    }
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": cfg.model.id, "model_source": cfg.model.source},
        "engine_kwargs": engine_kwargs,
        "deployment_config": {
            "autoscaling_config": settings.autoscaling.model_dump(),
            "max_ongoing_requests": limits.max_concurrent_requests,
        },
    }
    if settings.accelerator_type:
        config["accelerator_type"] = settings.accelerator_type
    if settings.lora_path:
        engine_kwargs.setdefault("enable_lora", True)  # vLLM needs it; Ray Serve LLM does not set it
        engine_kwargs.setdefault("max_loras", settings.max_adapters_per_replica)
        config["lora_config"] = {"dynamic_lora_loading_path": settings.lora_path,
                                 "max_num_adapters_per_replica": settings.max_adapters_per_replica}
    return config


def check_vllm_auth(cfg: LLMServeConfig) -> None:
    """Raises :class:`ConfigError` when ``cfg`` asks for API keys, which Ray Serve LLM's router cannot check
    (loading the config refuses it already; this also covers a config changed after it was loaded)."""
    if cfg.auth.required:
        raise ConfigError(VLLM_AUTH_REFUSAL)


def build_vllm_app(cfg: LLMServeConfig) -> Any:
    """Ray Serve LLM's OpenAI app for ``cfg`` (needs vLLM: ``pip install 'llmops-fabric[vllm]'``).

    Refuses ``auth.required: true`` first (:func:`check_vllm_auth`), with or without vLLM installed.
    """
    check_vllm_auth(cfg)
    try:
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as exc:
        raise ConfigError(f"engine: vllm needs vLLM on the cluster (pip install 'llmops-fabric[vllm]'); {exc}. "
                          "On a CPU machine use engine: transformers") from None
    return build_openai_app({"llm_configs": [LLMConfig(**llm_config_dict(cfg))]})
