"""The ``lexical`` groundedness scorer: word overlap with the best window of context sentences, plus the checks
that embedding similarity misses (FACTS.md): numbers, dates, names and negations must agree.

For each claim sentence of an answer, :func:`best_window` finds the run of one to three consecutive sentences of
one context that shares the most content words with it (lowercased, stopwords dropped, light suffix stemming;
numbers, version numbers, written numbers, months, code identifiers and capitalised names kept as tokens of their
own). Against that window it measures:

- ``coverage``: the share of the claim's content words found in the window;
- ``bigrams``: the share of the claim's adjacent content-word pairs found (adjacent or one word apart) in the
  window, so a name swapped for another that also occurs nearby still costs something;
- ``missing_numbers``: numbers, versions and dates of the claim that the window does not contain;
- ``missing_entities``: identifiers (``__exit__``, ``sys.exc_info``, ``StopIteration``), quoted words and
  capitalised names of the claim that the window does not contain;
- ``negation``: 1 when the claim is negated ("not", "never", "cannot", "n't", ...) and the matching part of the
  window is not, or the other way round.

These combine into a raw score (:data:`WEIGHTS`), which a logistic calibration (:data:`CALIBRATION`, fitted by
:func:`fit_calibration`) maps to [0, 1] so that 0.5 is the decision threshold. A claim sharing no content word
with any context scores 0. Speed: a few hundred to a thousand 3-sentence answers a second on one CPU (contexts are
analysed once and cached, so the same retrieved chunks cost nothing the second time).

Example:
    >>> from rag.lexical import LexicalScorer, best_window
    >>> contexts = ["The with statement was added in Python 2.5. It calls __exit__() at the end."]
    >>> window = best_window("Python 2.5 added the with statement.", contexts)
    >>> window.context, contexts[0][window.span[0]:window.span[1]]
    (0, 'The with statement was added in Python 2.5.')
    >>> [round(g.score, 2) > 0.5 for g in LexicalScorer().detail_batch(["It came in Python 2.5."], [contexts])]
    [True]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rag.groundedness import Groundedness, SentenceSupport, aggregate, is_claim, split_sentences

__all__ = ["CALIBRATION", "WEIGHTS", "LexicalScorer", "Window", "best_window", "calibrate", "fit_calibration",
           "raw_score"]

# Weights of the features in the raw score. Chosen by hand so that one missing number, entity or a flipped
# negation outweighs any overlap (the issue: such a sentence must score low even when every other word matches).
WEIGHTS = {"coverage": 1.0, "bigrams": 0.5, "missing_numbers": -1.0, "missing_entities": -0.75, "negation": -0.75}

# (slope, intercept) of the logistic calibration: score = 1 / (1 + exp(-(slope * raw + intercept))).
# Fitted with fit_calibration() on training pairs only: see calibrate() and the note in the session report.
CALIBRATION = (8.0, -7.0)

MAX_WINDOW = 3  # sentences in a window: a claim may merge two or three adjacent sentences of a context

_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each either else etc e.g eg i.e ie few for from further had
has have having he her here hers herself him himself his how however i if in into is it its itself just me more
most my myself nor not no never cannot of off on once only or other otherwise our ours ourselves out over own
same she should so some such than that the their theirs them themselves then there these they this those
through thus to too under until up upon very was we were what when where whether which while who whom whose why
will with within would you your yours yourself yourselves may might must shall also let lets according per via
nothing nobody nowhere neither something anything everything someone thing things way ways
don doesn didn isn aren wasn weren haven hasn hadn won wouldn couldn shouldn mustn needn ca
""".split())

_NEGATIONS = frozenset({"not", "no", "never", "cannot", "nothing", "nobody", "nowhere", "neither", "nor"})

