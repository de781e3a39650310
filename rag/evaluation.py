"""How well retrieval finds the answer, and how well each groundedness scorer tells grounded answers from the rest.

Two labeled sets ship with the package (``rag/data``, see its README for how they were made):

* ``python_docs_questions.jsonl``: questions a Python user asks, each with the page (``doc_id``) that answers it,
  every page whose text holds the answer (``doc_ids``: ``compound`` repeats ``with``, ``specialnames`` repeats
  ``customization``, ...) and the answering ``passage``, a substring of the page's cleaned text.
* ``groundedness_eval.jsonl``: answers to those questions with the contexts a retriever would give, labeled 1
  (every claim supported by the contexts) or 0 (a changed number, version, identifier or entity, a negation, an
  answer from the wrong page, an unsupported sentence added), written by hand and never used for training.

:func:`retrieval_metrics` ranks each question's results two ways: by page (a hit whose ``doc_id`` is one of the
question's ``doc_ids``) and by chunk (such a hit whose characters overlap the passage in that page). hit@k is the
share of questions with a relevant hit among the first k; MRR the mean of 1/rank, 0 when none is in the first
max(ks). :func:`scorer_metrics` scores every answer with a scorer of :mod:`rag.groundedness` and reports balanced
accuracy at 0.5 (each scorer is calibrated so that 0.5 is its threshold), ROC-AUC and answers per second.

Example (``fabric run evaluate_rag --config configs/rag/evaluate.yaml`` runs both and logs them to MLflow):
    >>> from rag.corpus import python_docs
    >>> from rag.index import Retriever
    >>> docs = python_docs()
    >>> documents = dict(zip(docs["doc_id"], docs["text"]))
    >>> retrieval_metrics(Retriever("python-docs"), load_questions(), documents=documents)["page_hit_at_5"]
    0.95
    >>> scorer_metrics("lexical", load_answers())["balanced_accuracy"]
    0.8
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ANSWERS",
    "QUESTIONS",
    "DatasetError",
    "classification_metrics",
    "find_passage",
    "load_answers",
    "load_questions",
    "passage_spans",
    "rank_metrics",
    "retrieval_metrics",
    "score_answers",
    "scorer_metrics",
]

DATA = Path(__file__).resolve().parent / "data"
QUESTIONS = DATA / "python_docs_questions.jsonl"
ANSWERS = DATA / "groundedness_eval.jsonl"
THRESHOLD = 0.5


class DatasetError(ValueError):
    """A labeled set is malformed, or does not match the documents it is evaluated against."""


def _read_jsonl(path: str | Path, required: Iterable[str]) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in required if k not in row]
        if missing:
            raise DatasetError(f"{path}:{n}: missing {', '.join(missing)}")
        rows.append(row)
    return rows


def load_questions(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The labeled questions: ``id, question, doc_id, doc_ids, passage, difficulty`` per row."""
    return _read_jsonl(path or QUESTIONS, ("id", "question", "doc_id", "doc_ids", "passage"))


