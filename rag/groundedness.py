"""Groundedness of an answer in its retrieved contexts: one entry point, scorers behind one small protocol.

An answer is split into sentences; each sentence that makes a claim gets a support score in [0, 1] from the
chosen scorer, with the context (and the character span in it) that supports it best; the answer's score is the
**minimum** over its claim sentences. The minimum, not a soft-min or a mean, because one unsupported sentence is
what makes an answer ungrounded, and because it keeps each scorer's calibration meaningful for whole answers: an
answer is supported (score >= 0.5) exactly when every claim in it is, whatever the answer's length (a soft-min
drifts below its sentences' scores as answers grow, moving the threshold with length).

Sentences that claim nothing are not judged and never pull the score down: refusals ("I don't know.", "The
context does not say which ..."), questions and bare fillers ("Sure!", "Hope this helps."). They are kept in
``sentences`` with ``claim=False`` and score 1.0: an answer that says it cannot answer invents nothing, which is
what groundedness measures (whether refusing was right is retrieval's and the evaluation's business). An empty
answer therefore scores 1.0 with no sentences, and an answer with claims but no contexts scores 0.0.

Scorers (``scorer=``): ``lexical`` (rag.lexical, content-word overlap against the best window of context sentences
plus number, date, entity and negation consistency: the fast fallback), ``nli`` (rag.nli, the cross-encoder the
platform trains on human-labelled pairs and ships trained, imported only when asked for) and ``default``: ``nli``
when ``rag.nli.is_default()`` says it has an encoder (the shipped weights, or a registered champion that beat them
on the same held-out rows), else ``lexical`` (also when the encoder fails to load: answers keep getting a score,
and the failure is logged). Every scorer's sentence scores are calibrated on real labelled pairs so that 0.5 is
its decision threshold. ``judge`` (rag.judge) asks an LLM at an OpenAI-compatible endpoint through Evidently's
faithfulness judge, for a sample of answers off the request path; its verdict (1.0 or 0.0) is for the whole answer.
New scorers plug in with :func:`register_scorer`.

Example:
    >>> from rag import groundedness
    >>> contexts = ["The with statement calls __exit__() when the block ends. It was added in Python 2.5."]
    >>> groundedness.score("The with statement was added in Python 2.5.", contexts, scorer="lexical") >= 0.5
    True
    >>> groundedness.score("The with statement was added in Python 3.1.", contexts, scorer="lexical") < 0.5
    True
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "Groundedness",
    "Scorer",
    "SentenceSupport",
    "aggregate",
    "available_scorers",
    "check_inputs",
    "detail",
    "get_scorer",
    "is_claim",
    "register_scorer",
    "score",
    "scores",
    "split_sentences",
]

THRESHOLD = 0.5
_log = logging.getLogger(__name__)


@dataclass
class SentenceSupport:
    """One answer sentence and how well it is supported.

    Attributes:
        text: the sentence, ``answer[start:end]``.
        start: character offset of the sentence in the answer.
        end: character offset one past its end.
        score: calibrated support in [0, 1]; below 0.5 means not supported. 1.0 for a sentence that is no claim.
        context: index of the context that supports it best, None when no context shares anything with it (or it
            is no claim).
        span: character offsets of the supporting window (whole context sentences) in that context, or None.
        claim: False for sentences that assert nothing (refusals, questions, fillers); they are not judged.
    """

    text: str
    start: int
    end: int
    score: float
    context: int | None = None
    span: tuple[int, int] | None = None
    claim: bool = True


@dataclass
class Groundedness:
    """An answer's groundedness: the score (minimum over claim sentences), the scorer, and each sentence."""

    score: float
    scorer: str
    sentences: list[SentenceSupport] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        """Whether the answer counts as grounded: every claim sentence scored at least 0.5."""
        return self.score >= THRESHOLD

    def to_dict(self) -> dict:
        """A JSON-ready dict: score, scorer, supported and the sentences (spans as two-item lists)."""
        sentences = []
        for sentence in self.sentences:
            item = asdict(sentence)
            item["span"] = list(sentence.span) if sentence.span is not None else None
            sentences.append(item)
        return {"score": self.score, "scorer": self.scorer, "supported": self.supported, "sentences": sentences}


