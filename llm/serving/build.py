"""One function picks the engine: ``build_llm_app(cfg)`` returns the unstarted Serve application.

Python::

    cfg = LLMServeConfig.from_yaml("configs/serve/llm.yaml")
    serve.run(build_llm_app(cfg), name=cfg.name, route_prefix=cfg.route_prefix)

CLI: ``FABRIC_API_KEYS=KEY:predict fabric serve up configs/serve/llm.yaml``. Ray's own ``serve run``/``serve
deploy``: ``import_path: llm.serving.build:app_builder``, ``args: {config: configs/serve/llm.yaml}``.
"""

from __future__ import annotations

from typing import Any

from llm.serving.config import LLMServeConfig

__all__ = ["app_builder", "build_llm_app", "endpoints"]


def build_llm_app(cfg: LLMServeConfig, tracking_uri: str | None = None) -> Any:
    """The bound application of ``cfg.engine`` (``transformers`` or ``vllm``)."""
    if cfg.engine == "vllm":
        from llm.serving.vllm_engine import build_vllm_app

        return build_vllm_app(cfg)
    from llm.serving.transformers_engine import build_transformers_app

    return build_transformers_app(cfg, tracking_uri)


def endpoints(cfg: LLMServeConfig) -> list[str]:
    """What ``fabric serve up`` prints once the application runs."""
    base = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    return [f"serving {cfg.model.id} ({cfg.engine} engine) as application {cfg.name!r}:",
            f"  {base}/v1/chat/completions  {base}/v1/completions  {base}/v1/models  (OpenAI API)",
            f"  adapters: model=\"{cfg.model.id}:NAME\" (a registered LoRA adapter)"]


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point for Ray's ``serve deploy``/``serve run``: ``args: {config: PATH, overrides: [k=v, ...]}``."""
    from fabric.runtime import setup_mlflow

    cfg = LLMServeConfig.from_yaml(args["config"], list(args.get("overrides") or []))
    setup_mlflow(cfg.runtime.mlflow)
    return build_llm_app(cfg)
