"""The retriever deployment: the query embedder and the live Qdrant collection of an alias (``rag.index``).

Concurrent queries are searched together (``@serve.batch``: one embedding batch and one Qdrant call for all that
share top_k, filters and threshold). The :class:`rag.index.Retriever` checks every ``refresh_interval_s`` whether
the alias moved to a newly published collection and switches between two searches, never during one; searches and
the read of which collection answered are serialised here, so the ``collection`` and ``commit`` an answer reports
are the ones its hits came from. A replica that starts before anything was ingested, or whose Qdrant is
unreachable, stays up and answers ``{"error", "status": 503}`` naming Qdrant and the alias until the index appears
(rather than raising, which would log a traceback per request).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from ray import serve

__all__ = ["RetrieverServer"]

log = logging.getLogger("ray.serve")


@serve.deployment
class RetrieverServer:
    """One replica: a :class:`rag.index.Retriever` on the alias."""

    def __init__(self, alias: str, runtime: dict[str, Any], embedder: str | None, hybrid: bool | None,
                 refresh_interval_s: float):
        from fabric.runtime import RuntimeConfig
        from rag.embedding import embedder as load_embedder
        from rag.index import Retriever

        self.alias = alias
        self.retriever = Retriever(alias, runtime=RuntimeConfig(**runtime), embedder_source=embedder,
                                   hybrid=hybrid, refresh_interval_s=refresh_interval_s)
        self.lock = threading.Lock()  # one search at a time reads which collection answered
        if embedder:
            load_embedder(embedder)  # loaded now, not in the first query (else when the collection is opened)
        state = self._state()
        if "error" in state:
            log.warning("fabric rag: %s", state["error"])
        else:
            log.info("fabric rag: retrieving from %s (commit %s)", state["collection"], state["commit"])

    def _state(self) -> dict[str, Any]:
        try:
            with self.lock:
                info = self.retriever.info
            return {"alias": self.alias, "collection": info.name, "commit": info.commit}
        except Exception as exc:
            return self._error(exc)

    def _error(self, exc: Exception) -> dict[str, Any]:
        from rag.index import IndexUnavailable

        if isinstance(exc, IndexUnavailable):
            return {"error": f"the index is unavailable: {exc}", "status": 503}
        if isinstance(exc, ValueError):  # a filter the index refuses
            return {"error": str(exc), "status": 400}
        log.exception("fabric rag: searching alias %s failed", self.alias)
        return {"error": f"the index is unavailable (Qdrant, alias {self.alias!r}): {type(exc).__name__}: "
                         f"{str(exc)[:300]}", "status": 503}

    def _search(self, queries: list[str], top_k: int, filters: dict | None, threshold: float | None) -> Any:
        try:
            with self.lock:
                found = self.retriever.search_batch(queries, top_k=top_k, filters=filters, score_threshold=threshold)
                info = self.retriever.info
        except Exception as exc:
            return self._error(exc)
        return [{"hits": [hit.to_dict() for hit in hits], "collection": info.name, "commit": info.commit}
                for hits in found]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _batched(self, requests: list[tuple]) -> list[dict[str, Any]]:
        """Groups the batch by (top_k, filters, threshold): one search_batch per group."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, top_k, filters, threshold) in enumerate(requests):
            groups.setdefault((top_k, repr(sorted((filters or {}).items())), threshold), []).append(i)
        answers: list[Any] = [None] * len(requests)
        for indices in groups.values():
            _, top_k, filters, threshold = requests[indices[0]]
            found = await asyncio.to_thread(self._search, [requests[i][0] for i in indices], top_k, filters,
                                            threshold)
            for k, i in enumerate(indices):
                answers[i] = found if isinstance(found, dict) else found[k]
        return answers

    async def search(self, query: str, top_k: int, filters: dict | None = None,
                     score_threshold: float | None = None) -> dict[str, Any]:
        """``{"hits": [Hit.to_dict(), ...], "collection", "commit"}`` of one query (best hit first), or
        ``{"error", "status"}``."""
        return await self._batched((query, top_k, filters, score_threshold))

    async def health(self) -> dict[str, Any]:
        """The live collection and commit, or ``{"error", "status": 503}`` naming Qdrant and the alias."""
        return await asyncio.to_thread(self._state)
