"""The RAG answer as pure functions (no Ray, no model): the prompt's numbered context, citations with quotes,
``[n]`` markers in the answer, and the answer given when nothing relevant was retrieved.

A citation's ``quote`` is the part of its chunk that supports the answer: the supporting window the groundedness
scorer found for an answer sentence (:class:`rag.groundedness.SentenceSupport` ``span``), else the chunk's
opening sentences. ``start``/``end`` are the quote's character offsets in the source document, so
``document.text[start:end] == quote`` (a chunk's ``text`` is ``document.text[chunk.start:chunk.end]``).

Example:
    >>> context, used = numbered_context(hits, max_chars=6000)      # "[1] (with) ...\\n\\n[2] ..."
    >>> cited = citations(used, detail)                             # after scoring the answer against ``used``
    >>> marked = mark_answer(answer, detail)                        # "... calls __exit__() [1]."
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["DEFAULT_TEMPLATE", "NOT_COVERED", "citations", "complete_sentences", "mark_answer", "numbered_context",
           "retrieved", "sources_footer"]

DEFAULT_TEMPLATE = [
    {"role": "system", "content": (
        "You answer questions about the documentation using only the numbered excerpts below. Answer in two or "
        "three sentences, and cite the excerpts you use as [1], [2]. If the excerpts do not answer the question, "
        "say that the documentation does not cover it.\n\nExcerpts:\n{{context}}")},
    {"role": "user", "content": "{{question}}"},
]
NOT_COVERED = ("The documentation does not cover this question: no passage of it was relevant enough to answer "
               "from, so no answer was generated.")
QUOTE_CHARS = 300  # a quote without a supporting span: the chunk's opening, cut at a sentence end within this
_MARKER = re.compile(r"\[\d+\]")


def complete_sentences(text: str) -> str:
    """``text`` up to the end of its last complete sentence (for an answer cut off by ``max_tokens``, whose dangling
    fragment would otherwise be judged as a claim); the whole text when no sentence is complete."""
    from rag.groundedness import split_sentences

    ends = [b for _, b in split_sentences(text) if text[b - 1] in ".!?)]\"'`"]
    return text[:ends[-1]] if ends else text


def numbered_context(hits: list[dict[str, Any]], max_chars: int) -> tuple[str, list[dict[str, Any]]]:
    """The prompt's excerpts ``[n] (title) text``, best hit first, and the hits that fit within ``max_chars``
    (always at least the best one, cut to fit)."""
    parts: list[str] = []
    used: list[dict[str, Any]] = []
    total = 0
    for hit in hits:
        part = f"[{len(used) + 1}] ({hit['title']}) {hit['text'].strip()}"
        if used and total + len(part) > max_chars:
            break
        parts.append(part[:max_chars])
        used.append(hit)
        total += len(part) + 2
    return "\n\n".join(parts), used


def citations(used: list[dict[str, Any]], detail: Any | None) -> list[dict[str, Any]]:
    """One citation per hit given to the LLM, numbered as in the prompt, each with its supporting quote."""
    spans: dict[int, tuple[float, tuple[int, int]]] = {}  # context -> (score, span) of its best-supported sentence
    for sentence in getattr(detail, "sentences", None) or []:
        if sentence.context is None or sentence.span is None:
            continue
        best = spans.get(sentence.context)
        if best is None or sentence.score > best[0]:
            spans[sentence.context] = (sentence.score, tuple(sentence.span))
    cited = []
    for n, hit in enumerate(used):
        text = hit["text"]
        supported = n in spans
        a, b = _clamp(spans[n][1], len(text)) if supported else _opening(text)
        a, b = _strip(text, a, b)
        cited.append({"n": n + 1, "chunk_id": hit["chunk_id"], "doc_id": hit["doc_id"], "title": hit["title"],
                      "source": hit["source"], "start": hit["start"] + a, "end": hit["start"] + b,
                      "score": round(float(hit["score"]), 4), "quote": text[a:b],
                      "supports_answer": supported and spans[n][0] >= 0.5,
                      "chunk_start": hit["start"], "chunk_end": hit["end"]})
    return cited


def retrieved(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``POST /rag/retrieve``'s citations: as :func:`citations` without an answer (the quote is each chunk's
    opening), each with the chunk's whole ``text``, its data ``commit`` and ``uri``."""
    return [{**cited, "text": hit["text"], "commit": hit["commit"], "uri": hit.get("uri") or ""}
            for cited, hit in zip(citations(hits, None), hits, strict=True)]


def mark_answer(answer: str, detail: Any | None) -> str:
    """``answer`` with ``[n]`` after each sentence the scorer found supported by excerpt ``n`` (sentences that
    already cite an excerpt are left as they are)."""
    sentences = sorted(getattr(detail, "sentences", None) or [], key=lambda s: s.end, reverse=True)
    for sentence in sentences:
        if sentence.context is None or sentence.score < 0.5 or _MARKER.search(answer[sentence.start:sentence.end]):
            continue
        end = sentence.end
        while end > sentence.start and answer[end - 1] in " \t\n":
            end -= 1
        stop = end - 1 if end > sentence.start and answer[end - 1] in ".!?" else end
        answer = f"{answer[:stop]} [{sentence.context + 1}]{answer[stop:]}"
    return answer


def sources_footer(cited: list[dict[str, Any]]) -> str:
    """The list of sources appended to a chat answer: ``[n] title (source)`` per citation."""
    if not cited:
        return ""
    return "\n\nSources:\n" + "\n".join(f"[{c['n']}] {c['title']} ({c['source']})" for c in cited)


def _clamp(span: tuple[int, int], length: int) -> tuple[int, int]:
    a, b = max(0, min(int(span[0]), length)), max(0, min(int(span[1]), length))
    return (a, b) if b > a else (0, min(length, QUOTE_CHARS))


def _opening(text: str) -> tuple[int, int]:
    """The chunk's first sentences within ``QUOTE_CHARS`` (a whole first sentence at least, if short enough)."""
    if len(text) <= QUOTE_CHARS:
        return 0, len(text)
    window = text[:QUOTE_CHARS]
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", window)]
    if ends:
        return 0, ends[-1]
    space = window.rfind(" ")
    return 0, space if space > 0 else QUOTE_CHARS


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b
