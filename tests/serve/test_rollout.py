"""Rollout routing and rollback decisions, without Ray."""

from __future__ import annotations

import math

from fabric.serve.rollout import Rollout, RolloutRequest


def test_canary_share_is_within_a_sound_bound_and_sticky_keys_stick():
    rollout = Rollout(RolloutRequest(strategy="canary", version="2", percent=20, seed=7), live="1", actor="t")
    n, p = 500, 0.2
    hits = sum(rollout.route() == "2" for _ in range(n))
    assert abs(hits - n * p) <= 4 * math.sqrt(n * p * (1 - p))  # 4 standard deviations: [64, 136]
    sticky = {key: rollout.route(key) for key in (f"user-{i}" for i in range(200))}
    assert all(rollout.route(key) == version for key, version in sticky.items())
    assert 0.1 < sum(v == "2" for v in sticky.values()) / len(sticky) < 0.3


def test_shadow_and_blue_green_route_everything_one_way():
    shadow = Rollout(RolloutRequest(strategy="shadow", version="2"), live="1", actor="t")
    blue_green = Rollout(RolloutRequest(strategy="blue_green", version="2"), live="1", actor="t")
    assert {shadow.route() for _ in range(50)} == {"1"} and shadow.shadowing
    assert {blue_green.route() for _ in range(50)} == {"2"} and not blue_green.shadowing


def test_rollback_verdict_on_errors_and_latency_only_after_enough_requests():
    rollout = Rollout(RolloutRequest(strategy="canary", version="2", min_requests=10, window=20), live="1", actor="t")
    for _ in range(20):
        rollout.record("1", True, 10.0)
    for _ in range(9):
        rollout.record("2", False, 10.0)
    assert rollout.verdict() is None  # not enough candidate requests yet
    rollout.record("2", False, 10.0)
    assert "error rate 100.0%" in rollout.verdict()

    slow = Rollout(RolloutRequest(strategy="canary", version="2", min_requests=5), live="1", actor="t")
    for _ in range(10):
        slow.record("1", True, 10.0)
        slow.record("2", True, 45.0)
    assert "median latency 45.0 ms" in slow.verdict()
    calm = Rollout(RolloutRequest(strategy="canary", version="2", min_requests=5, auto_rollback=False),
                   live="1", actor="t")
    for _ in range(10):
        calm.record("2", False, 10.0)
    assert calm.verdict() is None
