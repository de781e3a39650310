"""The RAG chain's steps as the gateway runs them: retrieve, fill the prompt, generate, score, cite.

Each step raises :class:`~llm.serving.openai_protocol.ApiError` with the status the client should see (503 when the
retriever, Qdrant or the LLM is down, 504 past the deadline). The request models of ``POST /rag/query`` live here
too: :class:`RagQuery`, parsed by :func:`parse_query` into 4xx errors that name the field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr, ValidationError

from llm.serving.openai_protocol import ApiError
from rag.serving.answer import NOT_COVERED, citations, mark_answer, numbered_context
from rag.serving.config import RagGroundedness, RagIndex, RagLimits, RagPrompt
from rag.serving.guardrail import decide, passed, redacted

__all__ = ["Question", "RagChain", "RagQuery", "ScoreRequest", "parse_query"]

log = logging.getLogger("ray.serve")
_TYPES = {"str", "int", "float", "bool"}
_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_SURROGATE = re.compile("[\ud800-\udfff]")


class RagQuery(BaseModel):
    """The body of ``POST /rag/query``."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    top_k: StrictInt | None = None
    filters: dict[StrictStr, StrictStr | list[StrictStr]] | None = None
    score_threshold: StrictFloat | StrictInt | None = None
    max_tokens: StrictInt | None = None
    temperature: StrictFloat | StrictInt | None = None


class ScoreRequest(BaseModel):
    """The body of ``POST /rag/score``: an answer produced elsewhere and the contexts it was given."""

    model_config = ConfigDict(extra="forbid")

    answer: StrictStr
    contexts: list[StrictStr]
    question: StrictStr | None = None


@dataclass
class Question:
    """One request's question and settings, checked against the limits."""

    query: str
    top_k: int
    filters: dict[str, str | list[str]] | None
    score_threshold: float
    max_tokens: int
    temperature: float


