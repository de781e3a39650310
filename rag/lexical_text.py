"""Text analysis for the ``lexical`` scorer (rag.lexical): a sentence read once into content tokens and what must
agree (numbers, versions, dates, identifiers, quoted words, capitalised names, negations), and a context read once
into its sentences, a pronoun-led one also read with the subject of the sentence before it.

Tokens are lowercased, stopwords dropped and words lightly stemmed (:func:`_stem`); numbers (written ones, ordinals
and months included) become ``#`` tokens, identifiers and names stay whole. :func:`_analyse` and :func:`_context`
are cached per process: retrieved chunks repeat, so a context is analysed once.

Example:
    >>> from rag.lexical_text import _claim
    >>> text = _claim("According to the context, Python 2.5 added the with statement [1].")
    >>> text.seq, text.numbers, sorted(text.entities)
    (('python', '#2.5', 'ad', 'stat'), ('2.5',), [])
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from rag.groundedness import split_sentences

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
