"""LoRA adapters from the MLflow registry, as served: ``model="BASE:NAME"`` or ``"BASE:NAME/VERSION"``.

``NAME`` is a registered model that :func:`llm.adapter.log_adapter` registered (a pyfunc whose artifact
``adapter`` is the peft folder). Without a version the latest one is served. The folder is downloaded once into
``$FABRIC_HOME/models/adapters/NAME/VERSION`` (versions never change). ``NAME`` is checked against
:data:`ADAPTER_PATTERN` before it reaches a registry query or a path (404 otherwise).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from llm.serving.openai_protocol import ApiError

__all__ = ["ADAPTER_PATTERN", "adapter_folder", "split_model"]

# A registered model name (letters, digits, '.', '_', '-'; no quotes, spaces or path parts), then maybe /VERSION.
ADAPTER_PATTERN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,199})(?:/(?P<version>[1-9]\d{0,9}))?")


def _checked(adapter: str, model: str) -> tuple[str, str]:
    """(name, version or '') of a valid adapter id; 404 naming the rule otherwise."""
    match = ADAPTER_PATTERN.fullmatch(adapter)
    if match is None:
        raise ApiError(f"model {model!r}: an adapter is NAME or NAME/VERSION, NAME of letters, digits, '.', '_' "
                       "and '-' (a registered model)", 404, "model", "model_not_found")
    return match["name"], match["version"] or ""


def split_model(model: str, base_id: str) -> tuple[str, str | None]:
    """(base, adapter or None) of a request's ``model``; 404 for another base model."""
    base, colon, adapter = model.partition(":")
    if base != base_id:
        raise ApiError(f"model {model!r} is not served here; served: {base_id!r} (adapters: {base_id}:NAME or "
                       f"{base_id}:NAME/VERSION)", 404, "model", "model_not_found")
    if colon:
        _checked(adapter, model)
    return base, adapter or None


def adapter_folder(adapter: str, base_source: str, cache: Path) -> Path:
    """The local peft folder of a registered adapter; 404 if it is not registered, 400 if for another base."""
    from mlflow.exceptions import MlflowException

    from fabric.registry import mlflow_client

    name, version = _checked(adapter, adapter)  # never let a quote into the filter string below
    client = mlflow_client()
    try:
        if not version:
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise ApiError(f"adapter {name!r} is not a registered model", 404, "model", "model_not_found")
            version = str(max(int(v.version) for v in versions))
        info = client.get_model_version(name, version)
    except MlflowException:
        raise ApiError(f"adapter {adapter!r} is not registered (no model {name!r} version {version or 'any'})",
                       404, "model", "model_not_found") from None
    trained_on = info.tags.get("fabric.base_model")
    if trained_on and trained_on != base_source:
        raise ApiError(f"adapter {name}/{version} was trained on {trained_on!r}, but this server serves "
                       f"{base_source!r}", 400, "model")
    target = cache / "adapters" / name / version
    if not (target / "adapter_config.json").is_file():
        _download(f"models:/{name}/{version}", target)
    return target


def _download(uri: str, target: Path) -> None:
    import mlflow

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        configs = sorted(Path(tmp).rglob("adapter_config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise ApiError(f"{uri} holds no LoRA adapter (no adapter_config.json)", 400, "model")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(configs[0].parent, target)
