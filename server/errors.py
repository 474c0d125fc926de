"""Domain errors and the one place that maps them to HTTP: status code + one JSON error shape.

Every error a client sees is `{"error": {"code": str, "message": str, "field": str | null}}`; the
stack trace stays in the server log.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("adamix.server")


class ServeError(Exception):
    """Base of every error the server answers deliberately."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class TaskNotFoundError(ServeError):
    status_code = 404
    code = "task_not_found"


class VersionNotFoundError(ServeError):
    status_code = 404
    code = "version_not_found"


class InvalidTaskNameError(ServeError):
    status_code = 422
    code = "invalid_task_name"


class InvalidInputError(ServeError):
    status_code = 422
    code = "invalid_input"


class InvalidAdapterError(ServeError):
    """The adapter bytes fail validation (format, shapes, values, backbone)."""

    status_code = 422
    code = "invalid_adapter"


class UnservableAdapterError(ServeError):
    """A valid adapter this server cannot serve (rank or labels above its limits, generation task)."""

    status_code = 422
    code = "unservable_adapter"


class AdapterUnavailableError(ServeError):
    """The stored blob failed verification (hash mismatch, missing): never served."""

    status_code = 503
    code = "adapter_unavailable"


class PayloadTooLargeError(ServeError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ServeError):
    status_code = 415
    code = "unsupported_media_type"


class UnauthorizedError(ServeError):
    """No API key, or one the server does not know."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, "authorization", {"WWW-Authenticate": "Bearer"})


class ForbiddenError(ServeError):
    """A known key whose scope does not cover this route or task."""

    status_code = 403
    code = "forbidden"


class RateLimitedError(ServeError):
    status_code = 429
    code = "rate_limited"


class ShuttingDownError(ServeError):
    """The server is draining after SIGTERM: accepted requests finish, new ones go elsewhere."""

    status_code = 503
    code = "shutting_down"


class OverloadedError(ServeError):
    status_code = 503
    code = "overloaded"


class NotReadyError(ServeError):
    status_code = 503
    code = "not_ready"


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


def _field_of(loc: tuple) -> str:
    """('body', 'inputs', 3, 'text') -> 'inputs[3].text'."""
    parts = [p for p in loc if p not in ("body", "path", "query")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("str", "PairInput") or "[" in str(p):  # union-member tags pydantic adds to the location
            continue
        else:
            out += f".{p}" if out else str(p)
    return out or "body"


# Error codes that refuse a request before any work, and their `adamix_rejections_total{reason}` label.
REJECTION_REASONS = {"overloaded": "overloaded", "rate_limited": "rate_limited", "shutting_down": "shutting_down",
                     "payload_too_large": "too_large", "unauthorized": "unauthorized", "forbidden": "forbidden"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        reason = REJECTION_REASONS.get(exc.code)
        if reason is not None:
            request.app.state.server.metrics.rejections.labels(reason).inc()
        return JSONResponse(error_body(exc.code, exc.message, exc.field), exc.status_code, headers=exc.headers)

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
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error; see the server log"), 500)
