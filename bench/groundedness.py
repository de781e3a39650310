"""Groundedness scorers on held-out human-labelled pairs, by domain, against a naive overlap baseline, and the
scorers' answers/s on RAG-sized and on long contexts.

    python bench/groundedness.py [--max-per-source 500] [--seconds 2]

In one run, in a throw-away ``FABRIC_HOME`` (so ``default`` is what a fresh checkout gets: ``nli`` with the
shipped weights when the package has them, else ``lexical``; its resolved name is printed):

1. quality: :func:`rag.labelled.build_pairs` (the table ``prepare_groundedness`` commits), the ``overlap``
   baseline calibrated on its ``calibration`` split, then ``default``, ``lexical`` and ``overlap`` on the
   ``held_out`` split (at most ``--max-per-source`` rows per source, stratified by label) plus the 561 hand-written
   RAG answers, through :func:`rag.heldout.evaluate`: balanced accuracy at 0.5 per domain and its mean over the
   three domains (``qa_dialogue``, ``summary``, ``claim``), so VitaminC's size cannot carry it;
2. speed, each figure over at least ``--seconds`` of scoring after a warm-up call:
   * ``rag``: answers of three sentences (two copied from the contexts, one with a word changed) over four
     800-character contexts cut from distinct places of the Python documentation pages, batches of 64;
   * ``long_news``: three-sentence answers (summary sentences of SummEdits) over one held-out news article
     (390 to 900 words), and ``long_transcript``: the same over the 1,500-word podcast transcript; one answer
     per call with rag.lexical's caches of analysed contexts and sentences emptied first, as when every answer
     brings a document never seen before.

Targets: mean balanced accuracy over domains at least 0.75, every domain at least 0.65, at least 0.10 above the
overlap baseline's mean, and at least 50 answers/s in each speed case. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

# `python bench/groundedness.py` puts bench/ first on the import path, where bench/rag.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ["FABRIC_HOME"] = tempfile.mkdtemp(prefix="fabric-bench-groundedness-")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MEAN_TARGET, MIN_DOMAIN_TARGET, MARGIN_TARGET, SPEED_TARGET = 0.75, 0.65, 0.10, 50.0
CONTEXT_CHARS, CONTEXTS, BATCH = 800, 4, 64
TRANSCRIPT = "summedits:podcast/spotify_podcast_10"


def forget_contexts() -> None:
    """Empties rag.lexical's caches of analysed contexts and sentences (the word-level ones stay: vocabulary)."""
    import rag.lexical

    for name in ("_context", "_analyse"):
        cached = getattr(rag.lexical, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def rag_items(n: int = 2048, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """``n`` three-sentence answers, each over four 800-character contexts from one documentation page."""
    from rag.corpus import python_docs
    from rag.groundedness import split_sentences

    rng = random.Random(seed)
    pages = [t for t in python_docs()["text"] if len(t) >= CONTEXT_CHARS * CONTEXTS]
    answers, contexts = [], []
    while len(answers) < n:
        text = rng.choice(pages)
        start = rng.randrange(len(text) - CONTEXT_CHARS * CONTEXTS + 1)
        ctx = [text[start + i * CONTEXT_CHARS:start + (i + 1) * CONTEXT_CHARS] for i in range(CONTEXTS)]
        sentences = [c[a:b] for c in ctx for a, b in split_sentences(c) if 6 <= len(c[a:b].split()) <= 40]
        if len(sentences) < 3:
            continue
        picked = rng.sample(sentences, 3)
        words = picked[2].split()
        words[len(words) // 2] = "17" if not words[len(words) // 2].isdigit() else "42"
        answers.append(" ".join([picked[0], picked[1], " ".join(words)]))
        contexts.append(ctx)
    return answers, contexts


def long_items(pairs, doc_ids: list[str], n: int = 256, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """``n`` answers of three summary sentences of a document, each over that whole document."""
    rng = random.Random(seed)
    rows = pairs[pairs["doc_id"].isin(doc_ids)]
    by_doc = {doc: (group["context"].iloc[0], list(group["claim"])) for doc, group in rows.groupby("doc_id")}
    answers, contexts = [], []
    for i in range(n):
        document, claims = by_doc[doc_ids[i % len(doc_ids)]]
        answers.append(" ".join(rng.sample(claims, min(3, len(claims)))))
        contexts.append([document])
    return answers, contexts


def speed(scorer, answers: list[str], contexts: list[list[str]], seconds: float, batch: int, cold: bool) -> float:
    """Answers/s over at least ``seconds`` of ``detail_batch`` calls (going round the items again if needed)."""
    forget_contexts()
    scorer.detail_batch(answers[:1], contexts[:1])  # warm-up: lazy loads
    forget_contexts()
    done, spent, i = 0, 0.0, 0
    while spent < seconds:
        if cold:
            forget_contexts()
        if i >= len(answers):
            i = 0
            forget_contexts()
        started = time.perf_counter()
        scorer.detail_batch(answers[i:i + batch], contexts[i:i + batch])
        spent += time.perf_counter() - started
        done += len(answers[i:i + batch])
        i += batch
    return done / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-per-source", type=int, default=500, help="held-out rows per source (and in the fit)")
    parser.add_argument("--seconds", type=float, default=2.0, help="least scoring time of each speed figure")
    args = parser.parse_args()
    began = time.perf_counter()

    from rag.evaluation import load_answers
    from rag.groundedness import get_scorer
    from rag.heldout import evaluate, fit_overlap, format_table, heldout_sets
    from rag.labelled import build_pairs

    pairs = build_pairs()
    default = get_scorer("default")
    print(f"default scorer: {default.name}", flush=True)
    scorers = {"default": default, "lexical": get_scorer("lexical"),
               "overlap": fit_overlap(pairs, args.max_per_source)}
    sets = heldout_sets(pairs, load_answers(), "held_out", args.max_per_source)
    results = evaluate(scorers, sets)
    print(format_table(results), flush=True)

    held = pairs[(pairs["split"] == "held_out") & (pairs["source"] == "summedits")]
    news = sorted(d for d in held["doc_id"].unique() if d.startswith("summedits:news/"))
    cases = {"rag": (rag_items(), BATCH, False), "long_news": (long_items(pairs, news), 1, True),
             "long_transcript": (long_items(pairs, [TRANSCRIPT]), 1, True)}
    speeds = {}
    for name, scorer in {"default": default, "lexical": get_scorer("lexical")}.items():
        if name != "default" and scorer is default:
            speeds[name] = speeds["default"]
            continue
        speeds[name] = {case: speed(scorer, *items, args.seconds, batch, cold)
                        for case, (items, batch, cold) in cases.items()}
        print(f"speed {name} ({scorer.name}): " + ", ".join(f"{case} {rate:.1f} answers/s"
                                                          for case, rate in speeds[name].items()), flush=True)

    r, overlap = results["default"], results["overlap"]["mean_balanced_accuracy"]
    margin = r["mean_balanced_accuracy"] - overlap
    figures = {
        "bench": "groundedness", "default_scorer": default.name, "max_per_source": args.max_per_source,
        **{f"balanced_accuracy_{d}": round(m["balanced_accuracy"], 4) for d, m in r["domains"].items()},
        "mean_balanced_accuracy": round(r["mean_balanced_accuracy"], 4),
        "min_domain_balanced_accuracy": round(r["min_domain_balanced_accuracy"], 4),
        "lexical_mean_balanced_accuracy": round(results["lexical"]["mean_balanced_accuracy"], 4),
        "overlap_mean_balanced_accuracy": round(overlap, 4), "margin_over_overlap": round(margin, 4),
        **{f"answers_per_s_{case}": round(rate, 1) for case, rate in speeds["default"].items()},
        **{f"lexical_answers_per_s_{case}": round(rate, 1) for case, rate in speeds["lexical"].items()},
        "mean_target": MEAN_TARGET, "min_domain_target": MIN_DOMAIN_TARGET, "margin_target": MARGIN_TARGET,
        "answers_per_s_target": SPEED_TARGET,
        "meets_targets": r["mean_balanced_accuracy"] >= MEAN_TARGET
        and r["min_domain_balanced_accuracy"] >= MIN_DOMAIN_TARGET and margin >= MARGIN_TARGET
        and min(speeds["default"].values()) >= SPEED_TARGET,
        "seconds": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
