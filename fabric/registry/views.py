"""Read-only views of the registry: every model in a line, one model in full."""

from __future__ import annotations

from typing import Any

from fabric.registry.audit import trail
from fabric.registry.gate import PromotionPolicy
from fabric.registry.store import (
    APPROVAL_TAG,
    CHALLENGER,
    METRIC_TAG,
    TASK_TAG,
    alias,
    all_models,
    champion,
    history,
    iso,
    mlflow_client,
    number,
    quote,
    registered_model,
)

__all__ = ["list_models", "show"]


def list_models() -> list[dict[str, Any]]:
    """Every registered model with its champion, challenger, version count and the champion's primary metric."""
    client = mlflow_client()
    rows = []
    for model in all_models(client):
        versions = client.search_model_versions(f"name = '{quote(model.name)}'")
        current = champion(model)
        tags = next((v.tags for v in versions if str(v.version) == current), {})
        metric = _primary_metric(model.tags, tags)
        rows.append({
            "name": model.name,
            "versions": len(versions),
            "latest_version": str(max((int(v.version) for v in versions), default=0)) if versions else None,
            "champion": current,
            "challenger": alias(model, CHALLENGER),
            "metric": metric,
            "champion_score": number(tags.get(f"{METRIC_TAG}{metric}")) if metric else None,
            "updated": iso(model.last_updated_timestamp),
        })
    return rows


def show(name: str) -> dict[str, Any]:
    """A registered model in full: versions (newest first) with aliases, tags and metrics; policy; audit trail."""
    client = mlflow_client()
    model = registered_model(client, name)
    by_version: dict[str, list[str]] = {}
    for key, version in model.aliases.items():
        by_version.setdefault(str(version), []).append(key)
    versions = sorted(client.search_model_versions(f"name = '{quote(name)}'"), key=lambda v: -int(v.version))
    return {
        "name": name,
        "description": model.description or None,
        "metric": _primary_metric(model.tags, versions[0].tags if versions else {}),
        "aliases": {key: str(version) for key, version in sorted(model.aliases.items())},
        "policy": PromotionPolicy.from_tags(model.tags).model_dump(),
        "champion_history": history(model),
        "versions": [_version_info(v, sorted(by_version.get(str(v.version), []))) for v in versions],
        "audit": trail(model.tags),
    }


def _version_info(v: Any, aliases: list[str]) -> dict[str, Any]:
    metrics = {k[len(METRIC_TAG):]: number(val) for k, val in v.tags.items() if k.startswith(METRIC_TAG)}
    return {"version": str(v.version), "aliases": aliases, "status": v.status, "run_id": v.run_id,
            "created": iso(v.creation_timestamp), "description": v.description or None,
            "approval": v.tags.get(APPROVAL_TAG), "metrics": metrics, "tags": dict(sorted(v.tags.items()))}


def _primary_metric(model_tags: dict[str, str], version_tags: dict[str, str]) -> str | None:
    from fabric.evaluation import default_metric

    metric = PromotionPolicy.from_tags(model_tags).metric
    task = version_tags.get(TASK_TAG)
    return metric or (default_metric(task) if task in ("classification", "regression") else None)
