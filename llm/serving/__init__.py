"""An OpenAI-compatible LLM API on Ray Serve: ``fabric serve up configs/serve/llm.yaml``.

Two engines, picked by the config's ``engine``: ``transformers`` (embedded; batched decoding, streaming, LoRA
adapters from the MLflow registry; :mod:`llm.serving.transformers_engine` behind :mod:`llm.serving.gateway`)
and ``vllm`` (Ray Serve LLM's vLLM deployments on GPUs; :mod:`llm.serving.vllm_engine`).

Importing this package is cheap; Ray, torch and transformers load when an application is built.
"""

from typing import Any

from llm.serving.config import LLMServeConfig

__all__ = ["LLMServeConfig", "app_builder", "build_llm_app"]


def build_llm_app(cfg: LLMServeConfig, tracking_uri: str | None = None) -> Any:
    """The unstarted Serve application for ``cfg`` (see :func:`llm.serving.build.build_llm_app`)."""
    from llm.serving.build import build_llm_app as build

    return build(cfg, tracking_uri)


def app_builder(args: dict) -> Any:
    """Ray's ``serve run`` entry point (see :func:`llm.serving.build.app_builder`)."""
    from llm.serving.build import app_builder as builder

    return builder(args)
