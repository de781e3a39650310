"""The OpenAI-compatible LLM API on the session's Ray, driven by the official `openai` client: chat and text
completions, streaming, usage counts, sampling settings, batching, limits and errors, API keys, LoRA adapters
(evicted LRU), structured output (response_format, and LangChain's with_structured_output), health."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from tests.helpers import free_ports, run_serve_app

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
ADAPTER = "served-chat-lora"
OTHER_ADAPTER = "served_chat_lora"  # a different registered model whose name differs only by '_' for '-'
KEY, ADMIN_KEY = "llm-test-key", "llm-test-admin"
QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def _register_adapter(folder: Path, name: str = ADAPTER, seed: int = 0) -> str:
    """A LoRA adapter with random (non-zero) B weights on SmolLM2, registered the way finetune_lora does."""
    import mlflow
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llm.adapter import log_adapter

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(folder)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        lora.save_pretrained(tmp)
        cfg = SimpleNamespace(model=SimpleNamespace(source=MODEL), registry=SimpleNamespace(model_name=name))
        prepared = SimpleNamespace(pinned="test://random-lora", commit="none")
        return log_adapter(cfg, Path(tmp), prepared, {})["version"]


@pytest.fixture(scope="module")
def llm_server(ray_session, smollm2_folder):
    from ray import serve
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fabric.runtime import setup_mlflow
    from llm.serving import LLMServeConfig, build_llm_app

    setup_mlflow()
    version = _register_adapter(smollm2_folder)
    _register_adapter(smollm2_folder, OTHER_ADAPTER, seed=1)
    [port] = free_ports()
    cfg = LLMServeConfig.from_dict({
        "name": "test-llm", "port": port,
        "limits": {"max_context_tokens": 256, "max_tokens": 64, "default_max_tokens": 16,
                   "max_concurrent_requests": 4},
        "transformers": {"num_cpus": 1, "torch_threads": 2, "max_batch_size": 4, "max_adapters_per_replica": 1},
    })
    url = run_serve_app(build_llm_app, cfg, f"{KEY}:predict,{ADMIN_KEY}:admin")
    try:
        yield {"url": url, "version": version, "tokenizer": AutoTokenizer.from_pretrained(smollm2_folder),
               "model": AutoModelForCausalLM.from_pretrained(smollm2_folder).eval(), "folder": smollm2_folder}
    finally:
        serve.delete("test-llm")
        serve.shutdown()
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="module")
def client(llm_server):
    from openai import OpenAI

    return OpenAI(base_url=llm_server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def greedy(server, messages=None, prompt=None, max_tokens=12, model=None) -> tuple[list[int], str]:
    """Prompt ids and the greedy answer of plain `model.generate` (the reference the server must match)."""
    import torch

    tok = server["tokenizer"]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) if messages else prompt
    ids = tok(text, add_special_tokens=not messages)["input_ids"]
    with torch.inference_mode():
        out = (model or server["model"]).generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                                  dtype=torch.long), max_new_tokens=max_tokens, do_sample=False)
    return ids, tok.decode(out[0][len(ids):], skip_special_tokens=True)


def error_of(exc) -> dict:
    """The error object of an `openai` exception (clients keep either the whole body or its `error`)."""
    return exc.body.get("error", exc.body)


def test_chat_completion_matches_plain_generate_and_counts_tokens(llm_server, client):
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    ids, expected = greedy(llm_server, QUESTION, max_tokens=12)
    assert answer.object == "chat.completion" and answer.model == MODEL
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert answer.usage.prompt_tokens == len(ids)
    assert choice.finish_reason in ("stop", "length")
    if choice.finish_reason == "length":
        assert answer.usage.completion_tokens == 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert [m.id for m in client.models.list()] == [MODEL]


def test_streamed_chat_is_sse_chunks_ending_in_done(llm_server, client):
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens"}) \
        == whole.usage.model_dump(include={"prompt_tokens", "completion_tokens"})
    raw = requests.post(llm_server["url"] + "/v1/completions", stream=True, timeout=60,
                        headers={"Authorization": f"Bearer {KEY}"},
                        json={"model": MODEL, "prompt": "One, two,", "max_tokens": 5, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_text_completion_honours_stop_strings(llm_server, client):
    prompt = "The days of the week are Monday, Tuesday,"
    free = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    ids, expected = greedy(llm_server, prompt=prompt, max_tokens=12)
    assert free.choices[0].text == expected and free.usage.prompt_tokens == len(ids)
    stop = expected.strip().split()[1]  # a word in the middle of the answer
    cut = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == expected[:expected.index(stop)]


def test_seed_makes_sampling_reproducible_and_temperature_zero_is_deterministic(client):
    def ask(**kw) -> str:
        return client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10, **kw) \
            .choices[0].message.content

    assert ask(temperature=0, seed=1) == ask(temperature=0, seed=2)
    first = ask(temperature=1.0, top_p=0.95, seed=7)
    assert ask(temperature=1.0, top_p=0.95, seed=7) == first
    assert len({first, *(ask(temperature=1.5, seed=s) for s in (1, 2, 3))}) > 1  # seeds do change samples


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(llm_server, client):
    questions = [[{"role": "user", "content": q}] for q in (
        "Hi", "What is the capital of France?", "Write one short sentence about the sea and the sky.", "2+2?")]
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        answers[i] = client.chat.completions.create(model=MODEL, messages=questions[i], max_tokens=10,
                                                    temperature=0).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [answers[i] for i in range(len(questions))] == [greedy(llm_server, q, max_tokens=10)[1] for q in questions]


def test_bad_requests_get_openai_error_bodies(llm_server, client):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1000)
    assert err.value.status_code == 400 and error_of(err.value)["param"] == "max_tokens"
    assert "limit of 64" in error_of(err.value)["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="word " * 250, max_tokens=64)
    assert error_of(err.value)["code"] == "context_length_exceeded" and "256" in error_of(err.value)["message"]
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert error_of(err.value)["code"] == "model_not_found" and MODEL in error_of(err.value)["message"]

    def post(body, key=KEY):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(llm_server["url"] + "/v1/chat/completions", data=body, headers=headers, timeout=60)

    for body, param in (("{not json", None), (json.dumps({"model": MODEL, "messages": "hi"}), "messages"),
                        (json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": "ten"}), "max_tokens")):
        response = post(body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert post(json.dumps({"model": MODEL, "messages": QUESTION}), key=None).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").chat.completions.create(model=MODEL, messages=QUESTION)
    assert client.with_options(api_key=ADMIN_KEY).models.list().data[0].id == MODEL  # admin may infer too


def test_requests_over_the_concurrency_limit_get_429(llm_server):
    import time

    def post(max_tokens: int) -> requests.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story about a storm."}],
                "max_tokens": max_tokens, "temperature": 0}
        return requests.post(llm_server["url"] + "/v1/chat/completions", json=body, timeout=120,
                             headers={"Authorization": f"Bearer {KEY}"})

    results: list[requests.Response] = []
    busy = [threading.Thread(target=lambda: results.append(post(32))) for _ in range(4)]  # the limit is 4
    [t.start() for t in busy]
    time.sleep(1.0)  # all four are admitted and decoding
    over = post(4)
    [t.join() for t in busy]
    assert over.status_code == 429 and over.json()["error"]["type"] == "rate_limit_error"
    assert "limit is 4" in over.json()["error"]["message"]
    assert [r.status_code for r in results] == [200] * 4


def test_lora_adapter_from_the_registry_is_served_by_name(llm_server, client):
    import openai
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm.serving.adapters import adapter_folder

    base = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    tuned = client.chat.completions.create(model=f"{MODEL}:{ADAPTER}", messages=QUESTION, max_tokens=12,
                                           temperature=0)
    pinned = client.chat.completions.create(model=f"{MODEL}:{ADAPTER}/{llm_server['version']}", messages=QUESTION,
                                            max_tokens=12, temperature=0)
    assert tuned.model == f"{MODEL}:{ADAPTER}"
    assert tuned.choices[0].message.content != base.choices[0].message.content
    assert pinned.choices[0].message.content == tuned.choices[0].message.content
    with tempfile.TemporaryDirectory() as tmp:
        folder = adapter_folder(ADAPTER, MODEL, Path(tmp))
        local = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llm_server["folder"]), folder).eval()
        assert tuned.choices[0].message.content == greedy(llm_server, QUESTION, max_tokens=12, model=local)[1]
    for unknown in (f"{MODEL}:no-such-adapter", f"{MODEL}:{ADAPTER}/99"):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model=unknown, messages=QUESTION, max_tokens=4)
        assert error_of(err.value)["code"] == "model_not_found"


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}


def test_response_format_json_schema_and_json_object_are_enforced(client):
    import jsonschema
    import openai

    ask = [{"role": "user", "content": "Tell me about a person called Ada who is 36."}]
    answer = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=48, temperature=0,
                                            response_format={"type": "json_schema", "json_schema": {
                                                "name": "person", "schema": PERSON, "strict": True}})
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)
    in_json = [{"role": "system", "content": "Answer in JSON."}, *ask]  # json_object needs the word, as OpenAI's does
    anything = client.chat.completions.create(model=MODEL, messages=in_json, max_tokens=48, temperature=0,
                                              response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ask, response_format={"type": "xml"})
    assert error_of(err.value)["param"] == "response_format"


def test_langchain_with_structured_output_gets_a_valid_object(llm_server):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class City(BaseModel):
        """A city and the country it is in."""

        city: str = Field(max_length=24)
        country: str = Field(max_length=24)

    chat = ChatOpenAI(base_url=llm_server["url"] + "/v1", api_key=KEY, model=MODEL, temperature=0, max_tokens=48,
                      max_retries=0)
    # ChatOpenAI's default method is json_schema: response_format={"type": "json_schema", ...}
    city = chat.with_structured_output(City).invoke("Name a city in France.")
    assert isinstance(city, City) and city.city and city.country


def test_health_reports_the_engine_and_adapters_are_evicted_lru(llm_server, client):
    health = requests.get(llm_server["url"] + "/health", timeout=30)
    assert health.status_code == 200 and health.json() == {"live": True, "ready": True}
    from ray import serve

    engine = serve.get_deployment_handle("llm-engine", "test-llm")
    one = client.chat.completions.create(model=f"{MODEL}:{ADAPTER}", messages=QUESTION, max_tokens=6,
                                         temperature=0).choices[0].message.content
    assert engine.adapters.remote().result() == [ADAPTER]
    other = client.chat.completions.create(model=f"{MODEL}:{OTHER_ADAPTER}", messages=QUESTION, max_tokens=6,
                                           temperature=0).choices[0].message.content
    assert engine.adapters.remote().result() == [OTHER_ADAPTER]  # max_adapters_per_replica: 1
    assert other != one  # names alike, weights not
