"""The grounding guardrail on the answer path: what an answer scoring below ``groundedness.threshold`` gets
(``groundedness.on_ungrounded``).

* ``flag``: the answer is served as generated and marked: its verdict says ``flag`` and lists the unsupported
  sentences;
* ``refuse``: the answer is replaced by :data:`REFUSED`;
* ``quote``: the answer is replaced by the retrieved passages' own words: for each claim sentence, the span of the
  context that supports it best (:class:`rag.groundedness.SentenceSupport` ``context`` and ``span``), quoted,
  without repeats, each with its ``[n]`` marker; when no sentence has a supporting span, by the refusal.

The verdict, in ``/rag/query``'s body and the chat route's ``rag`` field as ``guardrail``::

    {"action": "none" | "flag" | "refuse" | "quote", "threshold": 0.5, "score": 0.12,
     "unsupported": [{"text": "...", "start": 0, "end": 52, "score": 0.12}]}

``start``/``end`` are offsets in the generated answer. A replaced answer's own words never reach the client: its
verdict and groundedness sentences lose their ``text`` (:func:`redacted`); the inference log keeps them. An answer
that could not be scored is served with action ``none`` and score None (the scoring failure is logged).

Example:
    >>> replacement, verdict = decide(detail, used, "quote", 0.5)
    >>> verdict["action"], replacement                      # ('quote', '"The with statement ..." [1]')
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["ACTIONS", "REFUSED", "decide", "passed", "quoted", "redacted"]

REFUSED = "The retrieved sources do not support an answer to this question."
ACTIONS = ("none", "flag", "refuse", "quote")


def passed(threshold: float, score: float | None = None) -> dict[str, Any]:
    """The verdict of an answer the guardrail lets through unchanged (or that was not scored: ``score`` None)."""
    return {"action": "none", "threshold": threshold, "score": score, "unsupported": []}


def decide(detail: Any | None, used: list[dict[str, Any]], mode: str, threshold: float) -> tuple[str | None, dict]:
    """``(replacement, verdict)`` of an answer scored as ``detail`` against ``used``: the text served instead of
    the answer (None: serve it) and the verdict."""
    if detail is None:
        return None, passed(threshold)
    score = round(float(detail.score), 4)
    if detail.score >= threshold:
        return None, passed(threshold, score)
    unsupported = [{"text": s.text, "start": s.start, "end": s.end, "score": round(float(s.score), 4)}
                   for s in detail.sentences if s.claim and s.score < threshold]
    verdict = {"action": mode, "threshold": threshold, "score": score, "unsupported": unsupported}
    if mode == "refuse":
        return REFUSED, verdict
    if mode == "quote":
        return quoted(detail, used) or REFUSED, verdict
    return None, verdict


def quoted(detail: Any, used: list[dict[str, Any]]) -> str:
    """The contexts' supporting spans of ``detail``'s claim sentences, each quoted once with its ``[n]`` marker
    (``n`` numbers the contexts as the prompt and the citations do); empty when none has a span."""
    seen: set[tuple[int, str]] = set()
    parts = []
    for sentence in detail.sentences:
        if not sentence.claim or sentence.context is None or sentence.span is None:
            continue
        if not 0 <= sentence.context < len(used):
            continue
        text = used[sentence.context]["text"]
        a, b = (max(0, min(int(x), len(text))) for x in sentence.span)
        words = " ".join(text[a:b].split())
        if not words or (sentence.context, words) in seen:
            continue
        seen.add((sentence.context, words))
        parts.append(f'"{words}" [{sentence.context + 1}]')
    return " ".join(parts)


def redacted(verdict: dict[str, Any], grounded: dict[str, Any] | None) -> tuple[dict, dict | None]:
    """Copies of the verdict and the groundedness detail without the replaced answer's sentence texts (what the
    client sees of an answer it does not get)."""
    verdict = copy.deepcopy(verdict)
    for item in verdict["unsupported"]:
        item.pop("text", None)
    if grounded is not None:
        grounded = copy.deepcopy(grounded)
        for sentence in grounded.get("sentences") or []:
            sentence.pop("text", None)
    return verdict, grounded
