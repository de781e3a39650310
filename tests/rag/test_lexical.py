"""rag/lexical.py: the lexical scorer ranks a supported answer above the same answer with one fact changed, on a
fixed set of cases over CPython's own documentation (pydoc_data.topics), and its parts behave.

Each case is a sentence of a documentation page, copied or lightly reworded (supported), and the same sentence
with one number, version or date, identifier or name, or negation changed (unsupported). The contexts are the
passage of the page around it plus passages of four other pages, as retrieval would return them. None of these
cases was used to choose the scorer's weights or fit its calibration (those came from rag.claims' training pairs).
"""

from __future__ import annotations

import re
import time
from pydoc_data.topics import topics

import pytest

from rag import groundedness, lexical

# (page, supported claim, the same claim with one fact changed, what changed)
CASES = [
    ("with", "Support for multiple context expressions was changed in version 3.1.",
     "Support for multiple context expressions was changed in version 3.4.", "version"),
    ("with", "If the return value was true, the exception is suppressed.",
     "If the return value was true, the exception is not suppressed.", "negation"),
    ("with", 'Otherwise, three "None" arguments are supplied to "__exit__()".',
     'Otherwise, two "None" arguments are supplied to "__exit__()".', "number"),
    ("with", 'The context manager’s "__exit__()" method is invoked after the suite is executed.',
     'The context manager’s "__aexit__()" method is invoked after the suite is executed.', "entity"),
    ("integers", "Leading zeros in a non-zero decimal number are not allowed.",
     "Leading zeros in a non-zero decimal number are allowed.", "negation"),
    ("integers", "Changed in version 3.6: underscores are now allowed for grouping purposes in literals.",
     "Changed in version 3.5: underscores are now allowed for grouping purposes in literals.", "version"),
    ("strings", "As in Standard C, up to three octal digits are accepted.",
     "As in Standard C, up to four octal digits are accepted.", "number"),
    ("strings", "Bytes with a numeric value of 128 or greater must be expressed with escapes.",
     "Bytes with a numeric value of 256 or greater must be expressed with escapes.", "number"),
    ("customization", "This is typically 8 bytes on 64-bit builds and 4 bytes on 32-bit builds.",
     "This is typically 16 bytes on 64-bit builds and 4 bytes on 32-bit builds.", "number"),
    ("customization", 'A class that overrides "__eq__()" and does not define "__hash__()" will have its '
     '"__hash__()" implicitly set to "None".',
     'A class that overrides "__lt__()" and does not define "__hash__()" will have its '
     '"__hash__()" implicitly set to "None".', "entity"),
    ("dict", "Starting with 3.8, the key is evaluated before the value, as proposed by PEP 572.",
     "Starting with 3.6, the key is evaluated before the value, as proposed by PEP 572.", "version"),
    ("dict", "Unpacking into dictionary displays was originally proposed by PEP 448.",
     "Unpacking into dictionary displays was originally proposed by PEP 484.", "entity"),
    ("typesseq", '"index" raises "ValueError" when *x* is not found in *s*.',
     '"index" raises "KeyError" when *x* is not found in *s*.', "entity"),
    ("typesseq", "There are three basic sequence types: lists, tuples, and range objects.",
     "There are four basic sequence types: lists, tuples, and range objects.", "number"),
    ("comparisons", 'A default order comparison is not provided; an attempt raises "TypeError".',
     'A default order comparison is not provided; an attempt raises "ValueError".', "entity"),
    ("try", 'When no exception occurs in the "try" clause, no exception handler is executed.',
     'When no exception occurs in the "try" clause, an exception handler is executed.', "negation"),
    ("try", 'An expression-less "except" clause, if present, must be last; it matches any exception.',
     'An expression-less "except" clause, if present, must be first; it matches any exception.', "number"),
    ("debugger", "With one argument, list 11 lines around at that line.",
     "With one argument, list 15 lines around at that line.", "number"),
    ("string-methods", "The casefolding algorithm is described in section 3.13 of the Unicode Standard.",
     "The casefolding algorithm is described in section 3.12 of the Unicode Standard.", "version"),
    ("formatstrings", "Using type-specific formatting, datetime(2010, 7, 4, 12, 15, 58) is shown as 2010-07-04.",
     "Using type-specific formatting, datetime(2010, 7, 4, 12, 15, 58) is shown as 2011-07-04.", "date"),
    ("execmodel", "Free variables are not resolved in the nearest enclosing namespace, but in the global namespace.",
     "Free variables are resolved in the nearest enclosing namespace, not in the global namespace.", "negation"),
    ("raise", 'Changed in version 3.3: "None" is now permitted as "Y" in "raise X from Y".',
     'Changed in version 3.3: "None" is now permitted as "X" in "raise X from Y".', "entity"),
]
DISTRACTORS = ["for", "lambda", "import", "booleans", "nonlocal", "specialattrs"]