def parse_query(body: bytes, model: type[BaseModel] = RagQuery) -> Any:
    """The request of a raw /rag/query (or /rag/retrieve, or with ``model=ScoreRequest`` /rag/score) body: 422
    for bad JSON, an unknown field or a wrong type, naming it; 400 for text with a lone surrogate (which no
    tokenizer can encode), naming the field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(f"body is not valid JSON: {exc}", 422) from None
    if not isinstance(data, dict):
        raise ApiError('body must be a JSON object such as {"query": "How does a with statement work?"}', 422)
    try:
        request = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # a union's member type shows up in the location (filters.doc_id.str): keep only the field path
        param = ".".join(str(p) for p in first["loc"] if str(p) not in _TYPES and "[" not in str(p)) or None
        param = _escaped(param) if param else None  # a field name may hold a surrogate too: JSON cannot carry it
        raise ApiError(f"{param}: {first['msg']}; got {first.get('input')!r:.100}", 422, param) from None
    _no_surrogates(request.model_dump())
    return request


def _escaped(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udXXX`` escapes (a response cannot encode them)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _no_surrogates(value: Any, path: str = "") -> None:
    """400 naming the field when a string holds a lone surrogate (JSON's "\\ud800" decodes to one)."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            path = _escaped(path)
            raise ApiError(f"{path}: text with a lone surrogate (an unpaired \\ud800-\\udfff escape) cannot be "
                           "encoded; send valid UTF-16 pairs or UTF-8", 400, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_surrogates(key, f"{path}.{key}".lstrip("."))
            _no_surrogates(item, f"{path}.{key}".lstrip("."))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_surrogates(item, f"{path}.{i}")


class RagChain:
    """The steps, with the retriever and generator they call and the limits they apply."""

    def __init__(self, retriever: Any, generator: Any, template: Any, index: dict, prompt: dict,
                 groundedness: dict, limits: dict):
        self.retriever, self.generator, self.template = retriever, generator, template
        self.index, self.prompt = RagIndex(**index), RagPrompt(**prompt)
        self.grounding, self.limits = RagGroundedness(**groundedness), RagLimits(**limits)
        self.scorer: Any = None

    def question(self, query: str, top_k: int | None = None, filters: dict | None = None,
                 score_threshold: float | None = None, max_tokens: int | None = None,
                 temperature: float | None = None, default_temperature: float = 0.0) -> Question:
        """A checked question: 400 naming the field for an empty or too long query, top_k or max_tokens over
        the limits, a filter on a key that may not be filtered on."""
        limits = self.limits
        if not query.strip():
            raise ApiError("query: empty; ask a question", 400, "query")
        _no_surrogates(query, "query")
        if len(query) > limits.max_query_chars:
            raise ApiError(f"query: {len(query)} characters, over this server's limit of {limits.max_query_chars}",
                           400, "query")
        top_k = self.index.top_k if top_k is None else top_k
        if not 1 <= top_k <= limits.max_top_k:
            raise ApiError(f"top_k is {top_k}; it must be between 1 and {limits.max_top_k}", 400, "top_k")
        max_tokens = limits.default_max_tokens if max_tokens is None else max_tokens
        if not 1 <= max_tokens <= limits.max_tokens:
            raise ApiError(f"max_tokens is {max_tokens}; it must be between 1 and this server's limit of "
                           f"{limits.max_tokens}", 400, "max_tokens")
        _no_surrogates(filters or {}, "filters")
        for key in filters or {}:
            if key not in self.index.filters:
                raise ApiError(f"filters.{key}: not a filterable key; filter on {', '.join(self.index.filters)}",
                               400, f"filters.{key}")
        threshold = self.index.score_threshold if score_threshold is None else float(score_threshold)
        temperature = default_temperature if temperature is None else float(temperature)
        if not 0 <= temperature <= 2:
            raise ApiError(f"temperature is {temperature}; it must be between 0 and 2", 400, "temperature")
        return Question(query, top_k, filters or None, threshold, max_tokens, temperature)

    async def retrieve(self, question: Question, deadline: float) -> dict[str, Any]:
        """``{"hits", "collection", "commit"}``: the hits scoring at least the threshold, best first."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError

        call = self.retriever.search.remote(question.query, question.top_k, question.filters,
                                            question.score_threshold)
        try:
            found = await asyncio.wait_for(_awaited(call), timeout=max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            call.cancel()
            raise ApiError("retrieval gave no answer in time; retry later", 504, code="timeout") from None
        except (RayActorError, DeploymentUnavailableError) as exc:
            raise ApiError(f"the retriever deployment is down ({type(exc).__name__}); retry shortly", 503) from None
        except Exception as exc:
            cause = getattr(exc, "cause", exc)
            if isinstance(cause, ApiError):
                raise ApiError(cause.message, cause.status, cause.param, cause.code) from None
            raise ApiError(f"retrieval failed: {type(exc).__name__}: {str(exc)[:300]}", 503) from None
        if "error" in found:
            raise ApiError(found["error"], found["status"], "filters" if found["status"] == 400 else None)
        return found

    def messages(self, question: Question, hits: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[dict]]:
        """The filled prompt and the hits in it; lowest-ranked hits are left out until it fits the LLM's context."""
        limit = self.prompt.max_context_chars
        while True:
            context, used = numbered_context(hits, limit)
            messages = self.render(context=context, question=question.query)
            room = self.generator.room(messages, question.max_tokens)
            if room >= 0:
                return messages, used
            if limit <= 200:
                raise ApiError(f"the question is too long for the LLM's context with max_tokens="
                               f"{question.max_tokens}; shorten it or lower max_tokens", 400, "max_tokens",
                               "context_length_exceeded")
            limit = max(200, int(limit * 0.75) + room * 3)  # about 3-4 characters a token

    def render(self, **variables: str) -> list[dict[str, str]]:
        """The template (chat messages, or a text prompt sent as one user message) with its variables filled."""
        def fill(text: str) -> str:
            return _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)

        if isinstance(self.template, str):
            return [{"role": "user", "content": fill(self.template)}]
        return [{"role": m["role"], "content": fill(m["content"])} for m in self.template]

    def load_scorer(self) -> Any:
        """The configured scorer (``default`` resolved once, here), warmed up so the first answer does not wait
        for its model; an unknown name raises ValueError listing the known ones."""
        from rag.groundedness import get_scorer

        scorer = get_scorer(self.grounding.scorer)
        scorer.detail_batch(["Warm up."], [["Warm up."]])
        self.scorer = scorer
        return scorer

    async def score(self, answer: str, used: list[dict[str, Any]]) -> Any:
        """The groundedness detail of ``answer`` against the chunks it was generated from (None if scoring
        failed: the answer is still given, with the failure logged)."""
        try:
            scorer = self.scorer or self.load_scorer()
            return (await asyncio.to_thread(scorer.detail_batch, [answer], [[h["text"] for h in used]]))[0]
        except Exception:
            log.exception("fabric rag: scoring with %r failed", self.grounding.scorer)
            return None

    def result(self, answer: str, used: list[dict[str, Any]], detail: Any, retrieved: dict[str, Any],
               request_id: str) -> dict[str, Any]:
        """What ``POST /rag/query`` answers, the guardrail applied (:mod:`rag.serving.guardrail`). An answer it
        replaced also carries ``_logged`` (its own text and full verdict, for the inference log only: the gateway
        takes it out before anything is sent)."""
        grounding, covered = self.grounding, bool(used)
        grounded = detail.to_dict() if detail is not None else None
        if not covered:
            return {"answer": answer, "citations": [], "groundedness": grounded,
                    "guardrail": passed(grounding.threshold), "commit": retrieved.get("commit"),
                    "collection": retrieved.get("collection"), "request_id": request_id}
        replacement, verdict = decide(detail, used, grounding.on_ungrounded, grounding.threshold)
        result = {"answer": mark_answer(answer, detail) if replacement is None else replacement,
                  "citations": citations(used, detail), "groundedness": grounded, "guardrail": verdict,
                  "commit": retrieved.get("commit"), "collection": retrieved.get("collection"),
                  "request_id": request_id}
        if replacement is not None:
            result["guardrail"], result["groundedness"] = redacted(verdict, grounded)
            result["_logged"] = {"answer": answer, "guardrail": verdict}
        return result

    def not_covered(self, retrieved: dict[str, Any], request_id: str) -> dict[str, Any]:
        return self.result(NOT_COVERED, [], None, retrieved, request_id)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
