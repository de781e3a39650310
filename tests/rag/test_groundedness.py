"""rag/groundedness.py: the entry point, the scorer registry, sentence splitting, claims and refusals, per-sentence
detail and bad input. Runs on the lexical scorer (no model, no Ray)."""

from __future__ import annotations

import json
import sys
import types
from pydoc_data.topics import topics

import pytest

from rag import groundedness
from rag.groundedness import Groundedness, SentenceSupport, split_sentences

WITH = topics["with"][:2400]
CONTEXTS = [topics["for"][:1200], WITH, topics["integers"][:1500], topics["dict"][:1200], topics["try"][:1500]]
ANSWER = ("The with statement is used to wrap the execution of a block with methods defined by a context manager. "
          "Leading zeros in a non-zero decimal number are not allowed. "
          'When no exception occurs in the "try" clause, no exception handler is executed.')


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_detail_points_each_sentence_at_its_context_and_span():
    result = groundedness.detail(ANSWER, CONTEXTS, scorer="lexical")
    assert result.scorer == "lexical" and result.supported
    assert [s.context for s in result.sentences] == [1, 2, 4]
    for sentence in result.sentences:
        assert ANSWER[sentence.start:sentence.end] == sentence.text
        start, end = sentence.span
        quoted = _norm(CONTEXTS[sentence.context][start:end]).lower().replace('"', "")
        assert _norm(sentence.text).lower().replace('"', "").rstrip(".") in quoted
        assert 0.5 <= sentence.score <= 1.0
    assert result.score == min(s.score for s in result.sentences)


def test_a_planted_wrong_fact_is_the_sentence_flagged():
    planted = ANSWER.replace("are not allowed", "are allowed")
    result = groundedness.detail(planted, CONTEXTS, scorer="lexical")
    assert [s.score >= 0.5 for s in result.sentences] == [True, False, True]
    assert not result.supported and result.score == result.sentences[1].score
    assert result.sentences[1].context == 2  # still shows where the claim was checked


def test_scores_are_in_range_and_a_batch_equals_single_calls():
    answers = [ANSWER, ANSWER.replace("non-zero", "non-one"), "I don't know.", "", "Python 4.0 removed the GIL.",
               "The with statement was added in Python 2.5."]
    contexts = [CONTEXTS, CONTEXTS, CONTEXTS, CONTEXTS, CONTEXTS[:2], []]
    batch = groundedness.scores(answers, contexts, scorer="lexical")
    single = [groundedness.score(a, c, scorer="lexical") for a, c in zip(answers, contexts, strict=True)]
    assert batch == single
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in batch)
    assert groundedness.scores([], [], scorer="lexical") == []


def test_refusals_questions_and_fillers_are_not_judged():
    for text in ["I don't know.", "I do not know the answer.", "The context does not say which version added it.",
                 "The provided documents do not mention that.", "There is no information about this in the context.",
                 "Sorry, I cannot answer that from the given context.", "What do you mean?", "Sure!",
                 "Hope this helps."]:
        assert not groundedness.is_claim(text), text
        result = groundedness.detail(text, CONTEXTS, scorer="lexical")
        assert result.score == 1.0 and result.supported, text
        assert all(not s.claim and s.context is None for s in result.sentences)
    for text in ["The context does not say, but the with statement calls __exit__().", "Python 3.12 is out.",
                 "No exception handler is executed."]:
        assert groundedness.is_claim(text), text


def test_a_refusal_beside_a_wrong_claim_does_not_hide_it():
    result = groundedness.detail("The context does not say much. Leading zeros are allowed in decimal numbers.",
                                 CONTEXTS, scorer="lexical")
    assert [s.claim for s in result.sentences] == [False, True]
    assert not result.supported


def test_empty_answers_and_empty_contexts_have_defined_results():
    empty = groundedness.detail("", CONTEXTS, scorer="lexical")
    assert empty.score == 1.0 and empty.sentences == []
    assert groundedness.detail("   \n ", CONTEXTS, scorer="lexical").sentences == []
    nothing = groundedness.detail("The with statement calls __exit__().", [], scorer="lexical")
    assert nothing.score == 0.0 and nothing.sentences[0].context is None and nothing.sentences[0].span is None
    assert groundedness.score("The with statement calls __exit__().", ["", "  "], scorer="lexical") == 0.0
    assert groundedness.score("I don't know.", [], scorer="lexical") == 1.0


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: groundedness.score(42, CONTEXTS, scorer="lexical"), TypeError, "answer must be a string, not int"),
    (lambda: groundedness.score("x", WITH, scorer="lexical"), TypeError, "not one string"),
    (lambda: groundedness.score("x", [WITH, None], scorer="lexical"), TypeError, "item 1 must be a string"),
    (lambda: groundedness.score("x", None, scorer="lexical"), TypeError, "not NoneType"),
    (lambda: groundedness.scores("abc", [CONTEXTS], scorer="lexical"), TypeError, "answers must be a list"),
    (lambda: groundedness.scores(["a", "b"], [CONTEXTS], scorer="lexical"), ValueError, "2 answers but 1"),
    (lambda: groundedness.scores(["a", 3], [CONTEXTS, CONTEXTS], scorer="lexical"), TypeError, "answer 1"),
    (lambda: groundedness.scores(["a"], [WITH], scorer="lexical"), TypeError, "contexts of answer 0"),
    (lambda: groundedness.split_sentences(b"bytes"), TypeError, "must be a string"),
])
def test_bad_inputs_get_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_an_unknown_scorer_names_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown groundedness scorer 'bogus'; available: default, .*lexical.*nli"):
        groundedness.score("x", CONTEXTS, scorer="bogus")


