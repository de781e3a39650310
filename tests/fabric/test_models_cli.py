"""`fabric models ...` through typer's CliRunner against the real embedded MLflow registry."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from fabric import registry
from fabric.cli import app
from tests.registry_models import logged_models, tracking_env_restored


@pytest.fixture(scope="module")
def models():
    with tracking_env_restored():
        yield logged_models()


@pytest.fixture
def name(models) -> str:
    """A model with version 1 (fair) as champion and version 2 (worse) and 3 (better) registered."""
    model = f"cli-{uuid.uuid4().hex[:8]}"
    for kind in ("fair", "worse", "better"):
        registry.register(models[kind]["uri"], model, tags=models[kind]["tags"], actor="trainer")
    registry.promote(model, "1", actor="trainer")
    return model


def fabric(*args: str, code: int = 0):
    result = CliRunner().invoke(app, ["models", *args])
    assert result.exit_code == code, result.output
    return result


def test_list_and_show(name, models):
    rows = json.loads(fabric("list", "--json").stdout)
    (row,) = [r for r in rows if r["name"] == name]
    assert (row["champion"], row["challenger"], row["versions"], row["metric"]) == ("1", "3", 3, "roc_auc")
    assert name in fabric("list").stdout

    shown = json.loads(fabric("show", name, "--json").stdout)
    assert [v["version"] for v in shown["versions"]] == ["3", "2", "1"]
    assert shown["aliases"] == {"champion": "1", "challenger": "3"}
    assert [e["action"] for e in shown["audit"]] == ["register"] * 3 + ["promote"]

    text = fabric("show", name).stdout
    assert f"model {name}" in text and "policy: metric=default margin=0 require_approval=no" in text
    assert f"1        champion    {models['fair']['auc']:.4f}" in text
    assert "promote           v1  by trainer roc_auc" in text


def test_promote_refused_exits_1_then_promote_and_rollback(name, models):
    refused = fabric("promote", name, "2", "--json", code=1)
    body = json.loads(refused.stdout)
    assert body["status"] == "refused" and body["from_version"] == "1"
    assert body["message"].startswith("challenger version 2 roc_auc=") and "champion version 1" in body["message"]
    text = fabric("promote", name, "2", code=1).stdout
    assert text.startswith("refused: challenger version 2") and "by the margin 0" in text

    fabric("promote", name, "3", "--margin", "0.01", code=1)
    promoted = json.loads(fabric("promote", name, "3", "--reason", "more data", "--actor", "alice", "--json").stdout)
    assert promoted["status"] == "promoted" and promoted["from_version"] == "1"
    assert promoted["champion_score"] == pytest.approx(models["fair"]["auc"])

    out = fabric("rollback", name, "--reason", "canary", "--actor", "bob")
    assert out.stdout.strip() == f"{name}: champion rolled back from version 3 to 1"
    assert json.loads(fabric("show", name, "--json").stdout)["aliases"]["champion"] == "1"
    trail = registry.audit_trail(name)
    assert [(e["action"], e["actor"], e["reason"]) for e in trail[-2:]] == [
        ("promote", "alice", "more data"), ("rollback", "bob", "canary")
    ]
    assert "error: " in fabric("rollback", name, code=2).stderr


def test_approve_through_the_cli(name, models):
    out = fabric("approve", name, "3", code=2)
    assert f"error: version 3 of {name} is not pending approval" in out.stderr

    assert registry.promote(name, "3", require_approval=True)["status"] == "pending_approval"
    shown = fabric("show", name).stdout
    assert "pending" in shown
    approved = json.loads(fabric("approve", name, "3", "--reason", "reviewed", "--json").stdout)
    assert approved["status"] == "promoted" and approved["from_version"] == "1"
    assert approved["challenger_score"] == pytest.approx(models["better"]["auc"])
    assert registry.audit_trail(name)[-1]["action"] == "approve"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope-model"], "error: unknown model 'nope-model'"),
        (["promote", "nope-model", "1"], "error: unknown model 'nope-model'"),
        (["promote", "{name}", "7"], "has no version '7'"),
        (["promote", "{name}", "3", "--metric", "auc"], "unknown metric 'auc'"),
        (["approve", "{name}", "42"], "has no version '42'"),
    ],
)
def test_bad_input_exits_2(name, args, message):
    out = fabric(*[a.format(name=name) for a in args], code=2)
    assert message in out.stderr and "Traceback" not in out.output
