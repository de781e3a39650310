"""Who may call the gateway and how much they may send: the API key and its role, the request size limit.

Each check raises :class:`~fabric.serve.protocols.RequestError` (401, 403, 413, 400), which the gateway answers as
its JSON error shape.

Example::

    actor = authorize(keyring, True, request, "admin")     # the key's name, for the audit trail
    body = await read_body(request, 1_000_000)
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from fabric.serve.keys import Keyring
from fabric.serve.protocols import RequestError

__all__ = ["authorize", "read_body", "read_json"]


def authorize(keys: Keyring, required: bool, request: Request, role: str) -> str:
    """Checks the request's key has ``role``; returns the key's name for the audit trail (never the key, never a
    header the client chose), ``anonymous`` when keys are not ``required``."""
    if not required:
        return "anonymous"
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
    if not key:
        raise RequestError("missing API key: send `Authorization: Bearer KEY`", 401)
    granted = keys.role(key)
    if granted is None:
        raise RequestError("invalid API key", 401)
    if not Keyring.allows(granted, role):
        raise RequestError(f"this key has role {granted!r}; this endpoint needs {role!r}", 403)
    return keys.name(key)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body; 413 when it (or its declared length) is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes is over the limit of {limit}", 413)
    body = await request.body()
    if len(body) > limit:
        raise RequestError(f"request body of {len(body)} bytes is over the limit of {limit}", 413)
    return body


async def read_json(request: Request, limit: int) -> Any:
    """The request's body decoded as JSON; 400 when it is not JSON."""
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not valid JSON: {exc}", 400) from None
