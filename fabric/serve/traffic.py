"""The gateway's rollouts while they run: which version answers each request, shadow calls (capped at
``max_shadow_in_flight``), the automatic rollback, the audit entries, and the rollout saved in the registry (the
registered model's ``fabric.rollout`` tag) so that a restarted gateway, and every gateway replica, carry it on.

:class:`Traffic` is the gateway's; ``answer(name, version, body, parse)`` is how it asks a version for an answer
(the request parsed against that version's own features). The decisions themselves are :mod:`fabric.serve.rollout`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np

from fabric.serve.protocols import RequestError, output_columns, records
from fabric.serve.rollout import ROLLOUT_TAG, Rollout

__all__ = ["Traffic"]

log = logging.getLogger("ray.serve")
INFO_TTL_S = 2.0  # the gateway's registry refresh; a rollout younger than two of them is not dropped


class Traffic:
    """The rollouts of one gateway replica: ``rollouts`` in progress and the last ``ended`` one of each model."""

    def __init__(self, tracking_uri: str, answer: Any, max_shadow_in_flight: int = 16):
        self.tracking_uri, self.answer = tracking_uri, answer
        self.max_shadow_in_flight = max_shadow_in_flight
        self.rollouts: dict[str, Rollout] = {}
        self.ended: dict[str, dict[str, Any]] = {}  # the last ended rollout of each model, and why
        self.shadow_tasks: set[asyncio.Task] = set()
        self.background: set[asyncio.Task] = set()

    def registry_state(self, name: str, alias: str) -> tuple[str, dict[str, Any] | None]:
        """The version behind ``alias`` and the saved rollout (None: no rollout), in one registry call."""
        from mlflow import MlflowClient

        model = MlflowClient(self.tracking_uri).get_registered_model(name)
        if alias not in model.aliases:
            raise LookupError(f"{name} has no alias {alias!r}")
        saved = model.tags.get(ROLLOUT_TAG)
        return str(model.aliases[alias]), json.loads(saved) if saved else None

    def adopt(self, name: str, saved: dict[str, Any] | None) -> None:
        """Makes the rollout saved in the registry this replica's: one started before a restart or on another
        gateway replica; drops one that ended elsewhere."""
        current = self.rollouts.get(name)
        if saved is None:
            if current is not None and time.time() - current.started > 2 * INFO_TTL_S:  # not one starting now
                self.rollouts.pop(name, None)
            return
        if current is not None and current.started == saved.get("started"):
            return
        if (self.ended.get(name) or {}).get("started") == saved.get("started"):
            return  # ended here; the registry has not caught up
        try:
            self.rollouts[name] = Rollout.from_state(saved)
        except Exception as exc:  # a hand-edited tag must not stop serving
            log.warning("fabric: ignoring the saved rollout of %s: %s", name, exc)

    async def timed(self, name: str, version: str, body: Any, parse: Any) -> tuple[bool, float, Any]:
        started = time.perf_counter()
        try:
            result = await self.answer(name, version, body, parse)
            return True, (time.perf_counter() - started) * 1000, result
        except Exception as exc:  # a failing candidate: counted, and the request falls back to live
            return False, (time.perf_counter() - started) * 1000, exc

    async def routed(self, name: str, rollout: Rollout, body: Any, parse: Any, routing_key: str | None,
                     request_id: str) -> tuple[str, dict, np.ndarray, Any]:
        """A request during a rollout: route it, time it, fall back to live on a candidate failure (one that
        cannot take the request's columns included), judge."""
        chosen = rollout.route(routing_key)
        ok, ms, result = await self.timed(name, chosen, body, parse)
        if not ok and chosen != rollout.live:
            rollout.record(chosen, ok, ms)
            log.warning("fabric: candidate %s v%s failed (%s); answered by live v%s", name, chosen,
                        type(result).__name__, rollout.live)
            chosen = rollout.live
            ok, ms, result = await self.timed(name, chosen, body, parse)
        if not ok and isinstance(result, RequestError) and result.status < 500:
            raise result  # the client's mistake, not the live version's
        rollout.record(chosen, ok, ms)
        if not ok:
            self.judge(name, rollout)
            raise result
        meta, matrix, raw = result
        if rollout.shadowing:
            self.start_shadow(name, rollout, body, parse, meta, raw, request_id)
        self.judge(name, rollout)
        return chosen, meta, matrix, raw

    def start_shadow(self, name: str, rollout: Rollout, body: Any, parse: Any, meta: dict, raw: Any,
                      request_id: str) -> None:
        """Sends the request to the candidate too, unless ``max_shadow_in_flight`` shadow calls are running."""
        if len(self.shadow_tasks) >= self.max_shadow_in_flight:
            rollout.shadow_skipped += 1
            return
        task = asyncio.get_running_loop().create_task(self.shadow(name, rollout, body, parse, meta, raw, request_id))
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def shadow(self, name: str, rollout: Rollout, body: Any, parse: Any, live_meta: dict, live: Any,
                      request_id: str) -> None:
        try:
            ok, ms, result = await self.timed(name, rollout.candidate, body, parse)
            rollout.record(rollout.candidate, ok, ms)
            candidate = records(output_columns(result[0]["task"], result[2])) if ok else None
            rollout.record_shadow(request_id, records(output_columns(live_meta["task"], live)), candidate,
                                  None if ok else f"{type(result).__name__}: {result}")
            log.info("fabric shadow %s request %s: live v%s vs candidate v%s: %s", name, request_id, rollout.live,
                     rollout.candidate, "agree" if rollout.shadows[-1]["agree"] else "differ")
            self.judge(name, rollout)
        except Exception:  # a shadow never touches the answer already sent
            log.exception("fabric: shadow request %s of %s failed", request_id, name)

    def judge(self, name: str, rollout: Rollout) -> None:
        """Rolls back now when the rollout says so; the registry writes run off the request path."""
        reason = rollout.verdict()
        if reason and self.rollouts.get(name) is rollout:
            state = self.stop(name, "rolled_back_automatically", reason)
            self.in_background(self.after_end(name, rollout, state, "fabric-serve"))

    def stop(self, name: str, outcome: str, reason: str) -> dict[str, Any]:
        rollout = self.rollouts.pop(name)
        state = {**rollout.status(), "outcome": outcome, "reason": reason, "ended": time.time()}
        self.ended[name] = state
        log.warning("fabric: rollout of %s v%s ended: %s (%s)", name, rollout.candidate, outcome, reason)
        return state

    async def after_end(self, name: str, rollout: Rollout, state: dict[str, Any], actor: str) -> dict[str, Any]:
        """Clears the saved rollout and records the end in the audit trail; failures are logged and returned."""
        problems = [p for p in (await self.save(name, None), await self.record(
            name, f"rollout_{state['outcome']}", rollout.candidate, from_version=rollout.live, actor=actor,
            reason=state["reason"], strategy=rollout.request.strategy, windows=state["windows"])) if p]
        return {**state, "warnings": problems} if problems else state

    async def save(self, name: str, rollout: Rollout | None) -> str | None:
        """Saves (or, with None, clears) the rollout as the registered model's ``fabric.rollout`` tag, so a
        restarted gateway and every gateway replica pick it up; returns what went wrong, if anything."""
        from mlflow import MlflowClient

        def write() -> None:
            client = MlflowClient(self.tracking_uri)
            if rollout is not None:
                client.set_registered_model_tag(name, ROLLOUT_TAG, json.dumps(rollout.state()))
            elif ROLLOUT_TAG in client.get_registered_model(name).tags:
                client.delete_registered_model_tag(name, ROLLOUT_TAG)

        try:
            await asyncio.to_thread(write)
            return None
        except Exception as exc:
            log.warning("fabric: could not save the rollout state of %s in the registry: %s", name, exc)
            return f"rollout state not saved in the registry: {exc}"

    async def record(self, name: str, action: str, version: str, **fields: Any) -> str | None:
        """An audit trail entry; a failed write is logged and returned, never raised into a request."""
        from fabric import registry

        try:
            await asyncio.to_thread(registry.record_event, name, action, version, **fields)
            return None
        except Exception as exc:
            log.warning("fabric: audit entry %s of %s v%s not written: %s", action, name, version, exc)
            return f"audit entry not written: {exc}"

    def in_background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)  # held, so the task is not garbage-collected before it ends
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("fabric: background task failed: %r", task.exception())
