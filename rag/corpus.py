"""The demo corpus, CPython's own documentation pages (``pydoc_data.topics``), and reading any documents dataset.

About 80 pages (465k characters) ship with every Python, so retrieval works offline. :func:`python_docs` turns
them into the documents table every part of ``rag`` reads: ``doc_id``, ``title``, ``source``, ``text``, where
``text`` is the cleaned text that chunk offsets and citations index into. :func:`commit_python_docs` commits it
to the versioned data store, and :func:`load_documents` reads a documents dataset at one commit.

Example:
    >>> commit = commit_python_docs()   # lakefs://docs/main/python/pages.parquet
    >>> uri, commit, docs = load_documents("lakefs://docs/main/python/pages.parquet")
    >>> docs.loc[docs.doc_id == "with", "title"].item()
    'The "with" statement'
"""

from __future__ import annotations

import re
import sys
from typing import Any

__all__ = ["COLUMNS", "DEFAULT_URI", "clean_text", "commit_python_docs", "load_documents", "python_docs"]

DEFAULT_URI = "lakefs://docs/main/python/pages.parquet"
COLUMNS = ["doc_id", "title", "source", "text"]
_UNDERLINE = re.compile(r"^[ \t]*([*=~^\-\"#])\1{2,}[ \t]*$", re.MULTILINE)  # reST title underlines
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Normalises whitespace (line ends, tabs, no-break spaces, trailing blanks, runs of blank lines) and drops
    reST title underlines. Indentation is kept: it carries the grammar and code blocks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ").expandtabs(4)
    text = "\n".join(line.rstrip() for line in _UNDERLINE.sub("", text).split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip()


def python_docs() -> Any:
    """The documentation pages of this Python as a DataFrame (doc_id, title, source, text), sorted by doc_id.

    ``doc_id`` is the ``pydoc_data.topics`` key (``"with"``), ``title`` the page's first line, ``source``
    ``python-docs/<doc_id>``. Empty pages are dropped. Deterministic for a given Python version.
    """
    from pydoc_data.topics import topics

    import pandas as pd

    rows = []
    for key in sorted(topics):
        text = clean_text(topics[key])
        if text:
            rows.append({"doc_id": key, "title": text.split("\n", 1)[0].strip(), "source": f"python-docs/{key}",
                         "text": text})
    return pd.DataFrame(rows, columns=COLUMNS)


def commit_python_docs(uri: str = DEFAULT_URI, message: str | None = None, store: Any = None) -> str:
    """Commits :func:`python_docs` to ``uri`` (creating its repository); returns the commit id.

    CLI: ``fabric run ingest_docs --config configs/rag/python_docs.yaml`` does this first when the URI is empty.
    """
    from fabric import data

    data.init(data.DataURI.parse(uri).repo, store=store)
    docs = python_docs()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return data.write(uri, docs, message or f"Python {version} documentation pages from pydoc_data.topics",
                      metadata={"source": "pydoc_data.topics", "python": version, "pages": str(len(docs))},
                      store=store)


def load_documents(uri: str = DEFAULT_URI, store: Any = None) -> tuple[str, str, Any]:
    """Reads a documents dataset at the commit its ref resolves to now: (pinned URI, commit id, DataFrame).

    The frame has :data:`COLUMNS` (``title`` defaults to ``doc_id`` and ``source`` to the URI when missing),
    sorted by ``doc_id``; read with pyarrow in this process, no Ray needed. Raises ValueError when ``doc_id`` or
    ``text`` is missing or a ``doc_id`` repeats.
    """
    from fabric import data

    pinned = data.pin(uri, store=store)
    commit = data.DataURI.parse(pinned).ref
    docs = data.head(pinned, n=sys.maxsize, store=store)
    missing = [c for c in ("doc_id", "text") if c not in docs.columns]
    if missing:
        raise ValueError(f"documents at {uri} need columns doc_id and text; missing: {', '.join(missing)}")
    docs = docs.assign(doc_id=docs["doc_id"].astype(str), text=docs["text"].fillna("").astype(str))
    if "title" not in docs.columns:
        docs["title"] = docs["doc_id"]
    if "source" not in docs.columns:
        docs["source"] = uri
    repeated = docs["doc_id"][docs["doc_id"].duplicated()].unique().tolist()
    if repeated:
        raise ValueError(f"documents at {uri} repeat doc_id {repeated[:5]}: each document needs its own id")
    docs = docs[docs["text"].str.strip() != ""].sort_values("doc_id", kind="stable").reset_index(drop=True)
    return pinned, commit, docs[COLUMNS]
