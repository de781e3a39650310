"""llm/serving/scheduler.py without Ray: the decoding thread answers requests, and when it dies, requests in
flight and new ones fail at once with 503 instead of waiting forever."""

from __future__ import annotations

import asyncio

import pytest

from llm.serving.openai_protocol import ApiError


class ThreadKiller(BaseException):
    """Escapes the per-step error handling, as a bug in the loop itself would."""


def test_a_dead_decoding_thread_fails_requests_with_503(tiny):
    from llm.serving.generation import Decoder, Job
    from llm.serving.scheduler import DecodingLoop

    model, tokenizer = tiny
    steps = []

    def before_step(adapters):
        steps.append(adapters)
        if len(steps) == 3:
            raise ThreadKiller("boom")

    loop = DecodingLoop(Decoder(model, tokenizer, {-1}), max_batch_size=4, before_step=before_step)
    prompt = tokenizer("Hello there", add_special_tokens=False)["input_ids"]

    async def scenario() -> tuple[list[str], ApiError, ApiError]:
        texts = [event["text"] async for event in loop.generate(Job(prompt_ids=prompt, max_tokens=2))]
        with pytest.raises(ApiError) as in_flight:
            async for _ in loop.generate(Job(prompt_ids=prompt, max_tokens=50)):
                pass
        with pytest.raises(ApiError) as later:
            await anext(loop.generate(Job(prompt_ids=prompt, max_tokens=5)))
        return texts, in_flight.value, later.value

    texts, in_flight, later = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert len(texts) == 2  # the thread worked before it died
    assert in_flight.status == later.status == 503 and "ThreadKiller" in in_flight.message
    with pytest.raises(ApiError, match="decoding thread died"):
        loop.check()
