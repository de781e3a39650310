"""The RAG application's HTTP front: ``POST /rag/query``, OpenAI-compatible ``/v1/chat/completions`` (and its
stream) and ``/v1/models``, ``GET /health``; for clients that bring their own LLM ``POST /rag/retrieve`` (the
citations, no generation) and ``POST /rag/score`` (any answer's groundedness and guardrail verdict; logged only for
a key whose role includes ``label``). Every answer passes the grounding guardrail (:mod:`rag.serving.guardrail`).

Errors: on ``/rag`` routes a JSON ``{"error": message, "param"}``, on ``/v1`` routes OpenAI's error shape (the
``openai`` client raises ``BadRequestError``, ``APIStatusError``...). 401/403 (API keys, role ``predict``), 404
(a ``model`` this app does not serve), 413 (body), 422 (bad JSON or a wrongly typed field), 400 (empty or too long
query, top_k or max_tokens over the limits, a filter key not allowed), 429 (too many requests in flight), 503 (the
retriever, Qdrant or the LLM is down, saying which), 504 (past ``limits.request_timeout_s``). Every response has
``x-request-id`` (Ray Serve's proxy sets it on every request and response; the gateway uses the same id in
bodies, logs, traces and the inference log).

The chat route answers the last user message from the documents: its content is the answer with ``[n]``
markers and a ``Sources:`` list; the top-level ``rag`` field holds the citations, groundedness, commit and
collection (the last chunk of a stream carries it). RAG options go in the body beside the OpenAI ones
(``extra_body={"top_k": 3, "filters": {...}}`` in the ``openai`` client).
"""

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from fabric.serve.access import authorize
from fabric.serve.keys import Keyring
from fabric.serve.protocols import RequestError
from llm.serving import openai_protocol as oai
from llm.serving.admission import Slot, authorize_predict, awaited, read_limited
from llm.serving.openai_protocol import ApiError, ChatCompletionRequest
from rag.serving.answer import NOT_COVERED, complete_sentences, sources_footer
from rag.serving.answer import retrieved as retrieved_citations
from rag.serving.chain import RagChain, ScoreRequest, parse_query
from rag.serving.config import RagServeConfig
from rag.serving.guardrail import decide
from rag.serving.telemetry import Telemetry, Timings

__all__ = ["RagGateway"]

log = logging.getLogger("ray.serve")

api = FastAPI(title="fabric RAG", description="Answers from the documents with citations and a groundedness "
              "score: POST /rag/query, or OpenAI's /v1/chat/completions. Send `Authorization: Bearer KEY`.")


def _request_id(request: Request) -> str:
    """The id Serve's proxy gave the request (the client's own x-request-id when it sent one)."""
    given = request.headers.get("x-request-id", "")
    return given if given and len(given) <= 128 and given.isprintable() else uuid.uuid4().hex


async def _whole(events: AsyncIterator[dict[str, Any]], event: dict[str, Any]) -> dict[str, Any]:
    """The rest of a generator's stream after ``event``, as one event holding the whole text."""
    parts = [event["text"]]
    while not event["finish_reason"]:
        try:
            event = await events.__anext__()
        except StopAsyncIteration:
            event = {**event, "text": "", "finish_reason": "stop"}
        parts.append(event["text"])
    return {**event, "text": "".join(parts)}


