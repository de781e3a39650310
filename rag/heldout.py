"""Groundedness scorers judged on labelled pairs they never saw, domain by domain, against a naive baseline.

The pairs are :mod:`rag.labelled`'s (``load_pairs``): a ``claim``, its evidence ``context``, a ``label`` (1
supported, 0 not), a ``source`` dataset, a ``domain`` (``qa_dialogue``, ``summary``, ``claim``) and a ``split``
by document. :func:`heldout_sets` takes one split (``held_out``) by domain, capped per source so that one big
source cannot drown the rest, and adds the project's own hand-written RAG answers (``rag.evaluation.load_answers``,
never trained on) to ``qa_dialogue`` as source ``rag_answers``. :func:`evaluate` scores each set with each scorer
through ``detail_batch``, the call answers are scored with, and reports balanced accuracy at 0.5 (every scorer is
calibrated so that 0.5 is its threshold), ROC-AUC, the F1 of the *unsupported* class and answers/s per domain
(pooled rows) and per source. The headline, ``mean_balanced_accuracy``, is the plain mean over the domains, so a
domain of 10 rows weighs as much as one of 10,000.

:class:`OverlapScorer` is the naive baseline a real scorer must beat: the share of the claim's content words found
in its best single context, with a logistic calibration fitted on calibration pairs.

Example (``fabric run evaluate_groundedness --config configs/rag/evaluate_groundedness.yaml`` does all of it and
logs to MLflow):
    >>> from rag.groundedness import get_scorer
    >>> from rag.labelled import load_pairs
    >>> _, _, pairs = load_pairs("lakefs://groundedness/main/pairs.parquet")
    >>> overlap = fit_overlap(pairs)
    >>> results = evaluate({"lexical": get_scorer("lexical"), "overlap": overlap},
    ...                    heldout_sets(pairs, answers=load_answers(), max_per_source=500))
    >>> print(format_table(results))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rag.groundedness import Groundedness, SentenceSupport, aggregate

__all__ = ["DOMAINS", "RAG_ANSWERS", "Item", "OverlapScorer", "calibration_pairs", "evaluate", "fit_overlap",
           "format_table", "heldout_sets", "sample_per_source", "sets_hash"]

DOMAINS = ("qa_dialogue", "summary", "claim")
RAG_ANSWERS = "rag_answers"
THRESHOLD = 0.5
_TOKEN = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this that these "
    "those there their they them he she his her we our you your i me my not no do does did has have had will would "
    "can could should may might shall so than then also which who whom what when where how about into over".split())


@dataclass(frozen=True)
class Item:
    """One labelled thing to score: a claim (or whole answer), its contexts, the label (1 supported) and where
    it comes from."""

    claim: str
    contexts: tuple[str, ...]
    label: int
    source: str
    doc_id: str = ""


def _content(text: str) -> set[str]:
    return {t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS}


class OverlapScorer:
    """The naive baseline: the share of the claim's content words present in its best single context.

    The whole claim is one unit (no sentence split, no number, entity or negation check); content words are the
    lowercased alphanumeric tokens minus a short stopword list. ``calibration`` (slope, intercept) maps the share
    through a logistic so that 0.5 is a fair threshold; :meth:`fit` sets it from labelled pairs (the default,
    unfitted, puts 0.5 at a share of 0.75).
    """

    name = "overlap"

    def __init__(self, calibration: tuple[float, float] = (8.0, -6.0)):
        self.calibration = calibration

    @staticmethod
    def share(claim: str, contexts: Sequence[str]) -> tuple[float, int | None]:
        """The best context's share of the claim's content words, and that context's index (None when no context
        shares a word). A claim with no content words claims nothing: share 1.0."""
        words = _content(claim)
        if not words:
            return 1.0, None
        found = [len(words & _content(c)) for c in contexts]
        best = max(range(len(found)), key=found.__getitem__, default=None)
        return (found[best] / len(words), best) if best is not None and found[best] else (0.0, None)

    def fit(self, claims: Sequence[str], contexts: Sequence[Sequence[str]], labels: Sequence[int]) -> OverlapScorer:
        """Fits the calibration on labelled pairs (never the evaluation set); returns self."""
        from rag.lexical import fit_calibration

        shares = [self.share(claim, ctx)[0] for claim, ctx in zip(claims, contexts, strict=True)]
        self.calibration = fit_calibration(shares, [int(v) for v in labels])
        return self

    def detail_batch(self, answers: list[str], contexts: list[list[str]]) -> list[Groundedness]:
        """One :class:`Groundedness` per answer, its single "sentence" being the whole answer."""
        slope, intercept = self.calibration
        out = []
        for answer, ctx in zip(answers, contexts, strict=True):
            share, best = self.share(answer, ctx)
            z = slope * share + intercept
            value = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
            out.append(aggregate([SentenceSupport(answer, 0, len(answer), value, best)], self.name))
        return out


def sample_per_source(frame: Any, max_per_source: int | None, seed: int = 0) -> Any:
    """At most ``max_per_source`` rows of each source, a seeded sample stratified by label (every row when None)."""
    import pandas as pd

    if max_per_source is None:
        return frame
    parts = []
    for _, rows in frame.groupby("source", sort=True):
        if len(rows) <= max_per_source:
            parts.append(rows)
            continue
        counts = rows["label"].value_counts().sort_index()
        quota = (counts * max_per_source / len(rows)).astype(int)
        leftover = max_per_source - int(quota.sum())  # to the labels with the largest remainders
        for label in (counts * max_per_source / len(rows) - quota).sort_values(ascending=False).index[:leftover]:
            quota[label] += 1
        parts += [rows[rows["label"] == label].sample(int(n), random_state=seed) for label, n in quota.items()]
    return pd.concat(parts).sort_index() if parts else frame.iloc[:0]


def calibration_pairs(pairs: Any, max_per_source: int | None = None, seed: int = 0) -> Any:
    """The ``calibration`` split's rows, minus any of a document that also has ``held_out`` rows (a defence
    against a leaky split: nothing judged later may be fitted on), capped per source."""
    held = set(zip(pairs.loc[pairs["split"] == "held_out", "source"], pairs.loc[pairs["split"] == "held_out",
                                                                                  "doc_id"], strict=True))
    rows = pairs[pairs["split"] == "calibration"]
    keep = [(s, d) not in held for s, d in zip(rows["source"], rows["doc_id"], strict=True)]
    return sample_per_source(rows[keep], max_per_source, seed)


def fit_overlap(pairs: Any, max_per_source: int | None = None, seed: int = 0) -> OverlapScorer:
    """An :class:`OverlapScorer` calibrated on :func:`calibration_pairs`."""
    rows = calibration_pairs(pairs, max_per_source, seed)
    return OverlapScorer().fit(list(rows["claim"]), [[c] for c in rows["context"]], list(rows["label"]))


def heldout_sets(pairs: Any, answers: Sequence[Mapping[str, Any]] | None = None, split: str = "held_out",
                 max_per_source: int | None = None, seed: int = 0) -> dict[str, list[Item]]:
    """The rows of ``split`` by domain (at most ``max_per_source`` per source, see :func:`sample_per_source`),
    plus ``answers`` (``load_answers()`` rows: answer, contexts, label) in ``qa_dialogue`` as ``rag_answers``."""
    import pandas as pd

    rows = sample_per_source(pairs[pairs["split"] == split], max_per_source, seed)
    sets: dict[str, list[Item]] = {}
    for domain in [*DOMAINS, *sorted(set(rows["domain"]) - set(DOMAINS))]:
        part = rows[rows["domain"] == domain]
        sets[domain] = [Item(str(r.claim), (str(r.context),), int(r.label), str(r.source), str(r.doc_id))
                        for r in part.itertuples(index=False)]
    if answers:
        frame = pd.DataFrame({"source": RAG_ANSWERS, "label": [int(a["label"]) for a in answers]})
        picked = sample_per_source(frame, max_per_source, seed).index
        sets["qa_dialogue"] += [Item(answers[i]["answer"], tuple(answers[i]["contexts"]), int(answers[i]["label"]),
                                     RAG_ANSWERS, str(answers[i].get("doc_id", ""))) for i in picked]
    return {domain: items for domain, items in sets.items() if items}


def sets_hash(sets: Mapping[str, Sequence[Item]]) -> str:
    """A short hash of the sets' rows (domain, source, claim, contexts, label), so that two evaluations can tell
    whether they judged the same rows."""
    import hashlib

    digest = hashlib.sha256()
    for domain, items in sets.items():
        for it in items:
            digest.update("\x1f".join([domain, it.source, it.claim, *it.contexts, str(it.label)]).encode() + b"\x1e")
    return digest.hexdigest()[:16]


def _metrics(labels: list[int], scores: list[float], seconds: float) -> dict[str, Any]:
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    predicted = [int(s >= THRESHOLD) for s in scores]
    both = len(set(labels)) == 2
    return {"n": len(labels), "supported": sum(labels),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)) if both else None,
            "roc_auc": float(roc_auc_score(labels, scores)) if both else None,
            "f1_unsupported": float(f1_score(labels, predicted, pos_label=0, zero_division=0)),
            "answers_per_s": len(labels) / seconds if seconds > 0 else float("inf")}


def _score(scorer: Any, items: list[Item], batch_size: int) -> tuple[list[float], float]:
    started, scores = time.perf_counter(), []
    for i in range(0, len(items), batch_size):
        batch = items[i:i + batch_size]
        results = scorer.detail_batch([it.claim for it in batch], [list(it.contexts) for it in batch])
        scores += [g.score for g in results]
    return scores, time.perf_counter() - started


def _forget_contexts() -> None:
    """Empties rag.lexical's per-process caches of analysed contexts and sentences (nli reads them too), so that no
    scorer is timed on contexts a scorer before it already analysed."""
    import rag.lexical

    for name in ("_context", "_analyse"):
        cached = getattr(rag.lexical, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def evaluate(scorers: Mapping[str, Any], sets: Mapping[str, Sequence[Item]], batch_size: int = 64) -> dict[str, Any]:
    """Each scorer on each domain (pooled rows) and source: balanced accuracy at 0.5, ROC-AUC, F1 of the
    unsupported class, n and answers/s (the wall time of its ``detail_batch`` calls, after one warm-up call);
    per scorer also ``mean_balanced_accuracy`` (the mean over domains) and ``min_domain_balanced_accuracy``.
    Metrics needing both classes are None on a set that has one."""
    results: dict[str, Any] = {}
    done: dict[int, str] = {}
    for name, scorer in scorers.items():
        if id(scorer) in done:  # "default" resolved to a scorer also asked for by name: same figures, scored once
            results[name] = results[done[id(scorer)]]
            continue
        done[id(scorer)] = name
        _forget_contexts()
        first = next((items[0] for items in sets.values() if items), None)
        if first is not None:  # lazy loads and first-call costs stay out of the timings
            scorer.detail_batch([first.claim], [list(first.contexts)])
        domains, sources = {}, {}
        for domain, items in sets.items():
            labels, scores, seconds = [], [], 0.0
            for source in dict.fromkeys(it.source for it in items):
                part = [it for it in items if it.source == source]
                got, spent = _score(scorer, part, batch_size)
                sources[source] = {"domain": domain, **_metrics([it.label for it in part], got, spent)}
                labels, scores, seconds = labels + [it.label for it in part], scores + got, seconds + spent
            domains[domain] = _metrics(labels, scores, seconds)
        accuracies = [m["balanced_accuracy"] for m in domains.values() if m["balanced_accuracy"] is not None]
        results[name] = {"scorer": getattr(scorer, "name", name), "domains": domains, "sources": sources,
                         "mean_balanced_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
                         "min_domain_balanced_accuracy": min(accuracies) if accuracies else None}
    return results


def format_table(results: Mapping[str, Any]) -> str:
    """A plain-text table: a row per domain (its sources indented under it), then the mean and minimum; a column
    group per scorer (balanced accuracy, ROC-AUC, F1 of unsupported, answers/s)."""
    def cell(value: Any, width: int, digits: int = 3) -> str:
        text = "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        return f"{text:>{width}}"

    names = list(results)
    first = next(iter(results.values()), {"domains": {}, "sources": {}})
    titles = [n if results[n]["scorer"] == n else f"{n} ({results[n]['scorer']})" for n in names]
    head = f"{'':<22}{'n':>7}" + "".join(f" | {title:^30}" for title in titles)
    lines = [head, f"{'':<29}" + " | {:>7}{:>7}{:>7}{:>9}".format("BA", "AUC", "F1-0", "ans/s") * len(names)]
    for domain, m in first["domains"].items():
        rows = [(domain, m["n"], [results[n]["domains"][domain] for n in names])]
        rows += [(f"  {source}", s["n"], [results[n]["sources"][source] for n in names])
                 for source, s in first["sources"].items() if s["domain"] == domain]
        for label, count, cells in rows:
            lines.append(f"{label:<22}{count:>7}" + "".join(
                f" | {cell(c['balanced_accuracy'], 7)}{cell(c['roc_auc'], 7)}{cell(c['f1_unsupported'], 7)}"
                f"{cell(c['answers_per_s'], 9, 0)}" for c in cells))
    for key, label in (("mean_balanced_accuracy", "mean over domains"), ("min_domain_balanced_accuracy", "min")):
        lines.append(f"{label:<29}" + "".join(f" | {cell(results[n][key], 7)}{'':>23}" for n in names))
    return "\n".join(lines)
