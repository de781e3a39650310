"""Picks the versioned data backend from the runtime config: lakeFS when configured, else the local store."""

from __future__ import annotations

from fabric.data.store import VersionStore
from fabric.runtime import RuntimeConfig, resolve_stack

__all__ = ["open_store"]


def open_store(runtime: RuntimeConfig | None = None) -> VersionStore:
    """The store that ``runtime`` (default: the environment) selects.

    Example:
        >>> store = open_store()  # local store under $FABRIC_HOME/data unless LAKEFS_ENDPOINT is set
    """
    runtime = runtime or RuntimeConfig()
    stack = resolve_stack(runtime)
    if stack.data_backend == "lakefs":
        from fabric.data.lakefs_store import LakeFSStore

        cfg = runtime.lakefs  # empty credentials: the store reads LAKECTL_CREDENTIALS_*
        return LakeFSStore(stack.data_location, *cfg.credentials(), storage_namespace=cfg.storage_namespace)
    from fabric.data.local_store import LocalStore

    return LocalStore(stack.data_location)
