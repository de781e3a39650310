"""The model registry: versions, the ``champion``/``challenger`` aliases, a promotion gate and an audit trail.

Built on the MLflow model registry. A new version becomes ``challenger``; :func:`promote` moves ``champion`` to
it only when it beats the current champion on the challenger's held-out rows (``eval/holdout.parquet`` of the
version's run), both models scored there and then with :func:`fabric.evaluation.score`. Every change, a refusal
included, is kept as a ``fabric.audit.NNNNNN`` tag on the registered model, so the trail lives with the model.

Example:
    >>> version = register(model_uri, "churn", tags={"fabric.task": "classification", ...})
    >>> promote("churn", version, margin=0.01, reason="weekly retrain")   # fabric models promote churn 3 --margin 0.01
    {'name': 'churn', 'version': '3', 'status': 'promoted', 'from_version': '2', 'metric': 'roc_auc', ...}
    >>> rollback("churn", reason="bad canary")                            # fabric models rollback churn
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
from datetime import datetime, timezone
from typing import Any

from pydantic import field_validator

from fabric.config import ConfigError, FabricConfig, Field

__all__ = [
    "record_event",
    "set_champion",
    "CHALLENGER",
    "CHAMPION",
    "PromotionPolicy",
    "PromotionRefused",
    "RegistryError",
    "approve",
    "audit_trail",
    "list_models",
    "promote",
    "register",
    "rollback",
    "show",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
HOLDOUT_ARTIFACT = "eval/holdout.parquet"
TASK_TAG, LABEL_TAG, METRIC_TAG = "fabric.task", "fabric.label_column", "fabric.metric."
POLICY_TAG, AUDIT_TAG, HISTORY_TAG = "fabric.policy.", "fabric.audit.", "fabric.champion_history"
APPROVAL_TAG, GATE_TAG = "fabric.approval", "fabric.approval.gate"


class RegistryError(ValueError):
    """A registry request cannot be done: an unknown model or version, nothing to roll back, ..."""


class PromotionRefused(RegistryError):
    """The challenger does not beat the champion; the message names both versions, the metric, scores and margin."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


class PromotionPolicy(FabricConfig):
    """How a registered model's challengers are judged; saved on the model as ``fabric.policy.*`` tags."""

    metric: str | None = Field(
        None, description="Metric the gate compares. Empty: roc_auc for classification, rmse for regression."
    )
    margin: float = Field(0.0, ge=0, description="How much better the challenger must be, in the metric's units.")
    require_approval: bool = Field(
        False, description="A challenger that passes the gate waits for `fabric models approve` before serving."
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        from fabric.evaluation import known_metric

        return known_metric(value)

    def to_tags(self) -> dict[str, str]:
        return {f"{POLICY_TAG}{key}": json.dumps(value) for key, value in self.model_dump().items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str], **explicit: Any) -> PromotionPolicy:
        """The stored policy with ``explicit`` values (those not None) taking precedence."""
        data = {k[len(POLICY_TAG):]: json.loads(v) for k, v in tags.items() if k.startswith(POLICY_TAG)}
        data.update({k: v for k, v in explicit.items() if v is not None})
        try:
            return cls.from_dict(data, source="promotion policy")
        except ConfigError as exc:
            raise RegistryError(str(exc)) from None


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
    client = _client()
    try:
        if not _registered(client, name):
            client.create_registered_model(name)
        for key, value in (policy.to_tags() if policy else {}).items():
            client.set_registered_model_tag(name, key, value)
        version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    except MlflowException as exc:
        raise RegistryError(f"cannot register {model_uri} as {name}: {exc.message}") from None
    if description:
        client.update_model_version(name, version, description=description)
    client.set_registered_model_alias(name, CHALLENGER, version)
    _audit(client, name, "register", version, actor, reason, model_uri=model_uri)
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
    client = _client()
    model, version = _model(client, name), _version(client, name, version)
    policy = PromotionPolicy.from_tags(model.tags, metric=metric, margin=margin, require_approval=require_approval)
    if _champion(model) == version:
        raise RegistryError(f"version {version} is already the champion of {name}")
    result = _gate(client, name, version, _champion(model), policy, actor, reason)
    if policy.require_approval:
        client.set_model_version_tag(name, version, APPROVAL_TAG, "pending")
        client.set_model_version_tag(name, version, GATE_TAG, json.dumps(_details(result)))
        client.set_registered_model_alias(name, CHALLENGER, version)
        result["status"] = "pending_approval"
        _audit(client, name, "pending_approval", version, actor, reason, **_details(result))
        return result
    return _crown(client, name, result, "promote", actor, reason)


