"""The rag act of ``fabric demo --act rag``: cited answers over versioned documents, every answer scored for
groundedness, and an alert when answers stop being supported by their sources.

1. ``ingest``: the Python documentation pages (``pydoc_data.topics``) committed to ``lakefs://docs/main`` and
   embedded into Qdrant under the alias ``python-docs`` (``workloads/ingest_docs.py``'s code; again on the same
   commit, nothing to do).
2. ``serve``: ``configs/serve/rag.yaml``'s app: SmolLM2 on CPU through llm.serving's engine, the default scorer,
   API keys, the inference log.
3. ``ask``: "How does a with statement call __exit__?": the answer, its citations (chunk, source, quoted span)
   and its groundedness score.
4. ``traffic``: more questions from the evaluation set; the monitor's window of their answers.
5. ``faulty``: a second deployment of the same app whose LLM gets numbers wrong: an OpenAI-compatible stand-in
   that answers by quoting the best excerpt with one number (or a negation) changed. Its answers score low.
6. ``alert``: ``configs/monitor/rag.yaml``'s rules on the newest answers: ``groundedness_below`` fires.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fabric.demo.report import Story

__all__ = ["QUESTION", "SIZES", "run"]

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "How does a with statement call __exit__?"
PAGES = ["with", "context-managers", "for", "try", "exceptions", "raise", "while", "if", "integers", "numbers"]
#: (pages: None for all, questions of real traffic, answers of the faulty LLM, max_tokens) per size
SIZES = {"full": (None, 8, 12, 96), "quick": (PAGES, 3, 6, 48)}
_EXCERPT = re.compile(r"\[1\] \([^)]*\) (.*?)(?:\n\n\[2\] |\Z)", re.S)


def run(story: Story, quick: bool) -> dict[str, Any]:
    """Plays the act, adding each step to ``story``; returns the figures of ``fabric demo --act rag --json``."""
    pages, n_real, n_faulty, max_tokens = SIZES["quick" if quick else "full"]
    indexed = story.step("ingest", "versioned documents into Qdrant", _ingest, pages)
    key = secrets.token_urlsafe(16)
    url, cfg = story.step("serve", "serve the RAG app", _serve, key, max_tokens)
    first = story.step("ask", f"ask {QUESTION!r}", _ask, url, key)
    questions = _questions(indexed["docs"], n_real)
    before = story.step("traffic", "more questions; the answers' groundedness", _traffic, url, key, questions,
                        cfg.model)
    faulty = story.step("faulty", "an LLM that gets numbers wrong answers the same questions", _faulty, cfg, key,
                        _questions(indexed["docs"], n_faulty, seed=2))
    outcome = story.step("alert", "groundedness rules on the newest answers", _alert, cfg.model, n_faulty)
    story.note(f"groundedness report (HTML): {outcome['check']['html_path']}")
    return {"model": cfg.model, "data_commit": indexed["commit"], "collection": indexed["collection"],
            "answer": first["answer"], "citations": len(first["citations"]),
            "groundedness": (first["groundedness"] or {}).get("score"),
            "mean_groundedness_before": before, "planted_scores": faulty,
            "mean_groundedness_after": outcome["check"]["mean_groundedness"],
            "fired": [a["rule"] for a in outcome["alerts"]], "report_html": outcome["check"]["html_path"],
            "serving_url": url}


def _ingest(story: Story, pages: list[str] | None) -> dict[str, Any]:
    from fabric.workload import load_workload

    workload = load_workload("ingest_docs")
    settings = workload.load_config(ROOT / "configs" / "rag" / "python_docs.yaml",
                                    [f"doc_ids=[{','.join(pages)}]"] if pages else [])
    result = story.quietly(workload.run, settings)
    what = "already built, nothing to do" if result["skipped"] else \
        f"{result['documents']} pages, {result['chunks']} chunks embedded in {result['seconds']:.0f} s"
    story.evidence(f"{settings.uri} @ {result['commit'][:12]} -> {result['collection']} (alias "
                   f"{settings.alias}): {what}")
    return {**result, "docs": pages}


def _serve(story: Story, key: str, max_tokens: int) -> tuple[str, Any]:
    from fabric.runtime import _free_port
    from fabric.serve.app import run_app
    from rag.serving import RagServeConfig, build_rag_app

    cfg = RagServeConfig.from_yaml(ROOT / "configs" / "serve" / "rag.yaml", [
        f"port={_free_port()}", "inference_log.flush_s=0.5", f"limits.default_max_tokens={max_tokens}"])
    url = story.quietly(run_app, build_rag_app, cfg, f"{key}:predict")
    story.evidence(f"{url}/rag/query and {url}/v1/chat/completions (model {cfg.model}; {cfg.llm.model} on CPU, "
                   f"scorer {cfg.groundedness.scorer}, API key on, inference log on)")
    return url, cfg


def _post(url: str, key: str, question: str) -> dict[str, Any]:
    import requests

    response = requests.post(f"{url}/rag/query", json={"query": question}, timeout=600,
                             headers={"Authorization": f"Bearer {key}"})
    response.raise_for_status()
    return response.json()


def _ask(story: Story, url: str, key: str) -> dict[str, Any]:
    body = _post(url, key, QUESTION)
    grounded = body["groundedness"] or {}
    story.evidence(f"answer: {' '.join(body['answer'].split())[:150]}")
    for c in body["citations"][:3]:
        story.evidence(f"[{c['n']}] {c['source']} chars {c['start']}-{c['end']}: {' '.join(c['quote'].split())[:70]}")
    story.evidence(f"groundedness {grounded.get('score', 0):.2f} ({grounded.get('scorer')}; "
                   f"{'supported' if grounded.get('supported') else 'not supported'} by the cited chunks)")
    return body


def _questions(pages: list[str] | None, n: int, seed: int = 1) -> list[str]:
    from rag.evaluation import load_questions

    rows = [q for q in load_questions() if pages is None or q["doc_id"] in pages]
    return [q["question"] for q in random.Random(seed).sample(rows, min(n, len(rows)))]


def _traffic(story: Story, url: str, key: str, questions: list[str], model: str) -> float | None:
    scores = [(b["groundedness"] or {}).get("score") for b in (_post(url, key, q) for q in questions)]
    scored = [s for s in scores if s is not None]
    mean = sum(scored) / len(scored) if scored else None
    story.evidence(f"{len(questions)} questions answered, {len(scored)} scored; mean groundedness "
                   + ("-" if mean is None else f"{mean:.2f}"))
    return mean


def _faulty(story: Story, cfg: Any, key: str, questions: list[str]) -> list[float]:
    from ray import serve

    from rag.serving import build_rag_app

    llm = _FaultyLLM()
    faulty = cfg.model_copy(update={"name": "rag-faulty-llm", "llm": cfg.llm.model_copy(update={
        "url": f"{llm.url}/v1", "model": "faulty"}), "auth": cfg.auth.model_copy(update={"required": False})})
    try:
        story.quietly(serve.run, build_rag_app(faulty), name=faulty.name, route_prefix="/faulty")
        url = f"http://{cfg.host}:{cfg.port}/faulty"
        answers = [_post(url, key, q) for q in questions]
    finally:
        serve.delete(faulty.name)
        llm.close()
    scores = [b["groundedness"]["score"] for b in answers if b["groundedness"]]
    planted = next((b for b in answers if b["groundedness"]), None)
    if planted:
        story.evidence(f"e.g. {' '.join(planted['answer'].split())[:120]} -> groundedness "
                       f"{planted['groundedness']['score']:.2f}")
    story.evidence(f"{len(answers)} answers, mean groundedness {sum(scores) / max(len(scores), 1):.2f}")
    time.sleep(1.5)  # the inference log flushes every 0.5 s
    return scores


def _alert(story: Story, model: str, window: int) -> dict[str, Any]:
    from fabric.monitor.alerts import MonitorSpec, run_spec

    spec = MonitorSpec.from_yaml(ROOT / "configs" / "monitor" / "rag.yaml", [
        f"model={model}", f"check.last={window}", f"check.min_rows={min(window, 5)}"])
    outcome = story.quietly(run_spec, spec)
    check = outcome["check"]
    story.evidence(f"last {window} answers: mean groundedness {check['mean_groundedness']:.2f}, "
                   f"{check['ungrounded_share']:.0%} under 0.5")
    for alert in outcome["alerts"]:
        story.evidence(f"alert {alert['rule']}: {alert['message']}")
    if outcome["suppressed"]:
        story.evidence(f"in cool-down (fired earlier): {', '.join(outcome['suppressed'])}")
    return outcome


class _FaultyLLM:
    """An OpenAI-compatible chat endpoint on loopback that answers from the prompt's first excerpt with one fact
    changed (:func:`rag.claims.perturb`: a number, else a negation): a model that reads its sources wrong."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="faulty-llm").start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def planted_answer(prompt: str, rng: random.Random) -> str:
    """A sentence of the prompt's first excerpt with a number changed (else a negation flipped) and cited [1]."""
    from rag.claims import perturb
    from rag.groundedness import split_sentences

    found = _EXCERPT.search(prompt)
    text = found.group(1) if found else prompt
    sentences = [" ".join(text[a:b].split()) for a, b in split_sentences(text)]
    for kind in ("number", "negation"):
        for sentence in sentences:
            changed = perturb(sentence, kind, rng) if len(sentence.split()) >= 5 else None
            if changed:
                return f"{changed} [1]"
    return "Python 2 always calls it 7 times [1]."


def _handler() -> type[BaseHTTPRequestHandler]:
    rng = random.Random(0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API; /v1/models is the gateway's health check
            self._json({"object": "list", "data": [{"id": "faulty", "object": "model", "owned_by": "demo"}]})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            prompt = "\n".join(m.get("content") or "" for m in body.get("messages", []))
            answer = planted_answer(prompt, rng)
            self._json({"id": f"chatcmpl-{secrets.token_hex(6)}", "object": "chat.completion",
                        "created": int(time.time()), "model": body.get("model", "faulty"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 0, "completion_tokens": len(answer.split()),
                                  "total_tokens": len(answer.split())}})

        def _json(self, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
