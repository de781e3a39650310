"""Alert rules over monitoring checks: what to watch, when it fires, and what happens then.

A monitor spec is a model, the check's settings and its rules, in YAML (``configs/monitor/*.yaml``, or an entry
of a serve config's ``monitor:`` section, which the serving app runs on a schedule)::

    model: breast-cancer
    check: {last: 300, min_rows: 50}                  # fabric.monitor.MonitorConfig
    rules:
      - {name: feature-drift, when: drift_share_above, threshold: 0.25, actions: [log, webhook, ct]}
      - {name: radius-drift, when: column_drifted, column: mean_radius}
      - {name: accuracy-drop, when: quality_below, metric: accuracy, threshold: 0.9}
      - {name: server-errors, when: error_rate_above, threshold: 0.05}
      - {name: labels-late, when: too_few_labels, threshold: 20}
    webhook: {url: "http://127.0.0.1:9000/alerts"}
    ct: {config: configs/ct/breast_cancer.yaml}

A RAG app is watched the same way, by its groundedness scores (:mod:`rag.monitoring` checks it; its log says it is
one)::

    model: python-docs-rag
    rules:
      - {name: answers-ungrounded, when: groundedness_below, threshold: 0.6}
      - {name: many-unsupported, when: ungrounded_share_above, threshold: 0.3}

A rule fires at most once per ``cooldown_s`` for each version of its model (the state is kept under the fabric
home, so the serving app and the CLI share it): one drift fires once, not on every check, and a retrained
version starts with a clean slate. Actions: ``log`` (a warning and a
line in ``FABRIC_HOME/monitor/alerts/events.jsonl``), ``webhook`` (a POST of the alert as JSON; a webhook that
is down is recorded, never raised) and ``ct`` (starts the continuous-training pipeline).

Example:
    >>> spec = MonitorSpec.from_yaml("configs/monitor/breast_cancer.yaml")
    >>> outcome = run_spec(spec)   # fabric monitor check breast-cancer --config configs/monitor/breast_cancer.yaml
    >>> [alert["rule"] for alert in outcome["alerts"]]
    ['feature-drift']
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from fabric.config import FabricConfig, Field
from fabric.monitor.config import MonitorConfig

__all__ = ["AlertRule", "CTAction", "MonitorSpec", "WebhookConfig", "alerts_dir", "evaluate", "fire", "run_spec"]

log = logging.getLogger("fabric.monitor")
Condition = Literal["drift_share_above", "column_drifted", "quality_below", "error_rate_above", "too_few_labels",
                    "groundedness_below", "ungrounded_share_above", "guardrail_share_above"]
Action = Literal["log", "webhook", "ct"]


class AlertRule(FabricConfig):
    """One condition on a check's figures, its cool-down and its actions."""

    name: str = Field(..., min_length=1, description="Rule name, unique within its spec (used for cool-downs).")
    when: Condition = Field(..., description="drift_share_above (threshold: share of drifted features), "
                            "column_drifted (column), quality_below (metric, threshold), error_rate_above "
                            "(threshold: share of 5xx answers since the last check; serving app only), "
                            "too_few_labels (threshold: labelled rows needed in the window); for a RAG app: "
                            "groundedness_below (threshold: the window's mean groundedness of answered questions), "
                            "ungrounded_share_above (threshold: share of answers scoring under 0.5), "
                            "guardrail_share_above (threshold: share of answers the guardrail flagged, refused or "
                            "quoted).")
    threshold: float | None = Field(None, ge=0, description="The limit the figure is compared with.")
    column: str | None = Field(None, description="column_drifted: the feature to watch.")
    metric: str | None = Field(None, description="quality_below: accuracy, f1, precision, recall, roc_auc, r2, ...")
    cooldown_s: float = Field(3600.0, ge=0, description="After firing, the rule stays quiet this long.")
    actions: list[Action] = Field(["log"], min_length=1, description="What happens when it fires: log, webhook, ct.")

    @model_validator(mode="after")
    def _needs(self) -> AlertRule:
        needed = {"drift_share_above": ["threshold"], "column_drifted": ["column"],
                  "quality_below": ["metric", "threshold"], "error_rate_above": ["threshold"],
                  "too_few_labels": ["threshold"], "groundedness_below": ["threshold"],
                  "ungrounded_share_above": ["threshold"], "guardrail_share_above": ["threshold"]}[self.when]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"rule {self.name!r} ({self.when}) needs {' and '.join(missing)}")
        shares = ("drift_share_above", "error_rate_above", "groundedness_below", "ungrounded_share_above",
                  "guardrail_share_above")
        if self.when in shares and self.threshold > 1:
            raise ValueError(f"rule {self.name!r}: threshold is a share between 0 and 1, got {self.threshold}")
        return self


