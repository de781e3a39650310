"""What the RAG gateway records about each answer, none of it on the request's critical path or able to fail it.

* Prometheus metrics (``ray.serve.metrics``, on each node's metrics endpoint): ``fabric_rag_requests`` (route,
  status), ``fabric_rag_retrieval_ms``, ``fabric_rag_generation_ms``, ``fabric_rag_scoring_ms``,
  ``fabric_rag_groundedness`` (scorer), ``fabric_rag_not_covered`` (questions nothing relevant was found for)
  and ``fabric_rag_guardrail`` (answers by the guardrail's action: none, flag, refuse, quote).
* The inference log (:class:`fabric.serve.inference_log.InferenceLog`), model = the app's ``model`` name,
  version = the data commit, one row per answer: ``out.query``, ``out.chunk_ids`` (JSON list), ``out.answer``,
  ``out.groundedness`` (NaN when nothing was retrieved), ``out.covered``, ``out.collection``, ``out.scorer``,
  ``out.guardrail`` (the action; empty for ``/rag/retrieve``), ``out.unsupported`` (JSON list of the unsupported
  sentences: text, start, end, score) and ``out.original_answer`` (the LLM's own answer when the guardrail
  replaced it, which only this log keeps; else empty); the monitor's rules (a windowed mean of ``groundedness``
  below X, a share below 0.5 above Y, a share of guarded answers above Z) read it.
* MLflow traces: a CHAIN span per request with RETRIEVER, LLM and EVALUATOR spans under it, built after the answer
  from the recorded times on a background thread (a full queue drops traces rather than slow requests).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Telemetry", "Timings", "answer_outputs"]

log = logging.getLogger("ray.serve")
MS_BOUNDARIES = [5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
SCORE_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
TRACE_QUEUE = 256


@dataclass
class Timings:
    """Wall-clock stamps (``time.time_ns``) of one request's steps, for its trace and metrics."""

    start: int = field(default_factory=time.time_ns)
    retrieved: int | None = None
    generated: int | None = None
    scored: int | None = None

    def ms(self, a: int | None, b: int | None) -> float | None:
        return (b - a) / 1e6 if a is not None and b is not None else None

    def steps(self) -> dict[str, float | None]:
        """Milliseconds of each step (None for a step not run): what ``POST /rag/query`` reports."""
        return {"retrieval": self.ms(self.start, self.retrieved), "generation": self.ms(self.retrieved, self.generated),
                "scoring": self.ms(self.generated, self.scored)}