@runtime_checkable
class Scorer(Protocol):
    """What a groundedness scorer implements: a name and one batched call.

    ``detail_batch(answers, contexts)`` gets already-checked inputs (``contexts[i]`` are the contexts of
    ``answers[i]``) and returns one :class:`Groundedness` per answer, in order. Scorers may use
    :func:`split_sentences`, :func:`is_claim` and :func:`aggregate` so that every scorer splits and combines the
    same way.
    """

    name: str

    def detail_batch(self, answers: list[str], contexts: list[list[str]]) -> list[Groundedness]: ...


# --- registry --------------------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[[], Scorer]] = {}
_INSTANCES: dict[str, Scorer] = {}
_LOCK = threading.Lock()


def _lazy(target: str) -> Callable[[], Scorer]:
    """A factory that imports ``module:Class`` only when the scorer is first asked for."""

    def factory() -> Scorer:
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute)()

    factory.__qualname__ = f"lazy({target})"
    return factory


def register_scorer(name: str, factory: Callable[[], Scorer]) -> None:
    """Registers (or replaces) scorer ``name``; ``factory()`` builds it on first use, once per process.

    Example:
        >>> register_scorer("judge", lambda: MyJudge(url="http://127.0.0.1:8000/v1"))  # doctest: +SKIP
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a scorer name must be a non-empty string, not {name!r}")
    if name == "default":
        raise ValueError("'default' is not a scorer of its own: it resolves to 'nli' or 'lexical'")
    if not callable(factory):
        raise TypeError(f"the factory of scorer {name!r} must be callable, not {type(factory).__name__}")
    with _LOCK:
        _FACTORIES[name] = factory
        _INSTANCES.pop(name, None)


register_scorer("lexical", _lazy("rag.lexical:LexicalScorer"))
register_scorer("nli", _lazy("rag.nli:NLIScorer"))
register_scorer("judge", _lazy("rag.judge:from_env"))  # FABRIC_JUDGE_*; the RAG gateway re-registers it from config


def available_scorers() -> list[str]:
    """The names :func:`get_scorer` accepts, ``default`` first."""
    return ["default", *sorted(_FACTORIES)]


def _default_name() -> str:
    """``nli`` when rag.nli has an encoder (shipped or a better champion); anything going wrong means lexical."""
    try:
        return "nli" if importlib.import_module("rag.nli").is_default() else "lexical"
    except Exception:  # no rag.nli, no shipped weights, no champion: the baseline stays the default
        return "lexical"


def get_scorer(name: str = "default") -> Scorer:
    """The scorer registered as ``name`` (built once per process and cached); ``default`` as described above (and
    ``lexical``, with a warning, when the scorer it names fails to load).

    Raises:
        ValueError: an unknown name; the message lists the available ones.
    """
    if name == "default":
        resolved = _default_name()
        if resolved == "lexical":
            return get_scorer("lexical")
        try:
            return get_scorer(resolved)
        except Exception as exc:  # a champion that cannot be loaded must not take answers' scores down with it
            _log.warning("default groundedness scorer %r failed to load (%s); using 'lexical'", resolved, exc)
            return get_scorer("lexical")
    if name not in _FACTORIES:
        raise ValueError(f"unknown groundedness scorer {name!r}; available: {', '.join(available_scorers())}")
    with _LOCK:
        instance = _INSTANCES.get(name)
        if instance is None:
            instance = _INSTANCES[name] = _FACTORIES[name]()
    return instance


# --- entry points ----------------------------------------------------------------------------------------------


def check_inputs(answers: Sequence[str], contexts: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """Validates a batch; returns plain lists. Wrong types are TypeErrors naming the item, lengths a ValueError."""
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise TypeError(f"answers must be a list of strings, not {type(answers).__name__}")
    if isinstance(contexts, str) or not isinstance(contexts, Sequence):
        raise TypeError(f"contexts must be a list of lists of strings, not {type(contexts).__name__}")
    if len(answers) != len(contexts):
        raise ValueError(f"got {len(answers)} answers but {len(contexts)} lists of contexts; give one list per answer")
    checked = []
    for i, (answer, ctx) in enumerate(zip(answers, contexts, strict=True)):
        if not isinstance(answer, str):
            raise TypeError(f"answer {i} must be a string, not {type(answer).__name__}")
        checked.append(_check_contexts(ctx, f"contexts of answer {i}"))
    return list(answers), checked


def _check_contexts(contexts: Sequence[str], what: str) -> list[str]:
    if isinstance(contexts, str):
        raise TypeError(f"{what} must be a list of strings, not one string (wrap it: [context])")
    if not isinstance(contexts, Sequence):
        raise TypeError(f"{what} must be a list of strings, not {type(contexts).__name__}")
    for j, context in enumerate(contexts):
        if not isinstance(context, str):
            raise TypeError(f"{what}: item {j} must be a string, not {type(context).__name__}")
    return list(contexts)


def detail(answer: str, contexts: list[str], scorer: str = "default") -> Groundedness:
    """Per-sentence groundedness of ``answer`` in ``contexts`` (which sentence, which context, which span).

    Example:
        >>> result = detail("A with statement calls __exit__().", ["... calls __exit__() ..."], scorer="lexical")
        >>> result.sentences[0].context, result.supported  # doctest: +SKIP
        (0, True)
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a string, not {type(answer).__name__}")
    return get_scorer(scorer).detail_batch([answer], [_check_contexts(contexts, "contexts")])[0]


