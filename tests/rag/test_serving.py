"""The RAG app (kind: rag) on the session's Ray with real parts: a few ingested pages in Qdrant local mode, MiniLM,
SmolLM2 through llm.serving's embedded engine, the lexical (default) scorer. A second app of the same config
calls an OpenAI-compatible URL where nothing listens (the LLM down) and starts on an alias not yet published (no
index). Checked: cited answers whose chunks exist and whose quotes lie in the source at their offsets, the
`openai` client and LangChain's ChatOpenAI on the chat route (and its stream), clear 4xx for bad requests, 503
naming the LLM or Qdrant, the "not covered" answer without the LLM, the inference log, traces and metrics."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
import requests

from tests.helpers import free_ports, run_serve_app
from tests.rag.conftest import ALIAS

pytestmark = pytest.mark.slow
MODEL, KEY = "python-docs-rag", "rag-test-key"
QUESTION = "How does a with statement call __exit__?"
OFF_TOPIC = "What is the capital of France?"
LATE_ALIAS = "late-docs"  # the LLM-down app's alias: published only during the tests


@pytest.fixture(scope="module")
def apps(docs_index, tmp_path_factory):
    from ray import serve

    from fabric.runtime import setup_mlflow
    from rag.serving import RagServeConfig, build_rag_app

    setup_mlflow()
    [port] = free_ports()
    log_root = str(tmp_path_factory.mktemp("rag-log"))
    cfg = RagServeConfig.from_dict({
        "name": "test-rag", "port": port, "model": MODEL,
        "index": {"alias": ALIAS, "top_k": 3, "num_cpus": 0.2, "refresh_interval_s": 1},
        "prompt": {"max_context_chars": 2400},
        "llm": {"max_context_tokens": 1024, "transformers": {"num_cpus": 1, "torch_threads": 2, "max_batch_size": 4}},
        "limits": {"max_tokens": 64, "default_max_tokens": 24, "max_query_chars": 500, "max_request_bytes": 4096},
        "inference_log": {"path": log_root, "flush_s": 1}, "gateway_num_cpus": 0.2})
    url = run_serve_app(build_rag_app, cfg, f"{KEY}:predict,rag-admin:admin")
    [closed] = free_ports()
    down = RagServeConfig.from_dict({
        "name": "test-rag-down", "port": port, "model": MODEL, "auth": {"required": False},
        "index": {"alias": LATE_ALIAS, "num_cpus": 0.1}, "gateway_num_cpus": 0.1, "inference_log": {"enabled": False},
        "llm": {"url": f"http://127.0.0.1:{closed}/v1", "model": "some-llm"}, "trace_sample_rate": 0})
    serve.run(build_rag_app(down), name="test-rag-down", route_prefix="/llm-down")
    try:
        yield {"url": url, "down": f"{url}/llm-down", "log_root": log_root, "closed": closed, **docs_index}
    finally:
        serve.delete("test-rag-down")
        serve.delete("test-rag")
        serve.shutdown()
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="module")
def answered(apps):
    """One answer to QUESTION from /rag/query (shared: generating costs seconds)."""
    started = time.perf_counter()
    response = requests.post(apps["url"] + "/rag/query", json={"query": QUESTION}, timeout=300,
                             headers={"Authorization": f"Bearer {KEY}"})
    return response, time.perf_counter() - started


@pytest.fixture(scope="module")
def client(apps):
    from openai import OpenAI

    return OpenAI(base_url=apps["url"] + "/v1", api_key=KEY, max_retries=0, timeout=300)


def test_a_question_is_answered_with_citations_quoting_the_source_at_their_offsets(apps, answered):
    from rag.groundedness import available_scorers
    from rag.index import Retriever

    response, _ = answered
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"answer", "citations", "groundedness", "guardrail", "commit", "collection", "request_id",
                         "timings_ms"}
    assert body["guardrail"]["action"] == ("none" if body["groundedness"]["supported"] else "flag")  # the default
    assert all(body["timings_ms"][step] > 0 for step in ("retrieval", "generation", "scoring"))
    assert body["answer"].strip() and body["request_id"] == response.headers["x-request-id"]
    assert body["commit"] == apps["commit"] and body["collection"] == apps["collection"]
    cited = body["citations"]
    assert [c["n"] for c in cited] == list(range(1, len(cited) + 1)) and 1 <= len(cited) <= 3
    assert {c["doc_id"] for c in cited} & {"with", "context-managers"}
    for c in cited:
        text = apps["docs"][c["doc_id"]]
        assert c["quote"] and text[c["start"]:c["end"]] == c["quote"]
        assert c["chunk_start"] <= c["start"] < c["end"] <= c["chunk_end"] and 0 < c["score"] <= 1
        assert c["source"] == f"python-docs/{c['doc_id']}"
    ids = [c["chunk_id"] for c in cited]
    stored = Retriever(ALIAS, refresh_interval_s=0).search(QUESTION, top_k=20, filters={"chunk_id": ids})
    assert sorted(hit.chunk_id for hit in stored) == sorted(ids)  # each cited chunk is in the collection
    grounded = body["groundedness"]
    assert 0 <= grounded["score"] <= 1 and grounded["scorer"] in available_scorers() and grounded["sentences"]
    assert grounded["supported"] == (grounded["score"] >= 0.5)


def test_each_answer_is_logged_traced_and_measured(apps, answered):
    import mlflow

    from fabric.runtime import metrics_url
    from fabric.serve.inference_log import read_log

    rid = answered[0].json()["request_id"]
    deadline = time.monotonic() + 30
    while True:
        frame = read_log(MODEL, apps["log_root"], with_labels=False)
        rows = frame[frame["request_id"] == rid] if len(frame) else frame
        experiment = mlflow.get_experiment_by_name("rag-serving-test-rag")  # made with the app's first trace
        traces = mlflow.search_traces(experiment_ids=[experiment.experiment_id], return_type="list") \
            if experiment else []
        ours = [t for t in traces if t.data.spans[0].attributes.get("request_id") == rid]
        metrics = requests.get(metrics_url(), timeout=10).text
        if len(rows) and ours and "ray_fabric_rag_generation_ms_count" in metrics or time.monotonic() > deadline:
            break
        time.sleep(1)
    out = rows.iloc[0]["outputs"]
    assert out["query"] == QUESTION and out["answer"] == answered[0].json()["answer"]
    assert out["chunk_ids"].startswith('["') and 0 <= out["groundedness"] <= 1 and out["covered"]
    assert rows.iloc[0]["version"] == apps["commit"]
    kinds = {span.span_type for span in ours[0].data.spans}
    assert {"CHAIN", "RETRIEVER", "LLM", "EVALUATOR"} <= kinds
    for name in ("retrieval_ms", "generation_ms", "scoring_ms", "groundedness"):
        assert f"ray_fabric_rag_{name}_count" in metrics


def test_the_openai_client_and_langchain_get_cited_answers_from_the_chat_route(apps, client):
    from langchain_openai import ChatOpenAI

    assert [m.id for m in client.models.list()] == [MODEL]
    messages = [{"role": "user", "content": QUESTION}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24)
    content = answer.choices[0].message.content
    rag = answer.model_extra["rag"]
    assert answer.model == MODEL and "\n\nSources:\n[1] " in content and rag["citations"]
    assert content.startswith(rag["answer"]) and 0 <= rag["groundedness"]["score"] <= 1
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = [c for c in chunks if c.model_extra.get("rag")][-1].model_extra["rag"]
    assert "\n\nSources:\n[1] " in streamed and last["citations"] and last["groundedness"]["sentences"]
    chat = ChatOpenAI(base_url=apps["url"] + "/v1", api_key=KEY, model=MODEL, max_tokens=16, max_retries=0)
    reply = chat.invoke(QUESTION)
    assert "Sources:\n[1] " in reply.content


def test_bad_requests_get_a_4xx_that_names_the_problem(apps, client):
    import openai

    url, auth = apps["url"], {"Authorization": f"Bearer {KEY}"}
    cases = [({"query": ""}, 400, "query: empty"), ({"query": 42}, 422, "query: Input should be a valid string"),
             ({"query": "x" * 501}, 400, "over this server's limit of 500"), ({}, 422, "query: Field required"),
             ({"query": "q", "top_k": 99}, 400, "top_k is 99"), ({"query": "q", "filters": {"text": "x"}}, 400,
                                                                 "filters.text: not a filterable key")]
    for body, status, message in cases:
        response = requests.post(url + "/rag/query", json=body, headers=auth, timeout=30)
        assert response.status_code == status and message in response.json()["error"], (body, response.text)
        assert response.headers["x-request-id"]
    big = requests.post(url + "/rag/query", data=b'{"query": "' + b"x" * 5000 + b'"}', headers=auth, timeout=30)
    assert big.status_code == 413 and "over the limit of 4096" in big.json()["error"]
    unauthorized = requests.post(url + "/rag/query", json={"query": QUESTION}, timeout=30)
    assert unauthorized.status_code == 401 and unauthorized.headers["x-request-id"]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.BadRequestError, match="no user message"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."}])
    with pytest.raises(openai.BadRequestError, match="max_tokens is 1000"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=1000)
    with pytest.raises(openai.UnprocessableEntityError, match="top_k"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                       extra_body={"top_k": "three"})


def test_without_an_index_it_is_503_naming_qdrant_and_the_alias_until_one_is_published(apps):
    from rag.index import Retriever, open_vector_store

    response = requests.post(apps["down"] + "/rag/query", json={"query": QUESTION}, timeout=60)
    assert response.status_code == 503 and "Qdrant" in response.json()["error"]
    assert LATE_ALIAS in response.json()["error"]
    health = requests.get(apps["down"] + "/health", timeout=60)
    assert health.status_code == 503 and LATE_ALIAS in health.json()["index"]["error"]
    info = Retriever(ALIAS, refresh_interval_s=0).info
    open_vector_store().publish(dataclasses.replace(info, alias=LATE_ALIAS), keep=1)  # the same collection
    deadline = time.monotonic() + 30
    while "Qdrant" in response.json()["error"] and time.monotonic() < deadline:
        time.sleep(0.5)
        response = requests.post(apps["down"] + "/rag/query", json={"query": QUESTION}, timeout=60)
    assert response.status_code == 503 and "LLM endpoint" in response.json()["error"]  # found: now the LLM's turn


def test_the_llm_being_down_is_a_503_that_says_so(apps):
    import openai
    from openai import OpenAI

    _wait_for_index(apps)
    response = requests.post(apps["down"] + "/rag/query", json={"query": QUESTION}, timeout=60)
    message = response.json()["error"]
    assert response.status_code == 503 and f"127.0.0.1:{apps['closed']}" in message and "unreachable" in message
    chat = OpenAI(base_url=apps["down"] + "/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError, match="unreachable") as err:
        chat.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    assert err.value.status_code == 503
    health = requests.get(apps["down"] + "/health", timeout=60)
    assert health.status_code == 503 and "unreachable" in health.json()["llm"]["error"]
    assert health.json()["index"]["collection"] == apps["collection"]


def test_nothing_relevant_says_the_docs_do_not_cover_it_without_calling_the_llm(apps, client):
    from openai import OpenAI

    from rag.serving.answer import NOT_COVERED

    _wait_for_index(apps)
    # The down app's LLM cannot answer, so a 200 here means no LLM was called.
    response = requests.post(apps["down"] + "/rag/query", json={"query": OFF_TOPIC}, timeout=60)
    body = response.json()
    assert response.status_code == 200 and body["answer"] == NOT_COVERED and body["citations"] == []
    assert body["timings_ms"]["retrieval"] > 0 and body["timings_ms"]["generation"] is None  # no LLM call
    assert body["groundedness"] is None and body["commit"] == apps["commit"]
    chat = OpenAI(base_url=apps["down"] + "/v1", api_key="unused", max_retries=0, timeout=60)
    reply = chat.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                         extra_body={"score_threshold": 0.99})
    assert reply.choices[0].message.content == NOT_COVERED and reply.model_extra["rag"]["citations"] == []
    started = time.perf_counter()
    streamed = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": OFF_TOPIC}],
                                                   stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == NOT_COVERED
    assert time.perf_counter() - started < 10


def _wait_for_index(apps) -> None:
    """Publishes LATE_ALIAS (when the test that does it did not run) and waits until the down app finds it."""
    from rag.index import Retriever, open_vector_store

    if open_vector_store().live(LATE_ALIAS) is None:
        info = Retriever(ALIAS, refresh_interval_s=0).info
        open_vector_store().publish(dataclasses.replace(info, alias=LATE_ALIAS), keep=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if requests.get(apps["down"] + "/health", timeout=60).json().get("index", {}).get("collection"):
            return
        time.sleep(0.5)
    raise AssertionError(f"the down app never found {LATE_ALIAS}")