def answer_outputs(query: str, result: dict[str, Any], logged: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """The output columns of an answer's inference log row (what :mod:`rag.monitoring` reads back); ``logged`` is
    what only the log gets of an answer the guardrail replaced (``{"answer": its own text, "guardrail": the full
    verdict}``)."""
    detail = result.get("groundedness") or {}
    score = detail.get("score")
    verdict = (logged or {}).get("guardrail") or result.get("guardrail") or {}
    return {"query": [query], "chunk_ids": [json.dumps([c["chunk_id"] for c in result["citations"]])],
            "answer": [result["answer"]], "groundedness": [math.nan if score is None else float(score)],
            "covered": [bool(result.get("covered", result["citations"]))],
            "collection": [result.get("collection") or ""], "scorer": [detail.get("scorer") or ""],
            "guardrail": [verdict.get("action") or ""], "unsupported": [json.dumps(verdict.get("unsupported") or [])],
            "original_answer": [(logged or {}).get("answer") or ""]}


class Telemetry:
    """Metrics, inference log rows and traces of one gateway replica."""

    def __init__(self, app: str, model: str, inference_log: dict[str, Any] | None, trace_sample_rate: float,
                 tracking_uri: str | None):
        from ray.serve.metrics import Counter, Histogram

        self.app, self.model, self.trace_sample_rate = app, model, trace_sample_rate
        self.requests = Counter("fabric_rag_requests", description="RAG requests by route and status.",
                                tag_keys=("app", "route", "status"))
        self.not_covered = Counter("fabric_rag_not_covered", description="Questions no relevant chunk was found for.",
                                   tag_keys=("app",))
        self.latency = {step: Histogram(f"fabric_rag_{step}_ms", description=f"RAG {step} latency in milliseconds.",
                                        boundaries=MS_BOUNDARIES, tag_keys=("app",))
                        for step in ("retrieval", "generation", "scoring")}
        self.groundedness = Histogram("fabric_rag_groundedness", description="Groundedness score of answers.",
                                      boundaries=SCORE_BOUNDARIES, tag_keys=("app", "scorer"))
        self.guardrail = Counter("fabric_rag_guardrail", description="Answers by the grounding guardrail's action "
                                 "(none, flag, refuse, quote).", tag_keys=("app", "action"))
        self.log = None
        if inference_log and inference_log.get("enabled"):
            from fabric.serve.inference_log import InferenceLog

            self.log = InferenceLog(inference_log.get("path"), inference_log["flush_rows"], inference_log["flush_s"])
        self.tracking_uri = tracking_uri
        self.traces: queue.Queue = queue.Queue(TRACE_QUEUE)
        self.experiment_id: str | None = None
        if trace_sample_rate > 0:
            threading.Thread(target=self._trace_worker, daemon=True, name="rag-traces").start()

    def request(self, route: str, status: int) -> None:
        self._safely(self.requests.inc, tags={"app": self.app, "route": route, "status": str(status)})

    def steps(self, timings: Timings, score: float | None, scorer: str | None) -> None:
        """Observes the step latencies (those that ran) and the groundedness score."""
        tags = {"app": self.app}
        for step, (a, b) in {"retrieval": (timings.start, timings.retrieved),
                             "generation": (timings.retrieved, timings.generated),
                             "scoring": (timings.generated, timings.scored)}.items():
            ms = timings.ms(a, b)
            if ms is not None:
                self._safely(self.latency[step].observe, ms, tags=tags)
        if score is not None:
            self._safely(self.groundedness.observe, score, tags={**tags, "scorer": scorer or "-"})
        elif timings.generated is None:
            self._safely(self.not_covered.inc, tags=tags)

    def retrieval(self, timings: Timings) -> None:
        """Observes the retrieval latency of a request that only retrieves (``/rag/retrieve``)."""
        ms = timings.ms(timings.start, timings.retrieved)
        if ms is not None:
            self._safely(self.latency["retrieval"].observe, ms, tags={"app": self.app})

    def guarded(self, action: str) -> None:
        """Counts an answer the guardrail judged, by its action."""
        self._safely(self.guardrail.inc, tags={"app": self.app, "action": action})

    def record(self, request_id: str, endpoint: str, query: str, result: dict[str, Any],
               logged: dict[str, Any] | None = None) -> None:
        """One inference log row for an answer (``result`` as /rag/query returns it, ``logged`` as for
        :func:`answer_outputs`)."""
        if self.log is None:
            return
        try:
            self.log.add(request_id, self.model, str(result.get("commit") or "-"), endpoint, [], [[]],
                         answer_outputs(query, result, logged))
        except Exception as exc:  # the log never fails an answer
            log.warning("fabric rag: inference log skipped request %s: %s", request_id, exc)

    def trace(self, request_id: str, route: str, query: str, timings: Timings, retrieved: dict[str, Any] | None,
              messages: list[dict[str, str]] | None, answer: str | None, detail: dict[str, Any] | None,
              error: str | None = None) -> None:
        """Queues the request's trace (sampled at ``trace_sample_rate``); written on the trace thread."""
        if self.trace_sample_rate <= 0 or random.random() >= self.trace_sample_rate:
            return
        try:
            self.traces.put_nowait((request_id, route, query, timings, retrieved, messages, answer, detail, error,
                                    time.time_ns()))
        except queue.Full:
            pass  # tracing is best effort: a slow tracking store must not hold up answers

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    # -- the trace thread --------------------------------------------------------------------------------------

    def _trace_worker(self) -> None:
        while True:
            item = self.traces.get()
            try:
                self._write_trace(*item)
            except Exception as exc:  # tracing must never take anything down
                log.warning("fabric rag: could not write a trace: %s", exc)

    def _experiment(self) -> str:
        if self.experiment_id is None:
            import mlflow

            if self.tracking_uri:
                mlflow.set_tracking_uri(self.tracking_uri)
            client = mlflow.MlflowClient()
            name = f"rag-serving-{self.app}"
            found = client.get_experiment_by_name(name)
            self.experiment_id = found.experiment_id if found else client.create_experiment(name)
        return self.experiment_id

    def _write_trace(self, request_id: str, route: str, query: str, timings: Timings, retrieved: dict | None,
                     messages: list | None, answer: str | None, detail: dict | None, error: str | None,
                     end: int) -> None:
        import mlflow
        from mlflow.entities import Document, SpanType

        experiment = self._experiment()
        root = mlflow.start_span_no_context(f"rag {route}", span_type=SpanType.CHAIN, inputs={"query": query},
                                            attributes={"request_id": request_id, "app": self.app},
                                            experiment_id=experiment, start_time_ns=timings.start)
        if timings.retrieved is not None and retrieved is not None:
            span = mlflow.start_span_no_context("retrieve", span_type=SpanType.RETRIEVER, parent_span=root,
                                                inputs={"query": query}, start_time_ns=timings.start,
                                                attributes={"collection": str(retrieved.get("collection")),
                                                            "commit": str(retrieved.get("commit"))})
            documents = [Document(page_content=h["text"], id=h["chunk_id"],
                                  metadata={"doc_id": h["doc_id"], "source": h["source"], "score": h["score"]})
                         for h in retrieved.get("hits", [])]
            span.end(outputs=documents, end_time_ns=timings.retrieved)
        if messages is not None and timings.retrieved is not None:
            span = mlflow.start_span_no_context("generate", span_type=SpanType.LLM, parent_span=root,
                                                inputs={"messages": messages}, start_time_ns=timings.retrieved)
            span.end(outputs={"answer": answer}, end_time_ns=timings.generated or end,
                     status="ERROR" if timings.generated is None else "OK")
        if detail is not None and timings.generated is not None:
            span = mlflow.start_span_no_context("groundedness", span_type=SpanType.EVALUATOR, parent_span=root,
                                                inputs={"answer": answer}, start_time_ns=timings.generated)
            span.end(outputs=detail, end_time_ns=timings.scored or end)
        root.end(outputs={"answer": answer, "error": error}, status="ERROR" if error else "OK", end_time_ns=end)

    def _safely(self, method: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception as exc:
            log.warning("fabric rag: a metric failed: %s", exc)
