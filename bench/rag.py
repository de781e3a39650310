"""End-to-end latency and requests/s of the RAG app's ``POST /rag/query`` on the demo corpus, with the retrieval,
generation and scoring times of the same requests beside them; each scorer's answers/s; retrieval hit@5 and MRR.

    python bench/rag.py [--requests 8] [--max-tokens 48]

In one run, in a throw-away ``FABRIC_HOME`` on an embedded Ray with 2 CPUs:

1. ingest: the Python documentation pages (``pydoc_data.topics``, the demo corpus) committed to the local data
   store and embedded into Qdrant local mode, dense + keyword vectors, as ``configs/rag/python_docs.yaml`` does;
2. retrieval quality: page hit@1/5/10 and MRR of dense and hybrid retrieval on the 240 questions of
   ``rag/data/python_docs_questions.jsonl`` (the question set of ``workloads/evaluate_rag.py``);
3. scorers: answers/s of ``lexical`` and of the ``default`` scorer (``nli`` with the shipped weights of
   ``rag/models/groundedness``, or lexical in a checkout without them) on 3-sentence answers over 5 contexts of
   about 200 words each, batches of 64;
4. serving: ``configs/serve/rag.yaml``'s app (SmolLM2-135M through llm.serving's transformers engine, the default
   scorer, API key, inference log and traces on), ``--requests`` questions from the question set sent one at a
   time, then 4 clients at once sending ``--requests`` each; end-to-end p50/p99 and requests/s measured by the
   client (``requests``), and each step's p50 from the response's ``timings_ms`` (the gateway's own clock).

``overhead_p50`` is (retrieval p50 + scoring p50) / generation p50 at one client. Targets: under 0.15; both
scorers at least 50 answers/s; hybrid page hit@5 at least 0.9.
The client shares the machine's 2 CPUs with the server. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# `python bench/rag.py` puts bench/ first on the import path, where this file would shadow the rag package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
HOME = tempfile.mkdtemp(prefix="fabric-bench-rag-")
os.environ["FABRIC_HOME"] = HOME  # never touch the user's runs or collections
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("QDRANT_URL", None)

ROOT = Path(__file__).resolve().parents[1]
ALIAS, KEY, MODEL = "bench-docs", "bench-key", "python-docs-rag"
TARGET_OVERHEAD, TARGET_ANSWERS_PER_S, TARGET_HIT5 = 0.15, 50.0, 0.9
WORDS_PER_CONTEXT, CONTEXTS, SCORED_ANSWERS = 200, 5, 256


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_index() -> dict:
    from rag.ingest import IngestSettings, ingest

    started = time.perf_counter()
    result = ingest(IngestSettings(alias=ALIAS, hybrid=True, actors=1, actor_cpus=1.0))
    result["seconds"] = time.perf_counter() - started
    print(f"ingest: {result['chunks']} chunks of the demo corpus in {result['seconds']:.0f} s", flush=True)
    return result


def retrieval(questions: list[dict]) -> dict:
    from rag.evaluation import retrieval_metrics
    from rag.index import Retriever

    out = {}
    for mode in ("dense", "hybrid"):
        metrics = retrieval_metrics(Retriever(ALIAS, hybrid=mode == "hybrid", refresh_interval_s=0), questions)
        out[mode] = {k: metrics[k] for k in ("page_hit_at_1", "page_hit_at_5", "page_hit_at_10", "page_mrr")}
        print(f"retrieval {mode:<6}  hit@1 {out[mode]['page_hit_at_1']:.3f}  hit@5 {out[mode]['page_hit_at_5']:.3f}"
              f"  MRR {out[mode]['page_mrr']:.3f}  ({metrics['n']} questions)", flush=True)
    return out


def scoring_items(seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """``SCORED_ANSWERS`` answers of 3 sentences, each over 5 contexts of about 200 words from one page; two
    sentences come from the contexts and one has its first number or word changed (so a real mix to judge)."""
    from rag.corpus import python_docs
    from rag.groundedness import split_sentences

    rng = random.Random(seed)
    pages = [t for t in python_docs()["text"] if len(t.split()) >= WORDS_PER_CONTEXT * CONTEXTS]
    answers, contexts = [], []
    while len(answers) < SCORED_ANSWERS:
        words = rng.choice(pages).split()
        ctx = [" ".join(words[i * WORDS_PER_CONTEXT:(i + 1) * WORDS_PER_CONTEXT]) for i in range(CONTEXTS)]
        sentences = [c[s:e] for c in ctx for s, e in split_sentences(c) if 6 <= len(c[s:e].split()) <= 40]
        if len(sentences) < 3:
            continue
        picked = rng.sample(sentences, 3)
        tokens = picked[2].split()
        tokens[len(tokens) // 2] = "17" if not tokens[len(tokens) // 2].isdigit() else "42"
        answers.append(" ".join([picked[0], picked[1], " ".join(tokens)]))
        contexts.append(ctx)
    return answers, contexts


def scorer_speed(name: str, scorer, answers: list[str], contexts: list[list[str]], batch: int = 64) -> float:
    scorer.detail_batch(answers[:2], contexts[:2])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(answers), batch):
        scorer.detail_batch(answers[i:i + batch], contexts[i:i + batch])
    rate = len(answers) / (time.perf_counter() - started)
    print(f"scorer {name:<8} {rate:8.1f} answers/s  ({len(answers)} answers, 3 sentences, {CONTEXTS} contexts of "
          f"~{WORDS_PER_CONTEXT} words)", flush=True)
    return rate


def serve_app(max_tokens: int) -> str:
    from fabric.runtime import setup_mlflow
    from fabric.serve.app import run_app
    from rag.serving import RagServeConfig, build_rag_app

    setup_mlflow()
    cfg = RagServeConfig.from_yaml(ROOT / "configs" / "serve" / "rag.yaml", [
        "name=bench-rag", "host=127.0.0.1", f"port={free_port()}", f"index.alias={ALIAS}",
        f"limits.default_max_tokens={max_tokens}"])
    return run_app(build_rag_app, cfg, f"{KEY}:predict")


def ask(url: str, question: str) -> tuple[float, dict]:
    import requests

    started = time.perf_counter()
    response = requests.post(url + "/rag/query", json={"query": question}, timeout=600,
                             headers={"Authorization": f"Bearer {KEY}"})
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return seconds, response.json()


def load(url: str, questions: list[str], clients: int) -> dict:
    """``clients`` threads, each asking every question of ``questions`` in turn."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answered = list(pool.map(lambda q: ask(url, q), [q for q in questions for _ in range(clients)]))
    wall = time.perf_counter() - started
    latencies = sorted(s for s, _ in answered)
    steps = {step: statistics.median(b["timings_ms"][step] or 0.0 for _, b in answered)
             for step in ("retrieval", "generation", "scoring")}
    grounded = [b["groundedness"]["score"] for _, b in answered if b["groundedness"]]
    out = {"requests": len(answered), "rps": len(answered) / wall, "p50_ms": 1000 * statistics.median(latencies),
           "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
           **{f"{step}_p50_ms": ms for step, ms in steps.items()},
           "cited": sum(bool(b["citations"]) for _, b in answered), "mean_groundedness": statistics.fmean(grounded)
           if grounded else None}
    print(f"serve {clients} client(s): {out['rps']:.2f} req/s, p50 {out['p50_ms']:.0f} ms, p99 {out['p99_ms']:.0f} ms"
          f" | retrieval p50 {steps['retrieval']:.0f} ms, generation p50 {steps['generation']:.0f} ms, scoring p50 "
          f"{steps['scoring']:.1f} ms | {out['cited']}/{out['requests']} cited", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="questions per client at each concurrency")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens each answer may have")
    args = parser.parse_args()

    import ray
    from ray import serve

    from fabric.runtime import RayConfig, init_ray
    from rag.evaluation import load_questions
    from rag.groundedness import get_scorer
    from rag.lexical import LexicalScorer

    questions = load_questions()
    answers, contexts = scoring_items()
    default = get_scorer("default")
    print(f"default scorer: {default.name}", flush=True)
    speeds = {"lexical": scorer_speed("lexical", LexicalScorer(), answers, contexts),
              "default": scorer_speed(default.name, default, answers, contexts)}
    init_ray(RayConfig(num_cpus=2), log_to_driver=False)
    try:
        indexed = build_index()
        quality = retrieval(questions)
        url = serve_app(args.max_tokens)
        asked = [q["question"] for q in random.Random(1).sample(questions, args.requests)]
        ask(url, asked[0])  # warm-up: first generation, first scorer call
        one, four = load(url, asked, 1), load(url, asked, 4)
    finally:
        serve.shutdown()
        ray.shutdown()
    overhead = (one["retrieval_p50_ms"] + one["scoring_p50_ms"]) / one["generation_p50_ms"]
    figures = {
        "bench": "rag", "chunks": indexed["chunks"], "ingest_s": round(indexed["seconds"], 1),
        **{f"{k}_1": round(v, 3) for k, v in one.items()}, **{f"{k}_4": round(v, 3) for k, v in four.items()},
        "overhead_p50": round(overhead, 4), "overhead_target": TARGET_OVERHEAD,
        "lexical_answers_per_s": round(speeds["lexical"], 1), "default_scorer": default.name,
        "default_answers_per_s": round(speeds["default"], 1),
        "answers_per_s_target": TARGET_ANSWERS_PER_S,
        **{f"{mode}_{k}": round(v, 4) for mode, m in quality.items() for k, v in m.items()},
        "hit5_target": TARGET_HIT5,
        "meets_targets": overhead < TARGET_OVERHEAD and min(speeds.values()) >= TARGET_ANSWERS_PER_S
        and quality["hybrid"]["page_hit_at_5"] >= TARGET_HIT5,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
