"""The pipeline's release steps: gate, canary, observe, finish.

The gate compares the scores the evaluate step took on the recent held-out rows; a refusal goes into the model's
audit trail. The canary goes through the running serving app's rollout API (``/admin/models/NAME/rollout``), which
routes a share of traffic to the challenger and rolls it back by itself when it does worse. With no app answering,
canary and observe are skipped and finish promotes in the registry. Before promoting, finish checks the champion
alias, so a resumed run never promotes twice.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from fabric.ct.state import Context, CTError, Skip, StepResult
from fabric.ct.steps import champion_of

__all__ = ["canary", "finish", "gate", "gate_rule", "observe"]

ACTOR = "fabric-ct"


class Unreachable(Exception):  # noqa: N818 -- a condition the canary step turns into a skip
    """Nothing answers at the serving URL, or the app there does not serve the model."""


class AdminError(Exception):
    """The app answered an admin call with an error status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


def gate_rule(cfg: Any, task: str) -> tuple[str, float]:
    """The metric and margin the gate uses: the pipeline's, else the model's promotion policy, else the default."""
    from mlflow import MlflowClient

    from fabric.evaluation import default_metric
    from fabric.registry import PromotionPolicy

    policy = PromotionPolicy.from_tags(MlflowClient().get_registered_model(cfg.model).tags)
    metric = cfg.gate.metric or policy.metric or default_metric(task)
    return metric, cfg.gate.margin if cfg.gate.margin is not None else policy.margin


def gate(ctx: Context) -> StepResult:
    """Challenger against champion on the recent rows; a refusal is audited, approval mode waits for a person."""
    from fabric import registry
    from fabric.evaluation import beats

    cfg, state = ctx.cfg, ctx.state
    version, champion, s = state["challenger"], state["champion_before"], state["scores"]
    ctx.record_inputs("gate", mode=cfg.gate.mode, metric=s["metric"], margin=s["margin"], challenger=version,
                      champion=champion, rows=s["rows"])
    current = str(champion_of(cfg.model).version)
    if current not in (champion, version):
        raise CTError(f"the champion of {cfg.model} moved from version {champion} to {current} during this run; "
                      "start a new run to judge against the new champion")
    details = {"from_version": champion, "metric": s["metric"], "margin": s["margin"],
               "challenger_score": s["challenger"], "champion_score": s["champion"], "rows": s["rows"]}
    line = (f"{s['metric']} {s['challenger']:.4f} vs {s['champion']:.4f} on {s['rows']} recent rows, margin "
            f"{s['margin']:g}")
    if not beats(s["metric"], s["challenger"], s["champion"], s["margin"]):
        message = (f"challenger version {version} {s['metric']}={s['challenger']:.4f} does not beat champion version "
                   f"{champion} {s['metric']}={s['champion']:.4f} by the margin {s['margin']:g} on the "
                   f"{s['rows']} most recent labelled rows (continuous training {cfg.name} run {state['run_id']})")
        if not _recorded(cfg.model, "promotion_refused", version, state["run_id"]):
            registry.record_event(cfg.model, "promotion_refused", version, actor=ACTOR, reason=message,
                                  ct_run_id=state["run_id"], **details)
        return StepResult({"decision": "refused", "message": message, **details}, f"refused: {line}", end="refused")
    if cfg.gate.mode == "approval":
        return _await_approval(ctx, details, line)
    return StepResult({"decision": "passed", **details}, f"passed: {line}")


def _recorded(model: str, action: str, version: str, run_id: str) -> bool:
    from fabric import registry

    return any(e["action"] == action and e.get("version") == version and e.get("ct_run_id") == run_id
               for e in registry.audit_trail(model))


