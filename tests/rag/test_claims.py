"""rag/claims.py: pairs are balanced, of every kind, deterministic, split by document, and every unsupported claim
really differs from what its context says."""

from __future__ import annotations

import random
import re

import pytest

from rag import claims
from rag.claims import KINDS, make_pairs, normalize, perturb, split_docs


@pytest.fixture(scope="module")
def docs():
    return claims.corpus_docs()


@pytest.fixture(scope="module")
def pairs(docs):
    return make_pairs(docs, 420, seed=0)


def test_labels_are_balanced_and_every_kind_is_present(pairs):
    assert len(pairs) == 420
    assert pairs["label"].sum() == 210
    assert set(pairs["kind"]) == set(KINDS)
    assert (pairs.groupby("kind")["label"].first() == pairs.groupby("kind")["label"].mean()).all()  # one label/kind
    assert set(pairs.loc[pairs["label"] == 1, "kind"]) == {"copy", "paraphrase"}


def test_the_same_seed_gives_the_same_pairs_and_another_seed_others(docs, pairs):
    assert make_pairs(docs, 420, seed=0).equals(pairs)
    assert not make_pairs(docs, 420, seed=1)["claim"].equals(pairs["claim"])


def test_contexts_are_retrieval_sized_windows_of_their_own_document(docs, pairs):
    text = dict(zip(docs["doc_id"], docs["text"].map(normalize), strict=True))
    words = pairs["context"].str.split().str.len()
    assert words.max() <= 250 and words.median() >= 100
    for row in pairs.itertuples():
        assert normalize(row.context) in text[row.doc_id]
        if row.kind in ("copy", "paraphrase"):
            assert row.original in normalize(row.context)


def test_supported_claims_are_the_sentence_or_a_light_paraphrase(pairs):
    copies = pairs[pairs["kind"] == "copy"]
    assert (copies["claim"] == copies["original"]).all()
    for row in pairs[pairs["kind"] == "paraphrase"].itertuples():
        assert row.claim != row.original
        kept = set(row.claim.lower().split()) & set(row.original.lower().split())
        assert len(kept) >= 0.6 * len(set(row.claim.lower().split())), (row.original, row.claim)


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b",
                      text.lower())


def test_every_unsupported_claim_changes_what_the_context_says(pairs):
    negatives = pairs[pairs["label"] == 0]
    for row in negatives.itertuples():
        assert row.claim != row.original
        assert normalize(row.claim) not in normalize(row.context), row.claim
        if row.kind in ("number", "date"):
            assert _numbers(row.claim) != _numbers(row.original)
            assert len(row.claim.split()) == len(row.original.split())
        elif row.kind == "negation":
            flips = r"\b(?:not|cannot|never|always)\b"
            assert len(re.findall(flips, row.claim)) != len(re.findall(flips, row.original)) or \
                re.findall(flips, row.claim) != re.findall(flips, row.original)
        elif row.kind == "entity":
            assert len(row.claim.split()) == len(row.original.split())
            changed = [(a, b) for a, b in zip(row.claim.split(), row.original.split(), strict=True) if a != b]
            assert len(changed) == 1, changed


def test_perturbations_name_what_they_change():
    rng = random.Random(0)
    pools = {"dunder": ["__enter__()", "__exit__()"], "exception": ["KeyError", "IndexError"]}
    assert perturb('It calls "__exit__()" last.', "entity", rng, pools) == 'It calls "__enter__()" last.'
    assert perturb("Added in version 3.8.", "date", rng) not in (None, "Added in version 3.8.")
    assert perturb("It takes two arguments.", "number", rng) != "It takes two arguments."
    assert perturb("The value is not cached.", "negation", rng) == "The value is cached."
    assert perturb("Nothing to change here at all.", "number", rng) is None
    with pytest.raises(ValueError, match="kinds: paraphrase"):
        perturb("x", "typo", rng)


def test_held_out_documents_are_disjoint_and_never_in_training_pairs(docs):
    train, held = split_docs(docs["doc_id"], held_out_share=0.2, seed=3)
    assert not set(train) & set(held) and set(train) | set(held) == set(docs["doc_id"])
    assert len(held) == round(0.2 * len(docs))
    assert split_docs(reversed(list(docs["doc_id"])), 0.2, seed=3) == (train, held)
    assert split_docs(docs["doc_id"], 0.2, seed=4) != (train, held)
    pairs = make_pairs(docs[docs["doc_id"].isin(train)], 200, seed=0)
    assert set(pairs["doc_id"]) <= set(train)
    with pytest.raises(ValueError, match="held_out_share"):
        split_docs(["a", "b"], 1.0)
