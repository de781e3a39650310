"""Qdrant collections per data commit, published by alias, and the :class:`Retriever` that queries what is live.

A collection holds the chunks of one data commit embedded with one set of ingestion settings, and is named
``<alias>-<commit[:12]>-<settings[:8]>``. It is filled while queries keep using the previous one and published
by moving the alias only once complete, so no query sees a half-built index. A :class:`Retriever` answers each
query (and each batch) from one collection, and switches to a newly published one on :meth:`Retriever.refresh`
(called every ``refresh_interval_s`` by itself).

Two stores, one protocol (:class:`VectorStore`), picked from the runtime by :func:`open_vector_store`:

* :class:`LocalStore` (the default): Qdrant local mode, each collection in its own folder under
  ``$FABRIC_HOME/qdrant/collections/<collection>``, the alias a pointer ``$FABRIC_HOME/qdrant/aliases/<alias>.json``
  rewritten atomically. Local mode locks a folder to one client; a Retriever copies the live collection into an
  in-memory client and releases the folder at once, so ingestion, serving replicas and evaluation never fight.
* :class:`ServerStore`: a Qdrant server (``QDRANT_URL``), with real aliases moved by one
  ``update_collection_aliases`` call.

Example:
    >>> [h.chunk_id for h in Retriever("python-docs").search("How does a with statement call __exit__?", top_k=2)]
    ['with#1', 'with#2']
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fabric.runtime import RuntimeConfig, qdrant_client, resolve_stack
from rag.embedding import embedder, keyword_vector

__all__ = ["DEFAULT_ALIAS", "FILTER_FIELDS", "KEYWORDS", "CollectionInfo", "Hit", "IndexUnavailable", "LocalStore",
           "Retriever", "ServerStore", "VectorStore", "check_alias", "collection_name", "create_collection",
           "open_vector_store", "point_id"]

DEFAULT_ALIAS = "python-docs"
KEYWORDS = "keywords"  # the sparse vector of hybrid collections
FILTER_FIELDS = ("chunk_id", "doc_id", "title", "source", "commit", "uri")
RRF_K = 60
_NAMESPACE = uuid.UUID("4f1e8a52-6d0c-4b55-9a51-6a0b6c1f2e11")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class IndexUnavailable(RuntimeError):
    """Qdrant cannot answer: unreachable, or nothing is published under the alias. The message names which."""


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection holds, saved as its Qdrant metadata."""

    name: str
    alias: str
    commit: str
    uri: str
    embedder: str
    dimension: int
    hybrid: bool
    points: int
    settings: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, name: str, meta: dict[str, Any] | None) -> CollectionInfo:
        if "commit" not in (meta or {}):
            raise IndexUnavailable(f"Qdrant collection {name!r} was not built by rag.ingest (it has no metadata)")
        return cls(**{**{k: meta[k] for k in cls.__dataclass_fields__ if k in meta}, "name": name})


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: ``text == document.text[start:end]`` of document ``doc_id`` at data commit ``commit``."""

    chunk_id: str
    doc_id: str
    title: str
    source: str
    text: str
    start: int
    end: int
    commit: str
    score: float
    uri: str = ""  #: the document set's data URI at ``commit`` (empty for collections ingested without one)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], score: float) -> Hit:
        return cls(**{k: payload[k] for k in ("chunk_id", "doc_id", "title", "source", "text", "start", "end",
                                              "commit")}, score=float(score), uri=str(payload.get("uri") or ""))


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise ValueError(f"alias {alias!r} must be 1-64 letters, digits, '-' or '_', starting with a letter or digit")
    return alias


def collection_name(alias: str, commit: str, fingerprint: str) -> str:
    """``<alias>-<commit[:12]>-<fingerprint[:8]>``: one collection per (data commit, ingestion settings)."""
    return f"{check_alias(alias)}-{re.sub(r'[^A-Za-z0-9]', '', commit)[:12]}-{fingerprint[:8]}"


def _owned_by(alias: str, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(alias)}-[A-Za-z0-9]{{1,12}}-[0-9a-f]{{8}}", name) is not None


def point_id(commit: str, chunk_id: str) -> str:
    """The deterministic point id of a chunk at a data commit (a UUID5), so a rebuilt chunk replaces itself."""
    return str(uuid.uuid5(_NAMESPACE, f"{commit}/{chunk_id}"))


def create_collection(client: Any, info: CollectionInfo) -> None:
    """Creates ``info.name`` (cosine dense vectors, plus IDF-weighted keywords when hybrid) with its metadata."""
    from qdrant_client import models

    sparse = {KEYWORDS: models.SparseVectorParams(modifier=models.Modifier.IDF)} if info.hybrid else None
    client.create_collection(info.name, vectors_config=models.VectorParams(size=info.dimension,
                             distance=models.Distance.COSINE), sparse_vectors_config=sparse,
                             metadata=info.metadata())


class VectorStore(Protocol):
    """Where collections live and how an alias is published (:class:`LocalStore`, :class:`ServerStore`)."""

    where: str  # for messages: "Qdrant local mode at ...", "Qdrant server at ..."

    def live(self, alias: str) -> str | None: ...  # the collection the alias points at now
    def open_build(self, info: CollectionInfo) -> Any: ...  # a client holding info.name (created when new)
    def close_build(self, client: Any) -> None: ...  # done upserting (local mode releases the folder)
    def publish(self, info: CollectionInfo, keep: int) -> list[str]: ...  # move the alias, drop beyond `keep`
    def open_live(self, alias: str) -> tuple[Any, CollectionInfo]: ...  # a client to query; IndexUnavailable
    def lock(self, alias: str) -> contextlib.AbstractContextManager[None]: ...  # held while ingesting


class LocalStore:
    """Qdrant local mode: a folder per collection and an atomically rewritten JSON pointer per alias."""

    def __init__(self, root: str | Path, open_timeout_s: float = 60.0):
        self.root = Path(root)
        self.where = f"Qdrant local mode at {self.root}"
        self.open_timeout_s = open_timeout_s

    def folder(self, name: str) -> Path:
        return self.root / "collections" / name

    def pointer(self, alias: str) -> dict[str, Any] | None:
        """The alias's pointer file, or None when it was never published."""
        try:
            return json.loads((self.root / "aliases" / f"{check_alias(alias)}.json").read_text())
        except FileNotFoundError:
            return None

    def live(self, alias: str) -> str | None:
        return (self.pointer(alias) or {}).get("collection")

    def open_build(self, info: CollectionInfo) -> Any:
        client = self._open(self.folder(info.name))
        if not client.collection_exists(info.name):
            create_collection(client, info)
        return client

    close_build = staticmethod(lambda client: client.close())

    def publish(self, info: CollectionInfo, keep: int) -> list[str]:
        previous = self.pointer(info.alias) or {}
        history = [info.name] + [n for n in previous.get("history", []) if n != info.name]
        pointer = {"alias": info.alias, "collection": info.name, "commit": info.commit, "uri": info.uri,
                   "published_at": time.time(), "history": history[:keep]}
        path = self.root / "aliases" / f"{info.alias}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(pointer, indent=1))
        os.replace(tmp, path)  # atomic: a reader sees the old pointer or the new one
        dropped = []
        for folder in sorted((self.root / "collections").iterdir()):
            if _owned_by(info.alias, folder.name) and folder.name not in pointer["history"]:
                shutil.rmtree(folder, ignore_errors=True)
                dropped.append(folder.name)
        return dropped

    def open_live(self, alias: str) -> tuple[Any, CollectionInfo]:
        from qdrant_client import QdrantClient, models

        name = self.live(alias)
        if name is None or not self.folder(name).is_dir():
            raise IndexUnavailable(_nothing_published(alias, self.where))
        source = self._open(self.folder(name))
        try:
            described = source.get_collection(name)
            memory = QdrantClient(":memory:")
            memory.create_collection(name, vectors_config=described.config.params.vectors,
                                     sparse_vectors_config=described.config.params.sparse_vectors,
                                     metadata=described.config.metadata)
            offset = None
            while True:
                batch, offset = source.scroll(name, limit=1024, offset=offset, with_payload=True, with_vectors=True)
                memory.upsert(name, [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in batch])
                if offset is None:
                    break
        finally:
            source.close()
        return memory, CollectionInfo.from_metadata(name, described.config.metadata)

    @contextlib.contextmanager
    def lock(self, alias: str) -> Iterator[None]:
        import fcntl

        for sub in ("aliases", "collections"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        with open(self.root / "aliases" / f"{check_alias(alias)}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"[index] another ingestion is building {alias!r}; waiting for it", flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _open(self, folder: Path) -> Any:
        """A local-mode client on ``folder``, waiting while another process holds its lock (copying it)."""
        from qdrant_client import QdrantClient

        folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.open_timeout_s
        while True:
            try:
                return QdrantClient(path=str(folder))
            except RuntimeError as exc:
                if "already accessed" not in str(exc) or time.monotonic() > deadline:
                    raise IndexUnavailable(f"{self.where}: cannot open {folder}: {exc}") from exc
                time.sleep(0.05)


class ServerStore:
    """A Qdrant server: collections side by side and a real alias, moved in one ``update_collection_aliases``."""

    def __init__(self, client: Any, where: str = "Qdrant server"):
        self.client = client
        self.where = where

    def live(self, alias: str) -> str | None:
        for item in self.client.get_aliases().aliases:
            if item.alias_name == alias:
                return item.collection_name
        return None

    def open_build(self, info: CollectionInfo) -> Any:
        if not self.client.collection_exists(info.name):
            create_collection(self.client, info)
            with warnings.catch_warnings():  # a local-mode stand-in warns that it has no payload indexes
                warnings.simplefilter("ignore", UserWarning)
                for key in FILTER_FIELDS:
                    self.client.create_payload_index(info.name, key, field_schema="keyword")
        return self.client

    close_build = staticmethod(lambda client: None)

    def publish(self, info: CollectionInfo, keep: int) -> list[str]:
        from qdrant_client import models

        self.client.update_collection(info.name, metadata={**info.metadata(), "published_at": time.time()})
        operations: list[Any] = []
        if self.live(info.alias) is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=info.alias)))
        operations.append(models.CreateAliasOperation(create_alias=models.CreateAlias(
            collection_name=info.name, alias_name=info.alias)))
        self.client.update_collection_aliases(change_aliases_operations=operations)  # one atomic switch
        published = []
        for item in self.client.get_collections().collections:
            if _owned_by(info.alias, item.name) and item.name != info.name:
                meta = self.client.get_collection(item.name).config.metadata or {}
                published.append((float(meta.get("published_at") or 0), item.name))
        newest = [name for stamp, name in sorted(published, reverse=True) if stamp > 0]  # unfinished builds: 0
        keepers = set(newest[: max(keep - 1, 0)])
        dropped = [name for _, name in published if name not in keepers]
        for name in dropped:
            self.client.delete_collection(name)
        return dropped

    def open_live(self, alias: str) -> tuple[Any, CollectionInfo]:
        name = self.live(alias)
        if name is None:
            raise IndexUnavailable(_nothing_published(alias, self.where))
        return self.client, CollectionInfo.from_metadata(name, self.client.get_collection(name).config.metadata)

    @contextlib.contextmanager
    def lock(self, alias: str) -> Iterator[None]:
        yield  # a server has no lock of ours: run one ingestion per alias at a time