def _await_approval(ctx: Context, details: dict[str, Any], line: str) -> StepResult:
    """Tags the version pending as ``fabric.registry.promote(require_approval=True)`` does, then polls the tag."""
    from mlflow import MlflowClient

    from fabric import registry
    from fabric.registry import APPROVAL_TAG, GATE_TAG

    cfg, model, version = ctx.cfg, ctx.cfg.model, ctx.state["challenger"]
    client = MlflowClient()
    if client.get_model_version(model, version).tags.get(APPROVAL_TAG) is None:
        client.set_model_version_tag(model, version, GATE_TAG, json.dumps(details))
        client.set_model_version_tag(model, version, APPROVAL_TAG, "pending")
        registry.record_event(model, "pending_approval", version, actor=ACTOR, ct_run_id=ctx.state["run_id"],
                              reason=f"continuous training {cfg.name}: waiting for `fabric models approve {model} "
                              f"{version}`", **details)
    print(f"[ct] gate passed ({line}); waiting up to {cfg.gate.approval_timeout_s:g} s for `fabric models approve "
          f"{model} {version}`", flush=True)
    deadline = time.monotonic() + cfg.gate.approval_timeout_s
    while True:
        status = client.get_model_version(model, version).tags.get(APPROVAL_TAG)
        if status == "approved":
            return StepResult({"decision": "approved", **details}, f"approved: {line}")
        if status == "refused":
            return StepResult({"decision": "refused", **details}, "refused when approved against a newer champion",
                              end="refused")
        if time.monotonic() >= deadline:
            return StepResult({"decision": "approval_timeout", **details}, f"no approval within "
                              f"{cfg.gate.approval_timeout_s:g} s; version {version} stays pending",
                              end="approval_timeout")
        time.sleep(cfg.gate.poll_s)


def canary(ctx: Context) -> StepResult:
    """Starts a canary of the challenger through the serving app (or finds the one this run started)."""
    cfg, version = ctx.cfg, ctx.state["challenger"]
    url = cfg.serving.url
    ctx.record_inputs("canary", url=url, version=version, percent=cfg.serving.canary_percent)
    if str(champion_of(cfg.model).version) == version:
        raise Skip(f"version {version} is already the champion")
    if not url:
        raise Skip("serving.url is empty: no serving app to run a canary through")
    try:
        active = _admin(cfg, "GET", "rollout").get("active")
        if active and active["candidate"] != version:
            raise CTError(f"{cfg.model} already has a {active['strategy']} rollout of version {active['candidate']} "
                          f"at {url}; finish it or roll it back first")
        if not active:  # else: this run started it before it was killed
            body = {"strategy": "canary", "version": version, "percent": cfg.serving.canary_percent,
                    "min_requests": cfg.serving.min_requests}
            active = _admin(cfg, "POST", "rollout", body, reason=_why(ctx))
    except Unreachable as exc:
        raise Skip(f"no serving app for {cfg.model} at {url} ({exc})") from None
    except AdminError as exc:
        raise CTError(f"the serving app at {url} refused the canary: {exc}") from None
    return StepResult({"url": url, "live": active["live"], "percent": active["percent"]},
                      f"{active['percent']:g}% of {cfg.model} requests at {url} go to version {version} "
                      f"(live: version {active['live']})")


def observe(ctx: Context) -> StepResult:
    """Watches the canary until it has run ``observe_s`` with ``min_requests`` challenger requests, or ended."""
    cfg, version, serving = ctx.cfg, ctx.state["challenger"], ctx.cfg.serving
    if ctx.step("canary")["state"] == "skipped":
        raise Skip("no canary: " + ctx.step("canary")["evidence"])
    ctx.record_inputs("observe", url=serving.url, observe_s=serving.observe_s, min_requests=serving.min_requests,
                      timeout_s=serving.observe_timeout_s)
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        try:
            status = _admin(cfg, "GET", "rollout")
        except (Unreachable, AdminError) as exc:
            if elapsed > serving.observe_timeout_s:
                raise CTError(f"the serving app at {serving.url} stopped answering during the canary: {exc}") from None
            time.sleep(serving.poll_s)
            continue
        active, last = status.get("active"), status.get("last") or {}
        if not active or active["candidate"] != version:
            if last.get("candidate") != version:
                raise CTError(f"the canary of version {version} is gone from {serving.url} without an outcome (was "
                              "the app restarted?)")
            verdict = "finished" if last["outcome"] == "finished" else "rolled_back"
            return StepResult({"verdict": verdict, "reason": last.get("reason"), "windows": last.get("windows")},
                              f"the serving app ended the canary: {last['outcome']} ({last.get('reason')})")
        window = active["windows"].get(version, {})
        requests = window.get("requests", 0)
        outputs = {"candidate_requests": requests, "windows": active["windows"], "observed_s": round(elapsed, 1)}
        if elapsed >= serving.observe_s and requests >= serving.min_requests:
            return StepResult({"verdict": "passed", **outputs}, f"{requests} challenger requests in {elapsed:.0f} s, "
                              f"error rate {window.get('error_rate', 0):.1%}, no rollback")
        if elapsed >= serving.observe_timeout_s:
            return StepResult({"verdict": "insufficient_traffic", **outputs}, f"only {requests} challenger requests "
                              f"in {elapsed:.0f} s (needs {serving.min_requests})")
        time.sleep(serving.poll_s)


