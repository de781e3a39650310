"""The ``lexical`` groundedness scorer: word overlap with the best window of context sentences, plus the checks
that embedding similarity misses (FACTS.md): numbers, dates, names and negations must agree.

For each claim sentence of an answer, :func:`best_window` finds the run of one to three consecutive sentences of
one context that shares the most content words with it (lowercased, stopwords dropped, light suffix stemming;
numbers, version numbers, written numbers, months, code identifiers, quoted words and names capitalised inside a
sentence kept as tokens of their own; citation markers such as "[1]" and lead-ins such as "According to the
context," dropped). Against that window it measures:

- ``coverage``: the share of the claim's content words found in the window;
- ``bigrams``: the share of the claim's adjacent content-word pairs found (adjacent or one word apart) in the
  window, so a name swapped for another that also occurs nearby still costs something;
- ``missing_numbers``: numbers, versions and dates of the claim that the window does not contain (counted, so
  "yields 1, 1" is not supported by "yields 0, 1");
- ``missing_entities``: identifiers (``__exit__``, ``sys.exc_info``, ``StopIteration``), quoted words and
  capitalised names of the claim that the window does not contain;
- ``misplaced``: numbers and names the window has, but next to other words than in the claim;
- ``detached``: 1 when the claim follows one sentence of the window but takes a number or name only a
  neighbouring sentence has, in place of the sentence's own;
- ``negation``: 1 when the claim negates ("not", "never", "cannot", "n't", ...) what the window states plainly,
  or the other way round.

A window sentence led by a pronoun ("It assigns ...", "They were ...") is read with the subject of the sentence
before it in place of the pronoun, so a claim that joins the two ("The walrus operator was introduced by PEP 572.
It assigns ..." -> "The walrus operator assigns ...") keeps its word pairs and its values where the context has them.

These combine into a raw score (:data:`WEIGHTS`), which a logistic calibration (:data:`CALIBRATION`, fitted on
human-labelled pairs by :func:`fit_real_calibration`; :func:`calibrate` fits one on rag.claims' pairs) maps to
[0, 1] so that 0.5 is the decision threshold. A claim sharing no content word with any context scores 0; a
sentence with no content word at all (only stopwords) is not judged.
Speed, per second of one CPU: about 300-400 3-sentence answers against 5 new contexts of 200 words, about 1,500
when the contexts were seen before (contexts are analysed once and cached; retrieved chunks repeat).
:func:`candidate_windows` gives a cross-encoder the best few windows, widened to whole sentences around them
(about 0.3-0.5 ms per 3-sentence answer over four 800-character contexts seen before, 1-1.5 ms unseen).

What it cannot see: paraphrases with other words (it will call them unsupported), and a fact swapped for another
fact of the same sentence in the same words ("true" and "false" trading places). Those are the nli scorer's job.

Example:
    >>> from rag.lexical import LexicalScorer, best_window
    >>> contexts = ["The with statement was added in Python 2.5. It calls __exit__() at the end."]
    >>> window = best_window("Python 2.5 added the with statement.", contexts)
    >>> window.context, contexts[0][window.span[0]:window.span[1]]
    (0, 'The with statement was added in Python 2.5.')
    >>> answers = ["Python 2.5 added the with statement.", "Python 2.6 added the with statement."]
    >>> [round(g.score, 2) for g in LexicalScorer().detail_batch(answers, [contexts, contexts])]
    [0.74, 0.4]
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from rag.groundedness import Groundedness, SentenceSupport, aggregate, is_claim, split_sentences

__all__ = ["CALIBRATION", "WEIGHTS", "LexicalScorer", "Window", "best_window", "calibrate", "candidate_windows",
           "fit_calibration", "fit_real_calibration", "raw_score"]

# Weights of the features in the raw score (counts capped at 2). Chosen by hand so that one missing number or
# name, a value taken from a neighbouring sentence or a flipped negation outweighs any overlap (the issue: such a
# sentence scores low even when every other word matches), then checked against a logistic regression on the same
# training pairs as CALIBRATION (it agreed within a factor of 1.5 on every feature but "misplaced", which it found
# redundant with the others; kept small because it is what catches a name swapped for one of its neighbours).
# Refitted by logistic regression on the human-labelled train pairs (rag.labelled, per-source caps of 1,000-10^6)
# they were not kept: balanced accuracy on the calibration split 0.648-0.649 against 0.651-0.655 with these, and the
# fit all but drops missing_numbers and missing_entities (-0.06, -0.02), so rag.claims' Python-docs held-out pairs
# fell from 0.968 to 0.534.
WEIGHTS = {"coverage": 1.0, "bigrams": 0.5, "missing_numbers": -1.25, "missing_entities": -1.0, "misplaced": -0.25,
           "detached": -1.0, "negation": -1.0}

# (slope, intercept, knee, slope_above) of the logistic calibration: score = 1 / (1 + exp(-(intercept + slope *
# min(raw, knee) + slope_above * max(raw - knee, 0)))); 0.5 at raw 0.60, a claim matching word for word (raw 1.5)
# 0.89, one sharing little (raw 0) 0.42. On human-labelled pairs the share supported is nearly flat below raw 0.5
# and climbs steeply above it, so the raw score enters in two parts (a single slope fitted there was 0.48, which
# capped every score near 0.61 although 92% of held-out claims with raw >= 1.3 are supported).
# Fitted by fit_real_calibration(rag.labelled.build_pairs(seed=0)) on the train + calibration splits, never held_out:
# rag/labelled.py and rag/data/groundedness/ of commit 6ea5c64 (table content hash 0c24f4b3...), 56,725 rows of
# which 52,799 have a score the calibration sets (begin 2,913, factcheck_gpt 2,352, faithdial 855, summedits 3,228,
# vitaminc 42,644, wice 807), every (source, label) group weighted the same. Knee 0.5 and that weighting were
# chosen on the calibration split after fitting on train (log loss; balanced accuracy tied with one slope, 0.643).
# Held out (13,182 pairs), balanced accuracy at 0.5 / ROC-AUC per domain, before (7.339, -6.187) -> after:
# claim 0.596 -> 0.611 / 0.656 (10,892; vitaminc 0.595 -> 0.608, factcheck_gpt 0.580 -> 0.646, wice 0.579 ->
# 0.592), qa_dialogue 0.789 -> 0.773 / 0.810 (1,228; begin 0.793 -> 0.768, faithdial 0.734 -> 0.736), summary
# (summedits) 0.508 -> 0.562 / 0.645 (1,062); mean over domains 0.631 -> 0.649 (ROC-AUC cannot move: the map is
# monotone). rag.claims' Python-docs held-out pairs (make_pairs(held-out pages, n=1000, seed=1)): 0.968 -> 0.969,
# ROC-AUC 0.987. The calibration before, (7.339, -6.187), was fitted by calibrate() on rag.claims' synthetic pairs
# of the training pages (make_pairs(..., n=4000, seed=0)).
CALIBRATION = (0.186, -0.326, 0.5, 2.318)
REAL_KNEE = 0.5  # where fit_real_calibration's slope changes

MAX_WINDOW = 3  # sentences in a window: a claim may merge two or three adjacent sentences of a context

_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each either else etc e.g eg i.e ie few for from further had
has have having he her here hers herself him himself his how however i if in into is it its itself just me more
most my myself nor not no never cannot of off on once only or other otherwise our ours ourselves out over own
same she should so some such than that the their theirs them themselves then there these they this those
through thus to too under until up upon very was we were what when where whether which while who whom whose why
will with within would you your yours yourself yourselves may might must shall also let lets according per via
able unable nothing nobody nowhere neither something anything everything someone thing things way ways
don doesn didn isn aren wasn weren haven hasn hadn won wouldn couldn shouldn mustn needn ca
""".split())

