"""The model registry: versions, the ``champion``/``challenger`` aliases, a promotion gate and an audit trail.

Built on the MLflow model registry. A new version becomes ``challenger``; :func:`promote` moves ``champion`` to
it only when it beats the current champion on the challenger's held-out rows (``eval/holdout.parquet`` of the
version's run), both models scored there and then with :func:`fabric.evaluation.score`. Every change, a refusal
included, is kept as a ``fabric.audit.NNNNNN.UNIQUE`` tag on the registered model, so the trail lives with the model.

Example:
    >>> version = register(model_uri, "churn", tags={"fabric.task": "classification", ...})
    >>> promote("churn", version, margin=0.01, reason="weekly retrain")   # fabric models promote churn 3 --margin 0.01
    {'name': 'churn', 'version': '3', 'status': 'promoted', 'from_version': '2', 'metric': 'roc_auc', ...}
    >>> rollback("churn", reason="bad canary")                            # fabric models rollback churn

Modules: :mod:`~fabric.registry.store` (the MLflow client, tag names, lookups), :mod:`~fabric.registry.gate`
(the policy and the gate), :mod:`~fabric.registry.lifecycle` (register, promote, approve, rollback),
:mod:`~fabric.registry.audit` (the trail) and :mod:`~fabric.registry.views` (list and show).
"""

from __future__ import annotations

from fabric.registry.audit import audit_trail, record_event
from fabric.registry.gate import PromotionPolicy, PromotionRefused
from fabric.registry.lifecycle import approve, promote, register, rollback, set_champion
from fabric.registry.store import (
    APPROVAL_TAG,
    CHALLENGER,
    CHAMPION,
    GATE_TAG,
    HOLDOUT_ARTIFACT,
    RegistryError,
    mlflow_client,
)
from fabric.registry.views import list_models, show

__all__ = [
    "APPROVAL_TAG",
    "CHALLENGER",
    "CHAMPION",
    "GATE_TAG",
    "HOLDOUT_ARTIFACT",
    "PromotionPolicy",
    "PromotionRefused",
    "RegistryError",
    "approve",
    "audit_trail",
    "list_models",
    "mlflow_client",
    "promote",
    "record_event",
    "register",
    "rollback",
    "set_champion",
    "show",
]
