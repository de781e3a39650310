"""rag/heldout.py and workloads/evaluate_groundedness.py: the overlap baseline, the held-out sets, the metrics on
hand-made inputs with values worked out by hand, and the workload once on the real pairs (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rag.groundedness import Groundedness
from rag.heldout import (
    RAG_ANSWERS,
    Item,
    OverlapScorer,
    calibration_pairs,
    evaluate,
    fit_overlap,
    format_table,
    heldout_sets,
    sets_hash,
)

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = "The river Zorbu flows through the town of Kelp. It is 300 km long and freezes every winter."


class FakeScorer:
    """Scores each claim with the number it is mapped to."""

    name = "fake"

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def detail_batch(self, answers: list[str], contexts: list[list[str]]) -> list[Groundedness]:
        return [Groundedness(self.scores.get(a, 1.0), self.name) for a in answers]


def _row(doc: str, claim: str, label: int, split: str, source: str = "wice", domain: str = "claim") -> dict:
    return {"source": source, "domain": domain, "doc_id": f"{source}:{doc}", "claim": claim, "context": CONTEXT,
            "label": label, "original_label": str(label), "split": split}


def test_overlap_is_the_share_of_content_words_in_the_best_single_context():
    share = OverlapScorer.share
    assert share("The river Zorbu flows through Kelp.", [CONTEXT]) == (1.0, 0)
    # the whole claim is one unit: one sentence supported, one not, gives the share over both
    assert share("Zorbu is long. Penguins dance in Berlin.", [CONTEXT])[0] == pytest.approx(2 / 5)
    # the best single context, not their union
    assert share("Zorbu Kelp penguins Berlin", ["Zorbu Kelp", "penguins", "nothing"]) == (0.5, 0)
    assert share("Zorbu", []) == (0.0, None) and share("It is what it is.", [CONTEXT])[0] == 1.0
    # no number check: a changed number shares every other word
    assert share("It is 400 km long.", [CONTEXT])[0] == pytest.approx(2 / 3)


def test_overlap_calibration_puts_the_threshold_between_supported_and_unsupported():
    supported = ["The river Zorbu flows through Kelp.", "Zorbu is 300 km long.", "Zorbu freezes every winter.",
                 "The town of Kelp has a river."]
    unsupported = ["Zorbu hosts penguins from Berlin daily.", "Kelp exports cheese and wine to Oslo.",
                   "The river Zorbu was dammed by engineers in 1950.", "Winter tourists ski near Oslo mountains."]
    claims = supported + unsupported
    scorer = OverlapScorer().fit(claims, [[CONTEXT]] * len(claims), [1] * 4 + [0] * 4)
    results = scorer.detail_batch(claims, [[CONTEXT]] * len(claims))
    assert all(g.score > 0.5 for g in results[:4]) and all(g.score < 0.5 for g in results[4:])
    assert results[0].scorer == "overlap" and len(results[0].sentences) == 1 and results[0].sentences[0].context == 0


def test_metrics_on_a_toy_set_match_the_hand_computed_values():
    items = [Item(f"c{i}", (CONTEXT,), label, "wice") for i, label in enumerate([1, 1, 0, 0])]
    scorer = FakeScorer({"c0": 0.9, "c1": 0.4, "c2": 0.6, "c3": 0.1})
    m = evaluate({"fake": scorer}, {"claim": items})["fake"]
    domain = m["domains"]["claim"]
    # predicted [1, 0, 1, 0]: recall of each class 1/2; ROC-AUC 3 of 4 pairs ordered; class 0: TP 1, FP 1, FN 1
    assert domain["balanced_accuracy"] == pytest.approx(0.5) and domain["roc_auc"] == pytest.approx(0.75)
    assert domain["f1_unsupported"] == pytest.approx(0.5) and domain["n"] == 4 and domain["answers_per_s"] > 0
    assert m["sources"]["wice"]["balanced_accuracy"] == pytest.approx(0.5) and m["sources"]["wice"]["n"] == 4


def test_the_headline_is_the_mean_over_domains_not_over_rows():
    big = [Item(f"b{i}", (CONTEXT,), i % 2, "vitaminc") for i in range(1000)]  # all right
    small = [Item(f"s{i}", (CONTEXT,), i % 2, "begin") for i in range(10)]  # all judged supported: BA 0.5
    scores = {f"b{i}": float(i % 2) for i in range(1000)} | {f"s{i}": 0.9 for i in range(10)}
    m = evaluate({"fake": FakeScorer(scores)}, {"claim": big, "qa_dialogue": small})["fake"]
    assert m["domains"]["claim"]["balanced_accuracy"] == 1.0 and m["domains"]["qa_dialogue"]["balanced_accuracy"] == 0.5
    assert m["mean_balanced_accuracy"] == pytest.approx(0.75) and m["min_domain_balanced_accuracy"] == 0.5
    assert m["domains"]["qa_dialogue"]["f1_unsupported"] == 0.0  # nothing judged unsupported
    table = format_table({"fake": m})
    assert "mean over domains" in table and "vitaminc" in table and "0.750" in table


def test_domains_pool_their_sources():
    items = [Item("a", (CONTEXT,), 1, "begin", "d1"), Item("b", (CONTEXT,), 0, "begin", "d1"),
             Item("c", (CONTEXT,), 1, "faithdial", "d2"), Item("d", (CONTEXT,), 1, "faithdial", "d2")]
    m = evaluate({"fake": FakeScorer({"a": 0.9, "b": 0.2, "c": 0.3, "d": 0.8})}, {"qa_dialogue": items})["fake"]
    assert m["sources"]["faithdial"]["balanced_accuracy"] is None  # one class only
    assert m["domains"]["qa_dialogue"]["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)


def test_no_held_out_document_reaches_the_overlap_fit():
    rows = [_row("d1", "The river Zorbu flows through Kelp.", 1, "calibration"),
            _row("d1", "Zorbu hosts penguins.", 0, "held_out"),  # a leaky split: d1 on both sides
            _row("d2", "Zorbu is 300 km long.", 1, "calibration"), _row("d2", "Kelp exports cheese.", 0, "calibration"),
            _row("d3", "Zorbu freezes every winter.", 1, "held_out"), _row("d4", "Oslo skiing.", 0, "train")]
    pairs = pd.DataFrame(rows)
    fitted = calibration_pairs(pairs)
    assert set(fitted["doc_id"]) == {"wice:d2"} and set(fitted["split"]) == {"calibration"}
    held = set(pairs.loc[pairs["split"] == "held_out", "doc_id"])
    assert not held & set(fitted["doc_id"])
    assert fit_overlap(pairs).calibration != OverlapScorer().calibration


def test_heldout_sets_by_domain_capped_per_source_with_the_rag_answers():
    rows = [_row(f"w{i}", f"claim {i}", int(i < 6), "held_out") for i in range(10)]
    rows += [_row(f"b{i}", f"turn {i}", i % 2, "held_out", "begin", "qa_dialogue") for i in range(3)]
    rows += [_row("t", "train row", 1, "train")]
    answers = [{"answer": f"answer {i}", "contexts": ["x", "y"], "label": i % 2} for i in range(7)]
    sets = heldout_sets(pd.DataFrame(rows), answers=answers, max_per_source=4, seed=1)
    assert list(sets) == ["qa_dialogue", "claim"]  # no summary rows: no summary set
    wice = [it for it in sets["claim"] if it.source == "wice"]
    assert len(wice) == 4 and sum(it.label for it in wice) == 2  # 6:4 scaled to 4 -> 2.4:1.6 -> 2:2
    rag = [it for it in sets["qa_dialogue"] if it.source == RAG_ANSWERS]
    assert len(rag) == 4 and all(it.contexts == ("x", "y") for it in rag)
    assert sum(it.source == "begin" for it in sets["qa_dialogue"]) == 3
    again = heldout_sets(pd.DataFrame(rows), answers=answers, max_per_source=4, seed=1)
    assert again == sets and sets_hash(again) == sets_hash(sets)  # seeded
    assert sets_hash(heldout_sets(pd.DataFrame(rows), answers=answers, max_per_source=5, seed=1)) != sets_hash(sets)


def test_the_workload_config_loads():
    from fabric.config import ConfigError
    from fabric.workload import load_workload

    workload = load_workload("evaluate_groundedness")
    cfg = workload.load_config(ROOT / "configs" / "rag" / "evaluate_groundedness.yaml")
    assert cfg.data.uri == "lakefs://groundedness/main/pairs.parquet" and cfg.data.max_per_source == 2000
    assert cfg.scorers == ["default", "lexical", "overlap"] and cfg.include_rag_answers
    with pytest.raises(ConfigError, match="no-such-scorer"):
        workload.load_config(ROOT / "configs" / "rag" / "evaluate_groundedness.yaml", ["scorers=[no-such-scorer]"])


def test_the_workload_on_the_real_pairs(fabric_home):
    pytest.importorskip("rag.labelled")
    import mlflow

    from fabric import data
    from fabric.runtime import setup_mlflow
    from rag.labelled import build_pairs
    from workloads.evaluate_groundedness import Config, PairsNotReady, main

    uri = "lakefs://groundedness-test/main/pairs.parquet"
    with pytest.raises(PairsNotReady, match="prepare_groundedness"):
        main(Config(data={"uri": uri}))
    data.init("groundedness-test")
    data.write(uri, build_pairs(), "pairs for the test")
    setup_mlflow()
    result = main(Config(data={"uri": uri, "max_per_source": 30}, scorers=["lexical", "overlap"]))
    for name in ("lexical", "overlap"):
        assert 0 <= result[f"{name}.mean_balanced_accuracy"] <= 1
        assert result[f"{name}.min_domain_balanced_accuracy"] <= result[f"{name}.mean_balanced_accuracy"]
    assert result["lexical.qa_dialogue.n"] == 30 * 3  # begin, faithdial and the RAG answers
    assert result["lexical.claim.n"] == 30 * 3 and result["lexical.summary.n"] == 30
    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.tags["fabric.data.commit"] == result["commit"]
    assert run.data.tags["fabric.groundedness.heldout_hash"] == result["heldout_hash"]
    assert run.data.metrics["overlap.claim.roc_auc"] == pytest.approx(result["overlap.claim.roc_auc"])
    table = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/groundedness_table.txt")
    assert "mean over domains" in table and "summedits" in table
