"""The RAG chain on Ray Serve: ``fabric serve up configs/serve/rag.yaml`` (``kind: rag``).

``POST /rag/query`` and OpenAI's ``/v1/chat/completions`` answer questions from the documents ingested into a
Qdrant collection alias, with citations (chunk, source, quoted span) and a groundedness score; see
:mod:`rag.serving.build` for the deployments and :mod:`rag.serving.gateway` for the routes and errors.

Importing this package is cheap; Ray, torch and the models load when an application is built.
"""

from typing import Any

from rag.serving.config import RagServeConfig

__all__ = ["RagServeConfig", "app_builder", "build_rag_app"]


def build_rag_app(cfg: RagServeConfig, tracking_uri: str | None = None) -> Any:
    """The unstarted Serve application for ``cfg`` (see :func:`rag.serving.build.build_rag_app`)."""
    from rag.serving.build import build_rag_app as build

    return build(cfg, tracking_uri)


def app_builder(args: dict) -> Any:
    """Ray's ``serve run`` entry point (see :func:`rag.serving.build.app_builder`)."""
    from rag.serving.build import app_builder as builder

    return builder(args)
