"""The one place that maps errors to HTTP: the server's own errors, the table for the domain errors of
`adamix` (registry, adapter file), and how each protocol renders an error.

An error is (status, code, message, field), decided once here; each surface only renders it in its own
shape (`ERROR_SHAPES`, chosen by the request's path):
    native  `{"error": {"code": str, "message": str, "field": str | null}}`
    openai  `{"error": {"message": str, "type": str, "param": str | null, "code": str}}` (/v1/embeddings, /v1/models)
    oip     `{"error": str}` (Open Inference Protocol v2, /v2/...)
The status code and headers (Retry-After, WWW-Authenticate) are the same on every surface; the stack
trace stays in the server log.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adamix import AdapterFileError
from adamix.manifest import (CorruptEntryError, InvalidTaskNameError, RegistryError, StorageFullError,
                             TaskNotFoundError, VersionNotFoundError)

log = logging.getLogger("adamix.server")


class ServeError(Exception):
    """Base of every error the server answers deliberately."""

    status_code = 500
    code = "internal_error"
    rejection: str | None = None  # refused before any work: its `adamix_rejections_total{reason}` label

    def __init__(self, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class InvalidInputError(ServeError):
    status_code = 422
    code = "invalid_input"


class UnservableAdapterError(ServeError):
    """A valid adapter this server cannot serve (rank or labels above its limits, generation task)."""

    status_code = 422
    code = "unservable_adapter"


class NonFiniteOutputError(ServeError):
    """The adapter computed NaN or inf for an input: the row fails rather than get a made-up label."""

    status_code = 422
    code = "non_finite_output"


class PayloadTooLargeError(ServeError):
    status_code = 413
    code = "payload_too_large"
    rejection = "too_large"


class UnsupportedMediaTypeError(ServeError):
    status_code = 415
    code = "unsupported_media_type"


class UnauthorizedError(ServeError):
    """No API key, or one the server does not know."""

    status_code = 401
    code = "unauthorized"
    rejection = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, "authorization", {"WWW-Authenticate": "Bearer"})


class ForbiddenError(ServeError):
    """A known key whose scope does not cover this route or task."""

    status_code = 403
    code = "forbidden"
    rejection = "forbidden"


class RateLimitedError(ServeError):
    status_code = 429
    code = "rate_limited"
    rejection = "rate_limited"


class TenantOverloadedError(ServeError):
    """This API key's queued work is at its bound; other tenants are still served."""

    status_code = 429
    code = "tenant_overloaded"
    rejection = "tenant_overloaded"


class ShuttingDownError(ServeError):
    """The server is draining after SIGTERM: accepted requests finish, new ones go elsewhere."""

    status_code = 503
    code = "shutting_down"
    rejection = "shutting_down"


class OverloadedError(ServeError):
    status_code = 503
    code = "overloaded"
    rejection = "overloaded"


class RequestTimeoutError(ServeError):
    """The request body did not arrive in time (a slow or stalled client)."""

    status_code = 408
    code = "request_timeout"
    rejection = "body_timeout"


CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the answer


class ClientClosedError(ServeError):
    status_code = CLIENT_CLOSED
    code = "client_closed_request"


class NotReadyError(ServeError):
    status_code = 503
    code = "not_ready"


def rejection_reasons() -> list[str]:
    """Every `adamix_rejections_total{reason}` label an error class declares (so each series starts at 0)."""
    found, todo = set(), [ServeError]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.rejection is not None:
            found.add(cls.rejection)
    return sorted(found)


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                 429: "rate_limit_error"}  # other 4xx: invalid_request_error; 5xx: server_error
_OPENAI_PARAMS = {"inputs": "input", "task": "model"}  # our field names -> the OpenAI request's


def _openai_body(status: int, code: str, message: str, field: str | None) -> dict:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if field is not None:
        head, sep, rest = field.partition("[")
        field = _OPENAI_PARAMS.get(head, head) + sep + rest
    return {"error": {"message": message, "type": kind, "param": field, "code": code}}


ERROR_SHAPES = {
    "native": lambda status, code, message, field: error_body(code, message, field),
    "openai": _openai_body,
    "oip": lambda status, code, message, field: {"error": message},
}
OPENAI_PATHS = ("/v1/embeddings", "/v1/models")


def protocol_of(path: str) -> str:
    """Which surface a request path belongs to, so its errors come in that surface's shape."""
    if path == "/v2" or path.startswith("/v2/"):
        return "oip"
    if path in OPENAI_PATHS or path.startswith("/v1/models/"):
        return "openai"
    return "native"


def render_error(path: str, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """The error as the surface of `path` shows it: same status and headers everywhere, its own body shape."""
    return JSONResponse(ERROR_SHAPES[protocol_of(path)](status, code, message, field), status, headers=headers)


def _field_of(loc: tuple) -> str:
    """('body', 'inputs', 3, 'text') -> 'inputs[3].text'."""
    parts = [p for p in loc if p not in ("body", "path", "query")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("str", "TextInput") or "[" in str(p):  # union-member tags pydantic adds to the location
            continue
        else:
            out += f".{p}" if out else str(p)
    return out or "body"


# The domain errors of `adamix` -> (HTTP status, error code).
DOMAIN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidTaskNameError: (422, "invalid_task_name"),
    TaskNotFoundError: (404, "task_not_found"),
    VersionNotFoundError: (404, "version_not_found"),
    CorruptEntryError: (503, "adapter_unavailable"),
    StorageFullError: (507, "storage_full"),
    AdapterFileError: (422, "invalid_adapter"),
}
DELIBERATE_ERRORS = (ServeError, RegistryError, AdapterFileError)  # answered as themselves; anything else is a 500


def as_serve_error(exc: ServeError | RegistryError | AdapterFileError) -> ServeError:
    """The error as the API answers it: server errors as they are, domain errors through `DOMAIN_ERRORS`."""
    if isinstance(exc, ServeError):
        return exc
    status, code = next(v for t, v in DOMAIN_ERRORS.items() if isinstance(exc, t))
    error = ServeError(getattr(exc, "message", str(exc)), exc.field)
    error.status_code, error.code = status, code
    return error


def error_response(exc: ServeError, metrics, path: str = "") -> JSONResponse:
    """The response to a deliberate error on `path` (also an ASGI app, so the middleware answers with it too)."""
    if exc.rejection is not None:
        metrics.rejections.labels(exc.rejection).inc()
    return render_error(path, exc.status_code, exc.code, exc.message, exc.field, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def _deliberate(request: Request, exc: Exception) -> JSONResponse:
        return error_response(as_serve_error(exc), request.app.state.server.metrics, request.url.path)

    for error_type in DELIBERATE_ERRORS:
        app.add_exception_handler(error_type, _deliberate)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg', 'invalid value')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more error(s))"
        return render_error(request.url.path, 422, "invalid_input", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if exc.status_code == 400:  # a body FastAPI could not parse at all (e.g. JSON nested too deep)
            return render_error(path, 422, "invalid_input", f"body: {exc.detail} (malformed or too deeply nested "
                                "JSON)", "body")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return render_error(path, exc.status_code, code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return render_error(request.url.path, 500, "internal_error", "internal server error; see the server log")