def _passage(page: str, anchor: str, words: int = 200) -> str:
    """About ``words`` words of ``page`` around the first place its text contains ``anchor``'s first words."""
    text = topics[page]
    key = r"\W+".join(map(re.escape, re.findall(r"\w+", anchor)[:4]))
    found = re.search(key, text)
    assert found, f"{anchor!r} not found in page {page!r}"
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    at = max(i for i, (s, _) in enumerate(spans) if s <= found.start())
    first = max(0, at - words // 3)
    last = min(len(spans) - 1, first + words)
    return text[spans[first][0]:spans[last][1]]


ANCHORS = {  # where in its page each case's source sentence starts (the claims reword some of them)
    0: "Changed in version 3.1", 1: "If the return value was true", 2: "Otherwise, three", 3: "The suite is executed",
    4: "Note that leading zeros", 5: "Changed in version 3.6: Underscores", 6: "As in Standard C, up to three",
    7: "They may only contain ASCII", 8: "This is typically 8 bytes", 9: "A class that overrides",
    10: "Starting with 3.8", 11: "Unpacking into dictionary displays", 12: "index raises ValueError",
    13: "There are three basic sequence", 14: "A default order comparison", 15: "When no exception occurs",
    16: "An expression-less", 17: "With one argument", 18: "The casefolding algorithm",
    19: "Using type-specific formatting", 20: "Free variables are not resolved", 21: "None is now permitted",
}


def _contexts(i: int) -> list[str]:
    page = CASES[i][0]
    others = [p for p in DISTRACTORS if p != page][:4]
    return [_passage(p, topics[p].split()[2]) for p in others[:2]] + [_passage(page, ANCHORS[i])] + [
        _passage(p, topics[p].split()[2]) for p in others[2:]]


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c[0]}-{c[3]}-{n}" for n, c in enumerate(CASES)])
def test_a_supported_claim_outranks_the_same_claim_with_one_fact_changed(i):
    page, supported, changed, _ = CASES[i]
    contexts = _contexts(i)
    good = groundedness.detail(supported, contexts, scorer="lexical")
    bad = groundedness.detail(changed, contexts, scorer="lexical")
    assert good.score > bad.score, (good.to_dict(), bad.to_dict())
    assert good.sentences[0].context == 2  # the page's passage, not a distractor


def test_the_threshold_separates_the_fixed_set():
    """Beyond ranking, 0.5 decides: every supported claim passes and nearly every changed one fails (a name
    swapped for another name of the same sentence, "as X in raise X from Y", is the kind that can pass)."""
    wrong = []
    for i, (_, supported, changed, kind) in enumerate(CASES):
        contexts = _contexts(i)
        if groundedness.score(supported, contexts, scorer="lexical") < 0.5:
            wrong.append(f"supported claim {i} ({kind})")
        if groundedness.score(changed, contexts, scorer="lexical") >= 0.5:
            wrong.append(f"changed claim {i} ({kind})")
    assert len(wrong) <= 2, wrong