_PRONOUNS = frozenset({"it", "they", "he", "she"})  # a sentence led by one is about the previous one's subject
_DETERMINERS = frozenset("a an the its their this these that those each every all some any".split())
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

_TOKEN = re.compile(  # groups: a number, or a word (dotted names whole) with "()" and a "'t"/"'s" suffix
    r"((?:(?<![\w)\]])-)?(?<![\w.])(?:0[xob][0-9a-f_]+|\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)*))"
    r"|([^\W\d]\w*(?:\.[^\W\d]\w*)*)(\(\))?(?:['’]([a-z]{1,2})\b)?",
    re.IGNORECASE,
)
_CAMEL = re.compile(r"[a-z][A-Z]")
_QUOTES = "\"'`“‘*"
_LEAD_IN = re.compile(r"^(?:according to|based on|as stated in|per) (?:the |this )?(?:provided |given )?"
                      r"(?:context|contexts|documentation|docs|passage|sources?)\s*,\s*", re.IGNORECASE)
_CITATION = re.compile(r"\s*\[(?:\d+(?:\s*[,–-]\s*\d+)*|[^\[\]\s]+#\d+|(?:source|doc|chunk|ref)\b[^\[\]]{0,60})\]",
                       re.IGNORECASE)


def _claim(sentence: str) -> _Text:
    """A claim sentence analysed without its lead-in ("According to the context, ...") and citation markers
    ("[1]", "[with#3]", "[source: python-docs/with]"), which say where, not what."""
    return _analyse(_CITATION.sub("", _LEAD_IN.sub("", sentence.strip())))


