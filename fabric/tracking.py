"""MLflow runs that save what produced them: the resolved config, the code version and the package versions.

Example:
    >>> with start_run(cfg, run_name="smoke") as run:
    ...     mlflow.log_metric("accuracy", 0.97)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fabric.config import FabricConfig

__all__ = ["PACKAGES", "code_version", "package_versions", "start_run"]

PACKAGES = ["llmops-fabric", "ray", "torch", "mlflow", "transformers", "peft", "pandas", "pyarrow", "scikit-learn",
            "xgboost", "onnxruntime", "optuna"]


@contextlib.contextmanager
def start_run(cfg: FabricConfig, run_name: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Starts an MLflow run (nested when one is active) and records the config, code and packages with it."""
    import mlflow

    code = code_version()
    all_tags = {"fabric.workload": str(getattr(cfg, "workload", None) or run_name or ""), **(tags or {})}
    if code.get("commit"):
        all_tags["mlflow.source.git.commit"] = code["commit"]
    with mlflow.start_run(run_name=run_name, tags=all_tags, nested=mlflow.active_run() is not None) as run:
        mlflow.log_text(cfg.to_yaml(), "config.yaml")
        mlflow.log_dict({"code": code, "packages": package_versions()}, "environment.json")
        mlflow.log_params(_flatten(cfg.model_dump(mode="json", exclude={"runtime"})))
        yield run


def code_version(root: str | Path | None = None) -> dict[str, Any]:
    """The git commit of the project and whether the work tree had uncommitted changes (empty outside git)."""
    root = Path(root or Path(__file__).resolve().parent.parent)

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def package_versions(names: list[str] | None = None) -> dict[str, str | None]:
    """Installed versions of the packages that shape a run's result."""
    versions: dict[str, str | None] = {}
    for name in names or PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
