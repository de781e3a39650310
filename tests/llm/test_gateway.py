"""llm/serving/gateway.py without Ray: an engine stub behind the real gateway class, for what is hard to time
over HTTP: a stream dropped before its first chunk is sent frees its slot and stops decoding; a request past
limits.request_timeout_s gets 504 and is cancelled; an engine that cannot decode answers 503."""

from __future__ import annotations

import asyncio
import gc
import json

from llm.serving.config import LLMLimits, LLMModel
from llm.serving.openai_protocol import ApiError, ChatCompletionRequest

FIRST = {"text": "Hi", "finish_reason": None, "completion_tokens": 1}


class Call:
    """What ``handle.method.remote(job)`` returns: awaitable (or async-iterable) and cancellable."""

    def __init__(self, result=None, error=None, hang=False):
        self.result, self.error, self.hang, self.cancelled = result, error, hang, False

    def __await__(self):
        return self._run().__await__()

    async def _run(self):
        if self.hang:
            await asyncio.sleep(3600)
        if self.error:
            raise self.error
        return self.result

    async def __anext__(self):
        return await self._run()

    def cancel(self):
        self.cancelled = True


class Engine:
    def __init__(self, call: Call):
        self.call = call
        self.stream = self.complete = self

    def options(self, **_):
        return self

    def remote(self, job):
        self.job = job
        return self.call


class Request:
    def __init__(self, body: dict):
        self.headers, self._body = {}, json.dumps(body).encode()

    async def body(self) -> bytes:
        return self._body


def gateway(call: Call, tokenizer, **limits):
    from fabric.serve.keys import Keyring
    from llm.serving.gateway import OpenAIGateway

    # The deployment's own class, without Ray Serve around it (nor its ASGI wrapper's async __del__).
    cls = type("Gateway", (OpenAIGateway.func_or_class,), {"__del__": lambda self: None})
    gw = object.__new__(cls)
    gw.engine, gw.model, gw.tokenizer = Engine(call), LLMModel(), tokenizer
    gw.limits = LLMLimits(max_context_tokens=256, max_tokens=32, default_max_tokens=8, **limits)
    gw.keys, gw.auth_required, gw.in_flight = Keyring({}), False, 0
    return gw


def ask(gw, cls=ChatCompletionRequest, **fields):
    body = {"model": LLMModel().id, **fields}
    if cls is ChatCompletionRequest:
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return asyncio.run(gw._answer(Request(body), cls))


def test_response_format_reaches_the_engine_as_a_grammar_or_is_refused(smollm2_tokenizer):
    from llm.serving.openai_protocol import CompletionRequest

    gw = gateway(Call({"text": "{}", "finish_reason": "stop", "completion_tokens": 2}), smollm2_tokenizer)
    in_json = [{"role": "user", "content": "hi, in JSON"}]  # json_object needs the word, as OpenAI's API does
    assert ask(gw, messages=in_json, response_format={"type": "json_object"}).status_code == 200
    assert gw.engine.job.grammar
    assert ask(gw, CompletionRequest, prompt="JSON:", response_format={"type": "json_object"}).status_code == 200
    assert gw.engine.job.grammar  # text completions honour it too
    assert ask(gw, response_format={"type": "text"}).status_code == 200 and gw.engine.job.grammar is None
    refused = ask(gw, response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert refused.status_code == 400 and json.loads(refused.body)["error"]["param"] == "response_format"
    assert gw.in_flight == 0


def test_a_stream_dropped_before_its_first_chunk_frees_its_slot(smollm2_tokenizer):
    call = Call(FIRST)
    gw = gateway(call, smollm2_tokenizer)
    response = ask(gw, stream=True)
    assert gw.in_flight == 1 and response.media_type == "text/event-stream"
    del response  # the client left: Starlette never started the body
    gc.collect()
    assert gw.in_flight == 0 and call.cancelled


def test_requests_past_the_timeout_get_504_and_a_dead_engine_503(smollm2_tokenizer):
    hanging = Call(hang=True)
    gw = gateway(hanging, smollm2_tokenizer, request_timeout_s=0.2)
    response = ask(gw)
    assert response.status_code == 504 and hanging.cancelled and gw.in_flight == 0
    assert "request_timeout_s" in json.loads(response.body)["error"]["message"]
    down = gateway(Call(error=ApiError("the engine cannot decode", 503)), smollm2_tokenizer)
    response = ask(down)
    assert response.status_code == 503 and json.loads(response.body)["error"]["type"] == "server_error"
    assert down.in_flight == 0
