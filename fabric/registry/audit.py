"""The audit trail: every change to a registered model, a refusal included, as a ``fabric.audit.NNNNNN.UNIQUE`` tag
on it, so the trail lives with the model.

Each entry is a tag of its own with a unique key (:func:`~fabric.registry.store.entry_key`): writers that run at
once (the serving gateway, the CLI, a CT pipeline, against one MLflow server with no lock between them) never
overwrite each other. An entry's ``seq`` is its place in the trail, oldest first.
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import datetime, timezone
from typing import Any

from fabric.registry.store import AUDIT_TAG, entry_key, mlflow_client, ordered_entries, registered_model

__all__ = ["audit", "audit_trail", "details", "record_event", "trail"]


def record_event(name: str, action: str, version: str | int | None = None, *, from_version: str | int | None = None,
                 actor: str | None = None, reason: str | None = None, **details: Any) -> None:
    """Adds an entry to a registered model's audit trail (serving records rollouts and rollbacks with it)."""
    client = mlflow_client()
    registered_model(client, name)
    audit(client, name, action, None if version is None else str(version), actor, reason,
          from_version=None if from_version is None else str(from_version), **details)


def audit_trail(name: str) -> list[dict[str, Any]]:
    """Every recorded change to ``name``, oldest first; each entry has seq, action, version, actor, time, reason."""
    return trail(registered_model(mlflow_client(), name).tags)


def audit(client: Any, name: str, action: str, version: str | None, actor: str | None, reason: str | None,
          from_version: str | None = None, **details: Any) -> None:
    """Writes the next entry of ``name``'s trail."""
    key = entry_key(client.get_registered_model(name).tags, AUDIT_TAG)
    entry = {"action": action, "version": version, "from_version": from_version, "actor": _actor(actor),
             "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reason": reason, **details}
    client.set_registered_model_tag(name, key, json.dumps(entry, default=str))


def details(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of a gate result worth keeping in the trail."""
    keys = ("from_version", "metric", "margin", "challenger_score", "champion_score", "rows", "regated")
    return {key: result[key] for key in keys if key in result}


def trail(tags: dict[str, str]) -> list[dict[str, Any]]:
    return [{"seq": seq, **entry} for seq, (_, entry) in enumerate(ordered_entries(tags, AUDIT_TAG), 1)]


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    if os.environ.get("FABRIC_ACTOR"):
        return os.environ["FABRIC_ACTOR"]
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"
