"""Every kind of config file that is not a workload's, and how a file says which kind it is.

A workload config names its workload (``workload: NAME``, or a file named after it); every other config says its
kind at the top (``kind: serve``, ``kind: llm``, ``kind: rag``). ``fabric config check|show``, ``fabric serve up``
and the tests all read this one registry, so a new kind is added here once.

Example:
    >>> kind_of("configs/serve/llm.yaml")
    'llm'
    >>> load_kind("configs/serve/tabular.yaml", ["port=8001"]).port
    8001

The CLI does the same: ``fabric config check configs/serve/tabular.yaml port=8001``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

from fabric.config import ConfigError, FabricConfig, load_yaml

__all__ = ["CONFIG_KINDS", "SERVE_KINDS", "config_class", "kind_of", "load_kind"]

# kind -> "module:Class", imported only when a file of that kind is read.
CONFIG_KINDS = {
    "serve": "fabric.serve.config:ServeConfig",
    "llm": "llm.serving.config:LLMServeConfig",
    "rag": "rag.serving.config:RagServeConfig",
    "monitor": "fabric.monitor.alerts:MonitorSpec",
}
SERVE_KINDS = ("serve", "llm", "rag")  # what `fabric serve up` deploys


def kind_of(path: str | Path, explicit: str | None = None) -> str | None:
    """``explicit``, else the file's top-level ``kind:``; None for a workload config (it has no kind)."""
    kind = explicit or load_yaml(path).get("kind")
    if kind is not None and kind not in CONFIG_KINDS:
        raise ConfigError(f"{path}: unknown config kind {kind!r}; kinds: {', '.join(CONFIG_KINDS)}")
    return kind


def config_class(kind: str) -> type[FabricConfig]:
    """The config class of ``kind``."""
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"unknown config kind {kind!r}; kinds: {', '.join(CONFIG_KINDS)}")
    module, name = CONFIG_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_kind(path: str | Path, overrides: Iterable[str] = (), kind: str | None = None) -> FabricConfig:
    """Reads and validates a config of ``kind`` (default: the file's own ``kind:``)."""
    kind = kind_of(path, kind)
    if kind is None:
        raise ConfigError(f"{path} has no `kind:`; add one of: {', '.join(CONFIG_KINDS)}")
    return config_class(kind).from_yaml(path, list(overrides))
