"""What the gateway answers when something goes wrong: every failure becomes a status and a message a client can
act on, never a bare 500.

* :class:`~fabric.serve.protocols.RequestError`: the status it carries (400, 401, 404, 413, 422, 503...).
* The registry or tracking server unreachable (an ``MlflowException``, a refused connection, a timeout): 503
  that says so.
* A model replica gone or overloaded (Ray's actor errors, back pressure): 503.
* Anything else: 500 with the exception's type and the request id to look for in the server log.
* A route or method the gateway does not have (:func:`unrouted`): Starlette's 404, or 405 with ``Allow``.

Example::

    status, message = classify(exc, "http://mlflow:5000", "a1b2")   # (503, "the model registry ... unreachable")
"""

from __future__ import annotations

from typing import Any

from fabric.serve.protocols import RequestError

__all__ = ["classify", "load_error", "registry_unavailable", "unrouted", "version_exists"]


def registry_unavailable(tracking_uri: str, exc: BaseException) -> RequestError:
    """The 503 for a registry call that failed for a reason other than "not found"."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return RequestError(f"the model registry (MLflow tracking server at {tracking_uri}) is unreachable or failing: "
                        f"{first}; retry later", 503)


async def load_error(name: str, version: str, exc: BaseException, exists: Any, tracking_uri: str) -> RequestError:
    """The error for a version that failed to load: 404 when ``exists(name, version)`` says the registry has no
    such version, 503 when it has (or cannot say)."""
    import asyncio

    try:
        found = await asyncio.to_thread(exists, name, version)
    except Exception as registry_exc:
        return registry_unavailable(tracking_uri, registry_exc)
    if not found:
        return RequestError(f"version {version!r} of {name} does not exist", 404)
    first = (str(getattr(exc, "cause", None) or exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
    return RequestError(f"version {version} of {name} exists but cannot be loaded now: {first}", 503)


def version_exists(tracking_uri: str, name: str, version: str) -> bool:
    """Whether the registry has ``version`` of ``name``; raises when the registry cannot be asked."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not version.isdigit():
        return False
    try:
        MlflowClient(tracking_uri).get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return False
        raise
    return True


def unrouted(status: int, method: str, path: str, headers: dict[str, str] | None = None) -> RequestError:
    """Starlette's answer to a route the gateway lacks (404) or a method a route lacks (405, ``Allow`` kept), as a
    :class:`RequestError` the gateway answers in its JSON shape; another V2 route (a model's config, repository
    or shared-memory calls) says which V2 routes are served, in V2's error shape, which V2 clients decode."""
    if status == 405:
        allowed = (headers or {}).get("Allow") or (headers or {}).get("allow") or "another method"
        return RequestError(f"{method} is not allowed on {path}; use {allowed}", 405, headers)
    if status == 404 and "/v2/" in path:
        return RequestError(f"{method} {path} is not supported by this server (it serves the V2 health, metadata "
                            "and infer routes)", 404, headers)
    if status == 404:
        return RequestError(f"{method} {path}: no such route on this server", 404, headers)
    return RequestError(f"{method} {path}: HTTP {status}", status, headers)


def classify(exc: BaseException, tracking_uri: str, request_id: str) -> tuple[int, str]:
    """The HTTP status and message for ``exc`` raised while serving request ``request_id``."""
    if isinstance(exc, RequestError):
        return exc.status, str(exc)
    cause = _cause(exc)
    if isinstance(cause, RequestError):
        return cause.status, str(cause)
    if _is_registry_error(cause):
        error = registry_unavailable(tracking_uri, cause)
        return error.status, str(error)
    if _is_replica_error(exc) or _is_replica_error(cause):
        return 503, f"the model's replicas are unavailable or overloaded ({type(cause).__name__}); retry later"
    return 500, f"internal error ({type(cause).__name__}); the server log has the details under request id {request_id}"


def _cause(exc: BaseException) -> BaseException:
    """The exception a remote call raised, unwrapped from Ray's task error."""
    cause: Any = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _is_registry_error(exc: BaseException) -> bool:
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a dependency
        MlflowException = ()  # noqa: N806
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import Timeout
    except ImportError:  # pragma: no cover
        RequestsConnectionError = Timeout = ()  # noqa: N806
    return isinstance(exc, (MlflowException, RequestsConnectionError, Timeout, ConnectionError, TimeoutError))


def _is_replica_error(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    try:
        from ray.serve.exceptions import BackPressureError
    except ImportError:  # pragma: no cover - older Ray
        BackPressureError = ()  # noqa: N806
    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError, BackPressureError))