@dataclass(frozen=True)
class _Text:
    """A sentence, analysed once: content tokens in order and as a set, their pairs, and what must agree."""

    seq: tuple[str, ...]  # content tokens in order (stems, #numbers, identifiers)
    content: frozenset[str]
    pairs: frozenset[tuple[str, str]]  # adjacent and one-apart content pairs
    words: frozenset[str]  # every word lowercased, stopwords and the parts of dotted names included
    numbers: tuple[str, ...]  # every number, version, date (with repeats: "yields 1, 1" is not "yields 0, 1")
    entities: frozenset[str]
    anchors: tuple[int, ...]  # positions in seq of numbers and entities
    negated: tuple[tuple[int, str | None, str, str | None], ...]  # (position, before, token, after) per negation


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


@lru_cache(maxsize=65536)
def _word(raw: str, call: bool) -> tuple[str, str, str]:
    """(lowercase, kind, value) of a word, whatever its place: kind is ``stop``, ``number`` (value: its digits),
    ``one`` (a number unless used as a pronoun), ``month``, ``identifier`` or ``word`` (value: its stem)."""
    lower = raw.lower()
    if lower in _ORDINALS or (lower in _WRITTEN and lower != "one"):
        return lower, "number", _ORDINALS.get(lower) or _WRITTEN[lower]
    if lower == "one":
        return lower, "one", "1"
    if lower in _MONTHS and raw[0].isupper():
        return lower, "month", lower
    if call or "_" in raw or "." in raw or _CAMEL.search(raw) or (len(raw) > 1 and raw.isupper() and raw.isalpha()):
        return lower, "identifier", lower
    if lower in _STOPWORDS:
        return lower, "stop", lower
    return lower, "word", _stem(lower)


@lru_cache(maxsize=16384)
def _analyse(text: str) -> _Text:
    seq: list[str] = []
    words: set[str] = set()
    numbers: list[str] = []
    entities: set[str] = set()
    anchors: list[int] = []
    cues: list[int] = []  # for each negation cue, how many content tokens come before it
    matches = list(_TOKEN.finditer(text))
    for k, match in enumerate(matches):
        number, raw, call, suffix = match.groups()
        if number is not None:
            anchors.append(len(seq))
            numbers.append(number.replace(",", ""))
            seq.append("#" + numbers[-1])
            continue
        lower, kind, value = _word(raw, call is not None)
        words.add(lower)
        if "." in lower:
            words.update(lower.split("."))
        if suffix == "t" or lower in _NEGATIONS:
            cues.append(len(seq))
        if kind == "one" and _pronoun(matches, k):
            kind = "stop"
        if kind in ("number", "one", "month"):
            anchors.append(len(seq))
            numbers.append(value)
            seq.append("#" + value)
        elif kind == "identifier" or (match.start() and text[match.start() - 1] in _QUOTES):
            anchors.append(len(seq))
            entities.add(lower)
            seq.append(lower)
        elif kind == "word":
            if raw[0].isupper() and not _starts(text, matches, k):
                anchors.append(len(seq))
                entities.add(lower)
            seq.append(value)
    pairs = {(a, b) for a, b in zip(seq, seq[1:], strict=False)} | {(a, b) for a, b in zip(seq, seq[2:],
                                                                                        strict=False)}
    return _Text(tuple(seq), frozenset(seq), frozenset(pairs), frozenset(words), tuple(numbers),
                 frozenset(entities), tuple(anchors), _negated(seq, cues))


def _starts(text: str, matches: list[re.Match], k: int) -> bool:
    """Whether word ``k`` starts the sentence (or follows a colon, or a list marker): its capital says nothing."""
    if k == 0 or (k == 1 and matches[0].group(1) is not None):
        return True
    return ":" in text[matches[k - 1].end():matches[k].start()]