def load_answers(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The labeled answers: ``id, question, contexts, answer, label, kind, doc_id`` per row."""
    return _read_jsonl(path or ANSWERS, ("id", "question", "contexts", "answer", "label", "kind"))


def find_passage(text: str, passage: str) -> tuple[int, int] | None:
    """Character span of ``passage`` in ``text``: exact, else with any run of whitespace matching any other."""
    start = text.find(passage)
    if start >= 0:
        return start, start + len(passage)
    match = re.search(r"\s+".join(re.escape(word) for word in passage.split()), text)
    return (match.start(), match.end()) if match else None


def passage_spans(questions: Sequence[Mapping[str, Any]], documents: Mapping[str, str]
                  ) -> dict[str, dict[str, tuple[int, int]]]:
    """Per question id, the passage's span in each of its ``doc_ids`` that ``documents`` holds (a subset of the
    corpus may be evaluated). DatasetError names the passages not found in a page that should hold them, or in
    none at all: the documents are another version of the corpus (another Python's ``pydoc_data``)."""
    spans, missing = {}, []
    for q in questions:
        present = [doc_id for doc_id in q["doc_ids"] if doc_id in documents]
        spans[q["id"]] = {}
        for doc_id in present:
            span = find_passage(documents[doc_id], q["passage"])
            if span is None:
                missing.append(f"{q['id']} in {doc_id!r}")
            else:
                spans[q["id"]][doc_id] = span
        if not present:
            missing.append(f"{q['id']} (none of {', '.join(q['doc_ids'])} in the documents)")
    if missing:
        raise DatasetError(f"{len(missing)} passages not found in the documents (another corpus version?): "
                           + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return spans


def _first_rank(hits: Sequence[Any], relevant: Callable[[Any], bool]) -> int | None:
    return next((rank for rank, hit in enumerate(hits, 1) if relevant(hit)), None)


def rank_metrics(ranks: Sequence[int | None], ks: Sequence[int], prefix: str) -> dict[str, float]:
    """``{prefix}_hit_at_{k}`` for each k and ``{prefix}_mrr`` from the rank of the first relevant hit (1-based,
    None when there is none in the results)."""
    n = len(ranks)
    if n == 0:
        raise DatasetError("no questions to evaluate")
    found = [r for r in ranks if r is not None]
    metrics = {f"{prefix}_hit_at_{k}": sum(r <= k for r in found) / n for k in ks}
    metrics[f"{prefix}_mrr"] = sum(1.0 / r for r in found if r <= max(ks)) / n
    return metrics


def retrieval_metrics(retriever: Any, questions: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1, 5, 10),
                      documents: Mapping[str, str] | None = None, batch_size: int = 64) -> dict[str, Any]:
    """hit@k and MRR by page and (given ``documents``: doc_id -> text the index was built from) by chunk.

    ``retriever`` is a :class:`rag.index.Retriever` or anything with ``search_batch(queries, top_k)`` returning
    hits with ``doc_id``, ``chunk_id``, ``start`` and ``end``. Returns the metrics, ``n``, ``queries_per_s`` and
    ``per_question`` (id, question, doc_id, difficulty, both ranks, the top doc ids and chunk ids).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    spans = passage_spans(questions, documents) if documents is not None else None
    started, results = time.perf_counter(), []
    for i in range(0, len(questions), batch_size):
        batch = questions[i:i + batch_size]
        results += retriever.search_batch([q["question"] for q in batch], top_k=ks[-1])
    seconds = time.perf_counter() - started
    rows = []
    for q, hits in zip(questions, results, strict=True):
        pages = set(q["doc_ids"])
        row = {"id": q["id"], "question": q["question"], "doc_id": q["doc_id"],
               "difficulty": q.get("difficulty", ""),
               "page_rank": _first_rank(hits, lambda h, pages=pages: h.doc_id in pages),
               "top_doc_ids": [h.doc_id for h in hits[:5]], "top_chunk_ids": [h.chunk_id for h in hits[:5]]}
        if spans is not None:
            where = spans[q["id"]]
            row["chunk_rank"] = _first_rank(hits, lambda h, where=where: h.doc_id in where and h.start <
                                            where[h.doc_id][1] and where[h.doc_id][0] < h.end)
        rows.append(row)
    metrics: dict[str, Any] = {"n": len(rows), "queries_per_s": len(rows) / seconds if seconds else float("inf")}
    metrics.update(rank_metrics([r["page_rank"] for r in rows], ks, "page"))
    if spans is not None:
        metrics.update(rank_metrics([r["chunk_rank"] for r in rows], ks, "chunk"))
    metrics["per_question"] = rows
    return metrics


def classification_metrics(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float]:
    """Balanced accuracy at 0.5 and ROC-AUC (None when only one class is present), with counts."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    labels, scores = [int(v) for v in labels], [float(v) for v in scores]
    predicted = [int(s >= THRESHOLD) for s in scores]
    both = len(set(labels)) == 2
    return {"n": len(labels), "positives": sum(labels),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)) if both else None,
            "roc_auc": float(roc_auc_score(labels, scores)) if both else None,
            "accuracy": sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels) if labels else None}


def score_answers(scorer_name: str, items: Sequence[Mapping[str, Any]], batch_size: int = 64
                  ) -> tuple[list[float], float]:
    """Each item's answer score by the named scorer, and the seconds spent scoring (model loading excluded)."""
    from rag.groundedness import get_scorer

    scorer = get_scorer(scorer_name)
    scorer.detail_batch([items[0]["answer"]], [list(items[0]["contexts"])])  # warm-up: lazy loads, first batch
    started, scores = time.perf_counter(), []
    for i in range(0, len(items), batch_size):
        batch = items[i:i + batch_size]
        scores += [g.score for g in scorer.detail_batch([it["answer"] for it in batch],
                                                        [list(it["contexts"]) for it in batch])]
    return scores, time.perf_counter() - started


def scorer_metrics(scorer_name: str, items: Sequence[Mapping[str, Any]], batch_size: int = 64) -> dict[str, Any]:
    """Balanced accuracy at 0.5, ROC-AUC and answers/s of one scorer on labeled answers.

    Also ``by_kind``: per kind of answer, the share judged right (score >= 0.5 for grounded kinds, < 0.5 for the
    others), and ``per_item``: id, kind, label and score, for the artifact table.
    """
    if not items:
        raise DatasetError("no labeled answers to evaluate")
    scores, seconds = score_answers(scorer_name, items, batch_size)
    labels = [int(it["label"]) for it in items]
    metrics: dict[str, Any] = {"scorer": scorer_name, **classification_metrics(labels, scores),
                               "answers_per_s": len(items) / seconds if seconds else float("inf")}
    by_kind: dict[str, list[bool]] = {}
    for it, label, s in zip(items, labels, scores, strict=True):
        by_kind.setdefault(it["kind"], []).append((s >= THRESHOLD) == bool(label))
    metrics["by_kind"] = {kind: sum(right) / len(right) for kind, right in sorted(by_kind.items())}
    metrics["per_item"] = [{"id": it["id"], "doc_id": it.get("doc_id", ""), "kind": it["kind"], "label": label,
                            "score": s} for it, label, s in zip(items, labels, scores, strict=True)]
    return metrics
