"""Token chunks of documents, cut in the embedding model's own tokens, each with its character offsets.

A chunk holds at most ``size`` tokens of the embedding model's tokenizer (so the model sees all of it) and
repeats up to ``overlap`` tokens of the one before. Its ``text`` is exactly ``document.text[start:end]``: the
offsets come from the fast tokenizer's offset mapping, so a citation can always be checked against its source.
Within the last third of a window a chunk ends at the best boundary (paragraph, then sentence, then word) and the
next one starts at a sentence or word start, so quotes read cleanly.

Example:
    >>> spans = chunk_spans(text, embedder().tokenizer, size=200, overlap=40)
    >>> chunks = chunk_documents(docs, embedder().tokenizer)   # chunk_id "with#0", "with#1", ...
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHUNKER_VERSION", "chunk_documents", "chunk_spans", "token_offsets"]

CHUNKER_VERSION = 1  # part of a collection's settings: a change here means new collections
_ENDS = ".!?:;"


def token_offsets(text: str, tokenizer: Any) -> list[tuple[int, int]]:
    """(start, end) character offsets of ``text``'s tokens, without special tokens or truncation.

    ``tokenizer`` is a fast Hugging Face tokenizer or a ``tokenizers.Tokenizer``.
    """
    backend = _untruncated(tokenizer)
    return [(s, e) for s, e in backend.encode(text, add_special_tokens=False).offsets if e > s]


def _untruncated(tokenizer: Any) -> Any:
    """The tokenizers.Tokenizer behind ``tokenizer``, copied once without truncation or padding."""
    cached = getattr(tokenizer, "_fabric_untruncated", None)
    if cached is not None:
        return cached
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not isinstance(backend, Tokenizer):
        raise TypeError(f"chunking needs a fast tokenizer (with offsets), got {type(tokenizer).__name__}")
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    try:
        tokenizer._fabric_untruncated = copy
    except AttributeError:  # a tokenizers.Tokenizer takes no new attributes: copy it each time
        pass
    return copy


def chunk_spans(text: str, tokenizer: Any, size: int = 200, overlap: int = 40) -> list[tuple[int, int]]:
    """Character spans (start, end) of ``text``'s chunks, in order; each ``text[start:end]`` has <= ``size`` tokens."""
    if size < 8:
        raise ValueError(f"chunk size must be at least 8 tokens, got {size}")
    if not 0 <= overlap <= size // 2:
        raise ValueError(f"chunk overlap must be between 0 and half the chunk size ({size // 2}), got {overlap}")
    offsets = token_offsets(text, tokenizer)
    spans: list[tuple[int, int]] = []
    i, n = 0, len(offsets)
    while i < n:
        j = min(i + size, n)
        if j < n:
            j = _best_end(text, offsets, i + (2 * size) // 3, j)
        spans.append((offsets[i][0], offsets[j - 1][1]))
        if j >= n:
            break
        i = _next_start(text, offsets, max(j - overlap, i + 1), j)
    return spans


def _boundary(text: str, offsets: list[tuple[int, int]], k: int) -> int:
    """How good a cut before token ``k`` is: 3 paragraph, 2 sentence, 1 word, 0 inside a word."""
    gap = text[offsets[k - 1][1]:offsets[k][0]]
    if "\n\n" in gap:
        return 3
    if gap and text[offsets[k - 1][1] - 1] in _ENDS:
        return 2
    return 1 if gap else 0


def _best_end(text: str, offsets: list[tuple[int, int]], lo: int, hi: int) -> int:
    """The end (exclusive token index) in [lo, hi] at the best boundary, the latest among equals."""
    return max(range(max(lo, 1), hi + 1), key=lambda k: (_boundary(text, offsets, k), k))


def _next_start(text: str, offsets: list[tuple[int, int]], lo: int, hi: int) -> int:
    """The next chunk's first token in [lo, hi): the earliest sentence start, else the earliest word start."""
    starts = range(max(lo, 1), hi)
    for level in (2, 1):
        for k in starts:
            if _boundary(text, offsets, k) >= level:
                return k
    return max(lo, 1)


def chunk_documents(docs: Any, tokenizer: Any, size: int = 200, overlap: int = 40) -> Any:
    """Chunks of every document: a DataFrame with chunk_id (``"<doc_id>#<n>"``), doc_id, title, source, text,
    start, end, in document order."""
    import pandas as pd

    rows = []
    for doc in docs.itertuples(index=False):
        for n, (start, end) in enumerate(chunk_spans(doc.text, tokenizer, size, overlap)):
            rows.append({"chunk_id": f"{doc.doc_id}#{n}", "doc_id": doc.doc_id, "title": doc.title,
                         "source": doc.source, "text": doc.text[start:end], "start": start, "end": end})
    return pd.DataFrame(rows, columns=["chunk_id", "doc_id", "title", "source", "text", "start", "end"])
