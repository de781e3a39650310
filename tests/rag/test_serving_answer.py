"""rag/serving/answer.py, chain.py and config.py without Ray: the numbered context, citations whose quotes lie in
the source at their offsets (with the real lexical scorer's spans), [n] markers, request parsing and limits, the
prompt template, and the config's checks."""

from __future__ import annotations

import pytest

from fabric.config import ConfigError
from llm.serving.openai_protocol import ApiError
from rag.serving.answer import (
    DEFAULT_TEMPLATE,
    citations,
    complete_sentences,
    mark_answer,
    numbered_context,
    sources_footer,
)
from rag.serving.chain import RagChain, parse_query
from rag.serving.config import RagServeConfig


def _doc_hits() -> tuple[dict[str, str], list[dict]]:
    """Two real 'chunks' of CPython's own documentation pages, with offsets into the page text."""
    from pydoc_data.topics import topics

    hits = []
    for doc_id, start, end, score in (("with", 0, 900, 0.71), ("context-managers", 200, 1100, 0.55)):
        text = topics[doc_id]
        hits.append({"chunk_id": f"{doc_id}#0", "doc_id": doc_id, "title": doc_id, "source": f"python-docs/{doc_id}",
                     "text": text[start:end], "start": start, "end": end, "commit": "c0", "score": score})
    return topics, hits


def test_numbered_context_keeps_the_best_hits_that_fit():
    _, hits = _doc_hits()
    context, used = numbered_context(hits, max_chars=6000)
    assert context.startswith("[1] (with) ") and "\n\n[2] (context-managers) " in context and len(used) == 2
    context, used = numbered_context(hits, max_chars=1000)
    assert used == hits[:1] and "[2]" not in context


def test_citations_quote_the_supporting_span_at_its_offsets_in_the_source():
    from rag.groundedness import detail

    docs, hits = _doc_hits()
    answer = "The with statement is used to wrap the execution of a block with methods defined by a context manager."
    found = detail(answer, [h["text"] for h in hits], scorer="lexical")
    cited = citations(hits, found)
    assert [c["n"] for c in cited] == [1, 2] and [c["chunk_id"] for c in cited] == ["with#0", "context-managers#0"]
    for c in cited:
        assert c["quote"] and docs[c["doc_id"]][c["start"]:c["end"]] == c["quote"]
        assert c["chunk_start"] <= c["start"] < c["end"] <= c["chunk_end"]
    supported = [c for c in cited if c["supports_answer"]]
    assert supported and "context manager" in supported[0]["quote"]
    marked = mark_answer(answer, found)
    assert marked.endswith(" [1].") or marked.endswith(" [2].")
    assert sources_footer(cited).splitlines()[-2:] == ["[1] with (python-docs/with)",
                                                         "[2] context-managers (python-docs/context-managers)"]


def test_without_a_span_the_quote_is_the_chunks_opening_sentences():
    docs, hits = _doc_hits()
    cited = citations(hits, None)
    for c in cited:
        assert 0 < len(c["quote"]) <= 300 and docs[c["doc_id"]][c["start"]:c["end"]] == c["quote"]
        assert not c["supports_answer"]
    assert mark_answer("No detail, no markers.", None) == "No detail, no markers."


def _chain(**index) -> RagChain:
    cfg = RagServeConfig.from_dict({"index": index} if index else {})
    return RagChain(None, None, DEFAULT_TEMPLATE, cfg.index.model_dump(), cfg.prompt.model_dump(),
                    cfg.groundedness.model_dump(), cfg.limits.model_dump())


def test_questions_are_checked_against_the_limits_naming_the_field():
    chain = _chain()
    question = chain.question("How does a with statement call __exit__?", filters={"doc_id": ["with"]})
    assert question.top_k == 4 and question.score_threshold == 0.3 and question.max_tokens == 256
    cases = {"query": dict(query="   "), "top_k": dict(query="q", top_k=99), "max_tokens": dict(query="q",
             max_tokens=10_000), "filters.text": dict(query="q", filters={"text": "x"})}
    for param, kwargs in cases.items():
        with pytest.raises(ApiError) as err:
            chain.question(**kwargs)
        assert err.value.status == 400 and err.value.param == param and param.split(".")[-1] in err.value.message
    with pytest.raises(ApiError, match="2001 characters, over this server's limit of 2000"):
        chain.question("x" * 2001)


@pytest.mark.parametrize(("body", "param"), [(b'{"query": 5}', "query"), (b'{"query": "q", "top_k": "3"}', "top_k"),
                                             (b'{"question": "q"}', "query"), (b"[1]", None), (b"{", None),
                                             (b'{"query": "q", "filters": {"doc_id": 1}}', "filters.doc_id")])
def test_malformed_query_bodies_are_422_naming_the_field(body, param):
    with pytest.raises(ApiError) as err:
        parse_query(body)
    assert err.value.status == 422 and err.value.param == param


def test_the_template_is_filled_as_chat_messages_or_one_user_message():
    chain = _chain()
    messages = chain.render(context="[1] (with) text", question="Why?")
    assert messages[0]["role"] == "system" and messages[0]["content"].endswith("[1] (with) text")
    assert messages[1] == {"role": "user", "content": "Why?"}
    chain.template = "Context: {{ context }}\nQ: {{question}}"
    assert chain.render(context="c", question="q") == [{"role": "user", "content": "Context: c\nQ: q"}]


def test_config_refuses_contradictions_and_unknown_filter_keys():
    with pytest.raises(ConfigError, match="index.top_k"):
        RagServeConfig.from_dict({"index": {"top_k": 30}})
    with pytest.raises(ConfigError, match="text are not payload keys"):
        RagServeConfig.from_dict({"index": {"filters": ["doc_id", "text"]}})
    with pytest.raises(ConfigError, match="max_context_tokens"):
        RagServeConfig.from_dict({"limits": {"max_tokens": 600}, "llm": {"max_context_tokens": 512}})
    external = RagServeConfig.from_dict({"llm": {"url": "http://127.0.0.1:9/v1", "model": "x"},
                                         "limits": {"max_tokens": 600}, "index": {"top_k": 5}})
    assert not external.llm.embedded


def test_fabric_serve_up_takes_kind_rag_and_stops_on_a_bad_override_before_ray_starts(cli_env):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fabric", "serve", "up", "configs/serve/rag.yaml", "index.top_k=99"],
                         capture_output=True, text=True, env=cli_env, timeout=120)
    assert out.returncode != 0 and "index.top_k (99) is over limits.max_top_k (20)" in out.stdout + out.stderr
    assert "Started a local Ray instance" not in out.stdout + out.stderr


def test_an_answer_cut_by_max_tokens_keeps_its_complete_sentences():
    cut = "A with statement calls __exit__() [1]. It runs even after an exception. It is a special method that"
    assert complete_sentences(cut) == "A with statement calls __exit__() [1]. It runs even after an exception."
    assert complete_sentences("No sentence ends here") == "No sentence ends here"  # nothing complete: kept whole
    assert complete_sentences('It says "done." Then') == 'It says "done."'
