"""The registry's MLflow side: the client, the tag names fabric keeps on models and versions, and lookups."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from typing import Any

__all__ = ["APPROVAL_TAG", "AUDIT_TAG", "CHALLENGER", "CHAMPION", "GATE_TAG", "HISTORY_EVENT_TAG", "HISTORY_TAG",
           "HOLDOUT_ARTIFACT",
           "LABEL_TAG", "METRIC_TAG", "POLICY_TAG", "TASK_TAG", "RegistryError", "alias", "all_models", "champion",
           "checked_version", "entry_key", "exists", "history", "iso", "mlflow_client", "number", "ordered_entries",
           "quote", "registered", "registered_model"]

CHAMPION = "champion"
CHALLENGER = "challenger"
HOLDOUT_ARTIFACT = "eval/holdout.parquet"
TASK_TAG, LABEL_TAG, METRIC_TAG = "fabric.task", "fabric.label_column", "fabric.metric."
POLICY_TAG, AUDIT_TAG, HISTORY_TAG = "fabric.policy.", "fabric.audit.", "fabric.champion_history"
HISTORY_EVENT_TAG = HISTORY_TAG + "."  # one tag per champion change: fabric.champion_history.NNNNNN.UNIQUE
APPROVAL_TAG, GATE_TAG = "fabric.approval", "fabric.approval.gate"


class RegistryError(ValueError):
    """A registry request cannot be done: an unknown model or version, nothing to roll back, ..."""


def mlflow_client() -> Any:
    """An MlflowClient on the tracking store a caller configured, else the one fabric's runtime resolves.

    The one way fabric's own packages (``llm``, ``rag``, serving) reach the registry's store.
    """
    import mlflow
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small holdout file: no bars
    if not is_tracking_uri_set():
        from fabric.runtime import setup_mlflow

        setup_mlflow()
    return mlflow.MlflowClient()


def registered_model(client: Any, name: str) -> Any:
    """The registered model ``name``, or RegistryError listing the known ones."""
    model = registered(client, name)
    if model is None:
        known = ", ".join(m.name for m in all_models(client)) or "none"
        raise RegistryError(f"unknown model {name!r}; registered models: {known}")
    return model


def registered(client: Any, name: str) -> Any:
    """The registered model ``name``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        return None


def checked_version(client: Any, name: str, version: str | int) -> str:
    """``version`` as a string when ``name`` has it, else RegistryError."""
    if not exists(client, name, str(version)):
        raise RegistryError(f"model {name} has no version {version!r}")
    return str(version)


def exists(client: Any, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    if not version.isdigit():
        return False
    try:
        client.get_model_version(name, version)
    except MlflowException:
        return False
    return True


def all_models(client: Any) -> list[Any]:
    """Every registered model, by name."""
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return sorted(models, key=lambda m: m.name)


def champion(model: Any) -> str | None:
    return alias(model, CHAMPION)


def alias(model: Any, name: str) -> str | None:
    version = model.aliases.get(name)
    return None if version is None else str(version)


def history(model: Any) -> list[str]:
    """The versions that were champion, oldest first: the ``fabric.champion_history`` list (written by earlier
    fabric versions), then each ``fabric.champion_history.*`` event replayed in order (a crown appends the
    version it replaced, when missing, and the new one; a rollback goes back to its target)."""
    past = [str(v) for v in json.loads(model.tags.get(HISTORY_TAG) or "[]")]
    for _, event in ordered_entries(model.tags, HISTORY_EVENT_TAG):
        version, previous = str(event["version"]), event.get("from_version")
        if event.get("op") == "rollback":
            while past and past[-1] != version:
                past.pop()
            past = past or [version]
            continue
        if previous and (not past or past[-1] != str(previous)):
            past.append(str(previous))
        past.append(version)
    return past


def entry_key(tags: dict[str, str], prefix: str) -> str:
    """A new, collision-free tag key after every entry under ``prefix`` in ``tags``: ``PREFIX NNNNNN.UNIQUE``.

    ``NNNNNN`` is one more than the highest number seen, so an entry sorts after every entry its writer saw; two
    writers that saw the same entries (the gateway and the CLI at once, with no lock on a remote MLflow server)
    pick the same number but never the same key, so neither entry is lost.
    """
    claimed = [int(key[len(prefix):].split(".")[0]) for key in tags if _is_entry(key, prefix)]
    return f"{prefix}{1 + max(claimed, default=0):06d}.{uuid.uuid4().hex[:12]}"


def ordered_entries(tags: dict[str, str], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """The (key, decoded entry) of every entry under ``prefix``, oldest first: by number, then by the time the
    entry holds (entries of one number were written at once), then by key. Plain ``PREFIXNNNNNN`` keys count."""
    def order(key: str) -> tuple[int, str, str]:
        return int(key[len(prefix):].split(".")[0]), str(entries[key].get("time") or ""), key

    entries = {key: json.loads(tags[key]) for key in tags if _is_entry(key, prefix)}
    return [(key, entries[key]) for key in sorted(entries, key=order)]


def _is_entry(key: str, prefix: str) -> bool:
    return key.startswith(prefix) and key[len(prefix):].split(".")[0].isdigit()


def number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def iso(millis: int | None) -> str | None:
    return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(timespec="seconds") if millis else None


def quote(name: str) -> str:
    """``name`` for a single-quoted MLflow search filter."""
    return name.replace("'", "\\'")
