"""The OpenAI-compatible HTTP front of the transformers engine: auth, parsing, limits, tokenization, streaming.

Everything a request can get wrong is decided here, before the engine sees it, and answered in OpenAI's error
shape: 401/403 (API keys, as for the tabular endpoints), 404 (unknown model or adapter), 413 (body too big),
422 (bad JSON, wrong types), 400 (max_tokens over the cap, prompt plus max_tokens over the context length,
unsupported options or a ``response_format`` that cannot be enforced), 429 (too many requests in flight), 503
(the engine is down: its decoding thread died or its replica is gone), 504 (no answer within
``limits.request_timeout_s``). Streams are server-sent events in OpenAI's chunk format, ending with
``data: [DONE]``; a stream that fails or times out once started ends with an OpenAI error event instead.

Each admitted request holds one of ``limits.max_concurrent_requests`` slots (:class:`llm.serving.admission.Slot`)
until it is answered, its stream ends, or its stream is dropped unread (the client left before the first chunk was
sent).
``GET /health`` asks the engine too: 503 when it cannot decode.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from fabric.serve.keys import Keyring
from llm.serving import openai_protocol as oai
from llm.serving.adapters import split_model
from llm.serving.admission import Slot, authorize_predict, awaited, read_limited
from llm.serving.config import LLMLimits, LLMModel
from llm.serving.generation import Job
from llm.serving.openai_protocol import ApiError, ChatCompletionRequest, CompletionRequest
from llm.serving.structured import grammar_for

__all__ = ["OpenAIGateway"]

log = logging.getLogger("ray.serve")

api = FastAPI(title="fabric LLM serving", description="OpenAI-compatible chat and text completions. Send "
              "`Authorization: Bearer KEY`.")


@serve.deployment
@serve.ingress(api)
class OpenAIGateway:
    """HTTP front: validates and tokenizes requests, calls the engine, formats answers and streams."""

    def __init__(self, engine: Any, model: dict[str, Any], limits: dict[str, Any], hashed_keys: dict[str, str],
                 auth_required: bool):
        from transformers import AutoTokenizer

        from llm.models import resolve_model

        self.engine = engine
        self.model, self.limits = LLMModel(**model), LLMLimits(**limits)
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.model.source))
        self.keys, self.auth_required = Keyring(hashed_keys), auth_required
        self.in_flight = 0
        self.created = int(time.time())

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 when the engine can decode; 503 with the reason when it cannot (the gateway itself is live)."""
        try:
            await asyncio.wait_for(awaited(self.engine.health.remote()), timeout=10)
        except Exception as exc:
            cause = getattr(exc, "cause", exc)
            reason = cause.message if isinstance(cause, ApiError) else f"{type(exc).__name__}: {exc}"[:300]
            return JSONResponse({"live": True, "ready": False, "reason": reason}, status_code=503)
        return JSONResponse({"live": True, "ready": True})

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
        except ApiError as exc:
            return self._error(exc)
        return JSONResponse({"object": "list", "data": [
            {"id": self.model.id, "object": "model", "created": self.created, "owned_by": "fabric",
             "root": self.model.source, "parent": None}]})

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        return await self._answer(request, ChatCompletionRequest)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._answer(request, CompletionRequest)

    # -- steps -------------------------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        authorize_predict(self.keys, self.auth_required, request)

    async def _body(self, request: Request) -> bytes:
        return await read_limited(request, self.limits.max_request_bytes)

    def _job(self, req: Any) -> Job:
        """Tokenizes the prompt and applies the limits; the engine gets token ids and sampling settings."""
        if isinstance(req, ChatCompletionRequest):
            try:
                text = self.tokenizer.apply_chat_template(req.turns(), tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # the template's own checks (e.g. role order) raise jinja errors
                raise ApiError(f"messages: the chat template refused them: {exc}", 400, "messages") from None
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = self.tokenizer(req.text())["input_ids"]
        if not prompt_ids:
            raise ApiError("prompt: empty; give at least one token", 400, "prompt")
        context, cap = self.limits.max_context_tokens, self.limits.max_tokens
        asked = req.requested_tokens()
        if asked is not None and asked > cap:
            param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
            raise ApiError(f"{param} is {asked}, over this server's limit of {cap}; ask for at most {cap}", 400,
                           param)
        room = context - len(prompt_ids)
        max_tokens = asked if asked is not None else min(self.limits.default_max_tokens, room)
        if max_tokens > room:
            raise ApiError(f"this model's maximum context length is {context} tokens, but the prompt has "
                           f"{len(prompt_ids)} tokens and max_tokens asks for {max_tokens} more "
                           f"({len(prompt_ids) + max_tokens} in all); shorten the prompt or lower max_tokens",
                           400, "messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                           "context_length_exceeded")
        grammar = grammar_for(req.response_format)
        return Job(prompt_ids=prompt_ids, max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                   stop=req.stops(), seed=req.seed, grammar=grammar)

    async def _answer(self, request: Request, cls: type) -> Any:
        chat = cls is ChatCompletionRequest
        rid = oai.new_id("chatcmpl" if chat else "cmpl")
        deadline = time.monotonic() + self.limits.request_timeout_s
        slot: Slot | None = None
        try:
            self._authorize(request)
            req = oai.parse_request(await self._body(request), cls)
            _, adapter = split_model(req.model, self.model.id)
            job = self._job(req)
            if self.in_flight >= self.limits.max_concurrent_requests:
                raise ApiError(f"{self.in_flight} requests are in flight, the server's limit is "
                               f"{self.limits.max_concurrent_requests}; retry shortly", 429)
            slot = Slot(self)
            engine = self.engine.options(multiplexed_model_id=adapter) if adapter else self.engine
            if req.stream:
                events = engine.options(stream=True).stream.remote(job)
                slot.on_release = events.cancel  # an abandoned stream stops decoding too
                first = await self._engine_call(events.__anext__(), deadline, events)
                body = self._sse(req, rid, chat, len(job.prompt_ids), first, events, slot, deadline)
                slot = None  # the stream owns it now: released when the stream ends or is dropped unread
                return StreamingResponse(body, media_type="text/event-stream", headers={"x-request-id": rid})
            response = engine.complete.remote(job)
            result = await self._engine_call(response, deadline, response)
            build = oai.chat_response if chat else oai.text_response
            return JSONResponse(build(rid, req.model, result["text"], result["finish_reason"], len(job.prompt_ids),
                                      result["completion_tokens"]), headers={"x-request-id": rid})
        except ApiError as exc:
            return self._error(exc)
        except Exception as exc:  # an engine failure: still OpenAI's error shape, and the reason
            log.exception("fabric llm: request %s failed", rid)
            return self._error(ApiError(f"the engine failed: {type(exc).__name__}: {str(exc)[:500]}", 500))
        finally:
            if slot is not None:
                slot.release(cancel=False)

    async def _sse(self, req: Any, rid: str, chat: bool, prompt_tokens: int, first: dict[str, Any],
                   events: Any, slot: Slot, deadline: float) -> AsyncIterator[bytes]:
        finished = False
        try:
            if chat:
                yield oai.sse(oai.chat_chunk(rid, req.model, {"role": "assistant", "content": ""}))
            event = first
            while True:
                if event["text"] or event["finish_reason"]:
                    if chat:
                        delta = {"content": event["text"]} if event["text"] else {}
                        yield oai.sse(oai.chat_chunk(rid, req.model, delta, event["finish_reason"]))
                    else:
                        yield oai.sse(oai.text_chunk(rid, req.model, event["text"], event["finish_reason"]))
                if event["finish_reason"]:
                    break
                event = await self._engine_call(events.__anext__(), deadline, events)
            finished = True
            if (req.stream_options or {}).get("include_usage"):
                counts = oai.usage(prompt_tokens, event["completion_tokens"])
                yield oai.sse(oai.chat_chunk(rid, req.model, None, counts=counts) if chat
                              else oai.text_chunk(rid, req.model, "", counts=counts))
            yield oai.sse("[DONE]")
        except Exception as exc:  # headers are sent: the stream ends with an error event (the SDK raises it)
            error = exc if isinstance(exc, ApiError) else ApiError(f"the engine failed: {type(exc).__name__}", 500)
            if not isinstance(exc, ApiError):
                log.exception("fabric llm: stream %s failed", rid)
            yield oai.sse(oai.error_body(error))
        finally:
            slot.release(cancel=not finished)

    async def _engine_call(self, awaitable: Any, deadline: float, response: Any) -> Any:
        """Awaits an engine call until ``deadline``: 504 (and the call cancelled) past it, 503 if the engine is
        down; an :class:`ApiError` raised in the engine (unknown adapter) keeps its status."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError
        from ray.serve.exceptions import DeploymentUnavailableError

        try:
            return await asyncio.wait_for(awaited(awaitable), timeout=max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            response.cancel()
            raise ApiError(f"no answer within limits.request_timeout_s={self.limits.request_timeout_s:g} s; "
                           "ask for fewer tokens or retry later", 504, code="timeout") from None
        except (ActorDiedError, ActorUnavailableError, DeploymentUnavailableError) as exc:
            raise ApiError(f"the engine is unavailable ({type(exc).__name__}); retry shortly", 503) from None
        except Exception as exc:
            cause = getattr(exc, "cause", exc)  # Ray wraps what the replica raised
            if isinstance(cause, ApiError):
                raise ApiError(cause.message, cause.status, cause.param, cause.code) from None
            raise

    @staticmethod
    def _error(exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(oai.error_body(exc), status_code=exc.status, headers=headers)