class WebhookConfig(FabricConfig):
    """Where the ``webhook`` action posts alerts."""

    url: str = Field(..., pattern=r"^https?://", description="URL that receives a POST of the alert as JSON.")
    timeout_s: float = Field(5.0, gt=0, description="Seconds to wait for the webhook to answer.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers (e.g. a token).")


class CTAction(FabricConfig):
    """How the ``ct`` action starts the continuous-training pipeline."""

    config: str = Field(..., min_length=1, description="The pipeline's config, e.g. configs/ct/breast_cancer.yaml.")
    overrides: list[str] = Field(default_factory=list, description="Dotted key=value overrides of that config.")
    mode: Literal["process", "inline"] = Field(
        "process", description="process: a background `python -m workloads.continuous_training` on the same Ray "
        "(the serving app's choice); inline: run it here and wait (the demo's).",
    )


class MonitorSpec(FabricConfig):
    """A model to watch: how it is checked, and the rules that fire on the result."""

    kind: Literal["monitor"] = Field("monitor", description="Marks a monitor spec (`fabric config check` reads it "
                                     "as one); see fabric.config_kinds.")
    model: str = Field(..., min_length=1, description="Registered model name.")
    version: str | None = Field(None, description="Version to watch. Empty: whichever is champion at check time.")
    check: MonitorConfig = Field(default_factory=MonitorConfig, description="The check's window and methods.")
    rules: list[AlertRule] = Field(default_factory=list, description="Alert rules evaluated after every check.")
    webhook: WebhookConfig | None = Field(None, description="Target of the rules' webhook action.")
    ct: CTAction | None = Field(None, description="Pipeline the rules' ct action starts.")

    @model_validator(mode="after")
    def _actions_have_targets(self) -> MonitorSpec:
        names = [rule.name for rule in self.rules]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"rules: each name once; repeated: {', '.join(repeated)}")
        for rule in self.rules:
            if "webhook" in rule.actions and self.webhook is None:
                raise ValueError(f"rule {rule.name!r} has the webhook action but the spec has no webhook.url")
            if "ct" in rule.actions and self.ct is None:
                raise ValueError(f"rule {rule.name!r} has the ct action but the spec has no ct.config")
        return self


def alerts_dir() -> Path:
    """``FABRIC_HOME/monitor/alerts``: cool-down state and the events log."""
    from fabric.runtime import fabric_home

    return fabric_home() / "monitor" / "alerts"


