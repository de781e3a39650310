"""``build_rag_app(cfg)``: the unstarted RAG application, three deployments bound together.

* ``rag-gateway`` (:class:`rag.serving.gateway.RagGateway`, the FastAPI ingress): auth, limits, the chain's steps,
  groundedness scoring (in-process, on a worker thread: the default scorers answer in milliseconds and a hop to a
  scoring deployment would cost more than it saves), metrics, traces and the inference log;
* ``rag-retriever`` (:class:`rag.serving.retrieval.RetrieverServer`): the query embedder and the alias's live
  collection;
* ``rag-llm-engine``: :mod:`llm.serving`'s transformers engine, unless ``llm.url`` names an OpenAI-compatible
  endpoint to call instead.

Python::

    cfg = RagServeConfig.from_yaml("configs/serve/rag.yaml")
    serve.run(build_rag_app(cfg), name=cfg.name, route_prefix=cfg.route_prefix)

CLI: ``FABRIC_API_KEYS=KEY:predict fabric serve up configs/serve/rag.yaml``. Ray's own ``serve run``/``serve
deploy``: ``import_path: rag.serving.build:app_builder``, ``args: {config: configs/serve/rag.yaml}``.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from rag.serving.config import RagServeConfig

__all__ = ["app_builder", "build_rag_app", "endpoints", "ensure_prompt"]

log = logging.getLogger(__name__)
_URI = re.compile(r"^(?:prompts:/)?(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?$")


def ensure_prompt(uri: str) -> str:
    """``uri``'s prompt version as ``NAME/VERSION``. When prompt NAME has no version at all, the default RAG
    template (:data:`rag.serving.answer.DEFAULT_TEMPLATE`) is registered as its version 1 first (with the URI's
    alias pointed at it), and the log says so.

    Raises:
        ConfigError: the URI is malformed, or NAME exists but not the alias or version the URI names.
    """
    from fabric.config import ConfigError
    from llm import prompts
    from rag.serving.answer import DEFAULT_TEMPLATE

    match = _URI.match(uri.strip())
    if not match:
        raise ConfigError(f"prompt.uri {uri!r}: use prompts:/NAME@ALIAS, prompts:/NAME/VERSION or NAME")
    name, alias, version = match["name"], match["alias"], match["version"]
    try:
        prompts.load(f"prompts:/{name}@latest")
    except prompts.PromptError as exc:
        if "not found" not in str(exc):
            raise ConfigError(f"prompt.uri {uri!r}: the prompt registry cannot be read: {exc}") from None
        if version not in (None, "1"):
            raise ConfigError(f"prompt.uri {uri!r}: prompt {name!r} does not exist, so it has no version "
                              f"{version}; register it (llm.prompts.register) or name version 1") from None
        made = prompts.register(name, DEFAULT_TEMPLATE, message="fabric rag: the default RAG answer template",
                                alias=alias, tags={"fabric.default": "rag-answer"})
        log.warning("fabric rag: prompt %r did not exist: registered the default RAG template as version %d%s", name,
                    made, f" with alias {alias!r}" if alias else "")
    try:
        prompt = prompts.load(uri)
    except prompts.PromptError as exc:
        raise ConfigError(f"prompt.uri {uri!r}: {exc}; point the alias at a version "
                          f"(llm.prompts.set_alias) or fix the URI") from None
    missing = {"context", "question"} - set(getattr(prompt, "variables", set()) or set())
    if missing:
        raise ConfigError(f"prompt.uri {uri!r}: the template lacks {', '.join(sorted(missing))} "
                          "({{context}} receives the numbered excerpts, {{question}} the question)")
    return f"{prompt.name}/{prompt.version}"


def build_rag_app(cfg: RagServeConfig, tracking_uri: str | None = None) -> Any:
    """The bound application: the gateway in front of the retriever and the LLM engine (or endpoint)."""
    import mlflow

    from fabric.config import ConfigError
    from fabric.serve.inference_log import default_root
    from fabric.serve.keys import Keyring
    from rag.serving.gateway import RagGateway
    from rag.serving.retrieval import RetrieverServer

    keys = Keyring.load(cfg.auth.keys_file)
    if cfg.auth.required and not len(keys):
        raise ConfigError("auth.required is true but no API keys are configured: set FABRIC_API_KEYS=KEY:ROLE[,...] "
                          "or auth.keys_file (or auth.required=false for an open endpoint)")
    from rag.groundedness import available_scorers

    if cfg.groundedness.scorer not in available_scorers():
        raise ConfigError(f"groundedness.scorer {cfg.groundedness.scorer!r} is not a known scorer; available: "
                          f"{', '.join(available_scorers())}")
    uri = tracking_uri or mlflow.get_tracking_uri()
    ensure_prompt(cfg.prompt.uri)
    index, limits = cfg.index, cfg.limits
    runtime = {**cfg.runtime.model_dump(), "qdrant_api_key": cfg.runtime.qdrant_api_key}
    retriever = RetrieverServer.options(
        name="rag-retriever", num_replicas=index.num_replicas, ray_actor_options={"num_cpus": index.num_cpus},
        max_ongoing_requests=4 * limits.max_concurrent_requests,
    ).bind(index.alias, runtime, index.embedder, index.hybrid, index.refresh_interval_s)
    engine, api_key = None, None
    if cfg.llm.embedded:
        from llm.serving.transformers_engine import TransformersEngine

        settings = cfg.llm.transformers
        engine = TransformersEngine.options(
            name="rag-llm-engine", num_replicas=settings.num_replicas,
            ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
            max_ongoing_requests=max(limits.max_concurrent_requests, settings.max_batch_size),
        ).bind(cfg.llm.model, settings.model_dump(), uri)
    else:
        api_key = os.environ.get(cfg.llm.api_key_env)
    judge = cfg.groundedness.judge
    judge_api_key = os.environ.get(judge.api_key_env) if judge is not None else None
    resolved = cfg.model_copy(update={"inference_log": cfg.inference_log.model_copy(
        update={"path": cfg.inference_log.path or default_root()})})
    return RagGateway.options(
        name="rag-gateway", ray_actor_options={"num_cpus": cfg.gateway_num_cpus},
        max_ongoing_requests=2 * limits.max_concurrent_requests + 8,  # the excess reaches us and gets a 429
    ).bind(resolved.model_dump(), retriever, engine, keys.hashed, api_key, uri, judge_api_key=judge_api_key)


def endpoints(cfg: RagServeConfig) -> list[str]:
    """What ``fabric serve up`` prints once the application runs."""
    base = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    llm = f"the LLM at {cfg.llm.url} ({cfg.llm.model})" if cfg.llm.url else f"embedded {cfg.llm.model}"
    return [f"serving {cfg.model} (index alias {cfg.index.alias}, {llm}) as application {cfg.name!r}:",
            f"  {base}/rag/query  answers with citations and groundedness (POST {{\"query\": ...}})",
            f"  {base}/rag/retrieve  citations only;  {base}/rag/score  groundedness of any answer",
            f"  {base}/v1/chat/completions  {base}/v1/models  (OpenAI API, model=\"{cfg.model}\")",
            f"  {base}/health"]


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point for Ray's ``serve deploy``/``serve run``: ``args: {config: PATH, overrides: [k=v, ...]}``."""
    from fabric.runtime import setup_mlflow

    cfg = RagServeConfig.from_yaml(args["config"], list(args.get("overrides") or []))
    setup_mlflow(cfg.runtime.mlflow)
    return build_rag_app(cfg)
