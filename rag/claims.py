"""(context, claim, supported?) pairs generated from a corpus, to train and test groundedness scorers.

A context is a window of about 100-250 words of one document, shaped like what retrieval returns; the claim is
one sentence checked against it. Supported claims (``label`` 1) are a sentence of the window copied as it is
(``copy``) or lightly paraphrased (``paraphrase``: a parenthesis or trailing aside dropped, an "If A, B" turned
into "B if A", common words swapped for synonyms). Unsupported claims (``label`` 0) are a sentence of the window
with one fact changed: a number (``number``), a version or year (``date``), an identifier swapped for another of
the same sort from the corpus (``entity``: ``__enter__()`` for ``__exit__()``, ``KeyError`` for
``IndexError``), a negation flipped (``negation``), or a sentence of another document that shares words with
the window (``swap``). Every unsupported claim differs from its source sentence and occurs nowhere in its
context, so the label is true by construction.

Pairs are split by document (:func:`split_docs`): held-out pages are never trained on. Everything is
deterministic given the seed.

Example:
    >>> docs = python_docs()                       # rag.corpus: doc_id, title, source, text
    >>> train_ids, held_out_ids = split_docs(docs["doc_id"], held_out_share=0.2, seed=0)
    >>> pairs = make_pairs(docs[docs["doc_id"].isin(train_ids)], n=2000, seed=0)
    >>> pairs.groupby("kind")["label"].agg(["count", "mean"])
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "NEGATIVE_KINDS", "POSITIVE_KINDS", "corpus_docs", "make_pairs", "normalize", "perturb",
           "prose_sentences", "split_docs"]

POSITIVE_KINDS = ("copy", "paraphrase")
NEGATIVE_KINDS = ("number", "date", "entity", "negation", "swap")
KINDS = POSITIVE_KINDS + NEGATIVE_KINDS

_SENTENCE_END = re.compile(r"(?<![.][a-z])(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)[.!?](?=\s+[\"“(A-Z0-9])")
_VERSION = re.compile(r"\b(?P<pre>[Vv]ersions? |Python )(?P<num>\d\.\d{1,2}|\d)\b(?!\.\d)")
_YEAR = re.compile(r"\b(?P<num>(?:19|20)\d\d)\b")
_NUMBER = re.compile(r"(?<![\w.\-])(?P<num>\d+)(?![\w.]\w|\w)")
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve"]
_NUMBER_WORD = re.compile(r"\b(?P<num>" + "|".join(_NUMBER_WORDS[1:]) + r")\b", re.IGNORECASE)
_ENTITY_CLASSES = {  # identifiers that may stand for one another: same sort, different thing
    "dunder": re.compile(r"\b__[a-z][a-z0-9_]*__(?:\(\))?"),
    "exception": re.compile(r"\b[A-Z][A-Za-z]*(?:Error|Exception|Warning)\b"),
    "call": re.compile(r"(?<![\w.])[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*\(\)"),
    "quoted": re.compile(r'(?<=")[a-z_][a-z0-9_]*(?=")'),
}
_NEGATIONS = [(re.compile(pattern), replacement) for pattern, replacement in (  # both ways: lose or gain a "not"
    (r"\bis not\b", "is"), (r"\bare not\b", "are"), (r"\bdoes not\b", "does"), (r"\bdo not\b", "do"),
    (r"\bcannot\b", "can"), (r"\bmust not\b", "must"), (r"\bwill not\b", "will"), (r"\bnever\b", "always"),
    (r"\balways\b", "never"), (r"\bis\b(?! not)", "is not"), (r"\bare\b(?! not)", "are not"),
    (r"\bcan\b(?! not)", "cannot"), (r"\bmust\b(?! not)", "must not"), (r"\bwill\b(?! not)", "will not"),
)]
_ANY_NEGATION = re.compile(r"\b(?:is|are|does|do|cannot|can|must|will|never|always)\b")
_SYNONYMS = {"usually": "typically", "typically": "usually", "often": "frequently", "however": "nevertheless",
             "several": "a number of", "many": "numerous", "is called": "is invoked", "are called": "are invoked",
             "contains": "holds", "refers to": "denotes", "different": "distinct", "begins": "starts",
             "obtain": "get", "specified": "given", "identical": "the same", "allowed": "permitted",
             "also": "additionally", "useful": "handy", "corresponding": "matching", "returns": "gives back",
             "automatically": "implicitly", "exactly": "precisely", "only": "solely", "whole": "entire"}
_PLAIN_WORD = re.compile(r"[\"“(]?[A-Za-z][a-z’'-]*[,.;:)\"”]?")
_SYNONYM = re.compile(r"\b(?:" + "|".join(_SYNONYMS) + r")\b")
_PAREN = re.compile(r"\s*\([^()]{3,}\)")
_ASIDE = re.compile(r",\s+(?:which|for example|e\.g\.|i\.e\.|as described|see)\b[^,;:]*(?=[.!?]$)")
_IF_CLAUSE = re.compile(r"^(?P<conj>If|When|Unless|Although) (?P<cond>[^,]{8,}), (?P<main>[^,]{8,})(?P<end>[.!?])$")
_PLAIN_STARTS = frozenset("the a an it this these they there its each all any such no that you we one".split())
_STOP = frozenset("a an the of to in on at by for with and or is are be been was were it its this that as from "
                  "not no if then than which when can may must will".split())


@dataclass(frozen=True)
class _Sentence:
    doc: int
    start: int
    end: int
    text: str


def normalize(text: str) -> str:
    """Whitespace collapsed to single spaces, so a wrapped sentence matches its copy."""
    return " ".join(text.split())


def corpus_docs() -> Any:
    """The demo corpus as a DataFrame (doc_id, title, source, text): ``rag.corpus.python_docs()``."""
    from rag.corpus import python_docs

    return python_docs()


def split_docs(doc_ids: Iterable[str], held_out_share: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Splits document ids into (train, held-out), seeded; at least one of each when there are two or more."""
    if not 0 < held_out_share < 1:
        raise ValueError(f"held_out_share must be between 0 and 1, got {held_out_share}")
    ids = sorted(set(map(str, doc_ids)))
    random.Random(seed).shuffle(ids)
    n_held = min(max(1, round(len(ids) * held_out_share)), len(ids) - 1) if len(ids) > 1 else 0
    return sorted(ids[n_held:]), sorted(ids[:n_held])