def _pronoun(matches: list[re.Match], k: int) -> bool:
    """Whether "one" is a pronoun ("no one", "one of", "the one") rather than a count."""
    previous = matches[k - 1].group(0).lower() if k else ""
    following = matches[k + 1].group(0).lower() if k + 1 < len(matches) else ""
    return previous in _NOT_A_COUNT or following in {"of", "or", "another"}


def _negated(seq: list[str], cues: list[int]) -> tuple[tuple[int, str | None, str, str | None], ...]:
    """What each negation cue negates: the content token after it (before it at the end), its position in ``seq``
    and its neighbours."""
    out = []
    for k in cues:
        if not seq:
            break
        i = min(k, len(seq) - 1)
        out.append((i, seq[i - 1] if i else None, seq[i], seq[i + 1] if i + 1 < len(seq) else None))
    return tuple(out)


@lru_cache(maxsize=4096)
def _context(text: str) -> tuple[tuple[int, int, _Text, _Text], ...]:
    """A context's sentences with their spans, analysed once per process (retrieved chunks repeat): each sentence
    as written and as read after the sentence before it (the two differ only for a pronoun-led one, see
    :func:`_pronoun_led`)."""
    out, subject, previous = [], None, None
    for start, end in split_sentences(text):
        sentence = text[start:end]
        analysed, rest = _analyse(sentence), _pronoun_led(sentence)
        if rest is None:
            out.append((start, end, analysed, analysed))
            subject, previous = None, sentence  # the subject is found only when a pronoun needs it
            continue
        if subject is None and previous is not None:
            subject = _subject(previous)  # kept for a second pronoun-led sentence in a row
        previous = None
        out.append((start, end, analysed, _analyse(f"{subject} {rest}") if subject else analysed))
    return tuple(out)


def _pronoun_led(sentence: str) -> str | None:
    """What follows the pronoun of a sentence led by one ("It assigns ...", "They were ..."), else None.

    Such a sentence is read with the previous sentence's subject in the pronoun's place. A claim often joins the
    subject named in one sentence to what the next says of it ("The walrus operator was added by PEP 572. It
    assigns ..." -> "The walrus operator assigns ..."); read as written, the claim's subject sits next to words of
    another sentence, so its word pairs, the neighbours of its names and numbers, and the sentence it seems to take
    its values from all look like a swap, and the claim scored as low as one with a wrong name.
    """
    match = _TOKEN.match(sentence)
    if match is None or match.group(2) is None or match.group(0).lower() not in _PRONOUNS:
        return None
    return sentence[match.end():].lstrip()


def _subject(sentence: str) -> str | None:
    """The words a pronoun leading the next sentence most likely stands for: the sentence's first run of content
    words (after any leading stopwords; "and"/"or" may join two), ending before the next other stopword, before a
    word that looks like its verb (one ending in "ed", or in "s" with a determiner after it), or at four words:
    "walrus operator" in "The walrus operator was introduced by PEP 572", "PEP 572" in "PEP 572 introduced
    assignment expressions", "NumPy and SciPy" in "NumPy and SciPy are ...". A heuristic, not a parser: a run one
    word too long still gives the pairs that matter, since pairs one word apart count."""
    matches = list(_TOKEN.finditer(sentence))
    run: list[re.Match] = []
    for k, match in enumerate(matches):
        raw = match.group(2)
        kind = _word(raw, match.group(3) is not None)[1] if raw is not None else "number"
        if kind == "stop":
            if run and (raw.lower() not in ("and", "or") or k + 1 == len(matches)):
                break
            continue
        if run and kind == "word" and _verb_like(raw.lower(), matches[k + 1].group(0).lower()
                                                 if k + 1 < len(matches) else ""):
            break
        run.append(match)
        if len(run) == 4:
            break
    return sentence[run[0].start():run[-1].end()] if run else None


def _verb_like(lower: str, following: str) -> bool:
    return (len(lower) >= 5 and lower.endswith("ed")) or (
        lower.endswith("s") and not lower.endswith(("ss", "us", "is")) and following in _DETERMINERS)


