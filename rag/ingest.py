"""Ingestion: documents at one data commit → token chunks → embeddings on a Ray Data actor pool → a Qdrant
collection → the alias moved to it once it is complete.

Python, with the CLI equivalent::

    result = ingest(IngestSettings(uri="lakefs://docs/main/python/pages.parquet"))
    #   fabric run ingest_docs --config configs/rag/python_docs.yaml

The collection is named for the data commit and the settings (:func:`rag.index.collection_name`), so:

* re-running on the same commit with the same settings finds its collection live and does nothing;
* a new commit builds a new collection while queries keep using the live one, and the alias moves only when
  every chunk is in; the previous collection is kept for rollback, older ones are dropped (``keep_collections``);
* an ingestion killed midway leaves the alias where it was; the next run finds the unfinished collection,
  embeds only the chunks it lacks (point ids are deterministic) and publishes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import model_validator

from fabric.config import FabricConfig, Field
from fabric.runtime import RuntimeConfig
from rag.chunking import CHUNKER_VERSION, chunk_documents
from rag.corpus import DEFAULT_URI, load_documents, python_docs
from rag.embedding import DEFAULT_EMBEDDER, embedder, keyword_vector
from rag.index import (
    DEFAULT_ALIAS,
    KEYWORDS,
    CollectionInfo,
    VectorStore,
    check_alias,
    collection_name,
    open_vector_store,
    point_id,
)

__all__ = ["EmbedChunks", "IngestSettings", "fingerprint", "ingest", "points"]

class IngestSettings(FabricConfig):
    """What to ingest, how to chunk and embed it, and where to publish it."""

    uri: str = Field(DEFAULT_URI, description="Documents dataset (lakefs://REPO/REF/PATH) with columns doc_id, "
                     "text and optionally title, source; read at the commit its ref resolves to.")
    seed_corpus: bool = Field(True, description="When nothing is at `uri` yet, first commit the demo corpus there "
                              "(the Python documentation pages of pydoc_data.topics).")
    alias: str = Field(DEFAULT_ALIAS, description="Qdrant alias the finished collection is published under; "
                       "retrievers and the RAG app query it.")
    embedder: str = Field(DEFAULT_EMBEDDER, description="Embedding model: all-MiniLM-L6-v2 (packaged) or a "
                          "sentence-transformers folder.")
    dtype: Literal["bfloat16", "float32", "float16"] = Field(
        "bfloat16", description="Embedding dtype; bfloat16 gives float32's embeddings 3-4x faster on CPU.")
    chunk_tokens: int = Field(200, ge=8, description="Chunk size in the embedding model's tokens.")
    overlap_tokens: int = Field(40, ge=0, description="Tokens a chunk repeats from the one before it.")
    embed_title: bool = Field(True, description="Embed each chunk with its page title in front (the stored text "
                              "and offsets stay exactly the document's).")
    hybrid: bool = Field(True, description="Also store keyword (sparse, IDF) vectors, so retrievers fuse dense "
                         "and keyword rankings (page hit@5 0.95 vs 0.90 dense-only on rag/data's questions).")
    actors: int = Field(2, ge=0, description="Embedding actors of the Ray Data pool (each loads the model once); "
                        "0 embeds in this process instead (small corpora and tests: no actor start-up).")
    actor_cpus: float = Field(1.0, gt=0, description="CPUs per embedding actor (its torch threads).")
    batch_size: int = Field(32, ge=1, description="Chunks per embedding call.")
    keep_collections: int = Field(2, ge=1, description="Collections of the alias kept after publishing: the live "
                                  "one plus older ones for rollback; the rest are dropped.")
    doc_ids: list[str] | None = Field(None, description="Only these documents (tests, trials). Empty: all.")
    max_docs: int | None = Field(None, ge=1, description="Only the first N documents by doc_id. Empty: all.")

    @model_validator(mode="after")
    def _check(self) -> IngestSettings:
        check_alias(self.alias)
        if self.overlap_tokens > self.chunk_tokens // 2:
            raise ValueError(f"overlap_tokens ({self.overlap_tokens}) must be at most half of chunk_tokens "
                             f"({self.chunk_tokens})")
        return self


def fingerprint(settings: IngestSettings) -> str:
    """A hash of everything besides the data commit that decides a collection's contents."""
    keys = {"embedder": settings.embedder, "chunk_tokens": settings.chunk_tokens, "hybrid": settings.hybrid,
            "overlap_tokens": settings.overlap_tokens, "embed_title": settings.embed_title,
            "chunker": CHUNKER_VERSION, "doc_ids": sorted(settings.doc_ids) if settings.doc_ids else None,
            "max_docs": settings.max_docs}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]


