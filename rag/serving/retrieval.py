"""The retriever deployment: the query embedder and the live Qdrant collection of an alias (``rag.index``).

Concurrent queries are searched together (``@serve.batch``: one embedding batch for all of them). Every
``refresh_interval_s`` the replica asks whether the alias was moved to a newly published collection and switches
between two batches, never during one, so an answer's hits all come from one collection (its ``commit`` says
which). A replica that starts before anything was ingested, or whose Qdrant is unreachable, stays up: queries get
:class:`~llm.serving.openai_protocol.ApiError` 503 naming Qdrant and the alias until the index appears.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from ray import serve

from llm.serving.openai_protocol import ApiError

__all__ = ["RetrieverServer"]

log = logging.getLogger("ray.serve")
REOPEN_S = 2.0  # a missing index is looked for again at most this often


@serve.deployment
class RetrieverServer:
    """One replica: a :class:`rag.index.Retriever` on the alias, refreshed between batches."""

    def __init__(self, alias: str, runtime: dict[str, Any], embedder: str, hybrid: bool, refresh_interval_s: float):
        from fabric.runtime import RuntimeConfig

        self.alias, self.embedder, self.hybrid = alias, embedder, hybrid
        self.runtime = RuntimeConfig(**runtime)
        self.refresh_interval_s = refresh_interval_s
        self.lock = threading.Lock()  # one batch or refresh at a time: a query sees one collection
        self.retriever: Any = None
        self.error: str | None = None
        self.checked = 0.0
        self._open()

    def _open(self) -> None:
        """Opens the alias's live collection (the lock is held, or nothing runs yet)."""
        from rag.embedding import embedder
        from rag.index import Retriever

        self.checked = time.monotonic()
        embedder(self.embedder)  # the embedding model loads once, even while the index is missing
        try:
            self.retriever = Retriever(self.alias, runtime=self.runtime, embedder_source=self.embedder,
                                       hybrid=self.hybrid)
            self.error = None
            log.info("fabric rag: retrieving from %s (commit %s)", self.retriever.collection, self.retriever.commit)
        except Exception as exc:  # IndexUnavailable above all; anything else is reported the same way
            self.retriever, self.error = None, self._describe(exc)
            log.warning("fabric rag: %s", self.error)

    def _describe(self, exc: Exception) -> str:
        from rag.index import IndexUnavailable

        if isinstance(exc, IndexUnavailable):
            return f"the index is unavailable: {exc}"
        return f"the index is unavailable (Qdrant, alias {self.alias!r}): {type(exc).__name__}: {str(exc)[:300]}"

    def _current(self) -> Any:
        """The retriever to search with now: reopened when missing, refreshed when the interval has passed."""
        now = time.monotonic()
        if self.retriever is None:
            if now - self.checked >= REOPEN_S:
                self._open()
            if self.retriever is None:
                raise ApiError(self.error or f"the index {self.alias!r} is unavailable", 503)
        elif now - self.checked >= self.refresh_interval_s:
            self.checked = now
            try:
                if self.retriever.refresh():
                    log.info("fabric rag: switched to %s (commit %s)", self.retriever.collection,
                             self.retriever.commit)
            except Exception as exc:  # keep answering from the collection we have
                log.warning("fabric rag: refreshing alias %s failed: %s", self.alias, exc)
        return self.retriever

    def _search(self, queries: list[str], top_k: int, filters: dict | None, threshold: float | None) -> dict:
        with self.lock:
            retriever = self._current()
            try:
                found = retriever.search_batch(queries, top_k=top_k, filters=filters, score_threshold=threshold)
            except Exception as exc:
                self.error = self._describe(exc)
                raise ApiError(self.error, 503) from None
            return {"hits": [[hit.to_dict() for hit in hits] for hits in found],
                    "collection": retriever.collection, "commit": retriever.commit}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _batched(self, requests: list[tuple]) -> list[Any]:
        """Groups the batch by (top_k, filters, threshold): one search_batch per group."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, top_k, filters, threshold) in enumerate(requests):
            key = (top_k, repr(sorted((filters or {}).items())), threshold)
            groups.setdefault(key, []).append(i)
        answers: list[Any] = [None] * len(requests)
        for indices in groups.values():
            _, top_k, filters, threshold = requests[indices[0]]
            try:
                found = await asyncio.to_thread(self._search, [requests[i][0] for i in indices], top_k, filters,
                                                threshold)
            except ApiError as exc:
                for i in indices:
                    answers[i] = exc
                continue
            for i, hits in zip(indices, found["hits"], strict=True):
                answers[i] = {"hits": hits, "collection": found["collection"], "commit": found["commit"]}
        return answers

    async def search(self, query: str, top_k: int, filters: dict | None = None,
                     score_threshold: float | None = None) -> dict[str, Any]:
        """``{"hits": [Hit.to_dict(), ...], "collection", "commit"}`` of one query (best hit first)."""
        answer = await self._batched((query, top_k, filters, score_threshold))
        if isinstance(answer, ApiError):
            raise answer
        return answer

    async def health(self) -> dict[str, Any]:
        """The live collection and commit; ApiError 503 naming Qdrant and the alias when there is none."""
        retriever = await asyncio.to_thread(self._locked_current)
        return {"alias": self.alias, "collection": retriever.collection, "commit": retriever.commit}

    def _locked_current(self) -> Any:
        with self.lock:
            return self._current()