@dataclass(frozen=True)
class Window:
    """The best run of consecutive context sentences for one claim, and how the claim compares with it.

    Attributes:
        context: index of the context in the list given.
        span: character offsets of the window (whole sentences) in that context.
        sentences: indices of the window's first and last sentence among ``split_sentences(context)``.
        features: ``coverage``, ``bigrams`` (shares in [0, 1]), ``missing_numbers``, ``missing_entities``,
            ``misplaced`` (counts), ``detached``, ``negation`` (0 or 1); see the module docstring. Feed them to
            :func:`raw_score` and the calibration, or use them beside another scorer's own judgement.
        core: for a window :func:`candidate_windows` widened, the first and last sentence of the core it grew
            from (the one ``features`` describe); None for :func:`best_window`'s, whose window is its core.
    """

    context: int
    span: tuple[int, int]
    sentences: tuple[int, int]
    features: dict[str, float]
    core: tuple[int, int] | None = None

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
    claim = _claim(sentence)
    if not claim.content:
        return None
    best, best_key = None, (0, 0)
    for found, width, index, first, last in _cores(claim, contexts, max_sentences):
        if (found, -width) > best_key:
            best, best_key = (index, first, last), (found, -width)
    if best is None:
        return None
    index, first, last = best
    window = _context(contexts[index])[first:last + 1]
    return Window(index, (window[0][0], window[-1][1]), (first, last), _window_features(claim, window))


