"""More than one Ray node: the embedded stores must sit on storage every node sees.

The local data store hands Ray Data the paths of its files, and training workers log to the embedded MLflow store
and read the model cache, all under the fabric home. On one machine that just works; on a cluster, a worker on
another node reads its own disk, where those paths do not exist (or hold something else). So before a workload
starts on a cluster of several nodes with an embedded store, every node is asked to read a probe file written into
the folders it will use; a node that cannot is named, with what to do: put ``FABRIC_HOME`` on storage every node
mounts (NFS, a shared volume of the KubeRay pods) or use lakeFS and an MLflow server.

Example:
    >>> check_shared_storage(resolve_stack())        # a no-op on one node
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fabric.config import ConfigError

__all__ = ["SharedStorageError", "check_shared_storage", "nodes_missing"]


class SharedStorageError(ConfigError):
    """A folder an embedded store needs is not visible from every Ray node."""


def nodes_missing(folder: str | Path, timeout_s: float = 60.0) -> list[str]:
    """The alive Ray nodes (``address (node id)``) that do not see ``folder`` as this process does: a probe file
    is written there and read back on each node by a zero-CPU task pinned to it. Empty on a single node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = folder / f".fabric-probe-{token}"
    probe.write_text(token)
    try:
        reads = ray.remote(num_cpus=0, max_retries=0)(_read)
        refs = [reads.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            str(probe), token) for n in nodes]
        seen = ray.get(refs, timeout=timeout_s)
    finally:
        probe.unlink(missing_ok=True)
    return [f"{n['NodeManagerAddress']} ({n['NodeID'][:12]})" for n, ok in zip(nodes, seen, strict=True) if not ok]


def _read(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_shared_storage(stack: Any) -> None:
    """Raises :class:`SharedStorageError` when a Ray node cannot see the embedded data store, MLflow store or
    model cache of ``stack`` (a :class:`fabric.runtime.Stack`); nothing to check on one node or with servers."""
    import ray

    if not ray.is_initialized() or len([n for n in ray.nodes() if n.get("Alive")]) < 2:
        return
    folders = {}
    if stack.data_backend == "local":
        folders["the local data store"] = stack.data_location
    if stack.mlflow_tracking_uri.startswith("sqlite:///"):
        folders["the embedded MLflow store"] = str(Path(stack.mlflow_tracking_uri[len("sqlite:///"):]).parent)
    folders["the model cache"] = stack.model_cache
    for what, folder in folders.items():
        missing = nodes_missing(folder)
        if missing:
            raise SharedStorageError(
                f"{what} at {folder} is not visible from Ray node(s) {', '.join(missing)}: on a cluster of more "
                "than one node, put FABRIC_HOME on storage every node mounts (NFS, a shared volume of every pod), "
                "or use servers: lakeFS (LAKEFS_ENDPOINT) for data and an MLflow server (MLFLOW_TRACKING_URI)")