def test_the_fixed_set_covers_every_kind_of_change():
    kinds = [kind for *_, kind in CASES]
    assert len(CASES) >= 15
    assert {"number", "version", "date", "entity", "negation"} <= set(kinds)


def test_a_whole_answer_is_as_good_as_its_worst_sentence():
    contexts = _contexts(0) + [_passage("integers", ANCHORS[4])]
    answer = f"{CASES[0][1]} {CASES[4][1]}"
    planted = f"{CASES[0][1]} {CASES[4][2]}"
    good, bad = (groundedness.detail(a, contexts, scorer="lexical") for a in (answer, planted))
    assert good.supported and not bad.supported
    assert [s.score >= 0.5 for s in bad.sentences] == [True, False]
    assert bad.score == min(s.score for s in bad.sentences)
    assert [s.context for s in good.sentences] == [2, 5]


def test_best_window_points_at_the_supporting_sentences():
    contexts = ["Intro text here. The with statement calls __enter__() first.",
                "Unrelated words about loops. The suite is executed. Then __exit__() is invoked with three "
                "arguments. Nothing else happens."]
    window = lexical.best_window("After the suite is executed, __exit__() is invoked.", contexts)
    assert window.context == 1
    assert window.text(contexts) == "The suite is executed. Then __exit__() is invoked with three arguments."
    assert window.sentences == (1, 2)
    assert window.features["coverage"] == 1.0
    assert set(window.features) == {"coverage", "bigrams", "missing_numbers", "missing_entities", "misplaced",
                                    "detached", "negation"}
    assert lexical.best_window("Completely different vocabulary.", contexts) is None
    assert lexical.best_window("anything", []) is None


@pytest.mark.parametrize(("claim", "feature", "value"), [
    ("Version 3.12 added it.", "missing_numbers", 1),
    ("Version three added it.", "missing_numbers", 1),  # written numbers are numbers
    ("Version 3.11 added it.", "missing_numbers", 0),
    ("It was added in version 3.11 with sys.exc_clear().", "missing_entities", 1),
    ("Python calls it twice.", "missing_entities", 0),
    ("Then Ruby calls it twice.", "missing_entities", 1),  # a capital inside a sentence marks a name
    ("Python calls it three times.", "missing_numbers", 1),
    ("It uses exc_info.", "missing_entities", 0),  # a part of a dotted name counts
    ("It never uses sys.exc_info.", "negation", 1),
    ("It does not use sys.exc_info.", "negation", 1),
    ("It doesn't use sys.exc_info.", "negation", 1),
    ("It uses sys.exc_info.", "negation", 0),
])
def test_window_features(claim, feature, value):
    context = "Added in version 3.11: it uses sys.exc_info() and the os module. Python calls it twice."
    assert lexical.best_window(claim, [context]).features[feature] == value


