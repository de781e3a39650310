"""rag/chunking.py: chunks in the embedding model's tokens whose text is exactly document.text[start:end]."""

from __future__ import annotations

import pytest

from rag.chunking import chunk_documents, chunk_spans, token_offsets
from rag.corpus import python_docs


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rag.embedding import model_folder

    return AutoTokenizer.from_pretrained(str(model_folder()))  # the embedder's own tokenizer, without the model


def test_every_chunk_of_the_corpus_is_its_documents_text_at_its_offsets(tokenizer):
    docs = python_docs()
    chunks = chunk_documents(docs, tokenizer, size=200, overlap=40)
    texts = docs.set_index("doc_id")["text"]
    assert set(chunks["doc_id"]) == set(docs["doc_id"]) and chunks["chunk_id"].is_unique
    for doc_id, group in chunks.groupby("doc_id", sort=False):
        text = texts[doc_id]
        assert group["chunk_id"].tolist() == [f"{doc_id}#{n}" for n in range(len(group))]
        offsets = token_offsets(text, tokenizer)
        assert group["start"].iloc[0] == offsets[0][0] and group["end"].iloc[-1] == offsets[-1][1]
        for row in group.itertuples():
            assert row.text == text[row.start:row.end]
            assert len(token_offsets(row.text, tokenizer)) <= 200
        # consecutive chunks overlap (or touch) and move forward: no text is skipped
        assert all(b_start <= a_end and b_start > a_start for a_start, a_end, b_start in
                   zip(group["start"], group["end"], group["start"].iloc[1:], strict=False))


def test_chunks_end_at_sentence_or_paragraph_boundaries_and_overlap_as_asked(tokenizer):
    text = " ".join(f"Sentence number {i} says something about context managers." for i in range(120))
    spans = chunk_spans(text, tokenizer, size=64, overlap=16)
    assert len(spans) > 5
    for start, end in spans[:-1]:
        assert text[end - 1] == "." and (start == 0 or text[start - 1] == " ")
    assert all(b_start < a_end for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    apart = chunk_spans(text, tokenizer, 64, 0)
    assert all(b_start >= a_end for (_, a_end), (b_start, _) in zip(apart, apart[1:], strict=False))


def test_offsets_are_exact_on_unicode_and_long_words(tokenizer):
    text = ("Café “naïve” coöperation — 東京 emoji 🙂 and a__very__long__identifier__with__many__parts " * 40
            + "x" * 3000)
    spans = chunk_spans(text, tokenizer, size=32, overlap=8)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for start, end in spans:
        assert len(token_offsets(text[start:end], tokenizer)) <= 32


def test_bad_sizes_are_refused_and_empty_text_has_no_chunks(tokenizer):
    with pytest.raises(ValueError, match="at least 8"):
        chunk_spans("text", tokenizer, size=4)
    with pytest.raises(ValueError, match="half the chunk size"):
        chunk_spans("text", tokenizer, size=64, overlap=40)
    assert chunk_spans("", tokenizer) == [] and chunk_spans("  \n ", tokenizer) == []