def open_vector_store(runtime: RuntimeConfig | None = None) -> VectorStore:
    """The configured store: a Qdrant server when ``QDRANT_URL`` (or ``runtime.qdrant_url``) is set, else local."""
    stack = resolve_stack(runtime)
    if stack.qdrant_mode == "server":
        return ServerStore(qdrant_client(runtime), where=f"Qdrant server at {stack.qdrant}")
    return LocalStore(stack.qdrant)


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Any Qdrant failure in the block becomes IndexUnavailable("<what>: <error>")."""
    try:
        yield
    except IndexUnavailable:
        raise
    except Exception as exc:
        raise IndexUnavailable(f"{what}: {exc}") from exc


def _nothing_published(alias: str, where: str) -> str:
    return (f"{where}: no collection is published under the alias {alias!r}; build one with "
            "`fabric run ingest_docs --config configs/rag/python_docs.yaml`")


_Live = namedtuple("_Live", "client info hybrid")  # what a Retriever queries now, swapped in one assignment


class Retriever:
    """Top-k chunks for a query from the collection an alias points at, with payload filters and a score floor.

    Args:
        alias: the alias ingestion publishes (``python-docs`` for configs/rag/python_docs.yaml).
        runtime: where Qdrant is (``QDRANT_URL`` or local mode under FABRIC_HOME by default).
        embedder_source: the query embedder; default: the one the collection was built with.
        hybrid: fuse dense and keyword (sparse) results by reciprocal rank; default: as the collection was built.
        store: a :class:`VectorStore` instead of the runtime's (tests, a custom client).
        refresh_interval_s: how often a search checks for a newly published collection (0: only on refresh()).

    Nothing is contacted until the first search (or :meth:`refresh`), so an app can start while Qdrant is down;
    :class:`IndexUnavailable` then names the problem on each call. Scores are cosine similarities in hybrid mode
    too (ranked by fusion), so one ``score_threshold`` means the same in both modes.
    """

    def __init__(self, alias: str = DEFAULT_ALIAS, runtime: RuntimeConfig | None = None,
                 embedder_source: str | None = None, hybrid: bool | None = None, dtype: str = "bfloat16",
                 store: VectorStore | None = None, refresh_interval_s: float = 10.0):
        self.alias = check_alias(alias)
        self.embedder_source, self.dtype, self.hybrid = embedder_source, dtype, hybrid
        self.refresh_interval_s = refresh_interval_s
        self._runtime, self._store = runtime, store
        self._live: _Live | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self._store = open_vector_store(self._runtime)
        return self._store

    @property
    def info(self) -> CollectionInfo:
        """What the live collection holds (commit, documents URI, embedder, settings)."""
        return self._current().info

    collection = property(lambda self: self.info.name, doc="The live collection's name.")
    commit = property(lambda self: self.info.commit, doc="The data commit the live collection holds.")

    def refresh(self) -> bool:
        """Switches to the collection the alias points at now; True when it changed. Queries already running
        finish on the collection they started with."""
        with self._lock:
            return self._refresh()

    def search(self, query: str, top_k: int = 5, filters: dict[str, str | list[str]] | None = None,
               score_threshold: float | None = None) -> list[Hit]:
        """The ``top_k`` best chunks for ``query``, best first; only those scoring at least ``score_threshold``."""
        return self.search_batch([query], top_k, filters, score_threshold)[0]

    def search_batch(self, queries: list[str], top_k: int = 5, filters: dict[str, str | list[str]] | None = None,
                     score_threshold: float | None = None) -> list[list[Hit]]:
        """:meth:`search` for several queries: one embedding batch and one Qdrant call, one collection for all."""
        if isinstance(queries, str) or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ValueError("queries must be a list of non-empty strings")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        condition = _filter(filters)
        live = self._current()
        vectors = embedder(self.embedder_source or live.info.embedder, self.dtype).encode(list(queries))
        try:
            return self._query(live, queries, vectors, top_k, condition, score_threshold)
        except IndexUnavailable:
            if not self.refresh():  # a server's old collection may be gone: retry once on the live one
                raise
            return self._query(self._live, queries, vectors, top_k, condition, score_threshold)

    def _current(self) -> _Live:
        live = self._live
        if live is None:
            self.refresh()
        elif self.refresh_interval_s and time.monotonic() - self._checked > self.refresh_interval_s:
            if self._lock.acquire(blocking=False):  # one thread checks; the others go on with what is live
                try:
                    self._refresh()
                except IndexUnavailable:
                    pass  # keep answering from the collection we hold
                finally:
                    self._lock.release()
        return self._live

    def _refresh(self) -> bool:
        current = self._live
        with _unavailable(f"{self.store.where} is unreachable for alias {self.alias!r}"):
            name = self.store.live(self.alias)
        self._checked = time.monotonic()
        if name is None and current is None:
            raise IndexUnavailable(_nothing_published(self.alias, self.store.where))
        if name is None or (current is not None and current.info.name == name):
            return False
        with _unavailable(f"{self.store.where} failed to open alias {self.alias!r}"):
            client, info = self.store.open_live(self.alias)
        hybrid = info.hybrid if self.hybrid is None else self.hybrid
        if hybrid and not info.hybrid:
            raise IndexUnavailable(f"{self.store.where}: collection {info.name!r} of alias {self.alias!r} has no "
                                   "keyword vectors; ingest it with hybrid: true or query with hybrid=False")
        embedder(self.embedder_source or info.embedder, self.dtype)  # loaded before the switch, not in a query
        self._live = _Live(client, info, hybrid)
        return True

    def _query(self, live: _Live, queries: list[str], vectors: np.ndarray, top_k: int, condition: Any,
               threshold: float | None) -> list[list[Hit]]:
        from qdrant_client import models

        depth = max(4 * top_k, 20) if live.hybrid else top_k
        requests, keyword_at = [], {}
        for i, (query, vector) in enumerate(zip(queries, vectors, strict=True)):
            requests.append(models.QueryRequest(query=vector.tolist(), filter=condition, limit=depth,
                                                score_threshold=threshold, with_payload=True))
            ids, weights = keyword_vector(query) if live.hybrid else ([], [])
            if ids:  # a query of only common words has no keywords: dense alone
                keyword_at[i] = len(requests)
                requests.append(models.QueryRequest(
                    query=models.SparseVector(indices=ids, values=weights), using=KEYWORDS, filter=condition,
                    limit=depth, with_payload=True, with_vector=[""]))
        with _unavailable(f"{self.store.where} failed to query {live.info.name!r} of alias {self.alias!r}"):
            responses = live.client.query_batch_points(live.info.name, requests=requests)
        results, dense = [], [r for k, r in enumerate(responses) if k not in keyword_at.values()]
        for i, response in enumerate(dense):
            if i in keyword_at:
                results.append(_fuse(response.points, responses[keyword_at[i]].points, vectors[i], top_k, threshold))
            else:
                results.append([Hit.from_payload(p.payload, p.score) for p in response.points[:top_k]])
        return results


def _fuse(dense: list[Any], sparse: list[Any], vector: np.ndarray, top_k: int, threshold: float | None
          ) -> list[Hit]:
    """Reciprocal rank fusion of the dense and keyword rankings; each hit keeps its cosine score, and one below
    the threshold is dropped whichever ranking found it."""
    fused: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    for rank, point in enumerate(dense):
        hits[point.id] = Hit.from_payload(point.payload, point.score)
        fused[point.id] = 1 / (RRF_K + rank + 1)
    for rank, point in enumerate(sparse):
        if point.id not in hits:
            dense_vector = point.vector[""] if isinstance(point.vector, dict) else point.vector
            cosine = float(np.dot(vector, np.asarray(dense_vector, dtype=np.float32)))
            if threshold is not None and cosine < threshold:
                continue
            hits[point.id] = Hit.from_payload(point.payload, cosine)
        fused[point.id] = fused.get(point.id, 0.0) + 1 / (RRF_K + rank + 1)
    best = sorted(fused, key=lambda pid: (-fused[pid], -hits[pid].score))[:top_k]
    return [hits[pid] for pid in best]


def _filter(filters: dict[str, str | list[str]] | None) -> Any:
    """A Qdrant filter matching every given payload field (a list matches any of its values)."""
    if not filters:
        return None
    from qdrant_client import models

    if not isinstance(filters, dict):
        raise ValueError("filters must be an object of payload field to value or list of values")
    conditions = []
    for key, value in filters.items():
        if key not in FILTER_FIELDS:
            raise ValueError(f"cannot filter on {key!r}: filterable fields are {', '.join(FILTER_FIELDS)}")
        if not (isinstance(value, str) or (isinstance(value, list) and value and
                                           all(isinstance(v, str) for v in value))):
            raise ValueError(f"filter {key!r} must be a string or a non-empty list of strings, got {value!r}")
        match = models.MatchValue(value=value) if isinstance(value, str) else models.MatchAny(any=value)
        conditions.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=conditions)

