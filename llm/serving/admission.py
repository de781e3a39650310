"""What every OpenAI-style gateway (``llm.serving``, ``rag.serving``) checks before it works on a request.

* :func:`authorize_predict` and :func:`read_limited`: :mod:`fabric.serve.access`'s API-key and body-size checks,
  answered as :class:`~llm.serving.openai_protocol.ApiError` (401 with OpenAI's ``invalid_api_key`` code, 403, 413);
* :class:`Slot`: one admitted request's place under ``max_concurrent_requests``.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request

from fabric.serve.access import authorize, read_body
from fabric.serve.keys import Keyring
from fabric.serve.protocols import RequestError
from llm.serving.openai_protocol import ApiError

__all__ = ["Slot", "awaited", "authorize_predict", "read_limited"]

log = logging.getLogger("ray.serve")


def authorize_predict(keys: Keyring, required: bool, request: Request) -> str:
    """The name of the request's key, which must have role ``predict`` (``anonymous`` when keys are not required)."""
    try:
        return authorize(keys, required, request, "predict")
    except RequestError as exc:
        raise ApiError(str(exc), exc.status, code="invalid_api_key" if exc.status == 401 else None) from None


async def read_limited(request: Request, limit: int) -> bytes:
    """The request's body; 413 when it (or its declared length) is over ``limit`` bytes."""
    try:
        return await read_body(request, limit)
    except RequestError as exc:
        raise ApiError(str(exc), exc.status) from None


async def awaited(awaitable: Any) -> Any:
    """A coroutine of ``awaitable`` (a Ray ``DeploymentResponse``), for ``asyncio.wait_for``."""
    return await awaitable


class Slot:
    """One admitted request's place under ``max_concurrent_requests``; released exactly once.

    A stream's body is a generator that Starlette may never start (the client left before the first chunk was
    sent): its ``finally`` would never run, so the slot is also released, and ``on_release`` (the engine's
    stream cancellation, when set) called, when the unread body is garbage-collected.
    """

    def __init__(self, gateway: Any):
        self.gateway, self.held, self.on_release = gateway, True, None
        gateway.in_flight += 1

    def release(self, cancel: bool = True) -> None:
        if not self.held:
            return
        self.held = False
        self.gateway.in_flight -= 1
        if cancel and self.on_release is not None:
            self.on_release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # garbage collection must not raise; the slot is free either way
            log.exception("fabric: cancelling an abandoned stream failed")
