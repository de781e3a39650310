"""Shared fixtures: one embedded Ray per test session, a throwaway FABRIC_HOME, and the gpu marker's skip."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Before anything reads it: every test, and every process a test starts, uses a throwaway home.
os.environ["FABRIC_HOME"] = tempfile.mkdtemp(prefix="fabric-test-home-")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")  # Prometheus sees new metrics within a second
# Tests run on the embedded stack; a real lakeFS, when given, is used only by the tests written for it.
REAL_LAKEFS_ENDPOINT = os.environ.get("LAKEFS_ENDPOINT") or os.environ.get("LAKECTL_SERVER_ENDPOINT_URL")
for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "QDRANT_URL", "LAKEFS_ENDPOINT", "LAKECTL_SERVER_ENDPOINT_URL"):
    os.environ.pop(name, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """The one embedded Ray of this test session (2 CPUs pinned)."""
    import ray

    from fabric.runtime import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=512), log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def fabric_home() -> Path:
    return Path(os.environ["FABRIC_HOME"])


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for `fabric ...` subprocesses: this venv first on PATH, no servers configured."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
