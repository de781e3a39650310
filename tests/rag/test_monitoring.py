"""rag/monitoring.py and the RAG alert rules: a window of a RAG app's answers (logged as the gateway logs them) gives
the mean groundedness and the share of unsupported answers of the newest data commit, an Evidently report and an
MLflow run; `groundedness_below` and `ungrounded_share_above` fire on them, from Python and from `fabric monitor
check`. No Ray: the rows are written with the gateway's own row layout (rag.serving.telemetry.answer_outputs)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fabric.cli import app
from fabric.monitor import MonitorError
from fabric.monitor.alerts import MonitorSpec, run_spec
from rag.monitoring import check, is_rag_log, latest_version

MODEL = "watched-rag"
OLD, NEW = "a" * 64, "b" * 64


def _answer(score: float | None, i: int) -> dict:
    cited = [] if score is None else [{"chunk_id": f"c{i}"}]
    grounded = None if score is None else {"score": score, "scorer": "lexical"}
    action = "none" if score is None or score >= 0.5 else "quote"  # the guardrail quoted the sources instead
    return {"answer": f"answer {i}", "citations": cited, "groundedness": grounded, "commit": NEW,
            "collection": "docs-x", "guardrail": {"action": action, "unsupported": []}}


@pytest.fixture(scope="module")
def log_root(tmp_path_factory):
    """An older commit's 30 well-grounded answers, then the newest commit's 30 at 0.9, 10 at 0.1 (a planted wrong
    number, say) and 5 questions the documents do not cover."""
    from fabric.serve.inference_log import InferenceLog
    from rag.serving.telemetry import answer_outputs

    root = str(tmp_path_factory.mktemp("rag-log"))
    log = InferenceLog(root, flush_rows=10**9, flush_s=10**6)
    rows = [(OLD, 0.95)] * 30 + [(NEW, 0.9)] * 30 + [(NEW, 0.1)] * 10 + [(NEW, None)] * 5
    for i, (commit, score) in enumerate(rows):
        log.add(f"r{i}", MODEL, commit, "rag_query", [], [[]], answer_outputs(f"question {i}", _answer(score, i)))
    for i in range(3):  # /rag/retrieve: chunks, no answer
        log.add(f"x{i}", MODEL, NEW, "rag_retrieve", [], [[]], answer_outputs("q", {
            "answer": "", "citations": [{"chunk_id": "c0"}], "groundedness": None, "guardrail": None}))
    log.flush()
    return root


def test_the_newest_commit_is_checked_with_its_figures_and_report(log_root, tmp_path):
    assert is_rag_log(MODEL, log_root) and latest_version(MODEL, log_root) == NEW
    result = check(MODEL, last=100, log_root=log_root, out_dir=str(tmp_path), log_to_mlflow=False)
    assert (result.version, result.rows, result.answered, result.not_covered) == (NEW, 45, 40, 5)
    assert result.mean_groundedness == pytest.approx((30 * 0.9 + 10 * 0.1) / 40)
    assert result.ungrounded_share == pytest.approx(0.25) and result.scorers == {"lexical": 40}
    assert result.guardrail == {"quote": 10} and result.guardrail_share == pytest.approx(0.25)
    assert result.retrievals == 3
    assert result.worst[0]["groundedness"] == pytest.approx(0.1) and result.worst[0]["query"].startswith("question")
    html = open(result.html_path, encoding="utf-8").read()
    assert "groundedness" in html and json.loads(open(result.json_path).read())["metrics"]
    older = check(MODEL, version=OLD, log_root=log_root, out_dir=str(tmp_path), log_to_mlflow=False)
    assert older.rows == 30 and older.mean_groundedness == pytest.approx(0.95) and older.ungrounded_share == 0


def test_the_rules_fire_on_the_groundedness_figures(log_root, fabric_home):
    spec = MonitorSpec.from_dict({"model": MODEL, "check": {"last": 100, "min_rows": 10}, "rules": [
        {"name": "low-mean", "when": "groundedness_below", "threshold": 0.8},
        {"name": "unsupported", "when": "ungrounded_share_above", "threshold": 0.3},
        {"name": "labels", "when": "too_few_labels", "threshold": 10},
        {"name": "guarded", "when": "guardrail_share_above", "threshold": 0.2}]})
    outcome = run_spec(spec, log_root=log_root)  # fabric.monitor.run_check picks the RAG check from the log
    # 25% unsupported is under 30%; no labels here; the guardrail quoted 25% of answers, over 20%
    assert [a["rule"] for a in outcome["alerts"]] == ["low-mean", "guarded"]
    assert "the grounding guardrail acted on 25% of 40 answers (10 quote; limit 20%)" in outcome["alerts"][1]["message"]
    alert = outcome["alerts"][0]
    assert alert["figures"]["mean_groundedness"] == pytest.approx(0.7) and alert["version"] == NEW
    assert "mean groundedness 0.700 of 40 answers is below 0.8" in alert["message"]
    assert alert["report"]["html"].endswith(".html") and alert["mlflow_run_id"]
    assert run_spec(spec, log_root=log_root)["suppressed"] == ["low-mean", "guarded"]  # once per cool-down


def test_fabric_monitor_check_reports_a_rag_app(log_root, tmp_path, fabric_home):
    spec = tmp_path / "rag.yaml"
    spec.write_text(f"model: {MODEL}\ncheck: {{last: 100, min_rows: 10}}\nrules:\n"
                    "  - {name: unsupported, when: ungrounded_share_above, threshold: 0.2}\n")
    out = CliRunner().invoke(app, ["monitor", "check", MODEL, "--config", str(spec), "--log-root", log_root])
    assert out.exit_code == 0, out.output
    assert "40 scored, 5 not covered" in out.output and "share under 0.5 0.250" in out.output
    assert "guardrail acted on 0.250 (10 quote)" in out.output
    assert "alert unsupported: " in out.output and "25% of 40 answers are not supported" in out.output
    out = CliRunner().invoke(app, ["monitor", "check", MODEL, "--last", "100", "--log-root", log_root, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["kind"] == "rag"


def test_too_few_answers_or_no_log_say_so(log_root):
    from fabric.monitor import MonitorConfig

    with pytest.raises(MonitorError, match=r"45 logged answers in the window \(last 1000 answers\); a check needs at "
                                           r"least 500 \(min_rows\)"):
        check(MODEL, cfg=MonitorConfig(min_rows=500), log_root=log_root, log_to_mlflow=False)
    with pytest.raises(MonitorError, match="'never-served' has no inference log yet"):
        check("never-served", log_root=log_root, log_to_mlflow=False)
