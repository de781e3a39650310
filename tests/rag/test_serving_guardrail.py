"""rag/serving/guardrail.py: an answer scoring below groundedness.threshold is flagged, refused or replaced by the
sources' own quoted sentences, as groundedness.on_ungrounded says. Without Ray on the answer assembly
(RagChain.result with the real lexical scorer), then through Serve: three apps of the same config (quote, refuse,
flag) whose LLM is a stand-in on loopback (tests/rag/standin_llm.py: a planted wrong number when the question says
"wrongly", else the first excerpt word for word), asked with requests on /rag/query and the `openai` client on the
chat route and its stream. A replaced answer's own text never reaches the client and is in the inference log.

The quote app also serves the routes for clients that bring their own LLM, tested here to deploy once:
/rag/retrieve (citations with their text, no generation), /rag/score (a predict key's score is not logged, a label
key's is; bad input is 4xx naming the field) and rag/langchain.py's FabricRetriever over /rag/retrieve."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import requests

from rag.serving.guardrail import REFUSED, decide, quoted, redacted
from tests.helpers import free_ports, run_serve_app
from tests.rag.conftest import ALIAS
from tests.rag.standin_llm import StandInLLM
from tests.rag.test_serving_answer import _chain, _doc_hits

QUESTION = "How does a with statement call __exit__?"
WRONG = f"{QUESTION} Answer wrongly."
PREDICT, LABEL = "guard-predict-key", "guard-label-key"
PLANTED = "The with statement was added in Python 1.2 and it calls __enter__() three times [1]."


def _detail(answer: str, hits: list[dict]):
    from rag.groundedness import detail

    return detail(answer, [h["text"] for h in hits], scorer="lexical")


def test_below_the_threshold_refuse_and_quote_replace_the_answer_and_flag_marks_it():
    _, hits = _doc_hits()
    found = _detail(PLANTED, hits)
    assert found.score < 0.5
    replacement, verdict = decide(found, hits, "refuse", 0.5)
    assert replacement == REFUSED and verdict["action"] == "refuse" and verdict["threshold"] == 0.5
    assert verdict["unsupported"] == [{"text": PLANTED, "start": 0, "end": len(PLANTED),
                                       "score": round(found.score, 4)}]
    replacement, verdict = decide(found, hits, "quote", 0.5)
    sentence = found.sentences[0]
    span = " ".join(hits[sentence.context]["text"][slice(*sentence.span)].split())
    assert replacement == f'"{span}" [{sentence.context + 1}]' and verdict["action"] == "quote"
    assert decide(found, hits, "flag", 0.5)[0] is None and decide(found, hits, "flag", 0.5)[1]["action"] == "flag"
    assert decide(found, hits, "refuse", 0.0) == (None, {"action": "none", "threshold": 0.0,
                                                         "score": round(found.score, 4), "unsupported": []})
    assert decide(None, hits, "refuse", 0.5)[1] == {"action": "none", "threshold": 0.5, "score": None,
                                                    "unsupported": []}  # not scored: served


def test_quotes_are_deduplicated_and_no_span_means_the_refusal():
    _, hits = _doc_hits()
    twice = _detail(f"{PLANTED} {PLANTED}", hits)
    assert len(twice.sentences) == 2 and quoted(twice, hits) == quoted(_detail(PLANTED, hits), hits)
    twice.sentences = [s.__class__(s.text, s.start, s.end, s.score) for s in twice.sentences]  # no spans
    assert quoted(twice, hits) == "" and decide(twice, hits, "quote", 0.5)[0] == REFUSED


def test_the_client_never_gets_a_replaced_answers_own_words_the_log_does():
    from rag.serving.telemetry import answer_outputs

    _, hits = _doc_hits()
    found = _detail(PLANTED, hits)
    for mode in ("refuse", "quote"):
        chain = _chain()
        chain.grounding = chain.grounding.model_copy(update={"on_ungrounded": mode})
        result = chain.result(PLANTED, hits, found, {"commit": "c0", "collection": "docs"}, "r1")
        logged = result.pop("_logged")
        assert "Python 1.2" not in json.dumps(result) and result["guardrail"]["action"] == mode
        assert result["guardrail"]["unsupported"][0]["end"] == len(PLANTED) and result["citations"]
        assert logged == {"answer": PLANTED, "guardrail": decide(found, hits, mode, 0.5)[1]}
        row = answer_outputs("q", result, logged)
        assert row["original_answer"] == [PLANTED] and row["guardrail"] == [mode]
        assert json.loads(row["unsupported"][0])[0]["text"] == PLANTED and row["answer"] == [result["answer"]]
    flagged = _chain().result(PLANTED, hits, found, {}, "r2")
    assert "_logged" not in flagged and flagged["guardrail"]["unsupported"][0]["text"] == PLANTED
    assert flagged["answer"] == PLANTED and answer_outputs("q", flagged)["original_answer"] == [""]
    grounded = _chain().result("No claim here?", hits, _detail("No claim here?", hits), {}, "r3")
    assert grounded["guardrail"]["action"] == "none" and answer_outputs("q", grounded)["guardrail"] == ["none"]
    assert redacted({"unsupported": [{"text": "x", "score": 0}]}, None) == ({"unsupported": [{"score": 0}]}, None)


def test_the_guardrail_settings_are_checked_when_the_config_loads():
    from fabric.config import ConfigError
    from rag.serving.config import RagServeConfig

    cfg = RagServeConfig.from_dict({"groundedness": {"on_ungrounded": "quote", "threshold": 0.7}})
    assert (cfg.groundedness.on_ungrounded, cfg.groundedness.threshold) == ("quote", 0.7)
    shipped = RagServeConfig.from_yaml(Path(__file__).parents[2] / "configs" / "serve" / "rag.yaml")
    assert shipped.groundedness.on_ungrounded == "flag"
    with pytest.raises(ConfigError, match="on_ungrounded"):
        RagServeConfig.from_dict({"groundedness": {"on_ungrounded": "block"}})
    with pytest.raises(ConfigError, match="threshold"):
        RagServeConfig.from_dict({"groundedness": {"threshold": 1.5}})


def test_lone_surrogates_anywhere_are_a_400_or_422_whose_message_can_be_sent():
    from llm.serving.openai_protocol import ApiError
    from rag.serving.chain import ScoreRequest, parse_query

    cases = [(b'{"answer": "\\ud800", "contexts": []}', ScoreRequest, 400, "answer"),
             (b'{"answer": "a", "contexts": [], "question": {"\\ud800": 1}}', ScoreRequest, 422, "question"),
             (b'{"query": "q", "filters": {"\\udc00": "x"}}', None, 400, "filters.\\udc00")]
    for raw, model, status, param in cases:
        with pytest.raises(ApiError) as err:
            parse_query(raw, model) if model else parse_query(raw)
        assert (err.value.status, err.value.param) == (status, param)
        err.value.message.encode("utf-8")  # no lone surrogate left to fail the response's encoding
    with pytest.raises(ApiError) as err:
        _chain().question("q", filters={"\ud800": "x"})  # the chat route's filters, parsed elsewhere
    assert err.value.status == 400 and err.value.param == "filters.\\ud800"


# -- through Serve ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(docs_index, tmp_path_factory):
    """The quote app at / (API keys: predict, label), refuse at /refuse and flag at /flag (no keys)."""
    from ray import serve

    from fabric.runtime import setup_mlflow
    from rag.serving import RagServeConfig, build_rag_app

    setup_mlflow()
    llm = StandInLLM()
    [port] = free_ports()
    log_root = str(tmp_path_factory.mktemp("guard-log"))

    def config(mode: str, auth: bool) -> RagServeConfig:
        return RagServeConfig.from_dict({
            "name": f"guard-{mode}", "port": port, "model": f"guarded-{mode}", "auth": {"required": auth},
            "index": {"alias": ALIAS, "top_k": 3, "num_cpus": 0.1, "refresh_interval_s": 60},
            "llm": {"url": f"{llm.url}/v1", "model": "standin"},
            "groundedness": {"scorer": "lexical", "on_ungrounded": mode},
            "limits": {"max_query_chars": 500, "max_request_bytes": 8192},
            "inference_log": {"path": log_root, "flush_s": 0.5}, "gateway_num_cpus": 0.1, "trace_sample_rate": 0})

    started = time.perf_counter()
    url = run_serve_app(build_rag_app, config("quote", True), f"{PREDICT}:predict,{LABEL}:label")
    for mode in ("refuse", "flag"):
        serve.run(build_rag_app(config(mode, False)), name=f"guard-{mode}", route_prefix=f"/{mode}")
    print(f"three guarded apps deployed in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    try:
        yield {"url": url, "llm": llm, "log_root": log_root, **docs_index}
    finally:
        for mode in ("quote", "refuse", "flag"):
            serve.delete(f"guard-{mode}")
        serve.shutdown()
        llm.close()
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def _ask(url: str, query: str, key: str | None = PREDICT) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = requests.post(f"{url}/rag/query", json={"query": query}, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json() | {"_raw": response.text}


def _chat(url: str, model: str, key: str = PREDICT):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120), model


def _stream(client, model: str, query: str) -> tuple[str, dict, str]:
    """(streamed content, the last chunk's rag field, every chunk's JSON) of a streamed chat answer."""
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": query}],
                                                 stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    rag = [c for c in chunks if (c.model_extra or {}).get("rag")][-1].model_extra["rag"]
    return content, rag, "".join(c.model_dump_json() for c in chunks)


def _logged_row(root: str, model: str, rid: str):
    from fabric.serve.inference_log import read_log

    deadline = time.monotonic() + 20
    while True:
        frame = read_log(model, root, with_labels=False)
        rows = frame[frame["request_id"] == rid] if len(frame) else frame
        if len(rows) or time.monotonic() > deadline:
            assert len(rows), f"request {rid} is not in {model}'s inference log"
            return rows.iloc[0]["outputs"]
        time.sleep(0.5)


def test_quote_replaces_an_ungrounded_answer_with_the_sources_own_sentences(guarded):
    url, llm = guarded["url"], guarded["llm"]
    good = _ask(url, QUESTION)
    assert good["guardrail"]["action"] == "none" and good["answer"].startswith(llm.answers[-1].rstrip(".")[:40])
    body = _ask(url, WRONG)
    original = llm.answers[-1]
    assert body["groundedness"]["score"] < 0.5 and body["guardrail"]["action"] == "quote"
    assert body["guardrail"]["unsupported"] and "text" not in body["guardrail"]["unsupported"][0]
    assert original not in body["_raw"] and body["answer"].startswith('"') and "[" in body["answer"]
    cited = {f"[{c['n']}]" for c in body["citations"]}
    assert cited and all(marker in cited for marker in _markers(body["answer"]))
    for c in body["citations"]:
        assert guarded["docs"][c["doc_id"]][c["start"]:c["end"]] == c["quote"]
    out = _logged_row(guarded["log_root"], "guarded-quote", body["request_id"])
    assert out["original_answer"] == original and out["answer"] == body["answer"] and out["guardrail"] == "quote"
    assert json.loads(out["unsupported"])[0]["text"] in original

    client, model = _chat(url, "guarded-quote")
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": WRONG}])
    rag = reply.model_extra["rag"]
    assert rag["guardrail"]["action"] == "quote" and original not in reply.model_dump_json()
    assert reply.choices[0].message.content.startswith(rag["answer"]) and "\n\nSources:\n[1] " in \
        reply.choices[0].message.content
    content, rag, raw = _stream(client, model, WRONG)
    assert rag["guardrail"]["action"] == "quote" and content.startswith(rag["answer"]) and original not in raw


def test_refuse_replaces_an_ungrounded_answer_before_any_token_is_streamed(guarded):
    url, llm = guarded["url"] + "/refuse", guarded["llm"]
    body = _ask(url, WRONG, key=None)
    original = llm.answers[-1]
    assert body["answer"] == REFUSED and body["guardrail"]["action"] == "refuse" and original not in body["_raw"]
    assert body["citations"] and body["guardrail"]["score"] == pytest.approx(body["groundedness"]["score"], abs=1e-4)
    out = _logged_row(guarded["log_root"], "guarded-refuse", body["request_id"])
    assert out["original_answer"] == original and out["answer"] == REFUSED
    client, model = _chat(url, "guarded-refuse", key="unused")
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": WRONG}])
    assert reply.choices[0].message.content.startswith(REFUSED) and llm.answers[-1] not in reply.model_dump_json()
    content, rag, raw = _stream(client, model, WRONG)
    assert content.startswith(REFUSED + "\n\nSources:\n[1] ") and rag["guardrail"]["action"] == "refuse"
    assert llm.answers[-1] not in raw
    content, rag, _ = _stream(client, model, QUESTION)  # grounded: streamed once scored, unchanged
    assert rag["guardrail"]["action"] == "none" and content.startswith(llm.answers[-1].rstrip(".")[:40])


def test_flag_serves_an_ungrounded_answer_and_marks_it_in_the_last_chunk(guarded):
    url, llm = guarded["url"] + "/flag", guarded["llm"]
    client, model = _chat(url, "guarded-flag", key="unused")
    content, rag, _ = _stream(client, model, WRONG)
    original = llm.answers[-1]
    assert content.startswith(original) and rag["guardrail"]["action"] == "flag"
    assert rag["guardrail"]["unsupported"][0]["text"] in original and rag["guardrail"]["threshold"] == 0.5
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": WRONG}])
    assert reply.choices[0].message.content.startswith(original) and \
        reply.model_extra["rag"]["guardrail"]["action"] == "flag"
    body = _ask(url, WRONG, key=None)
    assert body["answer"] == llm.answers[-1] and body["guardrail"]["action"] == "flag"
    out = _logged_row(guarded["log_root"], "guarded-flag", body["request_id"])
    assert out["guardrail"] == "flag" and out["original_answer"] == "" and json.loads(out["unsupported"])


def test_retrieve_answers_the_citations_with_their_text_and_no_generation(guarded):
    url, llm = guarded["url"], guarded["llm"]
    asked = len(llm.answers)
    response = requests.post(f"{url}/rag/retrieve", json={"query": QUESTION, "top_k": 2}, timeout=60,
                             headers={"Authorization": f"Bearer {PREDICT}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"citations", "commit", "collection", "request_id", "timings_ms"} and len(llm.answers) == asked
    assert body["commit"] == guarded["commit"] and body["collection"] == guarded["collection"]
    assert body["timings_ms"]["retrieval"] > 0 and [c["n"] for c in body["citations"]] == [1, 2]
    for c in body["citations"]:
        text = guarded["docs"][c["doc_id"]]
        assert text[c["chunk_start"]:c["chunk_end"]] == c["text"] and text[c["start"]:c["end"]] == c["quote"]
        assert c["commit"] == guarded["commit"] and c["uri"] and not c["supports_answer"]
    only = requests.post(f"{url}/rag/retrieve", json={"query": QUESTION, "filters": {"doc_id": ["try"]}},
                         headers={"Authorization": f"Bearer {PREDICT}"}, timeout=60).json()
    assert {c["doc_id"] for c in only["citations"]} <= {"try"}
    out = _logged_row(guarded["log_root"], "guarded-quote", body["request_id"])
    assert out["answer"] == "" and out["guardrail"] == "" and json.loads(out["chunk_ids"]) == \
        [c["chunk_id"] for c in body["citations"]]
    auth = {"Authorization": f"Bearer {PREDICT}"}
    for payload, status, message in [({"query": ""}, 400, "query: empty"), ({"query": "q", "top_k": 99}, 400,
                                      "top_k is 99"), ({"query": "q", "filters": {"text": "x"}}, 400, "filters.text"),
                                     ({"query": 3}, 422, "query:"), ({"query": "x" * 501}, 400, "limit of 500")]:
        bad = requests.post(f"{url}/rag/retrieve", json=payload, headers=auth, timeout=30)
        assert bad.status_code == status and message in bad.json()["error"], (payload, bad.text)
    big = requests.post(f"{url}/rag/retrieve", data=b'{"query": "' + b"x" * 9000 + b'"}', headers=auth, timeout=30)
    assert big.status_code == 413
    assert requests.post(f"{url}/rag/retrieve", json={"query": QUESTION}, timeout=30).status_code == 401
    label = requests.post(f"{url}/rag/retrieve", json={"query": QUESTION}, timeout=30,
                          headers={"Authorization": f"Bearer {LABEL}"})
    assert label.status_code == 403 and "needs 'predict'" in label.json()["error"]


def test_score_gives_any_answers_groundedness_and_logs_it_only_for_a_label_key(guarded):
    url, docs = guarded["url"], guarded["docs"]
    context = docs["with"][:900]
    body = {"answer": PLANTED, "contexts": [context], "question": QUESTION}
    scored = {}
    for key in (PREDICT, LABEL):
        response = requests.post(f"{url}/rag/score", json=body, headers={"Authorization": f"Bearer {key}"},
                                 timeout=60)
        assert response.status_code == 200, response.text
        scored[key] = response.json()
    mine = scored[PREDICT]
    assert mine["score"] < 0.5 and mine["scorer"] == "lexical" and not mine["supported"] and mine["sentences"]
    assert mine["guardrail"]["action"] == "quote" and mine["replacement"].endswith("[1]")
    assert mine["guardrail"]["unsupported"][0]["text"] == PLANTED and mine["logged"] is False
    assert scored[LABEL]["logged"] is True and scored[LABEL]["score"] == mine["score"]
    out = _logged_row(guarded["log_root"], "guarded-quote", scored[LABEL]["request_id"])
    assert out["answer"] == PLANTED and out["query"] == QUESTION and out["groundedness"] == pytest.approx(mine["score"])
    assert out["guardrail"] == "quote" and out["covered"] and out["scorer"] == "lexical"
    from fabric.serve.inference_log import read_log

    frame = read_log("guarded-quote", guarded["log_root"], with_labels=False)
    assert mine["request_id"] not in set(frame["request_id"])  # a predict key's score is not logged
    assert set(frame[frame["request_id"] == scored[LABEL]["request_id"]]["version"]) == {"external"}
    copied = " ".join(context.split("\n\n")[1].split())  # the page's first sentence, word for word
    good = requests.post(f"{url}/rag/score", json={"answer": copied, "contexts": [context]},
                         headers={"Authorization": f"Bearer {PREDICT}"}, timeout=60).json()
    assert good["supported"] and good["guardrail"]["action"] == "none" and good["replacement"] is None


def test_bad_score_requests_are_4xx_naming_the_field(guarded):
    url, auth = guarded["url"], {"Authorization": f"Bearer {PREDICT}", "Content-Type": "application/json"}
    cases = [(b'{"answer": "\\ud800 x", "contexts": ["c"]}', 400, "answer"),
             (b'{"answer": "a", "contexts": ["ok", "\\udfff"]}', 400, "contexts.1"),
             (b'{"answer": "a", "contexts": ["c"], "question": "\\ud800"}', 400, "question"),
             (b'{"answer": "a", "contexts": "one string"}', 422, "contexts"),
             (b'{"contexts": ["c"]}', 422, "answer"), (b'{"answer": "a", "contexts": [1]}', 422, "contexts.0"),
             (b'{"answer": "a", "contexts": [], "extra": 1}', 422, "extra"), (b"{", 422, None),
             (json.dumps({"answer": "a", "contexts": ["c"] * 21}).encode(), 400, "contexts")]
    for raw, status, param in cases:
        response = requests.post(f"{url}/rag/score", data=raw, headers=auth, timeout=30)
        assert response.status_code == status and response.json()["param"] == param, (raw, response.text)
    weird = requests.post(f"{url}/rag/score", data=b'{"answ\\ud800er": 1, "answer": "a", "contexts": []}',
                          headers=auth, timeout=30)
    assert weird.status_code == 422 and weird.json()["error"]
    assert requests.post(f"{url}/rag/score", json={"answer": "a", "contexts": []}, timeout=30).status_code == 401
    surrogate = requests.post(f"{url}/rag/query", data=b'{"query": "\\ud800?"}', headers=auth, timeout=30)
    assert surrogate.status_code == 400 and surrogate.json()["param"] == "query"


def test_the_langchain_retriever_gets_documents_from_the_served_app(guarded):
    import asyncio

    from langchain_core.documents import Document

    from rag.langchain import FabricRetriever, FabricRetrieverError

    retriever = FabricRetriever(url=guarded["url"], api_key=PREDICT, top_k=2)
    docs = retriever.invoke(QUESTION)
    assert len(docs) == 2 and all(isinstance(d, Document) for d in docs)
    for doc in docs:
        meta = doc.metadata
        assert guarded["docs"][meta["doc_id"]][meta["start"]:meta["end"]] == doc.page_content
        assert meta["commit"] == guarded["commit"] and meta["uri"] and meta["chunk_id"] == doc.id
        assert doc.page_content and 0 < meta["score"] <= 1 and meta["start"] < meta["end"]
    assert {d.metadata["doc_id"] for d in docs} & {"with", "context-managers"}
    filtered = asyncio.run(FabricRetriever(url=guarded["url"], api_key=PREDICT,
                                           filters={"doc_id": ["try"]}).ainvoke(QUESTION))
    assert filtered and {d.metadata["doc_id"] for d in filtered} == {"try"}
    with pytest.raises(FabricRetrieverError, match="401"):
        FabricRetriever(url=guarded["url"], api_key="wrong").invoke(QUESTION)


def test_guardrail_actions_and_the_new_routes_are_counted_in_prometheus(guarded):
    from fabric.runtime import metrics_url

    wanted = ['action="quote"', 'action="refuse"', 'action="flag"', 'route="rag_retrieve"', 'route="rag_score"']
    deadline = time.monotonic() + 30
    while True:
        metrics = requests.get(metrics_url(), timeout=10).text
        lines = [line for line in metrics.splitlines() if line.startswith(("ray_fabric_rag_guardrail",
                                                                           "ray_fabric_rag_requests"))]
        missing = [w for w in wanted if not any(w in line for line in lines)]
        if not missing:
            break
        assert time.monotonic() < deadline, (missing, lines)
        time.sleep(1)


def _markers(text: str) -> list[str]:
    import re

    return re.findall(r"\[\d+\]", text)