def approve(name: str, version: str | int, *, actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Makes a version that passed the gate and awaits approval the ``champion``.

    When the champion changed since the gate ran, the gate runs again against the new champion first.
    CLI: ``fabric models approve NAME VERSION --reason TEXT``.
    """
    client = _client()
    model, version = _model(client, name), _version(client, name, version)
    tags = client.get_model_version(name, version).tags
    if tags.get(APPROVAL_TAG) != "pending":
        raise RegistryError(f"version {version} of {name} is not pending approval")
    gate = json.loads(tags.get(GATE_TAG) or "{}")
    policy = PromotionPolicy.from_tags(model.tags, metric=gate.get("metric"), margin=gate.get("margin"))
    champion = _champion(model)
    if champion == gate.get("from_version"):
        result = {"name": name, "version": version, **gate, "regated": False}
    else:
        try:
            result = _gate(client, name, version, champion, policy, actor, reason) | {"regated": True}
        except PromotionRefused:
            client.set_model_version_tag(name, version, APPROVAL_TAG, "refused")
            raise
    client.set_model_version_tag(name, version, APPROVAL_TAG, "approved")
    return _crown(client, name, result, "approve", actor, reason)


def rollback(name: str, *, actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Points ``champion`` back at the previous champion; repeated rollbacks go further back.

    CLI: ``fabric models rollback NAME --reason TEXT``.
    """
    client = _client()
    model = _model(client, name)
    current = _champion(model)
    history = _history(model)
    while history and (history[-1] == current or not _exists(client, name, history[-1])):
        history.pop()
    if not history:
        raise RegistryError(f"{name} has no previous champion to roll back to")
    target = history[-1]
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    _audit(client, name, "rollback", target, actor, reason, from_version=current)
    return {"name": name, "version": target, "status": "rolled_back", "from_version": current}


def list_models() -> list[dict[str, Any]]:
    """Every registered model with its champion, challenger, version count and the champion's primary metric."""
    client = _client()
    rows = []
    for model in _all_models(client):
        versions = client.search_model_versions(f"name = '{_quote(model.name)}'")
        champion = _champion(model)
        tags = next((v.tags for v in versions if str(v.version) == champion), {})
        metric = _primary_metric(model.tags, tags)
        rows.append({
            "name": model.name,
            "versions": len(versions),
            "latest_version": str(max((int(v.version) for v in versions), default=0)) if versions else None,
            "champion": champion,
            "challenger": _alias(model, CHALLENGER),
            "metric": metric,
            "champion_score": _float(tags.get(f"{METRIC_TAG}{metric}")) if metric else None,
            "updated": _iso(model.last_updated_timestamp),
        })
    return rows


def record_event(name: str, action: str, version: str | int | None = None, *, from_version: str | int | None = None,
                 actor: str | None = None, reason: str | None = None, **details: Any) -> None:
    """Adds an entry to a registered model's audit trail (serving records rollouts and rollbacks with it)."""
    client = _client()
    _model(client, name)
    _audit(client, name, action, None if version is None else str(version), actor, reason,
           from_version=None if from_version is None else str(from_version), **details)


def set_champion(name: str, version: str | int, *, actor: str | None = None, reason: str | None = None,
                 action: str = "promote") -> dict[str, Any]:
    """Moves ``champion`` to ``version`` without the gate (a finished rollout already compared both on live
    traffic); recorded in the audit trail and the champion history, so :func:`rollback` can undo it."""
    client = _client()
    version = _version(client, name, version)
    model = _model(client, name)
    previous = _champion(model)
    if previous == version:
        raise RegistryError(f"version {version} is already the champion of {name}")
    result = {"name": name, "version": version, "status": "promoted", "from_version": previous}
    _crown(client, name, result, action, actor, reason)
    return result


def show(name: str) -> dict[str, Any]:
    """A registered model in full: versions (newest first) with aliases, tags and metrics; policy; audit trail."""
    client = _client()
    model = _model(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name = '{_quote(name)}'"), key=lambda v: -int(v.version))
    return {
        "name": name,
        "description": model.description or None,
        "metric": _primary_metric(model.tags, versions[0].tags if versions else {}),
        "aliases": {alias: str(version) for alias, version in sorted(model.aliases.items())},
        "policy": PromotionPolicy.from_tags(model.tags).model_dump(),
        "champion_history": _history(model),
        "versions": [_version_info(v, sorted(by_version.get(str(v.version), []))) for v in versions],
        "audit": _trail(model.tags),
    }


def audit_trail(name: str) -> list[dict[str, Any]]:
    """Every recorded change to ``name``, oldest first; each entry has seq, action, version, actor, time, reason."""
    return _trail(_model(_client(), name).tags)


def _gate(client: Any, name: str, version: str, champion: str | None, policy: PromotionPolicy,
          actor: str | None, reason: str | None) -> dict[str, Any]:
    """Scores the challenger, and the champion when there is one, on the challenger's holdout; refuses a loser."""
    from fabric.evaluation import beats, default_metric

    info = client.get_model_version(name, version)
    task, label = info.tags.get(TASK_TAG), info.tags.get(LABEL_TAG)
    if task not in ("classification", "regression") or not label:
        raise RegistryError(f"version {version} of {name} needs the tags {TASK_TAG} and {LABEL_TAG} to be judged")
    metric = policy.metric or default_metric(task)
    rows = _holdout(client, info, label)
    features, y_true = rows.drop(columns=[label]), rows[label]
    scores = _score(name, version, "challenger", task, features, y_true)
    if metric not in scores:
        raise RegistryError(f"metric {metric} is not computed for {task} version {version} of {name}; "
                            f"choose one of {', '.join(sorted(scores))}")
    result: dict[str, Any] = {
        "name": name, "version": version, "status": "passed", "from_version": champion, "metric": metric,
        "margin": policy.margin, "challenger_score": scores[metric], "champion_score": None, "rows": len(rows),
        "scores": {"challenger": scores, "champion": None},
    }
    if champion is None:
        return result
    champion_scores = _score(name, champion, "champion", task, features, y_true)
    result["champion_score"], result["scores"]["champion"] = champion_scores.get(metric), champion_scores
    if not beats(metric, scores[metric], champion_scores[metric], policy.margin):
        message = (f"challenger version {version} {metric}={scores[metric]:.4f} does not beat champion version "
                   f"{champion} {metric}={champion_scores[metric]:.4f} by the margin {policy.margin:g}")
        result["status"] = "refused"
        _audit(client, name, "promotion_refused", version, actor, reason, **_details(result))
        raise PromotionRefused(message, result | {"message": message})
    return result


def _holdout(client: Any, info: Any, label: str) -> Any:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    if not info.run_id:
        raise RegistryError(f"version {info.version} of {info.name} has no source run, so no {HOLDOUT_ARTIFACT}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path=HOLDOUT_ARTIFACT, dst_path=tmp)
        except (MlflowException, OSError):
            raise RegistryError(f"run {info.run_id} of version {info.version} has no {HOLDOUT_ARTIFACT}; the "
                                "training run must log its held-out rows there") from None
        rows = pd.read_parquet(path)
    if label not in rows.columns:
        raise RegistryError(f"{HOLDOUT_ARTIFACT} of run {info.run_id} has no label column {label!r}")
    return rows


def _score(name: str, version: str, role: str, task: str, features: Any, y_true: Any) -> dict[str, float]:
    import mlflow
    import pandas as pd

    from fabric.evaluation import score

    try:
        output = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(features)
        if not isinstance(output, pd.DataFrame):
            raise ValueError(f"predict returned {type(output).__name__}, not a DataFrame with a prediction column")
        return score(task, y_true, output)
    except Exception as exc:  # any failure to load or score is the same answer for the gate: cannot judge
        raise RegistryError(f"{role} version {version} of {name} cannot be scored on the holdout: {exc}") from None


def _crown(client: Any, name: str, result: dict[str, Any], action: str, actor: str | None,
           reason: str | None) -> dict[str, Any]:
    """Moves ``champion`` to the result's version, remembers the previous one, and records why."""
    version = result["version"]
    model = client.get_registered_model(name)
    history = _history(model)
    if result["from_version"] and (not history or history[-1] != result["from_version"]):
        history.append(result["from_version"])  # a champion set outside fabric still counts for rollback
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version]))
    if _alias(model, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    result["status"] = "promoted"
    _audit(client, name, action, version, actor, reason, **_details(result))
    return result


def _audit(client: Any, name: str, action: str, version: str | None, actor: str | None, reason: str | None,
           from_version: str | None = None, **details: Any) -> None:
    tags = client.get_registered_model(name).tags
    seq = 1 + max((int(k[len(AUDIT_TAG):]) for k in tags if k.startswith(AUDIT_TAG)), default=0)
    entry = {"action": action, "version": version, "from_version": from_version, "actor": _actor(actor),
             "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reason": reason, **details}
    client.set_registered_model_tag(name, f"{AUDIT_TAG}{seq:06d}", json.dumps(entry, default=str))


def _details(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("from_version", "metric", "margin", "challenger_score", "champion_score", "rows", "regated")
    return {key: result[key] for key in keys if key in result}


def _trail(tags: dict[str, str]) -> list[dict[str, Any]]:
    keys = sorted(k for k in tags if k.startswith(AUDIT_TAG))
    return [{"seq": int(k[len(AUDIT_TAG):]), **json.loads(tags[k])} for k in keys]


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    if os.environ.get("FABRIC_ACTOR"):
        return os.environ["FABRIC_ACTOR"]
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _client() -> Any:
    """An MlflowClient on the tracking store a caller configured, else the one fabric's runtime resolves."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small holdout file: no bars
    if not is_tracking_uri_set():
        from fabric.runtime import setup_mlflow

        setup_mlflow()
    return mlflow.MlflowClient()


def _model(client: Any, name: str) -> Any:
    model = _registered(client, name)
    if model is None:
        known = ", ".join(m.name for m in _all_models(client)) or "none"
        raise RegistryError(f"unknown model {name!r}; registered models: {known}")
    return model


def _registered(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        return None


def _version(client: Any, name: str, version: str | int) -> str:
    if not _exists(client, name, str(version)):
        raise RegistryError(f"model {name} has no version {version!r}")
    return str(version)


def _exists(client: Any, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    if not version.isdigit():
        return False
    try:
        client.get_model_version(name, version)
    except MlflowException:
        return False
    return True


def _all_models(client: Any) -> list[Any]:
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return sorted(models, key=lambda m: m.name)


def _version_info(v: Any, aliases: list[str]) -> dict[str, Any]:
    metrics = {k[len(METRIC_TAG):]: _float(val) for k, val in v.tags.items() if k.startswith(METRIC_TAG)}
    return {"version": str(v.version), "aliases": aliases, "status": v.status, "run_id": v.run_id,
            "created": _iso(v.creation_timestamp), "description": v.description or None,
            "approval": v.tags.get(APPROVAL_TAG), "metrics": metrics, "tags": dict(sorted(v.tags.items()))}


def _primary_metric(model_tags: dict[str, str], version_tags: dict[str, str]) -> str | None:
    from fabric.evaluation import default_metric

    metric = PromotionPolicy.from_tags(model_tags).metric
    task = version_tags.get(TASK_TAG)
    return metric or (default_metric(task) if task in ("classification", "regression") else None)


def _champion(model: Any) -> str | None:
    return _alias(model, CHAMPION)


def _alias(model: Any, alias: str) -> str | None:
    version = model.aliases.get(alias)
    return None if version is None else str(version)


def _history(model: Any) -> list[str]:
    return [str(v) for v in json.loads(model.tags.get(HISTORY_TAG) or "[]")]


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _iso(millis: int | None) -> str | None:
    return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(timespec="seconds") if millis else None


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