def evaluate(rule: AlertRule, result: Any, error_rate: float | None = None) -> dict[str, Any] | None:
    """The figures that make ``rule`` fire on ``result`` (a :class:`~fabric.monitor.CheckResult`), or None."""
    if rule.when == "drift_share_above":
        if result.drift_share > rule.threshold:
            return {"drift_share": result.drift_share, "threshold": rule.threshold,
                    "drifted_columns": list(result.drifted_columns)}
    elif rule.when == "column_drifted":
        column = result.columns.get(rule.column) or {}
        if column.get("drifted"):
            return {"column": rule.column, **column}
    elif rule.when == "quality_below":
        value = (result.quality or {}).get(rule.metric)
        if value is not None and value < rule.threshold:
            return {"metric": rule.metric, "value": value, "threshold": rule.threshold,
                    "labelled_rows": result.labelled_rows}
    elif rule.when == "error_rate_above":
        if error_rate is not None and error_rate > rule.threshold:
            return {"error_rate": error_rate, "threshold": rule.threshold}
    elif rule.when == "groundedness_below":
        value = getattr(result, "mean_groundedness", None)
        if value is not None and value < rule.threshold:
            return {"mean_groundedness": value, "threshold": rule.threshold, "answered": result.answered}
    elif rule.when == "ungrounded_share_above":
        value = getattr(result, "ungrounded_share", None)
        if value is not None and value > rule.threshold:
            return {"ungrounded_share": value, "threshold": rule.threshold, "answered": result.answered}
    elif rule.when == "guardrail_share_above":
        value = getattr(result, "guardrail_share", None)
        if value is not None and value > rule.threshold:
            return {"guardrail_share": value, "threshold": rule.threshold, "answered": result.answered,
                    "guardrail": dict(result.guardrail)}
    elif getattr(result, "kind", "model") == "model" and result.labelled_rows < rule.threshold:
        return {"labelled_rows": result.labelled_rows, "rows": result.rows, "threshold": rule.threshold}
    return None


def run_spec(spec: MonitorSpec, *, result: Any = None, error_rate: float | None = None, log_root: str | None = None,
             now: float | None = None) -> dict[str, Any]:
    """Checks ``spec.model`` (unless ``result`` is given), evaluates every rule and fires those due.

    Returns ``{"check": ..., "alerts": [fired alerts with their actions' outcomes], "suppressed": [rules in
    cool-down that would have fired]}``.
    """
    from fabric.monitor import run_check

    if result is None:
        result = run_check(spec.model, version=spec.version, cfg=spec.check, log_root=log_root)
    now = time.time() if now is None else now
    fired, suppressed = [], []
    with _cooldowns() as last_fired:
        due = []
        for rule in spec.rules:
            figures = evaluate(rule, result, error_rate)
            if figures is None:
                continue
            key = f"{result.model}/v{result.version}/{rule.name}"
            if now - last_fired.get(key, float("-inf")) < rule.cooldown_s:
                suppressed.append(rule.name)
                continue
            last_fired[key] = now
            due.append((rule, figures))
    for rule, figures in due:  # actions run outside the lock: a pipeline may take minutes
        fired.append(fire(spec, rule, result, figures))
    return {"check": result.to_dict(), "alerts": fired, "suppressed": suppressed}


def fire(spec: MonitorSpec, rule: AlertRule, result: Any, figures: dict[str, Any]) -> dict[str, Any]:
    """Runs ``rule``'s actions for ``result``; returns the alert (the webhook's body) with each action's outcome."""
    alert = {
        "rule": rule.name, "when": rule.when, "model": result.model, "version": result.version,
        "figures": figures, "message": _message(rule, result, figures), "time": time.time(),
        "check_time": result.time, "report": {"html": result.html_path, "json": result.json_path},
        "mlflow_run_id": result.mlflow_run_id,
    }
    outcomes: dict[str, Any] = {}
    for action in rule.actions:
        try:
            outcomes[action] = _ACTIONS[action](spec, rule, alert)
        except Exception as exc:  # one failing action must not stop the others, nor the caller's loop
            outcomes[action] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            log.warning("fabric alert %s: action %s failed: %s", rule.name, action, exc)
    event = {**alert, "actions": outcomes}
    alerts_dir().mkdir(parents=True, exist_ok=True)
    with open(alerts_dir() / "events.jsonl", "a") as events:
        events.write(json.dumps(event, default=str) + "\n")
    return event