_WRITTEN = {w: str(n) for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_WRITTEN |= {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
             "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
             "twice": "2", "once": "1", "single": "1", "double": "2", "half": "0.5"}
_ORDINALS = {w: f"{n + 1}th" for n, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth".split())}
_MONTHS = frozenset("january february march april june july august september october november december".split())
_NOT_A_COUNT = frozenset({"no", "any", "each", "every", "which", "some", "this", "that", "the", "only", "another"})

_TOKEN = re.compile(
    r"(?P<num>(?:(?<![\w)\]])-)?(?<![\w.])(?:0[xob][0-9a-f_]+|\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)*))"
    r"|(?P<word>[^\W\d]\w*(?:\.[^\W\d]\w*)*)(?P<call>\(\))?(?:['’](?P<suffix>[a-z]{1,2})\b)?",
    re.IGNORECASE,
)
_QUOTES = "\"'`“‘*"
_LEAD_IN = re.compile(r"^(?:according to|based on|as stated in|per) (?:the |this )?(?:provided |given )?"
                      r"(?:context|contexts|documentation|docs|passage|sources?)\s*,\s*", re.IGNORECASE)


@dataclass(frozen=True)
class _Text:
    """A sentence, analysed once: content tokens in order and as a set, their pairs, and what must agree."""

    seq: tuple[str, ...]  # content tokens in order (stems, #numbers, identifiers)
    content: frozenset[str]
    pairs: frozenset[tuple[str, str]]  # adjacent and one-apart content pairs
    words: frozenset[str]  # every word lowercased, stopwords and the parts of dotted names included
    numbers: frozenset[str]
    entities: frozenset[str]
    negations: tuple[int, ...]  # for each negation cue, how many content tokens come before it


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """A light suffix stemmer: enough that "calls", "called", "calling" and "call" meet (not linguistics)."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix, keep in (("ing", 5), ("ed", 4), ("tion", 5), ("ment", 6), ("ness", 6)):
        if word.endswith(suffix) and len(word) >= keep:
            word = word[: -len(suffix)] + ("t" if suffix == "tion" else "")
            if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "aeiouslz":
                word = word[:-1]
            break
    if word.endswith("e") and len(word) >= 3:
        word = word[:-1]
    return word


def _is_identifier(token: str, call: bool) -> bool:
    return call or "_" in token or "." in token or any(
        a.islower() and b.isupper() for a, b in zip(token, token[1:], strict=False)) or (
        len(token) > 1 and token.isupper() and token.isalpha())


@lru_cache(maxsize=16384)
def _analyse(text: str) -> _Text:
    seq: list[str] = []
    words: set[str] = set()
    numbers: set[str] = set()
    entities: set[str] = set()
    negations: list[int] = []
    initial = True  # the next word starts the sentence (or follows a colon): its capital says nothing
    matches = list(_TOKEN.finditer(text))
    for k, match in enumerate(matches):
        if match.group("num"):
            value = match.group("num").replace(",", "")
            numbers.add(value)
            seq.append("#" + value)
            initial = initial and k == 0  # a list marker ("1. Python ...") does not start the sentence
            continue
        raw, lower = match.group("word"), match.group("word").lower()
        before = text[match.start() - 1] if match.start() else " "
        words.add(lower)
        if "." in lower:
            words.update(lower.split("."))
        if match.group("suffix") == "t" or lower in _NEGATIONS:
            negations.append(len(seq))
        number = _number_word(lower, matches, k)
        if number is not None:
            numbers.add(number)
            seq.append("#" + number)
        elif lower in _MONTHS and raw[0].isupper():
            numbers.add(lower)
            seq.append("#" + lower)
        elif _is_identifier(raw, bool(match.group("call"))) or (before in _QUOTES and lower not in _STOPWORDS):
            entities.add(lower)
            seq.append(lower)
        elif lower not in _STOPWORDS:
            if raw[0].isupper() and not initial:
                entities.add(lower)
            seq.append(_stem(lower))
        colon = text.find(":", match.end(), matches[k + 1].start()) if k + 1 < len(matches) else -1
        initial = colon >= 0
    pairs = {(a, b) for a, b in zip(seq, seq[1:], strict=False)} | {(a, b) for a, b in zip(seq, seq[2:],
                                                                                        strict=False)}
    return _Text(tuple(seq), frozenset(seq), frozenset(pairs), frozenset(words), frozenset(numbers),
                 frozenset(entities), tuple(negations))


def _number_word(lower: str, matches: list[re.Match], k: int) -> str | None:
    """The value of a written number ("three" -> "3", "first" -> "1th"); None for "one" used as a pronoun."""
    if lower in _ORDINALS:
        return _ORDINALS[lower]
    if lower not in _WRITTEN:
        return None
    if lower == "one":
        previous = matches[k - 1].group(0).lower() if k else ""
        following = matches[k + 1].group(0).lower() if k + 1 < len(matches) else ""
        if previous in _NOT_A_COUNT or following in {"of", "or", "another"}:
            return None
    return _WRITTEN[lower]


@lru_cache(maxsize=4096)
def _context(text: str) -> tuple[tuple[int, int, _Text], ...]:
    """A context's sentences with their spans, analysed once per process (retrieved chunks repeat)."""
    return tuple((start, end, _analyse(text[start:end])) for start, end in split_sentences(text))


@dataclass(frozen=True)
class Window:
    """The best run of consecutive context sentences for one claim, and how the claim compares with it.

    Attributes:
        context: index of the context in the list given.
        span: character offsets of the window (whole sentences) in that context.
        sentences: indices of the window's first and last sentence among ``split_sentences(context)``.
        features: ``coverage``, ``bigrams`` (shares in [0, 1]), ``missing_numbers``, ``missing_entities``
            (counts), ``negation`` (0 or 1); see the module docstring.
    """

    context: int
    span: tuple[int, int]
    sentences: tuple[int, int]
    features: dict[str, float]

    def text(self, contexts: Sequence[str]) -> str:
        """The window's text, ``contexts[self.context][span]``."""
        return contexts[self.context][self.span[0]:self.span[1]]


def best_window(sentence: str, contexts: Sequence[str], max_sentences: int = MAX_WINDOW) -> Window | None:
    """The window of 1 to ``max_sentences`` consecutive sentences of one context that best supports ``sentence``.

    "Best" is the most distinct content words of the sentence found in the window; ties go to the narrower window,
    then to the earlier context (retrievers rank the best first). A window starts and ends at a sentence sharing
    something with the claim. Returns None when no context shares a content word with it (or there are none).
    Other scorers use it to pick what to compare a claim with (rag.nli cross-encodes only this window).

    Example:
        >>> w = best_window("__exit__ is called at the end.", ["Intro here. It calls __exit__() at the end."])
        >>> w.context, w.span, w.features["missing_entities"]
        (0, (12, 43), 0)
    """
    claim = _analyse(_LEAD_IN.sub("", sentence.strip()))
    if not claim.content:
        return None
    best, best_key = None, (0, 0)
    for index, text in enumerate(contexts):
        sentences = _context(text)
        hits = [claim.content & analysed.content for _, _, analysed in sentences]
        for first in range(len(sentences)):
            if not hits[first]:
                continue
            found: set[str] = set()
            for last in range(first, min(first + max_sentences, len(sentences))):
                if not hits[last]:
                    continue
                found |= hits[last]
                key = (len(found), first - last)
                if key > best_key:
                    best, best_key = (index, first, last), key
    if best is None:
        return None
    index, first, last = best
    window = _context(contexts[index])[first:last + 1]
    return Window(index, (window[0][0], window[-1][1]), (first, last), _features(claim, [a for _, _, a in window]))


def _features(claim: _Text, window: list[_Text]) -> dict[str, float]:
    content = frozenset().union(*(s.content for s in window))
    pairs = frozenset().union(*(s.pairs for s in window))
    words = frozenset().union(*(s.words for s in window))
    numbers = frozenset().union(*(s.numbers for s in window))
    claim_pairs = list(zip(claim.seq, claim.seq[1:], strict=False))
    return {
        "coverage": len(claim.content & content) / len(claim.content),
        "bigrams": sum(p in pairs for p in claim_pairs) / len(claim_pairs) if claim_pairs else 1.0,
        "missing_numbers": len(claim.numbers - numbers),
        "missing_entities": sum(e not in words and _stem(e) not in content for e in claim.entities),
        "negation": float(bool(claim.negations) != any(_negated_where_matched(claim, s) for s in window)),
    }


def _negated_where_matched(claim: _Text, sentence: _Text) -> bool:
    """Whether a negation cue of ``sentence`` lies within (or just before) the part that matches the claim."""
    if not sentence.negations:
        return False
    positions = [i for i, token in enumerate(sentence.seq) if token in claim.content]
    if len(positions) < 2:
        return False
    return any(positions[0] - 1 <= cue <= positions[-1] + 1 for cue in sentence.negations)


def raw_score(features: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """The uncalibrated score: the weighted sum of a window's features (counts capped at 2)."""
    weights = WEIGHTS if weights is None else weights
    return sum(w * min(float(features[name]), 2.0) for name, w in weights.items())


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit_calibration(raw_scores: Sequence[float], labels: Sequence[int], l2: float = 1e-3) -> tuple[float, float]:
    """(slope, intercept) of the logistic regression of ``labels`` (1 supported, 0 not) on ``raw_scores``.

    Platt scaling, fitted by Newton's method with a small L2 penalty on the slope; the calibrated score of a raw
    score r is ``1 / (1 + exp(-(slope * r + intercept)))``, so 0.5 falls where supported and unsupported pairs are
    equally likely. Fit it on training pairs, never on an evaluation set.

    Raises:
        ValueError: different lengths, or labels of one class only (nothing to separate).
    """
    import numpy as np

    x, y = np.asarray(raw_scores, dtype=float), np.asarray(labels, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need one label per raw score; got {x.shape} scores and {y.shape} labels")
    if not ((y == 0) | (y == 1)).all() or y.min() == y.max():
        raise ValueError("labels must be 0 and 1, with both present")
    design = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -35, 35)))
        gradient = design.T @ (p - y) + l2 * np.array([theta[0], 0.0])
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + l2 * np.diag([1.0, 0.0]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def calibrate(pairs, weights: dict[str, float] | None = None) -> tuple[float, float]:
    """:func:`fit_calibration` on (context, claim, label) training pairs (rag.claims.make_pairs' DataFrame)."""
    raws = [_pair_raw(claim, context, weights) for context, claim in zip(pairs["context"], pairs["claim"],
                                                                          strict=True)]
    return fit_calibration(raws, [int(label) for label in pairs["label"]])


def _pair_raw(claim: str, context: str, weights: dict[str, float] | None) -> float:
    """A (context, claim) pair's raw score: its least supported sentence, as the scorer combines sentences."""
    raws = []
    for start, end in split_sentences(claim):
        window = best_window(claim[start:end], [context])
        raws.append(raw_score(window.features, weights) if window else 0.0)
    return min(raws) if raws else 0.0


class LexicalScorer:
    """The ``lexical`` scorer (see the module docstring); ``calibration`` is (slope, intercept)."""

    name = "lexical"

    def __init__(self, calibration: tuple[float, float] = CALIBRATION, weights: dict[str, float] | None = None,
                 max_sentences: int = MAX_WINDOW):
        self.calibration = calibration
        self.weights = dict(WEIGHTS if weights is None else weights)
        self.max_sentences = max_sentences

    def support(self, sentence: str, contexts: Sequence[str]) -> tuple[float, Window | None]:
        """One claim sentence's calibrated score and its window (None and 0.0 when nothing is shared)."""
        window = best_window(sentence, contexts, self.max_sentences)
        if window is None:
            return 0.0, None
        slope, intercept = self.calibration
        return _sigmoid(slope * raw_score(window.features, self.weights) + intercept), window

    def detail(self, answer: str, contexts: Sequence[str]) -> Groundedness:
        """One answer's :class:`Groundedness`."""
        sentences = []
        for start, end in split_sentences(answer):
            text = answer[start:end]
            if not is_claim(text) or not _analyse(_LEAD_IN.sub("", text)).content:
                sentences.append(SentenceSupport(text, start, end, 1.0, claim=False))
                continue
            value, window = self.support(text, contexts)
            sentences.append(SentenceSupport(text, start, end, value, window.context if window else None,
                                             window.span if window else None))
        return aggregate(sentences, self.name)

    def detail_batch(self, answers: list[str], contexts: list[list[str]]) -> list[Groundedness]:
        """:meth:`detail` for each answer with its own contexts."""
        return [self.detail(answer, ctx) for answer, ctx in zip(answers, contexts, strict=True)]
