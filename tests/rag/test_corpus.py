"""rag/corpus.py: the Python documentation pages as a clean, deterministic documents table, and its round trip
through the versioned data store."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from rag.corpus import COLUMNS, clean_text, commit_python_docs, load_documents, python_docs


def test_the_python_docs_are_a_clean_deterministic_table():
    docs = python_docs()
    assert list(docs.columns) == COLUMNS and len(docs) > 70
    assert docs["doc_id"].is_unique and docs["doc_id"].tolist() == sorted(docs["doc_id"])
    assert docs["text"].str.len().sum() > 400_000
    with_page = docs.set_index("doc_id").loc["with"]
    assert with_page["title"] == 'The "with" statement' and with_page["source"] == "python-docs/with"
    assert with_page["text"].startswith('The "with" statement\n\n')
    for text in docs["text"]:
        assert text and text == text.strip()
        assert "\t" not in text and "\r" not in text and "\n\n\n" not in text and "\u00a0" not in text
        assert not re.search(r"[ \t]+\n", text) and not re.search(r"^\*{3,}$", text, re.MULTILINE)
    pd.testing.assert_frame_equal(docs, python_docs())


def test_clean_text_normalises_whitespace_and_keeps_indentation():
    raw = "Title\r\n*****\r\n\r\n\r\n\r\nSome\u00a0text   \n\n   code:\tx = 1\n\n\n\n"
    assert clean_text(raw) == "Title\n\nSome text\n\n   code:    x = 1"
    assert clean_text(" \n\t\n ") == ""


def test_the_corpus_round_trips_through_the_data_store():
    from fabric import data

    uri = "lakefs://corpus-test/main/python/pages.parquet"
    commit = commit_python_docs(uri)
    pinned, read_commit, docs = load_documents(uri)
    assert read_commit == commit and pinned == f"lakefs://corpus-test/{commit}/python/pages.parquet"
    pd.testing.assert_frame_equal(docs, python_docs())
    assert data.log(uri, limit=1)[0].metadata["source"] == "pydoc_data.topics"


def test_documents_without_title_or_source_get_defaults_and_bad_ones_are_refused():
    from fabric import data

    data.init("corpus-other")
    data.write("lakefs://corpus-other/main/d", pd.DataFrame({"doc_id": [2, 1, 3], "text": ["b", "a", "  "]}), "m")
    _, _, docs = load_documents("lakefs://corpus-other/main/d")
    assert docs["doc_id"].tolist() == ["1", "2"]  # ids as strings, sorted; the blank document is dropped
    assert docs["title"].tolist() == ["1", "2"] and set(docs["source"]) == {"lakefs://corpus-other/main/d"}
    data.write("lakefs://corpus-other/main/e", pd.DataFrame({"doc_id": ["a"], "body": ["x"]}), "m")
    with pytest.raises(ValueError, match="missing: text"):
        load_documents("lakefs://corpus-other/main/e")
    data.write("lakefs://corpus-other/main/f", pd.DataFrame({"doc_id": ["a", "a"], "text": ["x", "y"]}), "m")
    with pytest.raises(ValueError, match="repeat doc_id"):
        load_documents("lakefs://corpus-other/main/f")