def ingest(settings: IngestSettings, runtime: RuntimeConfig | None = None, store: VectorStore | None = None,
           data_store: Any = None) -> dict[str, Any]:
    """Builds and publishes the collection of ``settings.uri`` at its current commit (see the module docstring).

    Needs Ray up (``fabric run`` starts it) unless ``settings.actors`` is 0. Returns uri (pinned to the commit),
    commit, collection, alias, documents, chunks, embedded (this run), dropped, skipped and seconds.
    """
    from fabric import data

    started = time.monotonic()
    data_store = data_store or data.open_store(runtime)
    if settings.seed_corpus:
        data.create_if_missing(settings.uri, python_docs, "Python documentation pages from pydoc_data.topics",
                               metadata={"source": "pydoc_data.topics"}, store=data_store)
    pinned = data.pin(settings.uri, store=data_store)
    commit = data.DataURI.parse(pinned).ref
    name = collection_name(settings.alias, commit, fingerprint(settings))
    store = store or open_vector_store(runtime)
    result = {"uri": pinned, "commit": commit, "collection": name, "alias": settings.alias}
    with store.lock(settings.alias):
        if store.live(settings.alias) == name:
            print(f"[ingest_docs] {settings.alias!r} already serves {name} ({pinned}): nothing to do", flush=True)
            return {**result, "documents": None, "chunks": None, "embedded": 0, "dropped": [], "skipped": True,
                    "seconds": round(time.monotonic() - started, 2)}
        docs = _select(load_documents(pinned, store=data_store)[2], settings)
        model = embedder(settings.embedder, settings.dtype)
        if settings.chunk_tokens + 2 > model.max_tokens:
            raise ValueError(f"chunk_tokens ({settings.chunk_tokens}) + 2 special tokens exceed the {model.max_tokens}"
                             f" tokens {settings.embedder} reads: lower chunk_tokens")
        chunks = chunk_documents(docs, model.tokenizer, settings.chunk_tokens, settings.overlap_tokens)
        print(f"[ingest_docs] {pinned}: {len(docs)} documents, {len(chunks)} chunks -> {name}", flush=True)
        info = CollectionInfo(name=name, alias=settings.alias, commit=commit, uri=pinned, embedder=settings.embedder,
                              dimension=model.dimension, hybrid=settings.hybrid, points=len(chunks),
                              settings=settings.model_dump(mode="json", exclude={"uri", "alias"}))
        client = store.open_build(info)
        try:
            embedded = _fill(client, info, chunks, settings, started)
            count = client.count(name, exact=True).count
            if count != len(chunks):
                raise RuntimeError(f"collection {name} holds {count} points, expected {len(chunks)}; not published")
        finally:
            store.close_build(client)
        dropped = store.publish(info, settings.keep_collections)
    seconds = round(time.monotonic() - started, 2)
    print(f"[ingest_docs] published {name} as {settings.alias!r} ({len(chunks)} chunks, {embedded} embedded now, "
          f"{seconds} s); dropped {dropped or 'nothing'}", flush=True)
    return {**result, "documents": len(docs), "chunks": len(chunks), "embedded": embedded, "dropped": dropped,
            "skipped": False, "seconds": seconds}


def _select(docs: Any, settings: IngestSettings) -> Any:
    if settings.doc_ids:
        unknown = sorted(set(settings.doc_ids) - set(docs["doc_id"]))
        if unknown:
            raise ValueError(f"doc_ids not in {settings.uri}: {', '.join(unknown[:10])}")
        docs = docs[docs["doc_id"].isin(settings.doc_ids)]
    if settings.max_docs:
        docs = docs.head(settings.max_docs)
    if docs.empty:
        raise ValueError(f"no documents with text at {settings.uri}")
    return docs.reset_index(drop=True)


