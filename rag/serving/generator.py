"""The two ways the RAG chain generates, behind one small interface: the embedded transformers engine of
:mod:`llm.serving` (a deployment bound in the same application) or any OpenAI-compatible endpoint by URL.

Both take chat messages and answer ``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}`` or stream
text deltas. Whatever goes wrong reaching the LLM becomes :class:`~llm.serving.openai_protocol.ApiError` 503
saying which LLM and why (504 past the deadline), so the gateway answers it as it is.

Example:
    >>> generator = EmbeddedGenerator(engine_handle, "smollm2-135m-instruct", max_context_tokens=2048)
    >>> await generator.complete([{"role": "user", "content": "Hi"}], max_tokens=16, temperature=0.0, deadline=t)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from llm.serving.openai_protocol import ApiError

__all__ = ["EmbeddedGenerator", "RemoteGenerator"]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _timeout(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


class EmbeddedGenerator:
    """The transformers engine deployment (``llm.serving.transformers_engine.TransformersEngine``): messages are
    tokenized here with the model's chat template, as its own OpenAI gateway does."""

    def __init__(self, engine: Any, source: str, max_context_tokens: int):
        from transformers import AutoTokenizer

        from llm.models import resolve_model

        self.engine, self.source, self.max_context_tokens = engine, source, max_context_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(source))
        self.name = f"the embedded LLM engine ({source})"

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def room(self, messages: list[dict[str, str]], max_tokens: int) -> int:
        """Tokens left in the context once the prompt and ``max_tokens`` are in (negative: too long)."""
        return self.max_context_tokens - len(self.prompt_ids(messages)) - max_tokens

    def _job(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> Any:
        from llm.serving.generation import Job

        return Job(prompt_ids=self.prompt_ids(messages), max_tokens=max_tokens, temperature=temperature, seed=0)

    async def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                       deadline: float) -> dict[str, Any]:
        job = self._job(messages, max_tokens, temperature)
        response = self.engine.complete.remote(job)
        result = await self._call(response, deadline, response)
        return {**result, "prompt_tokens": len(job.prompt_ids)}

    async def stream(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                     deadline: float) -> AsyncIterator[dict[str, Any]]:
        job = self._job(messages, max_tokens, temperature)
        events = self.engine.options(stream=True).stream.remote(job)
        finished = False
        try:
            while not finished:
                try:
                    event = await self._call(events.__anext__(), deadline, events)
                except StopAsyncIteration:
                    return
                finished = bool(event["finish_reason"])
                yield {**event, "prompt_tokens": len(job.prompt_ids)}
        finally:
            if not finished:  # the client left, or the deadline passed: stop decoding
                events.cancel()

    async def health(self) -> None:
        await self._call(self.engine.health.remote(), time.monotonic() + 10, None)

    async def _call(self, awaitable: Any, deadline: float, response: Any) -> Any:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError

        try:
            return await asyncio.wait_for(_awaited(awaitable), timeout=_timeout(deadline))
        except asyncio.TimeoutError:
            if response is not None:
                response.cancel()
            raise ApiError(f"{self.name} gave no answer in time; ask for fewer tokens or retry later", 504,
                           code="timeout") from None
        except (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError) as exc:
            raise ApiError(f"{self.name} is down ({type(exc).__name__}); retry shortly", 503) from None
        except StopAsyncIteration:
            raise
        except Exception as exc:
            cause = getattr(exc, "cause", exc)
            if isinstance(cause, ApiError):
                status = 503 if cause.status >= 500 else cause.status
                raise ApiError(f"{self.name}: {cause.message}", status, cause.param, cause.code) from None
            raise ApiError(f"{self.name} failed: {type(exc).__name__}: {str(exc)[:300]}", 503) from None


class RemoteGenerator:
    """Any OpenAI-compatible chat completions endpoint (vLLM, fabric's own LLM API, a hosted API) through the
    official ``openai`` client."""

    def __init__(self, url: str, model: str, api_key: str | None, timeout_s: float):
        from openai import AsyncOpenAI

        self.url, self.model = url.rstrip("/"), model
        self.client = AsyncOpenAI(base_url=self.url, api_key=api_key or "none", max_retries=0, timeout=timeout_s)
        self.name = f"the LLM endpoint {self.url} (model {model})"

    def room(self, messages: list[dict[str, str]], max_tokens: int) -> int:
        return 1  # the endpoint says itself when a prompt is too long

    async def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                       deadline: float) -> dict[str, Any]:
        call = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_tokens,
                                                   temperature=temperature, timeout=_timeout(deadline))
        answer = await self._call(call, deadline)
        usage = answer.usage
        return {"text": answer.choices[0].message.content or "", "finish_reason": answer.choices[0].finish_reason,
                "prompt_tokens": usage.prompt_tokens if usage else 0,
                "completion_tokens": usage.completion_tokens if usage else 0}

    async def stream(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                     deadline: float) -> AsyncIterator[dict[str, Any]]:
        call = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=max_tokens,
                                                   temperature=temperature, stream=True, timeout=_timeout(deadline))
        chunks = await self._call(call, deadline)
        iterator = chunks.__aiter__()
        count = 0
        try:
            while True:
                try:
                    chunk = await self._call(iterator.__anext__(), deadline)
                except StopAsyncIteration:
                    return
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                text = choice.delta.content or ""
                count += bool(text)
                yield {"text": text, "finish_reason": choice.finish_reason, "completion_tokens": count,
                       "prompt_tokens": 0}
                if choice.finish_reason:
                    return
        finally:
            await chunks.close()

    async def health(self) -> None:
        await self._call(self.client.models.list(timeout=5), time.monotonic() + 10)

    async def _call(self, awaitable: Any, deadline: float) -> Any:
        import openai

        try:
            return await asyncio.wait_for(_awaited(awaitable), timeout=_timeout(deadline))
        except (asyncio.TimeoutError, openai.APITimeoutError):
            raise ApiError(f"{self.name} gave no answer in time; retry later", 504, code="timeout") from None
        except openai.APIConnectionError as exc:
            raise ApiError(f"{self.name} is unreachable ({exc.__cause__ or exc}); is it running?", 503) from None
        except openai.APIStatusError as exc:
            raise ApiError(f"{self.name} answered {exc.status_code}: {str(exc.message)[:300]}", 503) from None
