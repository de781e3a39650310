"""Rollouts Ray Serve does not have: canary, shadow and blue-green between a live and a candidate version,
with automatic rollback when the candidate does worse than the live version over a window of requests.

Pure logic, no Ray: the gateway asks :meth:`Rollout.route` which version answers a request, reports each
outcome with :meth:`Rollout.record`, and ends the rollout when :meth:`Rollout.verdict` says so.

* ``canary``: ``percent`` of requests go to the candidate. With a routing key (header ``X-Routing-Key``) the
  choice is sticky: a key's hash decides, so one user always sees the same version.
* ``shadow``: every request is answered by the live version and also sent to the candidate; both answers are
  compared and kept (the last ones) for inspection; only the live answer returns.
* ``blue_green``: every request goes to the candidate at once; rolling back switches all traffic back at once.

A rollout in progress is saved on the registered model as the ``fabric.rollout`` tag (:meth:`Rollout.state`), so a
restarted gateway, and every gateway replica, carry it on (:meth:`Rollout.from_state`); its windows start empty.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from collections import deque
from typing import Any, Literal

from fabric.config import FabricConfig, Field

__all__ = ["ROLLOUT_TAG", "Rollout", "RolloutRequest", "Window"]

ROLLOUT_TAG = "fabric.rollout"


class RolloutRequest(FabricConfig):
    """What an admin asks for (``POST /admin/models/NAME/rollout``)."""

    strategy: Literal["canary", "shadow", "blue_green"] = Field(..., description="canary, shadow or blue_green.")
    version: str = Field(..., min_length=1, description="Candidate model version.")
    percent: float = Field(10.0, ge=0, le=100, description="canary: share of requests sent to the candidate.")
    window: int = Field(50, ge=5, description="Requests per version over which error rate and latency compare.")
    min_requests: int = Field(20, ge=1, description="Candidate requests needed before rollback can trigger.")
    max_error_rate_increase: float = Field(
        0.05, ge=0, le=1, description="Roll back when the candidate's error rate exceeds the live one by more.")
    max_latency_ratio: float = Field(
        3.0, gt=1, description="Roll back when the candidate's median latency is more than this times the live one.")
    auto_rollback: bool = Field(True, description="Roll back automatically when a bound is broken.")
    seed: int | None = Field(None, description="Seed of the canary's random choice (tests, replays).")


class Window:
    """The last ``size`` outcomes of one version: errors and latencies."""

    def __init__(self, size: int):
        self.outcomes: deque[tuple[bool, float]] = deque(maxlen=size)
        self.total = 0

    def add(self, ok: bool, latency_ms: float) -> None:
        self.outcomes.append((ok, latency_ms))
        self.total += 1

    @property
    def error_rate(self) -> float:
        return sum(not ok for ok, _ in self.outcomes) / len(self.outcomes) if self.outcomes else 0.0

    @property
    def median_latency_ms(self) -> float:
        latencies = [ms for ok, ms in self.outcomes if ok]
        return statistics.median(latencies) if latencies else 0.0

    def summary(self) -> dict[str, Any]:
        return {"requests": self.total, "window": len(self.outcomes), "error_rate": round(self.error_rate, 4),
                "median_latency_ms": round(self.median_latency_ms, 2)}


class Rollout:
    """One rollout of ``request.version`` against ``live``, with its windows and shadow comparisons."""

    def __init__(self, request: RolloutRequest, live: str, actor: str, started: float | None = None):
        self.request, self.live, self.candidate, self.actor = request, live, request.version, actor
        self.started = time.time() if started is None else started
        self.windows = {live: Window(request.window), self.candidate: Window(request.window)}
        self.shadows: deque[dict[str, Any]] = deque(maxlen=100)
        self.shadow_count = self.shadow_agreements = 0
        self.shadow_skipped = 0  # shadow calls not made: too many were in flight
        self.random = random.Random(request.seed)
        self.routed = {live: 0, self.candidate: 0}

    def state(self) -> dict[str, Any]:
        """What survives a restart: the request, the live version, who started it and when."""
        return {"request": self.request.model_dump(), "live": self.live, "actor": self.actor, "started": self.started}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Rollout:
        return cls(RolloutRequest.from_dict(state["request"], source="saved rollout"), str(state["live"]),
                   str(state["actor"]), float(state["started"]))

    def route(self, routing_key: str | None = None) -> str:
        """The version that answers this request."""
        strategy = self.request.strategy
        if strategy == "blue_green":
            chosen = self.candidate
        elif strategy == "shadow":
            chosen = self.live
        elif routing_key:
            bucket = int.from_bytes(hashlib.sha256(routing_key.encode()).digest()[:8], "big") % 10_000
            chosen = self.candidate if bucket < self.request.percent * 100 else self.live
        else:
            chosen = self.candidate if self.random.random() * 100 < self.request.percent else self.live
        self.routed[chosen] += 1
        return chosen

    @property
    def shadowing(self) -> bool:
        return self.request.strategy == "shadow"

    def record(self, version: str, ok: bool, latency_ms: float) -> None:
        if version in self.windows:
            self.windows[version].add(ok, latency_ms)

    def record_shadow(self, request_id: str, live: Any, candidate: Any, error: str | None) -> None:
        agree = error is None and live == candidate
        self.shadow_count += 1
        self.shadow_agreements += int(agree)
        self.shadows.append({"request_id": request_id, "live_version": self.live, "live": live,
                             "candidate_version": self.candidate, "candidate": candidate, "error": error,
                             "agree": agree})

    def verdict(self) -> str | None:
        """Why the candidate must be rolled back now, or None."""
        if not self.request.auto_rollback:
            return None
        cand, live = self.windows[self.candidate], self.windows[self.live]
        if len(cand.outcomes) < self.request.min_requests:
            return None
        if cand.error_rate - live.error_rate > self.request.max_error_rate_increase:
            return (f"candidate version {self.candidate} error rate {cand.error_rate:.1%} exceeds live version "
                    f"{self.live}'s {live.error_rate:.1%} by more than {self.request.max_error_rate_increase:.1%} "
                    f"over the last {len(cand.outcomes)} requests")
        if live.median_latency_ms and cand.median_latency_ms > self.request.max_latency_ratio * live.median_latency_ms:
            return (f"candidate version {self.candidate} median latency {cand.median_latency_ms:.1f} ms is over "
                    f"{self.request.max_latency_ratio}x live version {self.live}'s {live.median_latency_ms:.1f} ms")
        return None

    def status(self) -> dict[str, Any]:
        return {
            "strategy": self.request.strategy, "live": self.live, "candidate": self.candidate,
            "percent": self.request.percent if self.request.strategy == "canary" else None,
            "started": self.started, "actor": self.actor, "routed": dict(self.routed),
            "windows": {v: w.summary() for v, w in self.windows.items()},
            "shadow": {"compared": self.shadow_count, "agreements": self.shadow_agreements,
                       "skipped": self.shadow_skipped, "last": list(self.shadows)[-10:]} if self.shadowing else None,
        }