def score(answer: str, contexts: list[str], scorer: str = "default") -> float:
    """How well ``answer`` is supported by ``contexts``, in [0, 1]; below 0.5 means not grounded."""
    return detail(answer, contexts, scorer).score


def scores(answers: list[str], contexts: list[list[str]], scorer: str = "default") -> list[float]:
    """:func:`score` for a batch (``contexts[i]`` belong to ``answers[i]``), in one call to the scorer."""
    answers, contexts = check_inputs(answers, contexts)
    return [result.score for result in get_scorer(scorer).detail_batch(answers, contexts)]


def aggregate(sentences: list[SentenceSupport], scorer: str) -> Groundedness:
    """The answer's :class:`Groundedness` from its sentences: the minimum over claims (1.0 when there are none)."""
    claims = [s.score for s in sentences if s.claim]
    return Groundedness(score=min(claims) if claims else 1.0, scorer=scorer, sentences=sentences)


# --- sentences -------------------------------------------------------------------------------------------------

_ABBREVIATIONS = re.compile(r"(?:\b(?:e\.g|i\.e|cf|vs|viz|approx|Mr|Mrs|Ms|Dr|St|No|Fig|Sec)|(?<![\w.])[A-Z])\.$")
_BOUNDARY = re.compile(
    r"(?<=[.!?…])(?P<end>[\"'”’)\]*]*)\s+(?=[^a-z\s])"  # sentence end, then a sentence not starting in lowercase
    r"|\n[ \t]*\n\s*"  # a blank line
    r"|\n(?=[ \t]*(?:[-*•]|\d{1,3}[.)])\s)"  # a new list item
)
_LIST_MARKER = re.compile(r"(?:\d{1,3}|[A-Za-z]|[ivx]{1,4})[.)]|[-*•]")
_ALNUM = re.compile(r"[^\W_]|\d")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences in ``text``, trimmed of surrounding whitespace.

    Splits after ``.``/``!``/``?`` followed by a sentence that does not start in lowercase (so ``e.g. the``,
    ``3.12`` and ``sys.exc_info()`` stay whole), at blank lines and before list items; hard line wraps inside a
    sentence are kept. A list marker (``1.``, ``-``) joins the sentence after it, a piece with no letter or digit
    joins a neighbour.

    Example:
        >>> text = "Hello there. It is 3.12 now.\\n\\n1. First item"
        >>> [text[a:b] for a, b in split_sentences(text)]
        ['Hello there.', 'It is 3.12 now.', '1. First item']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, not {type(text).__name__}")
    pieces, start = [], 0
    for match in _BOUNDARY.finditer(text):
        if match.group("end") is None:
            pieces.append((start, match.start()))
        elif _ABBREVIATIONS.search(text[max(0, match.start() - 8):match.start()]):
            continue  # "e.g. The", "Dr. Smith": not the end of a sentence
        else:  # closing quotes and brackets stay with their sentence
            pieces.append((start, match.end("end")))
        start = match.end()
    pieces.append((start, len(text)))
    return _merge(text, [_trim(text, a, b) for a, b in pieces])


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _merge(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Joins list markers to the next piece and punctuation-only pieces to a neighbour; drops empty pieces."""
    merged: list[tuple[int, int]] = []
    pending: int | None = None  # start of a list marker waiting for its sentence
    for start, end in spans:
        if start == end:
            continue
        piece = text[start:end]
        if _LIST_MARKER.fullmatch(piece) and (start, end) != spans[-1]:
            pending = start if pending is None else pending
            continue
        if not _ALNUM.search(piece):
            if merged:
                merged[-1] = (merged[-1][0], end)
            elif pending is None:
                pending = start
            continue
        merged.append((start if pending is None else pending, end))
        pending = None
    return merged


_REFUSAL = re.compile(
    r"^(?:(?:sorry|unfortunately|however)[,.!]?\s+)?(?:"
    r"i (?:do not|don'?t|don’t) (?:know|have (?:enough )?information)"
    r"|i(?:'m| am) (?:not sure|unable to|not able to)"
    r"|i (?:cannot|can'?t|can’t|could not|couldn'?t|couldn’t|am unable to) (?:find|answer|tell|determine|say)"
    r"|(?:the |this )?(?:provided |given |retrieved )?(?:context|contexts|documents?|sources?|passages?|documentation)"
    r" (?:does|do|did) not (?:say|mention|contain|specify|state|provide|include|cover|explain|describe|answer)"
    r"|(?:this|that|it) is not (?:mentioned|specified|stated|covered|described|explained) in the"
    r"|there is no (?:information|mention|answer)"
    r"|no relevant (?:information|documents?|context|passages?) (?:was|were|is|are) (?:found|retrieved)"
    r"|(?:there is )?not enough information"
    r")\b",
    re.IGNORECASE,
)
_FILLER = re.compile(
    r"^(?:sure|certainly|of course|great question|good question|yes|no|ok(?:ay)?|hope (?:this|that) helps"
    r"|happy to help|let me know if you have (?:any )?(?:other |more )?questions|here(?:'s| is| are)"
    r"(?: (?:the|an?|how|what|why|some))?(?: (?:answer|explanation|example|details|summary|overview))?)[\s.!:]*$",
    re.IGNORECASE,
)


def is_claim(sentence: str) -> bool:
    """Whether ``sentence`` asserts something a context should support.

    Not claims: refusals at the start of the sentence with no contrasting clause ("I don't know.", "The context
    does not say which ...", "There is no information about ..."), questions, and fillers ("Sure!", "Hope this
    helps."). A refusal that goes on with ", but ..." still claims what follows.
    """
    text = sentence.strip().lstrip("*_>#- ").strip()
    if not _ALNUM.search(text) or text.endswith("?") or _FILLER.match(text):
        return False
    if _REFUSAL.match(text):
        return re.search(r"[,;:]\s*(?:but|however|although|though)\b", text, re.IGNORECASE) is not None
    return True
