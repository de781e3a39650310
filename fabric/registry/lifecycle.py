"""A version's life in the registry: registered as ``challenger``, promoted through the gate to ``champion`` (or
held for approval), approved, rolled back; every step recorded in the audit trail."""

from __future__ import annotations

import json
from typing import Any

from fabric.registry.audit import audit, details
from fabric.registry.gate import PromotionPolicy, PromotionRefused, gate
from fabric.registry.store import (
    APPROVAL_TAG,
    CHALLENGER,
    CHAMPION,
    GATE_TAG,
    HISTORY_EVENT_TAG,
    TASK_TAG,
    RegistryError,
    alias,
    champion,
    checked_version,
    entry_key,
    exists,
    history,
    mlflow_client,
    registered,
    registered_model,
)

__all__ = ["approve", "crown", "promote", "register", "rollback", "set_champion"]


def register(
    model_uri: str,
    name: str,
    *,
    tags: dict[str, Any] | None = None,
    policy: PromotionPolicy | None = None,
    description: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> str:
    """Registers a logged model as a new version of ``name`` (created if missing) and makes it ``challenger``.

    ``tags`` go on the version (``fabric.task``, ``fabric.label_column``, ``fabric.data.*``, ``fabric.metric.*``);
    ``policy`` is saved on the registered model; ``description`` describes the version. Returns the version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    tags = {key: str(value) for key, value in (tags or {}).items()}
    if tags.get(TASK_TAG, "classification") not in ("classification", "regression"):
        raise RegistryError(f"tag {TASK_TAG} must be 'classification' or 'regression', got {tags[TASK_TAG]!r}")
    client = mlflow_client()
    try:
        if not registered(client, name):
            client.create_registered_model(name)
        for key, value in (policy.to_tags() if policy else {}).items():
            client.set_registered_model_tag(name, key, value)
        version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    except MlflowException as exc:
        raise RegistryError(f"cannot register {model_uri} as {name}: {exc.message}") from None
    if description:
        client.update_model_version(name, version, description=description)
    client.set_registered_model_alias(name, CHALLENGER, version)
    audit(client, name, "register", version, actor, reason, model_uri=model_uri)
    return version


def promote(
    name: str,
    version: str | int,
    *,
    metric: str | None = None,
    margin: float | None = None,
    require_approval: bool | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Runs the promotion gate; a passing version becomes ``champion`` (or waits for approval).

    Arguments given here override the model's stored :class:`PromotionPolicy`. Raises :class:`PromotionRefused`
    when the champion is not beaten; the refusal is recorded in the audit trail too.
    CLI: ``fabric models promote NAME VERSION [--metric M] [--margin X] [--reason TEXT]``.
    """
    client = mlflow_client()
    model, version = registered_model(client, name), checked_version(client, name, version)
    policy = PromotionPolicy.from_tags(model.tags, metric=metric, margin=margin, require_approval=require_approval)
    if champion(model) == version:
        raise RegistryError(f"version {version} is already the champion of {name}")
    result = gate(client, name, version, champion(model), policy, actor, reason)
    if policy.require_approval:
        client.set_model_version_tag(name, version, APPROVAL_TAG, "pending")
        client.set_model_version_tag(name, version, GATE_TAG, json.dumps(details(result)))
        client.set_registered_model_alias(name, CHALLENGER, version)
        result["status"] = "pending_approval"
        audit(client, name, "pending_approval", version, actor, reason, **details(result))
        return result
    return crown(client, name, result, "promote", actor, reason)


def approve(name: str, version: str | int, *, actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Makes a version that passed the gate and awaits approval the ``champion``.

    When the champion changed since the gate ran, the gate runs again against the new champion first.
    CLI: ``fabric models approve NAME VERSION --reason TEXT``.
    """
    client = mlflow_client()
    model, version = registered_model(client, name), checked_version(client, name, version)
    tags = client.get_model_version(name, version).tags
    if tags.get(APPROVAL_TAG) != "pending":
        raise RegistryError(f"version {version} of {name} is not pending approval")
    gated = json.loads(tags.get(GATE_TAG) or "{}")
    policy = PromotionPolicy.from_tags(model.tags, metric=gated.get("metric"), margin=gated.get("margin"))
    current = champion(model)
    if current == gated.get("from_version"):
        result = {"name": name, "version": version, **gated, "regated": False}
    else:
        try:
            result = gate(client, name, version, current, policy, actor, reason) | {"regated": True}
        except PromotionRefused:
            client.set_model_version_tag(name, version, APPROVAL_TAG, "refused")
            raise
    client.set_model_version_tag(name, version, APPROVAL_TAG, "approved")
    return crown(client, name, result, "approve", actor, reason)


def rollback(name: str, *, actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Points ``champion`` back at the previous champion; repeated rollbacks go further back.

    CLI: ``fabric models rollback NAME --reason TEXT``.
    """
    client = mlflow_client()
    model = registered_model(client, name)
    current = champion(model)
    past = history(model)
    while past and (past[-1] == current or not exists(client, name, past[-1])):
        past.pop()
    if not past:
        raise RegistryError(f"{name} has no previous champion to roll back to")
    target = past[-1]
    client.set_registered_model_alias(name, CHAMPION, target)
    _history_event(client, name, "rollback", target, current)
    audit(client, name, "rollback", target, actor, reason, from_version=current)
    return {"name": name, "version": target, "status": "rolled_back", "from_version": current}


def set_champion(name: str, version: str | int, *, actor: str | None = None, reason: str | None = None,
                 action: str = "promote") -> dict[str, Any]:
    """Moves ``champion`` to ``version`` without the gate (a finished rollout already compared both on live
    traffic); recorded in the audit trail and the champion history, so :func:`rollback` can undo it."""
    client = mlflow_client()
    version = checked_version(client, name, version)
    model = registered_model(client, name)
    previous = champion(model)
    if previous == version:
        raise RegistryError(f"version {version} is already the champion of {name}")
    result = {"name": name, "version": version, "status": "promoted", "from_version": previous}
    crown(client, name, result, action, actor, reason)
    return result


def crown(client: Any, name: str, result: dict[str, Any], action: str, actor: str | None,
          reason: str | None) -> dict[str, Any]:
    """Moves ``champion`` to the result's version, remembers the previous one, and records why."""
    version = result["version"]
    model = client.get_registered_model(name)
    client.set_registered_model_alias(name, CHAMPION, version)
    # the replaced champion goes into the history even when it was set outside fabric, so rollback finds it
    _history_event(client, name, "crown", version, result["from_version"])
    if alias(model, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    result["status"] = "promoted"
    audit(client, name, action, version, actor, reason, **details(result))
    return result


def _history_event(client: Any, name: str, op: str, version: str, from_version: str | None) -> None:
    """One champion change as a tag of its own (see :func:`~fabric.registry.store.history`): concurrent
    promotions and rollbacks each add theirs, none rewrites another's."""
    from datetime import datetime, timezone

    event = {"op": op, "version": str(version), "from_version": from_version,
             "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    key = entry_key(client.get_registered_model(name).tags, HISTORY_EVENT_TAG)
    client.set_registered_model_tag(name, key, json.dumps(event))