def _fill(client: Any, info: CollectionInfo, chunks: Any, settings: IngestSettings, started: float) -> int:
    """Embeds the chunks the collection lacks and upserts them as they arrive; returns how many."""
    import numpy as np

    have = _point_ids(client, info.name)
    todo = chunks[[point_id(info.commit, c) not in have for c in chunks["chunk_id"]]]
    if have:
        print(f"[ingest_docs] resuming {info.name}: {len(have)} chunks already in, {len(todo)} to embed", flush=True)
    if todo.empty:
        return 0
    rows = todo.set_index("chunk_id", drop=False)
    done, step = 0, max(len(todo) // 10, 1)
    for batch in _embedded(todo[["chunk_id", "title", "text"]], settings):
        vectors = np.stack([np.asarray(v, dtype=np.float32) for v in batch["vector"]])
        client.upsert(info.name, points(rows.loc[batch["chunk_id"].tolist()], vectors, info.commit, info.uri,
                                        info.hybrid), wait=True)
        if (done + len(batch)) // step > done // step or done + len(batch) == len(todo):  # about every 10%
            print(f"[ingest_docs] {done + len(batch)}/{len(todo)} chunks embedded and upserted "
                  f"({time.monotonic() - started:.1f} s)", flush=True)
        done += len(batch)
    return done


def _embedded(todo: Any, settings: IngestSettings) -> Iterator[Any]:
    """Batches of (chunk_id, vector): from a Ray Data actor pool, or from this process when ``actors`` is 0."""
    if settings.actors == 0:
        embed = EmbedChunks(settings.embedder, settings.dtype, settings.embed_title, cpus=0)
        for i in range(0, len(todo), settings.batch_size):
            yield embed(todo.iloc[i:i + settings.batch_size])
        return
    import ray.data

    size = max(settings.batch_size, math.ceil(len(todo) / 200))  # blocks of whole batches, for the whole pool
    blocks = [todo.iloc[i:i + size] for i in range(0, len(todo), size)]
    yield from ray.data.from_pandas(blocks).map_batches(
        EmbedChunks, fn_constructor_kwargs={"source": settings.embedder, "dtype": settings.dtype,
                                            "embed_title": settings.embed_title, "cpus": settings.actor_cpus},
        compute=ray.data.ActorPoolStrategy(size=settings.actors), batch_size=settings.batch_size,
        batch_format="pandas", num_cpus=settings.actor_cpus,
    ).iter_batches(batch_size=settings.batch_size, batch_format="pandas")


def _point_ids(client: Any, name: str) -> set[str]:
    ids, offset = set(), None
    while True:
        batch, offset = client.scroll(name, limit=1024, offset=offset, with_payload=False, with_vectors=False)
        ids.update(str(p.id) for p in batch)
        if offset is None:
            return ids


class EmbedChunks:
    """One Ray Data actor: loads the embedding model once, then embeds batches of chunks (title + text)."""

    def __init__(self, source: str, dtype: str, embed_title: bool, cpus: float = 1.0):
        if cpus:  # an actor's torch uses as many threads as it has CPUs (0: leave this process's setting)
            import torch

            torch.set_num_threads(max(1, math.floor(cpus)))
        self.model = embedder(source, dtype)
        self.embed_title = embed_title

    def __call__(self, batch: Any) -> Any:
        import pandas as pd

        texts = [f"{title}\n{text}" if self.embed_title else text for title, text in zip(batch["title"],
                                                                                        batch["text"], strict=True)]
        vectors = self.model.encode(texts, batch_size=len(texts))
        return pd.DataFrame({"chunk_id": batch["chunk_id"].to_numpy(), "vector": list(vectors)})


def points(chunks: Any, vectors: Any, commit: str, uri: str, hybrid: bool) -> list[Any]:
    """Qdrant points of a chunk frame (chunk_id, doc_id, title, source, text, start, end) and its embeddings:
    the payload :class:`rag.index.Hit` reads, plus the data commit and documents URI."""
    from qdrant_client import models

    out = []
    for row, vector in zip(chunks.itertuples(index=False), vectors, strict=True):
        payload = {"chunk_id": row.chunk_id, "doc_id": row.doc_id, "title": row.title, "source": row.source,
                   "text": row.text, "start": int(row.start), "end": int(row.end), "commit": commit, "uri": uri}
        dense = [float(x) for x in vector]
        if hybrid:
            ids, weights = keyword_vector(f"{row.title}\n{row.text}")
            value: Any = {"": dense, KEYWORDS: models.SparseVector(indices=ids, values=weights)}
        else:
            value = dense
        out.append(models.PointStruct(id=point_id(commit, row.chunk_id), vector=value, payload=payload))
    return out
