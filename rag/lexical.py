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

from collections.abc import Sequence

from rag.groundedness import Groundedness, SentenceSupport, aggregate, is_claim, split_sentences

# The scorer's parts live in modules of their own; the names other code reaches (private ones included: callers
# clear the caches of _context and _analyse) are these same objects, re-exported.
from rag.lexical_calibration import REAL_KNEE as REAL_KNEE
from rag.lexical_calibration import _calibrated as _calibrated
from rag.lexical_calibration import calibrate, fit_calibration, fit_real_calibration
from rag.lexical_text import _CITATION as _CITATION
from rag.lexical_text import _analyse as _analyse
from rag.lexical_text import _claim as _claim
from rag.lexical_text import _context as _context
from rag.lexical_text import _stem as _stem
from rag.lexical_text import _Text as _Text
from rag.lexical_text import _word as _word
from rag.lexical_windows import MAX_WINDOW as MAX_WINDOW
from rag.lexical_windows import WEIGHTS, Window, best_window, candidate_windows, raw_score

__all__ = ["CALIBRATION", "WEIGHTS", "LexicalScorer", "Window", "best_window", "calibrate", "candidate_windows",
           "fit_calibration", "fit_real_calibration", "raw_score"]

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
