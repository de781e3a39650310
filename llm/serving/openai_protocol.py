"""OpenAI's wire format as pure functions (no Ray, no torch): request models, error bodies, responses, chunks.

Requests are validated by pydantic; a malformed body becomes :class:`ApiError` 422 naming the field. Errors
always have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, which the official ``openai``
client turns into ``BadRequestError``, ``NotFoundError``, ``AuthenticationError``...
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ApiError", "ChatCompletionRequest", "CompletionRequest", "chat_chunk", "chat_response", "error_body",
           "parse_request", "sse", "text_chunk", "text_response", "usage"]

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "server_error", 504: "timeout"}


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a message a user can act on, the offending ``param``."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code

    def __reduce__(self) -> Any:  # crosses Ray process boundaries intact
        return ApiError, (self.message, self.status, self.param, self.code)


def error_body(exc: ApiError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": ERROR_TYPES.get(exc.status, "server_error"),
                      "param": exc.param, "code": exc.code}}


class _Request(BaseModel):
    # Unknown fields (user, metadata, ...) are ignored like OpenAI does; known ones are typed.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1)
    logprobs: Any = None
    response_format: dict[str, Any] | None = None  # enforced by llm.serving.structured (text completions too)

    def said(self) -> tuple[str, str]:
        raise NotImplementedError

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    def unsupported(self) -> None:
        if self.n != 1:
            raise ApiError("n: only n=1 is supported; send several requests instead", param="n")
        if (self.response_format or {}).get("type") == "json_object":  # OpenAI's rule, its message: ask for JSON
            field, said = self.said()
            if "json" not in said.lower():
                raise ApiError(f"'{field}' must contain the word 'json' in some form, to use 'response_format' of "
                               "type 'json_object'.", param=field)
        if self.logprobs not in (None, False):
            raise ApiError("logprobs: not supported by this server", param="logprobs")
        if len(self.stops()) > 4:
            raise ApiError("stop: at most 4 stop sequences", param="stop")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts are understood
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None

    def unsupported(self) -> None:
        super().unsupported()
        if self.tools:
            raise ApiError("tools: tool calls are not supported by this server", param="tools")

    def turns(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def said(self) -> tuple[str, str]:
        """The field the request's text is in and that text (the word JSON is looked for there)."""
        return "messages", "\n".join(m.text() for m in self.messages)

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(...)
    echo: bool = False

    def unsupported(self) -> None:
        super().unsupported()
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ApiError("prompt: give one prompt (a string); batches of prompts are not supported",
                           param="prompt")
        if self.echo:
            raise ApiError("echo: not supported by this server", param="echo")

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def said(self) -> tuple[str, str]:
        return "prompt", self.prompt if isinstance(self.prompt, str) else "\n".join(map(str, self.prompt))

    def requested_tokens(self) -> int | None:
        return self.max_tokens


def parse_request(body: bytes, cls: type[_Request]) -> Any:
    """The request model of a raw body; 422 for bad JSON or a field of the wrong type, naming the field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(f"body is not valid JSON: {exc}", 422) from None
    if not isinstance(data, dict):
        raise ApiError("body must be a JSON object", 422)
    try:
        request = cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
        raise ApiError(f"{param}: {first['msg']}; got {first.get('input')!r:.100}{more}", 422, param) from None
    request.unsupported()
    return request


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def chat_response(rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}],
            "usage": usage(prompt_tokens, completion_tokens)}


def text_response(rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(rid: str, model: str, delta: dict[str, str] | None, finish: str | None = None,
               counts: dict[str, int] | None = None) -> dict:
    """One ``chat.completion.chunk``; with ``counts`` the usage-only chunk (``choices: []``) that ends a stream."""
    chunk: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                             "model": model, "choices": []}
    if counts is None:
        chunk["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
    else:
        chunk["usage"] = counts
    return chunk


def text_chunk(rid: str, model: str, text: str, finish: str | None = None,
               counts: dict[str, int] | None = None) -> dict:
    chunk: dict[str, Any] = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                             "choices": []}
    if counts is None:
        chunk["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
    else:
        chunk["usage"] = counts
    return chunk


def sse(data: dict | str) -> bytes:
    """One server-sent event (``data: ...`` and a blank line)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