@serve.deployment
@serve.ingress(api)
class RagGateway:
    """HTTP front: auth, parsing and limits, the chain's steps, errors, metrics, traces, the inference log."""

    def __init__(self, cfg: dict[str, Any], retriever: Any, engine: Any, hashed_keys: dict[str, str],
                 llm_api_key: str | None, tracking_uri: str, judge_api_key: str | None = None):
        import mlflow

        from llm.prompts import load

        mlflow.set_tracking_uri(tracking_uri)
        self.cfg = RagServeConfig(**cfg)
        self.keys = Keyring(hashed_keys)
        self.in_flight, self.created = 0, int(time.time())
        prompt = load(self.cfg.prompt.uri)
        self.prompt_version = f"{prompt.name}/{prompt.version}"
        llm = self.cfg.llm
        if llm.embedded:
            from rag.serving.generator import EmbeddedGenerator

            generator: Any = EmbeddedGenerator(engine, llm.model, llm.max_context_tokens)
        else:
            from rag.serving.generator import RemoteGenerator

            generator = RemoteGenerator(llm.url, llm.model, llm_api_key, self.cfg.limits.request_timeout_s)
        self.chain = RagChain(retriever, generator, prompt.template, self.cfg.index.model_dump(),
                              self.cfg.prompt.model_dump(), self.cfg.groundedness.model_dump(),
                              self.cfg.limits.model_dump())
        judge = self.cfg.groundedness.judge
        if judge is not None:  # before load_scorer: the scorer itself may be the judge
            from rag.judge import use_judge

            use_judge(judge.url, judge.model, judge_api_key)
        self.chain.load_scorer()
        self.telemetry = Telemetry(self.cfg.name, self.cfg.model, self.cfg.inference_log.model_dump(),
                                   self.cfg.trace_sample_rate, tracking_uri)
        log.info("fabric rag: %s answers with prompt %s and scorer %s", self.cfg.model, self.prompt_version,
                 self.cfg.groundedness.scorer)

    def __del__(self) -> None:
        if getattr(self, "telemetry", None) is not None:
            self.telemetry.close()

    # -- routes ------------------------------------------------------------------------------------------------

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 when the index and the LLM both answer; 503 naming what does not (the gateway itself is live)."""
        checks = {"index": self.chain.retriever.health.remote(), "llm": self.chain.generator.health()}
        status: dict[str, Any] = {"live": True, "ready": True}
        for name, call in checks.items():
            try:
                status[name] = await asyncio.wait_for(awaited(call), timeout=15) or "ok"
                if "error" in status[name]:
                    status[name] = {"error": status[name]["error"]}
                    status["ready"] = False
            except Exception as exc:
                cause = getattr(exc, "cause", exc)
                status[name] = {"error": cause.message if isinstance(cause, ApiError)
                                else f"{type(exc).__name__}: {exc}"[:300]}
                status["ready"] = False
        return JSONResponse(status, status_code=200 if status["ready"] else 503)

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        rid = _request_id(request)
        try:
            self._authorize(request)
        except ApiError as exc:
            return self._error(exc, rid, openai=True)
        return JSONResponse({"object": "list", "data": [
            {"id": self.cfg.model, "object": "model", "created": self.created, "owned_by": "fabric",
             "root": self.cfg.index.alias, "parent": None}]})

    @api.post("/rag/query")
    async def query(self, request: Request) -> JSONResponse:
        rid = _request_id(request)
        try:
            self._authorize(request)
            body = parse_query(await self._body(request))
            question = self.chain.question(body.query, body.top_k, body.filters, body.score_threshold,
                                           body.max_tokens, body.temperature, self.cfg.llm.temperature)
            slot = self._admit()
            try:
                result = await self._answer(question, rid, "rag_query")
            finally:
                slot.release()
            for internal in ("_usage", "_finish"):  # the chat route's; not part of this answer
                result.pop(internal, None)
        except ApiError as exc:
            return self._error(exc, rid, openai=False, route="rag_query")
        except Exception as exc:
            log.exception("fabric rag: request %s failed", rid)
            return self._error(ApiError(f"internal error ({type(exc).__name__}); the server log has the details "
                                        f"under request id {rid}", 500), rid, openai=False, route="rag_query")
        self.telemetry.request("rag_query", 200)
        return JSONResponse(result)

    @api.post("/rag/retrieve")
    async def retrieve(self, request: Request) -> JSONResponse:
        """Retrieval only, for clients that bring their own LLM: ``/rag/query``'s request, no generation; the
        citations carry each chunk's whole ``text``."""
        rid = _request_id(request)
        try:
            self._authorize(request)
            body = parse_query(await self._body(request))
            question = self.chain.question(body.query, body.top_k, body.filters, body.score_threshold,
                                           body.max_tokens, body.temperature, self.cfg.llm.temperature)
            slot = self._admit()
            try:
                timings = Timings()
                found = await self.chain.retrieve(question, time.monotonic() + self.cfg.limits.request_timeout_s)
                timings.retrieved = time.time_ns()
            finally:
                slot.release()
        except ApiError as exc:
            return self._error(exc, rid, openai=False, route="rag_retrieve")
        except Exception as exc:
            log.exception("fabric rag: request %s failed", rid)
            return self._error(ApiError(f"internal error ({type(exc).__name__}); the server log has the details "
                                        f"under request id {rid}", 500), rid, openai=False, route="rag_retrieve")
        result = {"citations": retrieved_citations(found["hits"]), "commit": found.get("commit"),
                  "collection": found.get("collection"), "request_id": rid,
                  "timings_ms": {"retrieval": timings.ms(timings.start, timings.retrieved)}}
        self.telemetry.retrieval(timings)
        self.telemetry.record(rid, "rag_retrieve", question.query, {**result, "answer": "", "groundedness": None,
                                                                    "guardrail": None})
        self.telemetry.request("rag_retrieve", 200)
        return JSONResponse(result)

    @api.post("/rag/score")
    async def score(self, request: Request) -> JSONResponse:
        """The groundedness of an answer produced elsewhere (``{"answer", "contexts", "question"?}``) with the
        configured scorer, and the guardrail's verdict on it. Only a key whose role includes ``label`` puts it into
        the inference log (data commit ``external``) and the metrics (``"logged": true``)."""
        rid = _request_id(request)
        try:
            logged = self._authorize_score(request)
            body = parse_query(await self._body(request), ScoreRequest)
            if len(body.contexts) > self.cfg.limits.max_top_k:
                raise ApiError(f"contexts: {len(body.contexts)} given, over this server's limit of "
                               f"{self.cfg.limits.max_top_k}", 400, "contexts")
            slot = self._admit()
            try:
                timings = Timings()
                detail = await self._score(body.answer, body.contexts)
                timings.scored = time.time_ns()
            finally:
                slot.release()
        except ApiError as exc:
            return self._error(exc, rid, openai=False, route="rag_score")
        except Exception as exc:
            log.exception("fabric rag: request %s failed", rid)
            return self._error(ApiError(f"internal error ({type(exc).__name__}); the server log has the details "
                                        f"under request id {rid}", 500), rid, openai=False, route="rag_score")
        grounding = self.cfg.groundedness
        replacement, verdict = decide(detail, [{"text": c} for c in body.contexts], grounding.on_ungrounded,
                                      grounding.threshold)
        result = {**detail.to_dict(), "guardrail": verdict, "replacement": replacement, "logged": logged,
                  "request_id": rid, "timings_ms": {"scoring": timings.ms(timings.start, timings.scored)}}
        if logged:
            self.telemetry.steps(Timings(), detail.score, detail.scorer)
            self.telemetry.guarded(verdict["action"])
            self.telemetry.record(rid, "rag_score", body.question or "", {
                "answer": body.answer, "citations": [], "covered": bool(body.contexts),
                "groundedness": detail.to_dict(), "guardrail": verdict, "commit": "external", "collection": ""})
        self.telemetry.request("rag_score", 200)
        return JSONResponse(result)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        rid = _request_id(request)
        slot: Slot | None = None
        try:
            self._authorize(request)
            raw = await self._body(request)
            req = oai.parse_request(raw, ChatCompletionRequest)
            if req.model != self.cfg.model:
                raise ApiError(f"model {req.model!r} is not served here; this RAG app is {self.cfg.model!r}", 404,
                               "model", "model_not_found")
            if req.response_format and req.response_format.get("type") != "text":
                raise ApiError("response_format: the RAG app answers in text only", 400, "response_format")
            question = self._chat_question(req, json.loads(raw))
            slot = self._admit()
            if req.stream:
                response = await self._stream(req, question, rid, slot)
                slot = None  # the stream owns it now
                return response
            result = await self._answer(question, rid, "chat_completions")
        except ApiError as exc:
            return self._error(exc, rid, openai=True, route="chat_completions")
        except Exception as exc:
            log.exception("fabric rag: request %s failed", rid)
            return self._error(ApiError(f"internal error ({type(exc).__name__}); see the server log under request "
                                        f"id {rid}", 500), rid, openai=True, route="chat_completions")
        finally:
            if slot is not None:
                slot.release()
        self.telemetry.request("chat_completions", 200)
        content = result["answer"] + sources_footer(result["citations"])
        usage = result.pop("_usage", {"prompt_tokens": 0, "completion_tokens": 0})
        body = oai.chat_response(f"chatcmpl-{rid}", req.model, content, result.pop("_finish", "stop"),
                                 usage["prompt_tokens"], usage["completion_tokens"])
        body["rag"] = result
        return JSONResponse(body)

    # -- steps -------------------------------------------------------------------------------------------------

    async def _answer(self, question: Any, rid: str, route: str) -> dict[str, Any]:
        """Retrieve, generate, score, cite; records metrics, the trace and the inference log row."""
        timings, retrieved, messages, text, detail = Timings(), None, None, None, None
        deadline = time.monotonic() + self.cfg.limits.request_timeout_s
        try:
            retrieved = await self.chain.retrieve(question, deadline)
            timings.retrieved = time.time_ns()
            if not retrieved["hits"]:
                result, logged = self.chain.not_covered(retrieved, rid), None
            else:
                messages, used = self.chain.messages(question, retrieved["hits"])
                generated = await self.chain.generator.complete(messages, question.max_tokens, question.temperature,
                                                                deadline)
                timings.generated, text = time.time_ns(), generated["text"]
                if generated.get("finish_reason") == "length":  # cut by max_tokens: no dangling half sentence
                    text = complete_sentences(text)
                detail = await self.chain.score(text, used)
                timings.scored = time.time_ns()
                result = self.chain.result(text, used, detail, retrieved, rid)
                logged = result.pop("_logged", None)
                result["_usage"] = {"prompt_tokens": generated.get("prompt_tokens", 0),
                                    "completion_tokens": generated.get("completion_tokens", 0)}
                result["_finish"] = generated.get("finish_reason") or "stop"
                self._judge(text, used)
        except ApiError as exc:
            self.telemetry.trace(rid, route, question.query, timings, retrieved, messages, text, None, exc.message)
            raise
        self._recorded(rid, route, question.query, timings, retrieved, messages, result, logged)
        result["timings_ms"] = timings.steps()
        return result

    def _recorded(self, rid: str, route: str, query: str, timings: Timings, retrieved: Any, messages: Any,
                  result: dict[str, Any], logged: dict[str, Any] | None) -> None:
        """Metrics, trace and inference log row of an answer; ``logged`` (a replaced answer's own text and full
        verdict) goes to the inference log only."""
        grounded = result["groundedness"] or {}
        self.telemetry.steps(timings, grounded.get("score"), grounded.get("scorer"))
        if result["citations"]:
            self.telemetry.guarded(result["guardrail"]["action"])
        self.telemetry.trace(rid, route, query, timings, retrieved, messages, result["answer"],
                             result["groundedness"])
        self.telemetry.record(rid, route, query, result, logged)

    async def _stream(self, req: Any, question: Any, rid: str, slot: Slot) -> StreamingResponse:
        """Retrieves and starts generating before the response starts (so a failure is a plain error status),
        then streams the answer's text, the sources, and a last chunk with the ``rag`` field. With
        ``on_ungrounded`` refuse or quote the whole answer is generated first and scored before any of its text is
        sent (the guardrail may replace it); with flag it streams as generated and the last chunk has the verdict."""
        deadline = time.monotonic() + self.cfg.limits.request_timeout_s
        timings = Timings()
        retrieved = await self.chain.retrieve(question, deadline)
        timings.retrieved = time.time_ns()
        used, messages, events, first = [], None, None, None
        if retrieved["hits"]:
            messages, used = self.chain.messages(question, retrieved["hits"])
            events = self.chain.generator.stream(messages, question.max_tokens, question.temperature, deadline)
            try:
                first = await events.__anext__()
                if self.cfg.groundedness.on_ungrounded != "flag":
                    first = await _whole(events, first)
            except ApiError as exc:
                self.telemetry.trace(rid, "chat_stream", question.query, timings, retrieved, messages, None, None,
                                     exc.message)
                raise
        body = self._sse(req, question, rid, slot, timings, retrieved, used, messages, events, first)
        return StreamingResponse(body, media_type="text/event-stream")

    async def _sse(self, req: Any, question: Any, rid: str, slot: Slot, timings: Timings, retrieved: dict,
                   used: list, messages: Any, events: AsyncIterator | None, first: dict | None) -> AsyncIterator[bytes]:
        model, cid = req.model, f"chatcmpl-{rid}"
        parts: list[str] = []
        event = first
        buffered = events is not None and self.cfg.groundedness.on_ungrounded != "flag"  # first: the whole answer
        try:
            yield oai.sse(oai.chat_chunk(cid, model, {"role": "assistant", "content": ""}))
            if events is None:
                parts.append(NOT_COVERED)
                yield oai.sse(oai.chat_chunk(cid, model, {"content": NOT_COVERED}))
                event = {"finish_reason": "stop", "completion_tokens": 0, "prompt_tokens": 0}
            elif buffered:
                parts.append(complete_sentences(event["text"]) if event["finish_reason"] == "length" else
                             event["text"])
            else:
                while True:
                    if event["text"]:
                        parts.append(event["text"])
                        yield oai.sse(oai.chat_chunk(cid, model, {"content": event["text"]}))
                    if event["finish_reason"]:
                        break
                    event = await events.__anext__()
            timings.generated = time.time_ns() if events is not None else None
            text = "".join(parts)
            detail = await self.chain.score(text, used) if used else None
            timings.scored = time.time_ns() if used else None
            result = self.chain.result(text, used, detail, retrieved, rid) if used else \
                self.chain.not_covered(retrieved, rid)
            logged = result.pop("_logged", None)
            if buffered and result["answer"]:  # scored (and maybe replaced): now its text may leave
                yield oai.sse(oai.chat_chunk(cid, model, {"content": result["answer"]}))
            footer = sources_footer(result["citations"])
            if footer:
                yield oai.sse(oai.chat_chunk(cid, model, {"content": footer}))
            last = oai.chat_chunk(cid, model, {}, event["finish_reason"])
            last["rag"] = result
            yield oai.sse(last)
            if (req.stream_options or {}).get("include_usage"):
                counts = oai.usage(event.get("prompt_tokens", 0), event.get("completion_tokens", 0))
                yield oai.sse(oai.chat_chunk(cid, model, None, counts=counts))
            yield oai.sse("[DONE]")
            self._recorded(rid, "chat_stream", question.query, timings, retrieved, messages, result, logged)
            self.telemetry.request("chat_stream", 200)
        except Exception as exc:  # headers are sent: the stream ends with an error event (the SDK raises it)
            error = exc if isinstance(exc, ApiError) else ApiError(f"the stream failed: {type(exc).__name__}", 500)
            if not isinstance(exc, ApiError):
                log.exception("fabric rag: stream %s failed", rid)
            self.telemetry.request("chat_stream", error.status)
            yield oai.sse(oai.error_body(error))
        finally:
            slot.release()
            if events is not None:
                await events.aclose()

    def _chat_question(self, req: ChatCompletionRequest, data: dict[str, Any]) -> Any:
        users = [m for m in req.messages if m.role == "user"]
        if not users:
            raise ApiError("messages: no user message; the last user message is the question", 400, "messages")
        temperature = req.temperature if "temperature" in req.model_fields_set else None
        options = {}
        for name, kinds in (("top_k", (int,)), ("filters", (dict,)), ("score_threshold", (int, float))):
            value = data.get(name)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise ApiError(f"{name}: wrong type {type(value).__name__}", 422, name)
            options[name] = value
        return self.chain.question(users[-1].text(), options["top_k"], options["filters"],
                                   options["score_threshold"], req.requested_tokens(), temperature,
                                   self.cfg.llm.temperature)

    def _judge(self, answer: str, used: list[dict[str, Any]]) -> None:
        """Scores a sample of answers with the ``judge`` scorer too, off the request path (metric only)."""
        rate = self.cfg.groundedness.judge_sample_rate
        if rate <= 0 or random.random() >= rate:
            return

        async def judge() -> None:
            from rag.groundedness import get_scorer

            try:
                scorer = get_scorer("judge")
                detail = (await asyncio.to_thread(scorer.detail_batch, [answer], [[h["text"] for h in used]]))[0]
                self.telemetry.groundedness.observe(detail.score, tags={"app": self.cfg.name, "scorer": "judge"})
            except Exception as exc:
                log.warning("fabric rag: the judge scorer failed: %s", exc)

        asyncio.get_running_loop().create_task(judge())

    def _admit(self) -> Slot:
        """A slot under ``max_concurrent_requests``, or 429."""
        if self.in_flight >= self.cfg.limits.max_concurrent_requests:
            raise self._busy()
        return Slot(self)

    def _busy(self) -> ApiError:
        return ApiError(f"{self.in_flight} requests are in flight, the server's limit is "
                        f"{self.cfg.limits.max_concurrent_requests}; retry shortly", 429)

    def _authorize(self, request: Request) -> None:
        authorize_predict(self.keys, self.cfg.auth.required, request)

    def _authorize_score(self, request: Request) -> bool:
        """A key of role predict or label (or admin) may score; returns whether its role includes ``label``."""
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        labels = Keyring.allows(self.keys.role(key), "label")
        try:
            authorize(self.keys, self.cfg.auth.required, request, "label" if labels else "predict")
        except RequestError as exc:
            raise ApiError(str(exc), exc.status) from None
        return labels

    async def _score(self, answer: str, contexts: list[str]) -> Any:
        """The configured scorer's detail of ``answer`` in ``contexts``; 503 when it fails."""
        try:
            scorer = self.chain.scorer or self.chain.load_scorer()
            return (await asyncio.to_thread(scorer.detail_batch, [answer], [contexts]))[0]
        except Exception as exc:
            log.exception("fabric rag: scoring with %r failed", self.cfg.groundedness.scorer)
            raise ApiError(f"the groundedness scorer {self.cfg.groundedness.scorer!r} failed "
                           f"({type(exc).__name__}); retry later", 503) from None

    async def _body(self, request: Request) -> bytes:
        return await read_limited(request, self.cfg.limits.max_request_bytes)

    def _error(self, exc: ApiError, rid: str, openai: bool, route: str | None = None) -> JSONResponse:
        if exc.status >= 500:
            log.warning("fabric rag: request %s: %s", rid, exc.message)
        if route:
            self.telemetry.request(route, exc.status)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body = oai.error_body(exc) if openai else {"error": exc.message, "param": exc.param, "request_id": rid}
        return JSONResponse(body, status_code=exc.status, headers=headers)
