"""fabric.registry on the real embedded MLflow (SQLite): the promotion gate, approval, rollback and audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import mlflow
import pytest
from pydantic import ValidationError

from fabric import registry
from fabric.registry import PromotionPolicy, PromotionRefused, RegistryError
from tests.registry_models import logged_models, tracking_env_restored


@pytest.fixture(scope="module")
def models():
    with tracking_env_restored():
        yield logged_models()


@pytest.fixture
def name() -> str:
    return f"bc-{uuid.uuid4().hex[:8]}"


def add(models, name, kind, **kwargs) -> str:
    return registry.register(models[kind]["uri"], name, tags=models[kind]["tags"], **kwargs)


def aliases(name) -> dict[str, str]:
    return {alias: str(v) for alias, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def test_register_tags_the_version_and_makes_it_challenger(models, name):
    version = add(models, name, "fair", description="40 clean rows", reason="first try")
    assert version == "1" and aliases(name) == {"challenger": "1"}
    shown = registry.show(name)
    (info,) = shown["versions"]
    assert info["aliases"] == ["challenger"] and info["description"] == "40 clean rows"
    assert info["tags"]["fabric.task"] == "classification" and info["tags"]["fabric.label_column"] == "target"
    assert info["metrics"] == {"roc_auc": pytest.approx(models["fair"]["auc"])} and info["run_id"]
    assert shown["policy"] == {"metric": None, "margin": 0.0, "require_approval": False}
    assert shown["metric"] == "roc_auc"


def test_first_version_without_champion_passes(models, name):
    version = add(models, name, "fair")
    result = registry.promote(name, version)
    assert result["status"] == "promoted" and result["from_version"] is None
    assert result["metric"] == "roc_auc" and result["champion_score"] is None
    assert result["challenger_score"] == pytest.approx(models["fair"]["auc"]) and result["rows"] == 171
    assert aliases(name) == {"champion": "1"}  # the challenger alias leaves with the promotion
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(name, version)


def test_worse_challenger_is_refused_and_champion_stays(models, name):
    registry.promote(name, add(models, name, "fair"))
    worse = add(models, name, "worse")
    with pytest.raises(PromotionRefused) as refused:
        registry.promote(name, worse, reason="nightly")
    fair, bad = models["fair"]["auc"], models["worse"]["auc"]
    assert str(refused.value) == (
        f"challenger version 2 roc_auc={bad:.4f} does not beat champion version 1 roc_auc={fair:.4f} by the margin 0"
    )
    assert refused.value.result["scores"]["champion"]["roc_auc"] == pytest.approx(fair)
    assert aliases(name) == {"champion": "1", "challenger": "2"}
    entry = registry.audit_trail(name)[-1]
    assert entry["action"] == "promotion_refused" and entry["version"] == "2" and entry["from_version"] == "1"
    assert entry["challenger_score"] == pytest.approx(bad) and entry["champion_score"] == pytest.approx(fair)
    assert entry["reason"] == "nightly"


def test_better_challenger_becomes_champion_and_rollbacks_go_back_in_turn(models, name):
    for kind in ("worse", "fair", "better"):
        result = registry.promote(name, add(models, name, kind))
        assert result["status"] == "promoted"
    assert result["from_version"] == "2" and aliases(name) == {"champion": "3"}
    assert result["champion_score"] == pytest.approx(models["fair"]["auc"])
    assert result["challenger_score"] == pytest.approx(models["better"]["auc"])

    assert registry.rollback(name, reason="canary errors") == {
        "name": name, "version": "2", "status": "rolled_back", "from_version": "3"
    }
    assert aliases(name) == {"champion": "2"}
    assert registry.rollback(name)["version"] == "1" and aliases(name) == {"champion": "1"}
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(name)
    assert aliases(name) == {"champion": "1"}


def test_margin_comes_from_arguments_then_stored_policy(models, name):
    registry.register(models["fair"]["uri"], name, tags=models["fair"]["tags"], policy=PromotionPolicy(margin=0.01))
    registry.promote(name, "1")
    better = add(models, name, "better")  # better by about 0.008 roc_auc: short of the stored margin
    with pytest.raises(PromotionRefused, match=r"by the margin 0\.01$"):
        registry.promote(name, better)
    assert registry.show(name)["policy"]["margin"] == 0.01
    assert registry.promote(name, better, margin=0.0, reason="accept a small gain")["status"] == "promoted"


def test_approval_flow(models, name):
    registry.register(models["fair"]["uri"], name, tags=models["fair"]["tags"],
                      policy=PromotionPolicy(require_approval=True))
    pending = registry.promote(name, "1")
    assert pending["status"] == "pending_approval" and aliases(name) == {"challenger": "1"}
    assert registry.show(name)["versions"][0]["approval"] == "pending"

    approved = registry.approve(name, "1", actor="lead", reason="reviewed")
    assert approved["status"] == "promoted" and approved["regated"] is False
    assert approved["challenger_score"] == pytest.approx(models["fair"]["auc"])
    assert aliases(name) == {"champion": "1"} and registry.show(name)["versions"][0]["approval"] == "approved"
    assert [e["action"] for e in registry.audit_trail(name)] == ["register", "pending_approval", "approve"]
    with pytest.raises(RegistryError, match="version 1 of .* is not pending approval"):
        registry.approve(name, "1")
    add(models, name, "better")
    with pytest.raises(RegistryError, match="not pending approval"):
        registry.approve(name, "2")


def test_approval_reruns_the_gate_when_the_champion_changed(models, name):
    registry.promote(name, add(models, name, "worse"))
    fair = add(models, name, "fair")
    assert registry.promote(name, fair, require_approval=True)["status"] == "pending_approval"
    registry.promote(name, add(models, name, "better"))  # champion moves on while version 2 waits
    with pytest.raises(PromotionRefused, match="challenger version 2 .* champion version 3"):
        registry.approve(name, fair)
    assert aliases(name)["champion"] == "3"
    assert registry.show(name)["versions"][1]["approval"] == "refused"


def test_audit_trail_names_actor_time_reason_and_from_version(models, name, monkeypatch):
    monkeypatch.setenv("FABRIC_ACTOR", "ci-bot")
    registry.promote(name, add(models, name, "fair"), reason="first")
    registry.promote(name, add(models, name, "better"), actor="alice", reason="better data")
    registry.rollback(name, actor="bob", reason="latency regression")
    trail = registry.audit_trail(name)
    assert [(e["seq"], e["action"], e["version"], e["from_version"], e["actor"], e["reason"]) for e in trail] == [
        (1, "register", "1", None, "ci-bot", None),
        (2, "promote", "1", None, "ci-bot", "first"),
        (3, "register", "2", None, "ci-bot", None),
        (4, "promote", "2", "1", "alice", "better data"),
        (5, "rollback", "1", "2", "bob", "latency regression"),
    ]
    for entry in trail:
        when = datetime.fromisoformat(entry["time"])
        assert when.utcoffset().total_seconds() == 0 and abs(datetime.now(timezone.utc) - when).total_seconds() < 600
    assert trail[3]["metric"] == "roc_auc" and trail[3]["champion_score"] == pytest.approx(models["fair"]["auc"])
    assert registry.show(name)["audit"] == trail


def test_regression_models_compare_on_rmse_lower_is_better(models, name):
    registry.promote(name, add(models, name, "reg_good"))
    with pytest.raises(PromotionRefused, match=r"challenger version 2 rmse=\d+\.\d{4} does not beat champion"):
        registry.promote(name, add(models, name, "reg_mean"))
    other = f"{name}-r"
    registry.promote(other, add(models, other, "reg_mean"))
    result = registry.promote(other, add(models, other, "reg_good"), metric="mae")
    assert result["status"] == "promoted" and result["challenger_score"] < result["champion_score"]


def test_list_models_shows_champion_and_primary_metric(models, name):
    registry.promote(name, add(models, name, "fair"))
    add(models, name, "worse")
    (row,) = [m for m in registry.list_models() if m["name"] == name]
    assert row == {**row, "versions": 2, "latest_version": "2", "champion": "1", "challenger": "2",
                   "metric": "roc_auc"}
    assert row["champion_score"] == pytest.approx(models["fair"]["auc"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda n: registry.show(n + "-missing"), "unknown model"),
        (lambda n: registry.promote(n, "9"), "has no version '9'"),
        (lambda n: registry.promote(n, "one"), "has no version 'one'"),
        (lambda n: registry.promote(n, "1", metric="bogus"), "unknown metric 'bogus'"),
        (lambda n: registry.promote(n, "1", margin=-1), "margin"),
        (lambda n: registry.promote(n, "1", metric="rmse"), "metric rmse is not computed for classification"),
        (lambda n: registry.rollback(n), "no previous champion"),
        (lambda n: registry.approve(n, "1"), "not pending approval"),
    ],
)
def test_bad_requests_raise_registry_error(models, name, call, message):
    add(models, name, "fair")
    with pytest.raises(RegistryError, match=message):
        call(name)
    assert registry.audit_trail(name)[-1]["action"] == "register"


def test_policy_and_tags_are_validated_before_anything_changes(models, name):
    with pytest.raises(ValidationError, match="unknown metric"):
        PromotionPolicy(metric="auc")
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        PromotionPolicy(margin=-0.1)
    with pytest.raises(ValidationError, match="Extra inputs"):
        PromotionPolicy(threshold=1)
    assert all(field.description for field in PromotionPolicy.model_fields.values())
    with pytest.raises(RegistryError, match="fabric.task must be 'classification' or 'regression'"):
        registry.register(models["fair"]["uri"], name, tags={**models["fair"]["tags"], "fabric.task": "ranking"})
    assert name not in [m["name"] for m in registry.list_models()]


def test_a_version_that_cannot_be_judged_is_an_error(models, name):
    bare = registry.register(models["no_holdout"]["uri"], name, tags=models["no_holdout"]["tags"])
    with pytest.raises(RegistryError, match="has no eval/holdout.parquet"):
        registry.promote(name, bare)
    untagged = registry.register(models["fair"]["uri"], name)
    with pytest.raises(RegistryError, match="needs the tags fabric.task and fabric.label_column"):
        registry.promote(name, untagged)
    assert aliases(name) == {"challenger": "2"}


def test_concurrent_audit_and_history_writers_lose_no_entry(name):
    """The gateway and the CLI write at once, with no lock between them: every entry stays, seq counts them."""
    from concurrent.futures import ThreadPoolExecutor

    from fabric.registry.lifecycle import _history_event
    from fabric.registry.store import history

    with tracking_env_restored():
        client = registry.mlflow_client()
        client.create_registered_model(name)
        writers, each = 6, 4

        def write(worker: int) -> None:
            for i in range(each):
                registry.record_event(name, "note", None, actor=f"writer-{worker}", reason=str(i))
                _history_event(client, name, "crown", f"{worker}{i}", None)

        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(write, range(writers)))
        trail = registry.audit_trail(name)
        model = client.get_registered_model(name)
    assert len(trail) == writers * each and [e["seq"] for e in trail] == list(range(1, writers * each + 1))
    for worker in range(writers):  # each writer's own entries keep their order
        assert [e["reason"] for e in trail if e["actor"] == f"writer-{worker}"] == [str(i) for i in range(each)]
    assert sorted(history(model)) == sorted(f"{w}{i}" for w in range(writers) for i in range(each))


def test_trail_and_history_read_the_tags_of_earlier_fabric_versions():
    import json
    from types import SimpleNamespace

    from fabric.registry.audit import trail
    from fabric.registry.store import entry_key, history

    tags = {"fabric.audit.000001": json.dumps({"action": "register", "time": "2026-01-01T00:00:00+00:00"}),
            "fabric.audit.000002": json.dumps({"action": "promote", "time": "2026-01-02T00:00:00+00:00"}),
            "fabric.champion_history": json.dumps(["1", "2"])}
    key = entry_key(tags, "fabric.audit.")
    assert key.startswith("fabric.audit.000003.") and key != entry_key(tags, "fabric.audit.")
    tags[key] = json.dumps({"action": "rollback", "time": "2026-01-03T00:00:00+00:00"})
    tags["fabric.champion_history." + "000001.x"] = json.dumps({"op": "crown", "version": "3", "from_version": "2"})
    tags["fabric.champion_history." + "000002.y"] = json.dumps({"op": "rollback", "version": "1"})
    assert [(e["seq"], e["action"]) for e in trail(tags)] == [(1, "register"), (2, "promote"), (3, "rollback")]
    assert history(SimpleNamespace(tags=tags)) == ["1"]
    del tags["fabric.champion_history." + "000002.y"]
    assert history(SimpleNamespace(tags=tags)) == ["1", "2", "3"]
