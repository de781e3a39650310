"""rag/index.py without Ray: collections per commit published by alias in Qdrant local mode (folders + pointer)
and through a server's real aliases (a local-mode client stands in for the server), the Retriever's search,
filters, score threshold, hybrid fusion, refresh, and IndexUnavailable."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from qdrant_client import QdrantClient

from fabric.runtime import RuntimeConfig
from rag.chunking import chunk_documents
from rag.corpus import python_docs
from rag.embedding import embedder
from rag.index import (
    CollectionInfo,
    IndexUnavailable,
    LocalStore,
    Retriever,
    ServerStore,
    collection_name,
)
from rag.ingest import points

PAGES = ["with", "for", "try", "import", "pass"]
QUESTION = "How does a with statement call __exit__?"


@pytest.fixture(scope="module")
def corpus():
    """Chunks of a few pages and their embeddings, computed once."""
    docs = python_docs()
    docs = docs[docs["doc_id"].isin(PAGES)].reset_index(drop=True)
    model = embedder()
    chunks = chunk_documents(docs, model.tokenizer, size=200, overlap=40)
    vectors = model.encode([f"{t}\n{x}" for t, x in zip(chunks["title"], chunks["text"], strict=True)])
    return docs, chunks, vectors


def build(store, alias: str, commit: str, corpus, hybrid: bool = False, only: list[str] | None = None,
          keep: int = 2) -> CollectionInfo:
    """Builds and publishes the collection of ``commit`` (the pages in ``only``, or all)."""
    _, chunks, vectors = corpus
    mask = chunks["doc_id"].isin(only or PAGES).to_numpy()
    name = collection_name(alias, commit, "0123abcd" if not hybrid else "4567cdef")
    info = CollectionInfo(name=name, alias=alias, commit=commit, uri=f"lakefs://docs/{commit}/p",
                          embedder="all-MiniLM-L6-v2", dimension=384, hybrid=hybrid, points=int(mask.sum()))
    with store.lock(alias):
        client = store.open_build(info)
        client.upsert(name, points(chunks[mask], vectors[mask], commit, info.uri, hybrid))
        store.close_build(client)
        store.publish(info, keep)
    return info


def test_local_mode_publishes_by_pointer_and_the_retriever_finds_the_page(tmp_path, corpus):
    docs, _, _ = corpus
    store = LocalStore(tmp_path)
    retriever = Retriever("docs", store=store)
    with pytest.raises(IndexUnavailable, match="Qdrant local mode .*no collection is published under the alias 'docs'"):
        retriever.search(QUESTION)
    first = build(store, "docs", "a" * 64, corpus)
    hits = retriever.search(QUESTION, top_k=3)
    assert hits[0].doc_id == "with" and hits[0].commit == "a" * 64 and retriever.collection == first.name
    texts = docs.set_index("doc_id")["text"]
    assert all(hit.text == texts[hit.doc_id][hit.start:hit.end] for hit in hits)
    assert hits == sorted(hits, key=lambda h: -h.score) and set(hits[0].to_dict()) >= {"chunk_id", "score", "start"}
    assert (tmp_path / "collections" / first.name).is_dir()
    assert store.pointer("docs")["collection"] == first.name
    # the folder is not held: another client (an ingestion) can open it while the retriever keeps answering
    QdrantClient(path=str(tmp_path / "collections" / first.name)).close()
    assert retriever.search(QUESTION, top_k=1)[0].doc_id == "with"


def test_filters_threshold_and_batches(tmp_path, corpus):
    store = LocalStore(tmp_path)
    build(store, "docs", "b" * 64, corpus)
    retriever = Retriever("docs", store=store)
    assert {h.doc_id for h in retriever.search(QUESTION, top_k=5, filters={"doc_id": "try"})} == {"try"}
    assert {h.doc_id for h in retriever.search(QUESTION, filters={"doc_id": ["try", "pass"]})} <= {"try", "pass"}
    assert retriever.search(QUESTION, filters={"source": "python-docs/for", "doc_id": "with"}) == []
    assert retriever.search("banana bread recipe with walnuts", score_threshold=0.5) == []
    assert all(h.score >= 0.3 for h in retriever.search(QUESTION, top_k=10, score_threshold=0.3))
    batch = retriever.search_batch([QUESTION, "import a submodule from a package", "the pass statement"], top_k=2)
    assert [hits[0].doc_id for hits in batch] == ["with", "import", "pass"]
    with pytest.raises(ValueError, match="cannot filter on 'text'"):
        retriever.search(QUESTION, filters={"text": "x"})
    with pytest.raises(ValueError, match="non-empty list of strings"):
        retriever.search(QUESTION, filters={"doc_id": []})
    with pytest.raises(ValueError, match="non-empty strings"):
        retriever.search_batch(["ok", "  "])
    with pytest.raises(ValueError, match="top_k"):
        retriever.search(QUESTION, top_k=0)


def test_refresh_switches_to_the_new_collection_and_old_ones_are_dropped_beyond_keep(tmp_path, corpus):
    store = LocalStore(tmp_path)
    old = build(store, "docs", "c" * 64, corpus, only=["for", "try"])
    retriever = Retriever("docs", store=store, refresh_interval_s=0)
    assert {h.doc_id for h in retriever.search(QUESTION, top_k=10)} <= {"for", "try"}
    new = build(store, "docs", "d" * 64, corpus)
    assert retriever.collection == old.name  # nothing changes until a refresh
    assert retriever.refresh() is True and retriever.refresh() is False
    assert retriever.commit == "d" * 64 and retriever.search(QUESTION)[0].doc_id == "with"
    newest = build(store, "docs", "e" * 64, corpus, keep=2)
    assert store.pointer("docs")["history"] == [newest.name, new.name]
    assert not (tmp_path / "collections" / old.name).exists() and (tmp_path / "collections" / new.name).exists()
    other = build(store, "docs-v2", "f" * 64, corpus, keep=1)  # another alias's collections are not touched
    assert (tmp_path / "collections" / new.name).exists() and store.live("docs-v2") == other.name
    # an automatic refresh happens on the next search once refresh_interval_s has passed
    auto = Retriever("docs", store=store, refresh_interval_s=0.01)
    assert auto.commit == "e" * 64
    build(store, "docs", "0" * 64, corpus)
    time.sleep(0.05)
    assert auto.search(QUESTION, top_k=1)[0].commit == "0" * 64


def test_hybrid_collections_fuse_keywords_and_keep_cosine_scores(tmp_path, corpus):
    store = LocalStore(tmp_path)
    build(store, "docs", "1" * 64, corpus, hybrid=True)
    hybrid = Retriever("docs", store=store)
    dense = Retriever("docs", store=store, hybrid=False)
    assert hybrid.info.hybrid is True
    hits = hybrid.search(QUESTION, top_k=5)
    assert hits[0].doc_id == "with" and all(0 < h.score <= 1 for h in hits)
    assert {h.chunk_id for h in dense.search(QUESTION, top_k=5)} & {h.chunk_id for h in hits}
    assert hybrid.search("the and of", top_k=2)  # no keywords left: dense alone
    assert all(h.score >= 0.35 for h in hybrid.search("ExceptionGroup except*", top_k=10, score_threshold=0.35))
    build(store, "plain", "2" * 64, corpus)
    with pytest.raises(IndexUnavailable, match="no keyword vectors"):
        Retriever("plain", store=store, hybrid=True).search(QUESTION)


def test_a_locked_folder_is_waited_for_then_copied(tmp_path, corpus):
    store = LocalStore(tmp_path, open_timeout_s=30)
    info = build(store, "docs", "3" * 64, corpus)
    holder = QdrantClient(path=str(store.folder(info.name)))  # e.g. another replica copying it right now
    threading.Timer(0.5, holder.close).start()
    started = time.monotonic()
    assert Retriever("docs", store=store).search(QUESTION, top_k=1)[0].doc_id == "with"
    assert time.monotonic() - started >= 0.4


def test_server_mode_moves_a_real_alias_and_drops_older_collections(tmp_path, corpus):
    client = QdrantClient(path=str(tmp_path / "server"))  # stands in for a server: the same alias API
    store = ServerStore(client, where="Qdrant server at stand-in")
    first = build(store, "docs", "4" * 64, corpus, only=["for"])
    retriever = Retriever("docs", store=store, refresh_interval_s=0)
    assert {a.alias_name: a.collection_name for a in client.get_aliases().aliases} == {"docs": first.name}
    assert retriever.search(QUESTION)[0].doc_id == "for" and retriever.commit == "4" * 64
    second = build(store, "docs", "5" * 64, corpus)
    assert {a.alias_name: a.collection_name for a in client.get_aliases().aliases} == {"docs": second.name}
    assert retriever.refresh() and retriever.search(QUESTION)[0].doc_id == "with"
    unfinished = CollectionInfo(name=collection_name("docs", "6" * 64, "89abcdef"), alias="docs", commit="6" * 64,
                                uri="u", embedder="all-MiniLM-L6-v2", dimension=384, hybrid=False, points=99)
    store.open_build(unfinished)  # a build that was killed: never published
    third = build(store, "docs", "7" * 64, corpus, keep=2)
    names = {c.name for c in client.get_collections().collections}
    assert names == {second.name, third.name}  # the oldest and the unfinished build are dropped
    # the retriever's collection (second) still exists; once it is dropped, a query moves to the live one
    build(store, "docs", "8" * 64, corpus, keep=1)
    assert retriever.search(QUESTION)[0].commit == "8" * 64


def test_an_unreachable_qdrant_server_is_index_unavailable_naming_it(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends
    monkeypatch.setenv("QDRANT_URL", f"http://127.0.0.1:{port}")
    retriever = Retriever("python-docs")  # nothing is contacted yet
    with pytest.raises(IndexUnavailable, match=rf"Qdrant server at http://127.0.0.1:{port} is unreachable for alias "
                                               "'python-docs'"):
        retriever.search(QUESTION)
    with pytest.raises(IndexUnavailable, match="Qdrant server"):
        Retriever("python-docs", runtime=RuntimeConfig(qdrant_url=f"http://127.0.0.1:{port}")).refresh()