def test_fit_calibration_separates_and_refuses_one_class():
    slope, intercept = lexical.fit_calibration([0.1, 0.2, 0.4, 0.9, 1.1, 1.3, 0.3, 1.0], [0, 0, 0, 1, 1, 1, 1, 0])
    assert slope > 0 and 0.3 < -intercept / slope < 1.0
    with pytest.raises(ValueError, match="both"):
        lexical.fit_calibration([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="one label per"):
        lexical.fit_calibration([0.1, 0.2], [1])


def test_calibrate_on_pairs_gives_a_threshold_between_the_classes():
    contexts = [_passage(page, ANCHORS[i]) for i, (page, *_) in enumerate(CASES)]
    pairs = {"context": contexts * 2, "claim": [c[1] for c in CASES] + [c[2] for c in CASES],
             "label": [1] * len(CASES) + [0] * len(CASES)}  # a make_pairs DataFrame or the same columns as lists
    slope, intercept = lexical.calibrate(pairs)
    assert slope > 0
    scorer = lexical.LexicalScorer(calibration=(slope, intercept))
    assert scorer.support(CASES[0][1], [contexts[0]])[0] > 0.5 > scorer.support(CASES[0][2], [contexts[0]])[0]


def test_lexical_scores_hundreds_of_answers_a_second():
    """The issue's load: 3-sentence answers against 5 contexts of about 200 words, never seen before (CPU time, so
    that other processes on the machine do not count)."""
    import random

    rng = random.Random(0)
    pages = sorted(topics)
    contexts, answers = [], []
    for _ in range(60):
        ctx = []
        for page in rng.sample(pages, 5):
            spans = [m.span() for m in re.finditer(r"\S+", topics[page])]
            first = rng.randrange(max(1, len(spans) - 200))
            ctx.append(topics[page][spans[first][0]:spans[min(first + 199, len(spans) - 1)][1]])
        spans = [(c, span) for c in ctx for span in groundedness.split_sentences(c)]
        answers.append(" ".join(c[a:b] for c, (a, b) in rng.sample(spans, 3)))
        contexts.append(ctx)
    lexical._context.cache_clear()
    start = time.process_time()
    scores = groundedness.scores(answers, contexts, scorer="lexical")
    rate = len(answers) / (time.process_time() - start)
    assert all(0.0 <= s <= 1.0 for s in scores)
    print(f"lexical: {rate:.0f} answers/s")
    assert rate >= 50, f"{rate:.0f} answers/s"


@pytest.mark.parametrize("decorated", [
    "Leading zeros in a non-zero decimal number are not allowed [1].",
    "Leading zeros in a non-zero decimal number are not allowed [integers#2].",
    "Leading zeros in a non-zero decimal number are not allowed [source: python-docs/integers].",
    "According to the context, leading zeros in a non-zero decimal number are not allowed.",
])
def test_citation_markers_and_lead_ins_do_not_count_against_a_claim(decorated):
    contexts = [_passage("integers", ANCHORS[4])]
    plain = groundedness.score(CASES[4][1], contexts, scorer="lexical")
    assert groundedness.score(decorated, contexts, scorer="lexical") == pytest.approx(plain, abs=0.02)


# (context, claim that joins the subject named in one sentence to what the next says of it, the same claim with its
# subject swapped): numbers, an identifier, a version, a person, a plural "They", a quoted keyword. The "pep",
# "identifier" and "they" claims scored 0.002-0.013 (as low as their swapped twins) before a pronoun-led sentence was
# read with the previous sentence's subject (issue 21); the others passed already and keep the swapped side honest.
TWO_SENTENCE_CASES = [
    ("PEP 572 introduced assignment expressions. It was accepted by Guido van Rossum in July 2018.",
     "PEP 572 was accepted in July 2018.", "PEP 484 was accepted in July 2018."),
    ("The sys.exc_info() function is kept for backward compatibility. It returns a tuple of three values, as in "
     "Python 2.", "sys.exc_info() returns a tuple of three values.",
     "sys.exception() returns a tuple of three values."),
    ("Python 3.8 was released in October 2019. It added the walrus operator from PEP 572.",
     "Python 3.8 added the walrus operator.", "Python 3.7 added the walrus operator."),
    ("Ada Lovelace worked with Charles Babbage on the Analytical Engine. She published the first algorithm for it "
     "in 1843.", "Ada Lovelace published the first algorithm in 1843.",
     "Mary Shelley published the first algorithm in 1843."),
    ("NumPy and SciPy are maintained by NumFOCUS projects. They were created by Travis Oliphant in 2005 and 2001.",
     "NumPy and SciPy were created by Travis Oliphant.", "CuPy and SciPy were created by Travis Oliphant."),
    ('The "match" statement was added in Python 3.10. It compares a subject value against one or more case patterns.',
     'The "match" statement compares a subject value against one or more case patterns.',
     'The "switch" statement compares a subject value against one or more case patterns.'),
]


@pytest.mark.parametrize(("context", "supported", "swapped"), TWO_SENTENCE_CASES,
                         ids=["pep", "identifier", "version", "she", "they", "quoted"])
def test_a_claim_joining_a_subject_and_the_pronoun_led_sentence_after_it_is_supported(context, supported, swapped):
    scorer = lexical.LexicalScorer()
    good, window = scorer.support(supported, [context])
    assert good >= 0.5, window.features
    assert window.sentences == (0, 1) and window.features["detached"] == 0
    bad, window = scorer.support(swapped, [context])
    assert bad < 0.5, window.features
    assert groundedness.score(f"{supported} {swapped}", [context], scorer="lexical") < 0.5


def test_a_pronoun_is_read_as_the_subject_of_the_sentence_just_before_it():
    context = "Python 3.8 added the walrus operator. Python 3.10 added the match statement. It compares a subject."
    scorer = lexical.LexicalScorer()
    assert scorer.support("Python 3.10 compares a subject.", [context])[0] >= 0.5
    wrong, window = scorer.support("Python 3.8 compares a subject.", [context])
    assert wrong < 0.5 and window.features["detached"] == 1  # "It" is not the 3.8 of two sentences before
    # the value swapped in from a neighbour is still caught when no pronoun is involved
    context = ('The "global" statement keeps a name at module scope for the whole block. The "nonlocal" statement '
               "refers to an enclosing function.")
    claim = 'The "nonlocal" statement keeps a name at module scope for the whole block.'
    assert lexical.best_window(claim, [context]).features["detached"] == 1
    # a window that starts at the pronoun-led sentence does not know the subject: it is read as written
    alone = lexical.best_window("It compares a subject.", ["Unrelated words here. It compares a subject."])
    assert alone.sentences == (1, 1) and alone.features["coverage"] == 1.0


LADDER = ("Alpha beta gamma. Delta epsilon zeta. Eta theta iota. The walrus operator assigns values. Kappa lambda mu. "
          "Nu xi omicron. Pi rho sigma.")  # the claim's sentence is the fourth (5 words), the others 3 words each


def test_candidate_windows_start_with_best_windows_choice_and_keep_its_features():
    contexts = _contexts(0)
    for claim in (CASES[0][1], CASES[0][2], TWO_SENTENCE_CASES[0][1]):
        ctx = contexts if claim in CASES[0] else [TWO_SENTENCE_CASES[0][0]]
        best = lexical.best_window(claim, ctx)
        first = lexical.candidate_windows(claim, ctx)[0]
        assert (first.context, first.core, first.features) == (best.context, best.sentences, best.features)
        assert best.core is None and first.span[0] <= best.span[0] and first.span[1] >= best.span[1]
    assert len(lexical.candidate_windows(CASES[0][1], contexts, k=1)) == 1
    assert len(lexical.candidate_windows(CASES[0][1], contexts, k=3)) == 3


@pytest.mark.parametrize(("max_words", "sentences"), [
    (5, (3, 3)),  # the core alone
    (8, (2, 3)),  # first the sentence before
    (11, (2, 4)),  # then the one after
    (14, (1, 4)),
    (17, (1, 5)),
    (100, (0, 6)),
    (2, (3, 3)),  # a core longer than the budget is kept whole
])
def test_candidate_windows_widen_before_then_after_within_the_word_budget(max_words, sentences):
    (window,) = lexical.candidate_windows("The walrus operator assigns values.", [LADDER], k=2, max_words=max_words)
    assert window.core == (3, 3) and window.sentences == sentences
    assert len(window.text([LADDER]).split()) <= max(max_words, 5)
    assert window.features == lexical.best_window("The walrus operator assigns values.", [LADDER]).features


def test_candidate_windows_stop_a_side_at_a_sentence_that_does_not_fit():
    context = LADDER.replace("Eta theta iota.", "Eta theta iota kappa lambda mu nu xi omicron pi.")
    (window,) = lexical.candidate_windows("The walrus operator assigns values.", [context], max_words=11)
    assert window.sentences == (3, 5)  # the long sentence before stops that side (nothing beyond it is taken);
    # the side after goes on while it fits


def test_candidate_windows_are_distinct_and_empty_when_nothing_is_shared():
    twice = "The walrus operator assigns values. " + LADDER[:LADDER.index(" The walrus")] + " Walrus operators differ."
    claim = "The walrus operator assigns values."
    windows = lexical.candidate_windows(claim, [twice, LADDER], k=3, max_words=6)
    assert [(w.context, w.core) for w in windows] == [(0, (0, 0)), (1, (3, 3)), (0, (4, 4))]
    spans = sorted((w.context, w.sentences) for w in windows)
    assert all(a[0] != b[0] or a[1][1] < b[1][0] for a, b in zip(spans, spans[1:], strict=False))
    # widened over the whole context, the first leaves nothing else there: the second comes from another context
    windows = lexical.candidate_windows(claim, [twice, LADDER], k=2, max_words=100)
    assert [(w.context, w.sentences) for w in windows] == [(0, (0, 4)), (1, (0, 6))]
    assert lexical.candidate_windows(claim, [twice], k=2, max_words=100)[0].sentences == (0, 4)
    assert len(lexical.candidate_windows(claim, [twice], k=2, max_words=100)) == 1
    assert lexical.candidate_windows("Completely different vocabulary.", [LADDER]) == []
    assert lexical.candidate_windows(claim, []) == []
    assert lexical.candidate_windows("The and of.", [LADDER]) == []


def test_fit_calibration_with_a_knee_gives_two_slopes_and_weights_count():
    raws = [-2.0, -1.0, 0.0, 0.3, 0.6, 0.9, 1.2, 1.5] * 10
    labels = [0, 1, 0, 1, 0, 1, 1, 1] * 10
    slope, intercept, knee, above = lexical.fit_calibration(raws, labels, knee=0.5)
    assert knee == 0.5 and above > slope and above > 0
    calibration = (slope, intercept, knee, above)
    scores = [lexical._calibrated(r, calibration) for r in (-2.0, 0.0, 0.5, 1.0, 1.5)]
    assert scores == sorted(scores) and scores[-1] > 0.5 > scores[0]
    heavier = lexical.fit_calibration(raws, labels, knee=0.5, sample_weight=[3.0 if y else 1.0 for y in labels])
    assert heavier[1] > intercept  # supported pairs weighing more move the scores up
    with pytest.raises(ValueError, match="one label per"):
        lexical.fit_calibration([0.1, 0.2], [0, 1], sample_weight=[1.0])


def test_fit_real_calibration_reads_only_the_fitting_splits():
    import pandas as pd

    rows = []
    for i, (page, supported, changed, _) in enumerate(CASES):
        context, source = _passage(page, ANCHORS[i]), "ab"[i % 2]
        rows += [(source, supported, context, 1, "train"), (source, changed, context, 0, "calibration")]
    pairs = pd.DataFrame(rows, columns=["source", "claim", "context", "label", "split"])
    fitted = lexical.fit_real_calibration(pairs)
    assert len(fitted) == 4 and fitted[3] > 0
    held_out = pairs.assign(split="held_out", label=1 - pairs["label"])  # wrong on purpose: must not count
    assert lexical.fit_real_calibration(pd.concat([pairs, held_out])) == pytest.approx(fitted)
    scorer = lexical.LexicalScorer(calibration=fitted)
    assert scorer.support(CASES[0][1], [_passage("with", ANCHORS[0])])[0] > 0.5
    assert scorer.support(CASES[0][2], [_passage("with", ANCHORS[0])])[0] < 0.5


@pytest.mark.slow
def test_calibration_is_what_fit_real_calibration_gives_on_the_labelled_pairs():
    labelled = pytest.importorskip("rag.labelled")
    fitted = lexical.fit_real_calibration(labelled.build_pairs(seed=0))
    assert fitted == pytest.approx(lexical.CALIBRATION, abs=1e-3)
