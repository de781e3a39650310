"""A LangChain retriever over a served RAG app's ``POST /rag/retrieve``: for applications that bring their own LLM
and chain but want fabric's versioned index (and its inference log) behind them.

Needs ``langchain-core`` (``pip install 'llmops-fabric[langchain]'``); nothing else in :mod:`rag` imports this module.

Example:
    >>> from rag.langchain import FabricRetriever
    >>> retriever = FabricRetriever(url="http://127.0.0.1:8000", api_key="secret-predict", top_k=4)
    >>> docs = retriever.invoke("How does a with statement call __exit__?")      # doctest: +SKIP
    >>> docs[0].page_content, docs[0].metadata["chunk_id"], docs[0].metadata["commit"]  # doctest: +SKIP

Same request with curl: ``curl http://127.0.0.1:8000/rag/retrieve -H 'Authorization: Bearer secret-predict'
-d '{"query": "How does a with statement call __exit__?", "top_k": 4}'``.
"""

from __future__ import annotations

from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field

__all__ = ["FabricRetriever", "FabricRetrieverError"]

METADATA = ("chunk_id", "doc_id", "title", "source", "score", "uri", "commit", "start", "end")


class FabricRetrieverError(RuntimeError):
    """The RAG app answered with an error status; the message has its status and error text."""


class FabricRetriever(BaseRetriever):
    """Documents from a fabric RAG app's ``/rag/retrieve``: each chunk's text, with its chunk id, document,
    source, score, data commit and URI and its offsets in the document (``text[start:end] == page_content``) as
    metadata."""

    url: str = Field(description="Base URL of the RAG app (http://127.0.0.1:8000), without /rag/retrieve.")
    api_key: str | None = Field(None, description="An API key of role predict (sent as Authorization: Bearer).")
    top_k: int | None = Field(None, ge=1, description="Chunks per query; None: the app's index.top_k.")
    filters: dict[str, str | list[str]] | None = Field(None, description="Payload filters, as /rag/query takes "
                                                       "them ({doc_id: [...]}).")
    score_threshold: float | None = Field(None, description="Minimum similarity; None: the app's.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for the app.")

    def _request(self, query: str) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query}
        for name in ("top_k", "filters", "score_threshold"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {"url": f"{self.url.rstrip('/')}/rag/retrieve", "json": body, "headers": headers,
                "timeout": self.timeout_s}

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return _documents(httpx.post(**self._request(query)))

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        async with httpx.AsyncClient() as client:
            return _documents(await client.post(**self._request(query)))


def _documents(response: httpx.Response) -> list[Document]:
    if response.status_code != 200:
        try:
            message = response.json().get("error")
        except ValueError:
            message = response.text[:300]
        raise FabricRetrieverError(f"{response.request.url} answered {response.status_code}: {message}")
    body = response.json()
    return [Document(page_content=c["text"], id=c["chunk_id"],
                     metadata={**{k: c.get(k) for k in METADATA}, "start": c["chunk_start"], "end": c["chunk_end"],
                               "collection": body.get("collection"), "request_id": body.get("request_id")})
            for c in body["citations"]]