def finish(ctx: Context) -> StepResult:
    """Makes the challenger champion (the app's rollout finish, or the registry without an app), or rolls back."""
    from fabric import registry

    cfg, state = ctx.cfg, ctx.state
    version = state["challenger"]
    ctx.record_inputs("finish", model=cfg.model, version=version)
    current = str(champion_of(cfg.model).version)
    if current == version:  # approved by hand, or promoted before a kill: never a second promotion
        return StepResult({"action": "none", "champion": version}, f"version {version} is champion", end="promoted")
    if ctx.step("canary")["state"] == "skipped":
        registry.set_champion(cfg.model, version, actor=ACTOR, reason=_why(ctx), action="ct_promote")
        return StepResult({"action": "set_champion", "champion": version},
                          f"champion version {current} -> {version} in the registry", end="promoted")
    seen = ctx.outputs("observe")
    if seen["verdict"] == "rolled_back":
        return StepResult({"action": "none", "reason": seen.get("reason")},
                          f"rolled back by the serving app: {seen.get('reason')}", end="rolled_back")
    if seen["verdict"] == "insufficient_traffic":
        try:
            _admin(cfg, "POST", "rollback", reason=f"continuous training {cfg.name}: too little traffic to judge")
        except AdminError as exc:
            if exc.status != 409:  # 409: no rollout left to roll back
                raise CTError(f"could not roll back the canary at {cfg.serving.url}: {exc}") from None
        return StepResult({"action": "rollback"}, "rolled back: too little traffic to judge the canary",
                          end="rolled_back")
    try:
        _admin(cfg, "POST", "rollout/finish", reason=_why(ctx))
    except (AdminError, Unreachable) as exc:
        if str(champion_of(cfg.model).version) != version:
            raise CTError(f"could not finish the canary at {cfg.serving.url}: {exc}") from None
    return StepResult({"action": "rollout_finish", "champion": version},
                      f"canary finished at {cfg.serving.url}: champion version {current} -> {version}", end="promoted")


def _why(ctx: Context) -> str:
    s, state = ctx.state["scores"], ctx.state
    return (f"continuous training {ctx.cfg.name} run {state['run_id']} ({state['trigger']}): {s['metric']} "
            f"{s['challenger']:.4f} vs champion version {state['champion_before']} {s['champion']:.4f} on "
            f"{s['rows']} recent labelled rows (margin {s['margin']:g})")


def _admin(cfg: Any, method: str, path: str, body: dict | None = None, reason: str | None = None) -> dict[str, Any]:
    """One call to ``{url}/admin/models/{model}/{path}`` with the admin key from ``serving.admin_key_env``."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{cfg.serving.url.rstrip('/')}/admin/models/{urllib.parse.quote(cfg.model, safe='')}/{path}"
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(cfg.serving.admin_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if reason:
        headers["X-Reason"] = reason
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=cfg.serving.request_timeout_s) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            message = str(exc.reason)
        if exc.code == 404:
            raise Unreachable(f"404: {message}") from None
        if exc.code in (401, 403):
            raise CTError(f"the serving app at {cfg.serving.url} refused the admin call ({exc.code}: {message}); "
                          f"set {cfg.serving.admin_key_env} to an admin API key of the app") from None
        raise AdminError(exc.code, message) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise Unreachable("connection refused") from None
        raise CTError(f"cannot reach the serving app at {cfg.serving.url}: {exc.reason}") from None
    except ConnectionRefusedError:
        raise Unreachable("connection refused") from None
