"""What the resolved stack is on this machine: ``fabric doctor [--json]``.

Example:
    >>> report = diagnose()
    >>> report["ray"]["mode"]
    'embedded'
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess
from typing import Any

from fabric.home import locate_home
from fabric.runtime import RuntimeConfig, cached_models, resolve_stack

HOME_SOURCES = {
    "env": "FABRIC_HOME is set",
    "found": "found in the current folder or an enclosing one",
    "new": "none in the current folder or above: a new one in the current folder",
}

__all__ = ["diagnose"]


def diagnose(cfg: RuntimeConfig | None = None, connect: bool = True) -> dict[str, Any]:
    """The resolved stack. On a cluster address (and ``connect``), asks the cluster for its CPUs and GPUs."""
    stack = resolve_stack(cfg)
    return {
        "fabric": _version("llmops-fabric"),
        "python": platform.python_version(),
        "home": stack.home,
        "home_source": HOME_SOURCES[locate_home()[1]],
        "ray": _ray(stack.ray_address, stack.ray_num_cpus, connect),
        "mlflow": {
            "version": _version("mlflow"),
            "mode": "embedded" if stack.mlflow_artifact_root else "server",
            "tracking_uri": stack.mlflow_tracking_uri,
            "artifact_root": stack.mlflow_artifact_root,
        },
        "data": {"backend": stack.data_backend, "location": stack.data_location},
        "qdrant": {"mode": stack.qdrant_mode, "location": stack.qdrant},
        "models": {"cache": stack.model_cache, "cached": cached_models(cfg)},
        "vllm": {"importable": importlib.util.find_spec("vllm") is not None, "version": _version("vllm")},
    }


def _ray(address: str | None, num_cpus: int | None, connect: bool) -> dict[str, Any]:
    mode = "cluster" if address else "embedded"
    info: dict[str, Any] = {"version": _version("ray"), "address": address, "mode": mode}
    if not address:
        return {**info, "cpus": num_cpus, "gpus": _local_gpus()}
    if not connect:
        return {**info, "cpus": None, "gpus": None}
    try:
        import ray

        ray.init(address=address, log_to_driver=False)
        resources = ray.cluster_resources()
        ray.shutdown()
        return {**info, "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)}
    except Exception as exc:  # the report says what went wrong instead of failing
        return {**info, "cpus": None, "gpus": None, "error": f"{type(exc).__name__}: {exc}"}


def _local_gpus() -> int:
    """NVIDIA GPUs on this machine, counted without importing torch."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
