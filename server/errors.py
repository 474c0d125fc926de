"""The one place that maps errors to HTTP: the server's own errors, the table for the domain errors of
`adamix` (registry, adapter file), and one JSON error shape.

Every error a client sees is `{"error": {"code": str, "message": str, "field": str | null}}`; the
stack trace stays in the server log.
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


def error_response(exc: ServeError, metrics) -> JSONResponse:
    """The one rendering of a deliberate error (also an ASGI app, so the middleware answers with it too)."""
    if exc.rejection is not None:
        metrics.rejections.labels(exc.rejection).inc()
    return JSONResponse(error_body(exc.code, exc.message, exc.field), exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def _deliberate(request: Request, exc: Exception) -> JSONResponse:
        return error_response(as_serve_error(exc), request.app.state.server.metrics)

    for error_type in DELIBERATE_ERRORS:
        app.add_exception_handler(error_type, _deliberate)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg', 'invalid value')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more error(s))"
        return JSONResponse(error_body("invalid_input", message, field), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI could not parse at all (e.g. JSON nested too deep)
            return JSONResponse(error_body("invalid_input", f"body: {exc.detail} (malformed or too deeply nested "
                                           "JSON)", "body"), 422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error; see the server log"), 500)
