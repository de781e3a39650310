"""rag/evaluation.py, the labeled sets in rag/data and workloads/evaluate_rag.py.

The sets are checked against this Python's pages (every passage where it says, every page that holds it listed,
counts, label balance, provenance of each kind); the metrics on small hand-made inputs with exact values; the
workload end to end on an index of a few ingested pages, through the Python API and `fabric run`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rag.evaluation import (
    DatasetError,
    classification_metrics,
    find_passage,
    load_answers,
    load_questions,
    passage_spans,
    rank_metrics,
    retrieval_metrics,
    scorer_metrics,
)
from rag.index import Hit
from tests.helpers import last_json

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    from rag.corpus import python_docs

    docs = python_docs()
    return dict(zip(docs["doc_id"], docs["text"], strict=True))


@pytest.fixture(scope="module")
def questions():
    return load_questions()


@pytest.fixture(scope="module")
def answers():
    return load_answers()


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ---- the question set -------------------------------------------------------------------------------------------

def test_questions_are_many_distinct_and_cover_most_pages(questions, documents):
    assert len(questions) >= 120
    assert len({q["id"] for q in questions}) == len(questions)
    assert len({q["question"].lower() for q in questions}) == len(questions)
    assert len({q["doc_id"] for q in questions}) >= 0.9 * len(documents)
    assert {q["difficulty"] for q in questions} == {"easy", "medium", "hard"}
    assert any(q["question"] == "How does a with statement call __exit__?" and "with" in q["doc_ids"]
               for q in questions)


def test_every_passage_occurs_in_exactly_the_pages_it_lists(questions, documents):
    for q in questions:
        assert q["doc_id"] in q["doc_ids"] and set(q["doc_ids"]) <= set(documents), q["id"]
        holding = {doc_id for doc_id, text in documents.items() if q["passage"] in text}
        assert holding == set(q["doc_ids"]), (q["id"], q["passage"][:60])
        assert len(q["passage"]) >= 15 and q["question"].endswith("?"), q["id"]


def test_questions_are_not_copied_from_their_passages(questions):
    for q in questions:  # natural phrasing: no long run of the passage's words in the question
        words = _norm(q["passage"]).lower().split()
        runs = {" ".join(words[i:i + 6]) for i in range(len(words) - 5)}
        assert not any(run in q["question"].lower() for run in runs), q["id"]


# ---- the labeled answers ----------------------------------------------------------------------------------------

KINDS = {"paraphrase": 1, "number": 0, "version": 0, "identifier": 0, "entity": 0, "negation": 0,
         "swap": 0, "wrong_page": 0, "unsupported_addition": 0}


def test_answers_are_many_balanced_and_of_known_kinds(answers):
    assert len(answers) >= 200 and len({a["id"] for a in answers}) == len(answers)
    assert all(KINDS[a["kind"]] == a["label"] for a in answers)
    share = sum(a["label"] for a in answers) / len(answers)
    assert 0.4 <= share <= 0.6
    kinds = Counter(a["kind"] for a in answers)
    assert all(kinds[k] >= 20 for k in KINDS), kinds


def test_answers_read_like_rag_answers(answers):
    from rag.groundedness import split_sentences

    lengths = Counter(len(split_sentences(a["answer"])) for a in answers if a["kind"] == "paraphrase")
    assert sum(n for length, n in lengths.items() if length >= 3) >= 50
    assert all(len(a["contexts"]) == 4 and all(20 <= len(c.split()) <= 250 for c in a["contexts"])
               for a in answers)


def test_each_answer_has_the_provenance_its_kind_says(answers, questions):
    by_id = {q["id"]: q for q in questions}
    for a in answers:
        q = by_id[a["question_id"]]
        assert a["question"] == q["question"] and a["doc_ids"] == q["doc_ids"], a["id"]
        assert sum(_norm(q["passage"]) in c for c in a["contexts"]) == 1, a["id"]  # the gold window, once
        if "edit" in a:  # a hand-made change of a grounded answer to the same question
            assert a["edit"]["to"] in a["answer"] and a["edit"]["from"] not in a["answer"], a["id"]
            original = a["answer"].replace(a["edit"]["to"], a["edit"]["from"])
            assert any(o["answer"] == original and o["kind"] == "paraphrase" for o in answers), a["id"]
        if "answer_from" in a:  # another page's answer: none of its pages, nor its passage, in these contexts
            other = by_id[a["answer_from"]]
            assert not set(other["doc_ids"]) & set(q["doc_ids"]), a["id"]
            assert not any(_norm(other["passage"]) in c for c in a["contexts"]), a["id"]


def test_no_answer_is_one_of_the_generated_training_claims(answers, documents):
    """The nli scorer trains on rag.claims pairs; the evaluation answers are written by another procedure."""
    import pandas as pd

    from rag.claims import make_pairs

    docs = pd.DataFrame({"doc_id": list(documents), "text": list(documents.values())})
    claims = {_norm(c) for c in make_pairs(docs, n=2000, seed=0)["claim"]}
    assert not [a["id"] for a in answers if _norm(a["answer"]) in claims]


# ---- metrics on hand-made inputs --------------------------------------------------------------------------------

def test_rank_metrics_exact_values():
    m = rank_metrics([1, 3, None, 2, 7], ks=(1, 5), prefix="page")
    assert m == pytest.approx({"page_hit_at_1": 0.2, "page_hit_at_5": 0.6,
                               "page_mrr": (1 + 1 / 3 + 1 / 2) / 5})  # rank 7 counts for no k and not in MRR
    with pytest.raises(DatasetError):
        rank_metrics([], ks=(1,), prefix="page")


class FixedResults:
    """A retriever whose results are given: hand-made input for the metrics, not a stand-in for Qdrant."""

    def __init__(self, results: dict[str, list[tuple[str, int, int]]]):
        self.results = results

    def search_batch(self, queries, top_k=5):
        return [[Hit(f"{d}#{n}", d, d, f"python-docs/{d}", "", s, e, "c0", 1.0 - n / 10)
                 for n, (d, s, e) in enumerate(self.results[q][:top_k])] for q in queries]


def test_retrieval_metrics_by_page_and_by_chunk():
    documents = {"a": "0123456789 the answer is here 0123456789", "b": "copy: the answer is here", "c": "other"}
    questions = [{"id": "q1", "question": "one?", "doc_id": "a", "doc_ids": ["a", "b"], "passage": "the answer"},
                 {"id": "q2", "question": "two?", "doc_id": "a", "doc_ids": ["a", "b"], "passage": "the answer"},
                 {"id": "q3", "question": "three?", "doc_id": "a", "doc_ids": ["a", "b"], "passage": "the answer"}]
    retriever = FixedResults({
        "one?": [("a", 0, 11), ("a", 11, 20)],             # page at 1; chunk at 2 (the first ends where it starts)
        "two?": [("c", 0, 5), ("b", 5, 12)],               # a page repeating the passage counts: page 2, chunk 2
        "three?": [("c", 0, 5)],                            # nothing relevant
    })
    m = retrieval_metrics(retriever, questions, ks=(1, 2), documents=documents)
    assert m["n"] == 3
    assert m["page_hit_at_1"] == pytest.approx(1 / 3) and m["page_hit_at_2"] == pytest.approx(2 / 3)
    assert m["page_mrr"] == pytest.approx((1 + 1 / 2) / 3)
    assert m["chunk_hit_at_1"] == 0 and m["chunk_hit_at_2"] == pytest.approx(2 / 3)
    assert m["chunk_mrr"] == pytest.approx((1 / 2 + 1 / 2) / 3)
    assert [(r["page_rank"], r["chunk_rank"]) for r in m["per_question"]] == [(1, 2), (2, 2), (None, None)]
    assert "chunk_mrr" not in retrieval_metrics(retriever, questions, ks=(1,))  # no documents: pages only


def test_passages_are_found_across_whitespace_and_missing_ones_are_named():
    assert find_passage("a  call\n   to f()", "call to f()") == (3, 17)
    assert find_passage("abc", "zzz") is None
    with pytest.raises(DatasetError, match=r"q9 in 'a'"):
        passage_spans([{"id": "q9", "doc_ids": ["a"], "passage": "absent"}], {"a": "text"})
    with pytest.raises(DatasetError, match=r"q8 \(none of b in the documents\)"):
        passage_spans([{"id": "q8", "doc_ids": ["b"], "passage": "text"}], {"a": "text"})
    # a subset of the corpus: the pages it holds are enough
    assert passage_spans([{"id": "q7", "doc_ids": ["a", "b"], "passage": "ex"}], {"a": "text"}) == {"q7": {"a": (1, 3)}}


def test_classification_metrics_exact_values():
    m = classification_metrics([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # one of two right in each class
    assert m["roc_auc"] == pytest.approx(0.75)           # 3 of the 4 (positive, negative) pairs ordered right
    assert classification_metrics([1, 1], [0.2, 0.9])["roc_auc"] is None


def test_scorer_metrics_with_the_lexical_scorer(answers):
    items = [a for a in answers if a["question_id"] in {"q001", "q002", "q031", "q157"}]
    m = scorer_metrics("lexical", items)
    assert m["n"] == len(items) and 0 <= m["balanced_accuracy"] <= 1 and m["answers_per_s"] > 0
    assert set(m["by_kind"]) == {a["kind"] for a in items} and len(m["per_item"]) == len(items)
    with pytest.raises(ValueError, match="lexical"):  # an unknown scorer names the known ones
        scorer_metrics("no-such-scorer", items)


def test_scorer_metrics_with_the_lexical_scorer_on_the_whole_set(answers):
    m = scorer_metrics("lexical", answers)  # about 1 s: the baseline the trained scorer has to beat
    assert m["n"] == len(answers) and m["roc_auc"] > 0.6 and m["answers_per_s"] > 50
    assert m["by_kind"]["wrong_page"] > 0.8  # another page's answer shares little with these contexts


# ---- the workload end to end, on the session's index of a few pages (tests/rag/conftest.py) ---------------------

@pytest.fixture(scope="module")
def few_questions(docs_index, tmp_path_factory):
    rows = [q for q in load_questions() if q["doc_id"] in docs_index["docs"]]
    path = tmp_path_factory.mktemp("evaluate-rag") / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in rows), encoding="utf-8")
    return path, rows


def _overrides(alias: str, path: Path) -> list[str]:
    return [f"index.alias={alias}", f"retrieval.questions={path}", "groundedness.limit=40", "runtime.ray.num_cpus=2"]


@pytest.fixture(scope="module")
def api_result(docs_index, few_questions):
    from fabric.workload import load_workload

    workload = load_workload("evaluate_rag")
    overrides = _overrides(docs_index["alias"], few_questions[0])
    return workload.run(workload.load_config(ROOT / "configs" / "rag" / "evaluate.yaml", overrides))


@pytest.mark.slow
def test_the_workload_evaluates_the_live_index_and_logs_everything(api_result, docs_index, few_questions):
    import mlflow

    m, n = api_result, len(few_questions[1])
    assert m["collection"] == docs_index["collection"] and m["commit"] == docs_index["commit"]
    assert m["dense.n"] == n and m["hybrid.n"] == n  # the index has keyword vectors (hybrid: true by default)
    assert m["hybrid.page_hit_at_5"] >= 0.8 and m["hybrid.chunk_mrr"] <= m["hybrid.page_mrr"]
    assert 1 >= m["dense.page_hit_at_10"] >= m["dense.page_hit_at_5"] >= m["dense.page_hit_at_1"] > 0
    assert m["dense.page_hit_at_5"] >= 0.8  # six pages only: a miss here is worth a look
    assert m["dense.chunk_hit_at_10"] <= m["dense.page_hit_at_10"] and m["dense.chunk_mrr"] <= m["dense.page_mrr"]
    assert m["lexical.n"] == 40 and 0 <= m["lexical.balanced_accuracy"] <= 1
    assert "nli.n" in m or "nli" in m["skipped_scorers"]  # nli needs a registered champion
    run = mlflow.get_run(m["mlflow_run_id"])
    assert run.data.metrics["dense.page_mrr"] == pytest.approx(m["dense.page_mrr"])
    assert run.data.tags["fabric.index.collection"] == docs_index["collection"]
    per_question = mlflow.load_table("retrieval_dense.json", run_ids=[run.info.run_id])
    assert sorted(per_question["id"]) == sorted(q["id"] for q in few_questions[1])
    assert len(mlflow.load_table("groundedness_lexical.json", run_ids=[run.info.run_id])) == 40


@pytest.mark.slow
def test_fabric_run_gives_the_api_result(api_result, docs_index, few_questions, cli_env):
    command = [sys.executable, "-m", "fabric", "run", "evaluate_rag", "--config", "configs/rag/evaluate.yaml",
               *_overrides(docs_index["alias"], few_questions[0]), "groundedness.scorers=[lexical]"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=cli_env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = last_json(out.stdout, "dense.page_mrr")
    keys = [k for k in api_result if k.startswith(("dense.page", "dense.chunk", "lexical.balanced"))]
    assert {k: result[k] for k in keys} == pytest.approx({k: api_result[k] for k in keys})
    assert "page_hit_at_5" in out.stdout and "balanced_accuracy" in out.stdout  # the summary table


def test_an_index_never_ingested_names_the_ingest_command():
    from workloads.evaluate_rag import Config, IndexNotReady, open_index

    cfg = Config.from_yaml(ROOT / "configs" / "rag" / "evaluate.yaml", ["index.alias=never-ingested"])
    with pytest.raises(IndexNotReady, match=r"never-ingested.*fabric run ingest_docs --config "
                                            r"configs/rag/python_docs.yaml"):
        open_index(cfg)
