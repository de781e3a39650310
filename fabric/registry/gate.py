"""The promotion gate: a challenger must beat the champion on the challenger's held-out rows
(``eval/holdout.parquet`` of the version's run), both scored there and then with :func:`fabric.evaluation.score`."""

from __future__ import annotations

import json
import tempfile
from typing import Any

from pydantic import field_validator

from fabric.config import ConfigError, FabricConfig, Field
from fabric.registry.audit import audit, details
from fabric.registry.store import HOLDOUT_ARTIFACT, LABEL_TAG, POLICY_TAG, TASK_TAG, RegistryError

__all__ = ["PromotionPolicy", "PromotionRefused", "gate"]


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


def gate(client: Any, name: str, version: str, champion: str | None, policy: PromotionPolicy,
         actor: str | None, reason: str | None) -> dict[str, Any]:
    """Scores the challenger, and the champion when there is one, on the challenger's holdout; refuses a loser
    (recorded in the audit trail, then :class:`PromotionRefused`)."""
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
        audit(client, name, "promotion_refused", version, actor, reason, **details(result))
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
