"""RAG fixtures: a few Python documentation pages ingested once per test session into Qdrant local mode."""

from __future__ import annotations

import pytest

# Six pages (about 35 chunks of 200 tokens): enough for "How does a with statement call __exit__?" and for
# questions the pages do not cover, cheap to embed.
PAGES = ["with", "context-managers", "for", "try", "exceptions", "raise"]
ALIAS = "test-docs"


@pytest.fixture(scope="session")
def docs_index(ray_session):
    """``{"alias", "commit", "collection", "uri", "docs"}``: ``PAGES`` ingested with rag.ingest under ``ALIAS``
    (the demo corpus committed to the session's throwaway data store first); ``docs`` maps doc_id to the page
    text that chunk offsets index into."""
    from rag.corpus import python_docs
    from rag.ingest import IngestSettings, ingest

    result = ingest(IngestSettings(alias=ALIAS, doc_ids=PAGES, actors=1, actor_cpus=0.5))
    frame = python_docs()
    docs = dict(zip(frame["doc_id"], frame["text"], strict=True))
    return {**result, "docs": {doc_id: docs[doc_id] for doc_id in PAGES}}