class _Constant:
    name = "constant"

    def detail_batch(self, answers, contexts):
        return [groundedness.aggregate([SentenceSupport(a[s:e], s, e, 0.25) for s, e in split_sentences(a)],
                                       self.name) for a in answers]


def test_a_registered_scorer_is_built_once_and_used_by_every_entry_point(monkeypatch):
    monkeypatch.setattr(groundedness, "_FACTORIES", dict(groundedness._FACTORIES))
    monkeypatch.setattr(groundedness, "_INSTANCES", dict(groundedness._INSTANCES))
    built = []
    groundedness.register_scorer("constant", lambda: built.append(1) or _Constant())
    assert "constant" in groundedness.available_scorers()
    assert groundedness.score("One. Two.", CONTEXTS, scorer="constant") == 0.25
    assert groundedness.scores(["One.", ""], [CONTEXTS, []], scorer="constant") == [0.25, 1.0]
    assert groundedness.get_scorer("constant") is groundedness.get_scorer("constant")
    assert built == [1]
    assert isinstance(groundedness.get_scorer("constant"), groundedness.Scorer)
    with pytest.raises(ValueError, match="'default' is not a scorer"):
        groundedness.register_scorer("default", _Constant)
    with pytest.raises(TypeError, match="must be callable"):
        groundedness.register_scorer("x", "rag.lexical:LexicalScorer")


def test_default_is_lexical_unless_rag_nli_says_its_champion_won(monkeypatch):
    for verdict in (RuntimeError("no registry"), False):
        stand_in = types.ModuleType("rag.nli")
        stand_in.is_default = (lambda v=verdict: (_ for _ in ()).throw(v)) if isinstance(verdict, Exception) \
            else (lambda v=verdict: v)
        monkeypatch.setitem(sys.modules, "rag.nli", stand_in)
        assert groundedness.get_scorer("default").name == "lexical"
        assert groundedness.detail(ANSWER, CONTEXTS).scorer == "lexical"
    stand_in = types.ModuleType("rag.nli")
    stand_in.is_default = lambda: True
    monkeypatch.setitem(sys.modules, "rag.nli", stand_in)
    assert groundedness._default_name() == "nli"


def test_result_to_dict_is_json_ready():
    result = groundedness.detail(ANSWER + " I don't know the rest.", CONTEXTS, scorer="lexical")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["scorer"] == "lexical" and data["supported"] is True and data["score"] == result.score
    assert len(data["sentences"]) == 4 and data["sentences"][3]["claim"] is False
    first = data["sentences"][0]
    assert set(first) == {"text", "start", "end", "score", "context", "span", "claim"}
    assert isinstance(first["span"], list) and len(first["span"]) == 2
    assert Groundedness(0.49, "x").supported is False and Groundedness(0.5, "x").supported is True


@pytest.mark.parametrize(("text", "sentences"), [
    ("Hello there. It is 3.12 now.", ["Hello there.", "It is 3.12 now."]),
    ("Use e.g. the sys.exc_info() call. Then stop!", ["Use e.g. the sys.exc_info() call.", "Then stop!"]),
    ("A line that wraps\nin the middle. Next one.", ["A line that wraps\nin the middle.", "Next one."]),
    ("Steps:\n\n1. Evaluate the expression.\n2. Call __enter__().", ["Steps:", "1. Evaluate the expression.",
                                                                     "2. Call __enter__()."]),
    ("- first item\n- second item", ["- first item", "- second item"]),
    ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
    ("Is it? Yes.", ["Is it?", "Yes."]),
    ("", []), ("  ...  ", []), ("42.", ["42."]),
])
def test_split_sentences(text, sentences):
    spans = split_sentences(text)
    assert [text[a:b] for a, b in spans] == sentences
    assert all(text[a:b] == text[a:b].strip() for a, b in spans)


def test_split_sentences_keeps_every_sentence_of_a_real_page_in_order():
    spans = split_sentences(WITH)
    assert spans == sorted(spans) and all(a < b for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    texts = [_norm(WITH[a:b]) for a, b in spans]
    assert "3. The context manager’s \"__exit__()\" is loaded for later use." in texts


def test_default_falls_back_to_lexical_when_the_champion_cannot_load(monkeypatch, caplog):
    monkeypatch.setattr(groundedness, "_FACTORIES", dict(groundedness._FACTORIES))
    monkeypatch.setattr(groundedness, "_INSTANCES", dict(groundedness._INSTANCES))
    stand_in = types.ModuleType("rag.nli")
    stand_in.is_default = lambda: True
    monkeypatch.setitem(sys.modules, "rag.nli", stand_in)

    def broken():
        raise RuntimeError("champion weights missing")

    groundedness.register_scorer("nli", broken)
    assert groundedness.get_scorer("default").name == "lexical"
    assert "champion weights missing" in caplog.text
    with pytest.raises(RuntimeError, match="weights missing"):
        groundedness.get_scorer("nli")  # asked for by name, the failure is the caller's to see