def _message(rule: AlertRule, result: Any, figures: dict[str, Any]) -> str:
    subject = f"{result.model} v{result.version}" if getattr(result, "kind", "model") == "model" else \
        f"{result.model} at data commit {result.version[:12]}"
    if rule.when == "drift_share_above":
        return (f"{subject}: {figures['drift_share']:.0%} of features drifted (limit {rule.threshold:.0%}): "
                f"{', '.join(figures['drifted_columns']) or '-'}")
    if rule.when == "column_drifted":
        return f"{subject}: column {rule.column} drifted ({figures.get('method')} score {figures.get('score')})"
    if rule.when == "quality_below":
        return f"{subject}: {rule.metric} {figures['value']:.4f} is below {rule.threshold}"
    if rule.when == "error_rate_above":
        return f"{subject}: error rate {figures['error_rate']:.1%} is above {rule.threshold:.1%}"
    if rule.when == "groundedness_below":
        return (f"{subject}: mean groundedness {figures['mean_groundedness']:.3f} of {figures['answered']} answers "
                f"is below {rule.threshold}")
    if rule.when == "ungrounded_share_above":
        return (f"{subject}: {figures['ungrounded_share']:.0%} of {figures['answered']} answers are not supported "
                f"by their sources (limit {rule.threshold:.0%})")
    if rule.when == "guardrail_share_above":
        actions = ", ".join(f"{n} {a}" for a, n in figures["guardrail"].items())
        return (f"{subject}: the grounding guardrail acted on {figures['guardrail_share']:.0%} of "
                f"{figures['answered']} answers ({actions}; limit {rule.threshold:.0%})")
    return f"{subject}: {figures['labelled_rows']} of {figures['rows']} rows labelled; rules need {rule.threshold:g}"


def _log(spec: MonitorSpec, rule: AlertRule, alert: dict[str, Any]) -> dict[str, Any]:
    log.warning("fabric alert %s: %s (report %s)", rule.name, alert["message"], alert["report"]["html"])
    return {"ok": True}


def _webhook(spec: MonitorSpec, rule: AlertRule, alert: dict[str, Any]) -> dict[str, Any]:
    import requests

    hook = spec.webhook
    try:
        response = requests.post(hook.url, data=json.dumps(alert, default=str), timeout=hook.timeout_s,
                                 headers={"Content-Type": "application/json", **hook.headers})
    except requests.RequestException as exc:
        log.warning("fabric alert %s: webhook %s is unreachable: %s", rule.name, hook.url, exc)
        return {"ok": False, "url": hook.url, "error": f"{type(exc).__name__}: {exc}"}
    ok = response.status_code < 400
    if not ok:
        log.warning("fabric alert %s: webhook %s answered %s", rule.name, hook.url, response.status_code)
    return {"ok": ok, "url": hook.url, "status": response.status_code}


def _ct(spec: MonitorSpec, rule: AlertRule, alert: dict[str, Any]) -> dict[str, Any]:
    trigger, reason = f"alert:{rule.name}", alert["message"]
    if spec.ct.mode == "inline":
        from fabric.ct import CTConfig, run_pipeline

        outcome = run_pipeline(CTConfig.from_yaml(spec.ct.config, spec.ct.overrides), trigger=trigger, reason=reason)
        return {"ok": True, "mode": "inline", "pipeline": outcome}
    return {"ok": True, "mode": "process", **start_pipeline_process(spec.ct, trigger, reason)}


def start_pipeline_process(action: CTAction, trigger: str, reason: str) -> dict[str, Any]:
    """Starts ``python -m workloads.continuous_training`` in the background on this Ray cluster; returns its pid
    and log file. The pipeline resumes a run left unfinished, so a second start never doubles the work."""
    env = dict(os.environ, FABRIC_CT_TRIGGER=trigger, FABRIC_CT_REASON=reason[:500])
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    folder = alerts_dir() / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{trigger.replace(':', '-')}.log"
    with open(log_path, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "workloads.continuous_training", "--config", str(Path(action.config).resolve()),
             *action.overrides], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return {"pid": process.pid, "log": str(log_path)}


_ACTIONS = {"log": _log, "webhook": _webhook, "ct": _ct}


@contextlib.contextmanager
def _cooldowns() -> Iterator[dict[str, float]]:
    """The rules' last firing times, locked against the serving app and the CLI firing the same rule at once."""
    from fabric.files import atomic_write, locked

    folder = alerts_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cooldowns.json"
    with locked(folder / ".lock"):
        state = json.loads(path.read_text()) if path.is_file() else {}
        yield state
        atomic_write(path, json.dumps(state, indent=1))