def _cores(claim: _Text, contexts: Sequence[str], max_sentences: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Every window of 1 to ``max_sentences`` sentences that starts and ends at a sentence sharing a content word
    with the claim, as (distinct content words found, width - 1, context, first, last), contexts and sentences in
    order."""
    for index, text in enumerate(contexts):
        sentences = _context(text)
        hits = [claim.content & analysed.content for _, _, analysed, _ in sentences]
        for first in range(len(sentences)):
            if not hits[first]:
                continue
            found: set[str] = set()
            for last in range(first, min(first + max_sentences, len(sentences))):
                if hits[last]:
                    found |= hits[last]
                    yield len(found), last - first, index, first, last


def candidate_windows(sentence: str, contexts: Sequence[str], k: int = 2, max_words: int = 120,
                      max_sentences: int = MAX_WINDOW) -> list[Window]:
    """Up to ``k`` windows for a cross-encoder to read ``sentence`` against, best first, each widened around its
    core to whole sentences of at most ``max_words`` words.

    The cores are ranked as :func:`best_window` ranks them (the first is its choice); each next one is the best
    that lies in another context or outside the windows already taken, so no text is given twice. A core grows
    by the sentence before it (where the subject of a following "It ..." is named), then the one after, turn about,
    while the next sentence on a side still fits in ``max_words`` (a side stops at the first that does not, at the
    context's ends, and at another window). A core longer than ``max_words`` is kept whole: the encoder's
    tokenizer truncates it. ``span`` and ``sentences`` cover the widened window, ``core`` its core; ``features``
    are the core's, so :func:`raw_score` means what it means for :func:`best_window`.

    Returns an empty list when no context shares a content word with the sentence (or there are none).

    Example:
        >>> contexts = ["Intro words here. The walrus operator was added by PEP 572. It assigns inside an "
        ...             "expression. Other words."]
        >>> [(w.core, w.sentences) for w in candidate_windows("The walrus operator assigns.", contexts, 2, 16)]
        [((1, 2), (0, 2))]
    """
    claim = _claim(sentence)
    if not claim.content or k < 1:
        return []
    ranked = sorted(_cores(claim, contexts, max_sentences), key=lambda c: (-c[0], c[1]))  # stable: earlier first
    taken: dict[int, list[tuple[int, int]]] = {}
    out: list[Window] = []
    for _, _, index, first, last in ranked:
        if any(first <= b and a <= last for a, b in taken.get(index, ())):
            continue
        sentences = _context(contexts[index])
        lo, hi = _widen(contexts[index], sentences, first, last, max_words, taken.get(index, []))
        taken.setdefault(index, []).append((lo, hi))
        features = _window_features(claim, sentences[first:last + 1])
        out.append(Window(index, (sentences[lo][0], sentences[hi][1]), (lo, hi), features, (first, last)))
        if len(out) == k:
            break
    return out


def _widen(text: str, sentences: Sequence[tuple[int, int, _Text, _Text]], first: int, last: int, max_words: int,
           taken: list[tuple[int, int]]) -> tuple[int, int]:
    """The first and last sentence of the core ``first..last`` grown before, after, before ... within the budget."""
    def words(i: int) -> int:
        return len(text[sentences[i][0]:sentences[i][1]].split())

    def free(i: int) -> bool:
        return 0 <= i < len(sentences) and not any(a <= i <= b for a, b in taken)

    lo, hi = first, last
    used = sum(words(i) for i in range(first, last + 1))
    sides = [-1, 1]
    while sides:
        for side in list(sides):
            i = lo - 1 if side < 0 else hi + 1
            if not free(i) or used + words(i) > max_words:
                sides.remove(side)
                continue
            used += words(i)
            lo, hi = (i, hi) if side < 0 else (lo, i)
    return lo, hi


def _window_features(claim: _Text, window: Sequence[tuple[int, int, _Text, _Text]]) -> dict[str, float]:
    """The features of a claim against a window of :func:`_context` entries. A pronoun-led sentence after the
    window's first is read with the previous sentence's subject for word pairs and for :func:`_detached`; counts
    of numbers, names and negations come from the sentences as written (a subject read twice is not said twice)."""
    written = [analysed for _, _, analysed, _ in window]
    read = written[:1] + [resolved for _, _, _, resolved in window[1:]]
    features = _features(claim, written, read)
    features["detached"] = float(_detached(claim, read))
    return features


def _detached(claim: _Text, window: list[_Text]) -> bool:
    """Whether the claim takes a sentence of the window but swaps one of its numbers or names for one found only
    in a neighbouring sentence ("the nonlocal statement has the same scope ..." where the sentence says "global"
    and only the next one mentions nonlocal): the value taken stands where the sentence has one the claim drops,
    next to the same word. A claim that joins two sentences takes words from both, not only a value, and keeps
    the values of its main sentence (or, as the subject of a pronoun-led sentence, has the window read it there)."""
    if len(window) < 2:
        return False
    hits = [claim.content & s.content for s in window]
    main = max(range(len(window)), key=lambda i: len(hits[i]))
    added = frozenset().union(*hits) - hits[main]
    if not added or not added <= {claim.seq[i] for i in claim.anchors}:
        return False
    seq = window[main].seq
    places = {place for i in window[main].anchors if seq[i] not in claim.content for place in _places(seq, i)}
    return any(place in places for i in claim.anchors if claim.seq[i] in added for place in _places(claim.seq, i))


def _places(seq: tuple[str, ...], i: int) -> list[tuple[str, int]]:
    """Where token ``i`` stands: its neighbours, each with its side (-1 before, +1 after)."""
    return [(seq[j], j - i) for j in (i - 1, i + 1) if 0 <= j < len(seq)]


def _features(claim: _Text, window: list[_Text], read: list[_Text] | None = None) -> dict[str, float]:
    content = frozenset().union(*(s.content for s in window))
    pairs = frozenset().union(*(s.pairs for s in window + (read or [])))
    words = frozenset().union(*(s.words for s in window))
    numbers = Counter(n for s in window for n in s.numbers)
    claim_pairs = list(zip(claim.seq, claim.seq[1:], strict=False))
    return {
        "coverage": len(claim.content & content) / len(claim.content),
        "bigrams": sum(p in pairs for p in claim_pairs) / len(claim_pairs) if claim_pairs else 1.0,
        "missing_numbers": sum((Counter(claim.numbers) - numbers).values()),
        "missing_entities": sum(e not in words and _stem(e) not in content for e in claim.entities),
        "misplaced": sum(_misplaced(claim.seq, i, pairs) for i in claim.anchors
                         if claim.seq[i] in content or claim.seq[i].lstrip("#") in words),
        "negation": float(_negation_differs(claim, window)),
    }


def _misplaced(seq: tuple[str, ...], i: int, pairs: frozenset[tuple[str, str]]) -> float:
    """The share of the claim's neighbours of the number or name at ``i`` that are not its neighbours in the window.

    A number or name the window has, but next to other words ("version 3.7" where the window says "version 3.5"
    and, elsewhere, "3.7"), is how a swapped value hides from a plain word check.
    """
    neighbours = [pair for pair in ((seq[i - 1], seq[i]) if i else None,
                                    (seq[i], seq[i + 1]) if i + 1 < len(seq) else None) if pair]
    return sum(pair not in pairs for pair in neighbours) / len(neighbours) if neighbours else 0.0


def _negation_differs(claim: _Text, window: list[_Text]) -> bool:
    """Whether the claim negates a word the window never negates, or states plainly what the window states
    negated ("is never evaluated" against "is evaluated", and the reverse): the claim states the word plainly
    more often than the window does, or between the same two neighbours as a negated use in the window."""
    negated = {token for s in window for _, _, token, _ in s.negated}
    if any(token not in negated for _, _, token, _ in claim.negated):
        return True
    if not negated:
        return False
    claim_plain = _plain(claim)
    window_plain = [_plain(s) for s in window]
    plain_count = Counter(token for _, token, _ in claim_plain.elements())
    window_count = Counter(token for plain in window_plain for _, token, _ in plain.elements())
    negated_count = Counter(token for s in window for _, _, token, _ in s.negated)
    mine = Counter(token for _, _, token, _ in claim.negated)
    if any(plain_count[t] > window_count[t] and negated_count[t] > mine[t] for t in negated):
        return True
    triples = {(before, token, after) for s in window for _, before, token, after in s.negated}
    return bool((set(claim_plain) & triples) - set().union(*window_plain))


def _plain(text: _Text) -> Counter:
    """(before, token, after) of every content token that no negation cue negates, counted."""
    seq, negated = text.seq, {i for i, _, _, _ in text.negated}
    return Counter((seq[i - 1] if i else None, token, seq[i + 1] if i + 1 < len(seq) else None)
                   for i, token in enumerate(seq) if i not in negated)


def raw_score(features: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """The uncalibrated score: the weighted sum of a window's features (counts capped at 2)."""
    weights = WEIGHTS if weights is None else weights
    return sum(w * min(float(features[name]), 2.0) for name, w in weights.items())


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _calibrated(raw: float, calibration: Sequence[float]) -> float:
    """A raw score through a calibration: ``(slope, intercept)``, or ``(slope, intercept, knee, slope_above)``
    whose slope changes at raw score ``knee`` (see :data:`CALIBRATION`)."""
    slope, intercept, *hinge = calibration
    if not hinge:
        return _sigmoid(slope * raw + intercept)
    knee, above = hinge
    return _sigmoid(intercept + slope * min(raw, knee) + above * max(raw - knee, 0.0))


def fit_calibration(raw_scores: Sequence[float], labels: Sequence[int], l2: float = 1e-3, knee: float | None = None,
                    sample_weight: Sequence[float] | None = None) -> tuple[float, ...]:
    """(slope, intercept) of the logistic regression of ``labels`` (1 supported, 0 not) on ``raw_scores``; with
    ``knee``, (slope, intercept, knee, slope_above): the raw score enters as two parts, below and above ``knee``,
    each with its own slope (the form of :data:`CALIBRATION`).

    Platt scaling, fitted by Newton's method with a small L2 penalty on the slopes, each pair weighted by
    ``sample_weight`` (1 by default); the calibrated score of a raw score r is ``1 / (1 + exp(-(slope * r +
    intercept)))``, so 0.5 falls where supported and unsupported pairs are equally likely. Fit it on training
    pairs, never on an evaluation set.

    Raises:
        ValueError: different lengths, or labels of one class only (nothing to separate).
    """
    import numpy as np

    x, y = np.asarray(raw_scores, dtype=float), np.asarray(labels, dtype=float)
    weight = np.ones_like(x) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or weight.shape != x.shape:
        raise ValueError(f"need one label per raw score; got {x.shape} scores and {y.shape} labels")
    if not ((y == 0) | (y == 1)).all() or y.min() == y.max():
        raise ValueError("labels must be 0 and 1, with both present")
    parts = [x] if knee is None else [np.minimum(x, knee), np.maximum(x - knee, 0.0)]
    design = np.stack([*parts, np.ones_like(x)], axis=1)
    penalty = l2 * np.diag([1.0] * len(parts) + [0.0])
    theta = np.zeros(design.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -35, 35)))
        gradient = design.T @ (weight * (p - y)) + penalty @ theta
        hessian = design.T @ (design * (weight * p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    if knee is None:
        return float(theta[0]), float(theta[1])
    return float(theta[0]), float(theta[2]), float(knee), float(theta[1])


def fit_real_calibration(pairs, splits: Sequence[str] = ("train", "calibration"), knee: float | None = REAL_KNEE,
                         weights: dict[str, float] | None = None) -> tuple[float, ...]:
    """:func:`fit_calibration` on human-labelled pairs (rag.labelled.build_pairs' DataFrame: ``claim``,
    ``context``, ``label``, ``source``, ``split``), the way :data:`CALIBRATION` was fitted.

    Only the rows of ``splits`` are used (never ``held_out``). Each claim is scored whole, as
    ``LexicalScorer().detail`` scores an answer against ``[context]``: the raw score of its least supported claim
    sentence; rows whose score no calibration changes (no claim sentence: 1.0; a sentence sharing no word with the
    context: 0.0) are left out. Every (source, label) group weighs the same in the fit, so that one large data set
    does not decide alone and 0.5 falls where the two classes balance (the threshold of balanced accuracy).

    Example:
        >>> from rag.labelled import build_pairs
        >>> fit_real_calibration(build_pairs(seed=0))  # doctest: +SKIP
    """
    raws, labels, groups = [], [], []
    rows = pairs[pairs["split"].isin(list(splits))]
    for claim, context, label, source in zip(rows["claim"], rows["context"], rows["label"], rows["source"],
                                             strict=True):
        raw = _judged_raw(str(claim), [str(context)], weights)
        if raw is not None:
            raws.append(raw)
            labels.append(int(label))
            groups.append((source, int(label)))
    sizes = Counter(groups)
    sample_weight = [len(groups) / (len(sizes) * sizes[group]) for group in groups]
    return fit_calibration(raws, labels, knee=knee, sample_weight=sample_weight)


def _judged_raw(answer: str, contexts: Sequence[str], weights: dict[str, float] | None) -> float | None:
    """The raw score an answer's calibrated score is made from (its least supported claim sentence's), or None
    when its score does not depend on the calibration (no claim sentence, or one that shares nothing)."""
    raws = []
    for start, end in split_sentences(answer):
        text = answer[start:end]
        if not is_claim(text) or not _claim(text).content:
            continue
        window = best_window(text, contexts)
        if window is None:
            return None
        raws.append(raw_score(window.features, weights))
    return min(raws) if raws else None


def calibrate(pairs, weights: dict[str, float] | None = None) -> tuple[float, float]:
    """:func:`fit_calibration` on (context, claim, label) training pairs (rag.claims.make_pairs' DataFrame).

    With an ``original`` column (the sentence a claim was made from), unsupported pairs whose claim differs from
    it only in a citation marker ("[1]" made "[2]") are left out: the scorer ignores such markers on purpose.
    """
    rows = zip(pairs["context"], pairs["claim"], pairs["label"],
               pairs["original"] if "original" in pairs else pairs["claim"], strict=True)
    kept = [(context, claim, int(label)) for context, claim, label, original in rows
            if int(label) or "original" not in pairs or _uncited(claim) != _uncited(original)]
    raws = [_pair_raw(claim, context, weights) for context, claim, _ in kept]
    return fit_calibration(raws, [label for *_, label in kept])


def _uncited(text: str) -> str:
    return " ".join(_CITATION.sub("", text).split())


def _pair_raw(claim: str, context: str, weights: dict[str, float] | None) -> float:
    """A (context, claim) pair's raw score: its least supported sentence, as the scorer combines sentences."""
    raws = []
    for start, end in split_sentences(claim):
        window = best_window(claim[start:end], [context])
        raws.append(raw_score(window.features, weights) if window else 0.0)
    return min(raws) if raws else 0.0


class LexicalScorer:
    """The ``lexical`` scorer (see the module docstring); ``calibration`` is (slope, intercept) or (slope,
    intercept, knee, slope_above), as :func:`fit_calibration` returns and :data:`CALIBRATION` is."""

    name = "lexical"

    def __init__(self, calibration: tuple[float, ...] = CALIBRATION, weights: dict[str, float] | None = None,
                 max_sentences: int = MAX_WINDOW):
        self.calibration = calibration
        self.weights = dict(WEIGHTS if weights is None else weights)
        self.max_sentences = max_sentences

    def support(self, sentence: str, contexts: Sequence[str]) -> tuple[float, Window | None]:
        """One claim sentence's calibrated score and its window (None and 0.0 when nothing is shared)."""
        window = best_window(sentence, contexts, self.max_sentences)
        if window is None:
            return 0.0, None
        return _calibrated(raw_score(window.features, self.weights), self.calibration), window

    def detail(self, answer: str, contexts: Sequence[str]) -> Groundedness:
        """One answer's :class:`Groundedness`."""
        sentences = []
        for start, end in split_sentences(answer):
            text = answer[start:end]
            if not is_claim(text) or not _claim(text).content:
                sentences.append(SentenceSupport(text, start, end, 1.0, claim=False))
                continue
            value, window = self.support(text, contexts)
            sentences.append(SentenceSupport(text, start, end, value, window.context if window else None,
                                             window.span if window else None))
        return aggregate(sentences, self.name)

    def detail_batch(self, answers: list[str], contexts: list[list[str]]) -> list[Groundedness]:
        """:meth:`detail` for each answer with its own contexts."""
        return [self.detail(answer, ctx) for answer, ctx in zip(answers, contexts, strict=True)]