def prose_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the prose sentences of a document that make good claims (6-45 words, mostly words,
    not grammar rules, code or headings)."""
    spans = []
    for para in re.finditer(r"\S(?:.|\n(?![ \t]*\n))*", text):
        start = para.start()
        cuts = [m.end() for m in _SENTENCE_END.finditer(para.group())] + [len(para.group())]
        for cut in cuts:
            s, e = start, para.start() + cut
            piece = text[s:e]
            start = e
            lead = len(piece) - len(piece.lstrip())
            if _is_prose(piece):
                spans.append((s + lead, e))
    return spans


def _is_prose(piece: str) -> bool:
    words = piece.split()
    if not 6 <= len(words) <= 45 or not piece.rstrip().endswith((".", "!", "?")):
        return False
    if any(mark in piece for mark in ("::=", ">>>", "***", "===", "---", "(Pdb)")):
        return False
    wordy = sum(1 for w in words if _PLAIN_WORD.fullmatch(w))
    return wordy >= 0.6 * len(words) and words[0][0].isupper()


def perturb(claim: str, kind: str, rng: random.Random, pools: dict[str, list[str]] | None = None,
            context: str = "") -> str | None:
    """``claim`` changed as ``kind`` says (a paraphrase, or one fact changed), or None when it does not apply.

    ``pools`` maps each entity class to the identifiers of the corpus (for ``entity``); half the time an entity
    is swapped for another identifier of the ``context`` when it has one (the hardest case: both are there).
    """
    if kind == "paraphrase":
        return _paraphrase(claim, rng)
    if kind == "number":
        return _change_number(claim, rng)
    if kind == "date":
        return _change_date(claim, rng)
    if kind == "entity":
        return _change_entity(claim, rng, pools or {}, context)
    if kind == "negation":
        return _flip_negation(claim, rng)
    raise ValueError(f"perturb knows no kind {kind!r}; kinds: paraphrase, number, date, entity, negation")


def _paraphrase(claim: str, rng: random.Random) -> str | None:
    ops = [op for op in (_drop_clause, _reorder, _synonyms) if op(claim, rng) is not None]
    if not ops:
        return None
    rng.shuffle(ops)
    out = claim
    for op in ops[: rng.choice((1, 2))]:
        out = op(out, rng) or out
    return out if out != claim else None


def _drop_clause(claim: str, rng: random.Random) -> str | None:
    for pattern in (_PAREN, _ASIDE):
        found = list(pattern.finditer(claim))
        if found:
            m = rng.choice(found)
            out = claim[: m.start()] + claim[m.end():]
            return out if len(out.split()) >= 5 else None
    return None


def _reorder(claim: str, rng: random.Random) -> str | None:
    """"If A, B." becomes "B if A." when B starts with a plain word (never an identifier's capital)."""
    m = _IF_CLAUSE.match(claim)
    if not m:
        return None
    main = re.sub(r"^then ", "", m["main"], flags=re.IGNORECASE)
    first = main.split()[0]
    if first.lower() not in _PLAIN_STARTS:
        return None
    main = first.lower() + main[len(first):]
    return f"{main[0].upper()}{main[1:]} {m['conj'].lower()} {m['cond']}{m['end']}"


def _synonyms(claim: str, rng: random.Random) -> str | None:
    found = sorted({m.group() for m in _SYNONYM.finditer(claim)})
    if not found:
        return None
    out = claim
    for word in rng.sample(found, min(len(found), 2)):
        out = re.sub(rf"\b{word}\b", _SYNONYMS[word], out, count=1)
    return out


def _change_number(claim: str, rng: random.Random) -> str | None:
    dated = [v.span() for v in (*_VERSION.finditer(claim), *_YEAR.finditer(claim))]
    digits = [m for m in _NUMBER.finditer(claim) if not any(a <= m.start() < b for a, b in dated)]
    words = list(_NUMBER_WORD.finditer(claim))
    if not digits and not words:
        return None
    m = rng.choice(digits + words)
    old = m["num"]
    if old.isdigit():
        value = int(old)
        choices = {value + 1, value + 2, max(value - 1, 0), value * 2, value * 10, value + 7} - {value}
        new = str(rng.choice(sorted(choices)))
    else:
        index = _NUMBER_WORDS.index(old.lower())
        choices = [w for i, w in enumerate(_NUMBER_WORDS[1:], 1) if abs(i - index) in (1, 2, 3)]
        new = rng.choice(choices)
        new = new.capitalize() if old[0].isupper() else new
    return claim[: m.start("num")] + new + claim[m.end("num"):]


def _change_date(claim: str, rng: random.Random) -> str | None:
    found = list(_VERSION.finditer(claim)) + list(_YEAR.finditer(claim))
    if not found:
        return None
    m = rng.choice(found)
    old = m["num"]
    if m.re is _YEAR:
        new = str(int(old) + rng.choice((-3, -2, -1, 1, 2, 3)))
    elif "." in old:
        major, minor = old.split(".")
        new = f"{major}.{rng.choice([n for n in range(0, 14) if abs(n - int(minor)) in (1, 2, 3, 4)])}"
    else:
        new = "2" if old == "3" else "3"
    return claim[: m.start("num")] + new + claim[m.end("num"):]


def _change_entity(claim: str, rng: random.Random, pools: dict[str, list[str]], context: str) -> str | None:
    found = [(cls, m) for cls, pattern in _ENTITY_CLASSES.items() for m in pattern.finditer(claim)
             if len(pools.get(cls, ())) > 1]
    if not found:
        return None
    cls, m = rng.choice(found)
    present = set(_ENTITY_CLASSES[cls].findall(claim))
    parens = m.group().endswith("()")
    def fits(e: str) -> bool:
        return e not in present and e.endswith("()") == parens

    nearby = sorted({e for e in _ENTITY_CLASSES[cls].findall(context) if fits(e)})
    options = nearby if nearby and rng.random() < 0.5 else [e for e in pools[cls] if fits(e)]
    if not options:
        return None
    return claim[: m.start()] + rng.choice(options) + claim[m.end():]


def _flip_negation(claim: str, rng: random.Random) -> str | None:
    if not _ANY_NEGATION.search(claim):
        return None
    for pattern, replacement in _NEGATIONS:  # the first that applies: "is not" before "is"
        found = list(pattern.finditer(claim))
        if found:
            m = rng.choice(found)
            return claim[: m.start()] + replacement + claim[m.end():]
    return None


def _content(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9_]+", text.lower()) if w not in _STOP and len(w) > 2}


def make_pairs(docs: Any, n: int, seed: int = 0, min_words: int = 100, max_words: int = 250) -> Any:
    """``n`` labelled pairs from the documents of ``docs`` (columns ``doc_id`` and ``text``), half supported.

    Returns a DataFrame with ``context``, ``claim``, ``label`` (1 supported, 0 not), ``kind`` (see
    :data:`KINDS`), ``doc_id`` (the context's document) and ``original`` (the sentence the claim came from).
    Supported pairs are half ``copy``, half ``paraphrase``; unsupported ones are shared equally among the
    unsupported kinds the documents allow (a kind with few candidate sentences takes at most four pairs per
    sentence). Contexts are windows of ``min_words``-``max_words`` words with the source sentence at a random
    place in them.
    """
    import pandas as pd

    if n < 2:
        raise ValueError(f"make_pairs needs n >= 2 (one pair of each label), got {n}")
    texts, ids = [str(t) for t in docs["text"]], [str(d) for d in docs["doc_id"]]
    rng = random.Random(seed)
    sentences = [_Sentence(d, s, e, normalize(text[s:e])) for d, text in enumerate(texts)
                 for s, e in prose_sentences(text)]
    if not sentences:
        raise ValueError("the documents hold no prose sentences to make claims from")
    pools = _entity_pools(texts)
    by_kind = _candidates(sentences, pools, several_docs=len(set(ids)) > 1)
    rows: list[dict[str, Any]] = []
    for kind, count in _quotas(n, by_kind).items():
        made, tries = 0, 0
        while made < count and tries < 50 * count:
            tries += 1
            row = _pair(kind, rng.choice(by_kind[kind]), texts, sentences, pools, rng, min_words, max_words)
            if row is not None:
                rows.append({**row, "doc_id": ids[row.pop("doc")]})
                made += 1
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["context", "claim", "label", "kind", "doc_id", "original"])


def _entity_pools(texts: list[str]) -> dict[str, list[str]]:
    """Identifiers of each entity class found in the documents (sorted, so pools are deterministic)."""
    return {cls: sorted({m.group() for text in texts for m in pattern.finditer(text)})
            for cls, pattern in _ENTITY_CLASSES.items()}


def _candidates(sentences: list[_Sentence], pools: dict[str, list[str]], several_docs: bool) -> dict[str, list]:
    """The sentences each kind applies to."""
    probe = random.Random(0)
    by_kind: dict[str, list[_Sentence]] = {kind: [] for kind in KINDS}
    for sentence in sentences:
        by_kind["copy"].append(sentence)
        if several_docs:
            by_kind["swap"].append(sentence)
        for kind in ("paraphrase", "number", "date", "entity", "negation"):
            if perturb(sentence.text, kind, probe, pools) is not None:
                by_kind[kind].append(sentence)
    return by_kind


def _quotas(n: int, by_kind: dict[str, list]) -> dict[str, int]:
    """How many pairs of each kind: half supported (copy, paraphrase), half unsupported, shared equally among the
    kinds with candidates, a kind taking at most four pairs per candidate sentence."""
    quotas: dict[str, int] = {}
    for kinds, total in ((POSITIVE_KINDS, n // 2), (NEGATIVE_KINDS, n - n // 2)):
        open_kinds = [k for k in kinds if by_kind[k]]
        if not open_kinds:
            raise ValueError(f"no sentence allows any of the kinds {', '.join(kinds)}")
        while total and open_kinds:
            share, extra = divmod(total, len(open_kinds))
            for i, kind in enumerate(list(open_kinds)):
                room = (4 * len(by_kind[kind]) if kind not in ("copy", "swap") else total) - quotas.get(kind, 0)
                take = min(share + (i < extra), room)
                quotas[kind] = quotas.get(kind, 0) + take
                total -= take
                if take == room:
                    open_kinds.remove(kind)
    return quotas


def _pair(kind: str, sentence: _Sentence, texts: list[str], sentences: list[_Sentence], pools: dict[str, list[str]],
          rng: random.Random, min_words: int, max_words: int) -> dict[str, Any] | None:
    """One pair of ``kind`` around ``sentence``, or None when this draw does not give a valid one."""
    context = _window(texts[sentence.doc], sentence, rng, min_words, max_words)
    if kind == "copy":
        claim = sentence.text
    elif kind == "swap":
        claim = _swap_sentence(sentence, context, sentences, rng)
    else:
        claim = perturb(sentence.text, kind, rng, pools, context)
    if claim is None or claim == sentence.text and kind != "copy":
        return None
    label = int(kind in POSITIVE_KINDS)
    if not label and normalize(claim) in normalize(context):
        return None  # the changed claim happens to be stated in the window after all
    return {"context": context, "claim": claim, "label": label, "kind": kind, "doc": sentence.doc,
            "original": sentence.text}


def _window(text: str, sentence: _Sentence, rng: random.Random, min_words: int, max_words: int) -> str:
    """A window of the document of min_words-max_words words holding the sentence at a random place."""
    import bisect

    words, starts = _words(text)
    first = bisect.bisect_right(starts, sentence.start) - 1
    last = bisect.bisect_left(starts, sentence.end) - 1
    size = rng.randint(min_words, max_words)
    span = last - first + 1
    lo = max(0, first - rng.randint(0, max(0, size - span)))
    hi = min(len(words), max(lo + size, last + 1))
    lo = max(0, min(lo, hi - size))
    return text[words[lo][0]:words[hi - 1][1]]


@functools.lru_cache(maxsize=512)
def _words(text: str) -> tuple[list[tuple[int, int]], list[int]]:
    """Spans of the words of a document, and their starts (cached: windows are cut from the same pages)."""
    words = [m.span() for m in re.finditer(r"\S+", text)]
    return words, [s for s, _ in words]


def _swap_sentence(sentence: _Sentence, context: str, sentences: list[_Sentence], rng: random.Random) -> str | None:
    """The sentence of another document, of eight drawn, that shares the most content words with the context."""
    others = [rng.choice(sentences) for _ in range(8)]
    others = [s for s in others if s.doc != sentence.doc]
    if not others:
        return None
    words = _content(context)
    return max(others, key=lambda s: len(_content(s.text) & words)).text
