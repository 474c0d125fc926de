"""Request ids: what one request carries through every layer, for its log lines, its spans and its answer.

`RequestContextMiddleware` wraps the whole app (Starlette's 500 handler and every middleware included), so
every answer, a middleware's refusal or an unhandled error too, carries `X-Request-Id`: the client's own
when it is 1-64 characters of `[A-Za-z0-9._:-]`, else a generated one (32 hex digits). The id lives in a
context variable set once per request: it flows into the tasks the request starts and, through
`copy_context`, into the threads that tokenise and run forwards for it. A batch serves many requests, so
while one runs, `batch_request_ids()` names them all (the batcher sets it). The server's log filter
(`server/logs.py`) reads both; routes add what they learn (`annotate(task=..., version=...)`).
"""
from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.tracing import Tracing

HEADER = b"x-request-id"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: ids, but no spans


@dataclass
class RequestContext:
    """One HTTP request, as its log lines and spans describe it; fields are filled in as they become known."""

    request_id: str
    start: float = field(default_factory=time.perf_counter)
    task: str | None = None
    version: str | None = None
    status: int | None = None


_CURRENT: ContextVar[RequestContext | None] = ContextVar("adamix_request", default=None)
_BATCH: ContextVar[tuple[str, ...]] = ContextVar("adamix_batch_request_ids", default=())


def request_id_from(header: str | None) -> str:
    """The client's id when it is safe to echo and log (bounded, a strict charset), else a new one."""
    if header is not None and _VALID_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def current() -> RequestContext | None:
    """The request this code runs for (None outside a request: start-up, the batcher's own loop, a scrape thread)."""
    return _CURRENT.get()


def current_request_id() -> str | None:
    ctx = _CURRENT.get()
    return None if ctx is None else ctx.request_id


def annotate(task: str | None = None, version: str | None = None, status: int | None = None) -> None:
    """Record what the current request uses (task, version) or got (a status no response carries: 499)."""
    ctx = _CURRENT.get()
    if ctx is None:
        return
    if task is not None:
        ctx.task = task
    if version is not None:
        ctx.version = version
    if status is not None:
        ctx.status = status


def batch_request_ids() -> tuple[str, ...]:
    """The ids of the requests in the batch being run here (empty outside a batch)."""
    return _BATCH.get()


@contextmanager
def serving_batch(request_ids: Iterable[str]) -> Iterator[None]:
    """While a batch runs: every line logged for it (here, or on threads it calls) names its requests."""
    token = _BATCH.set(tuple(request_ids))
    try:
        yield
    finally:
        _BATCH.reset(token)


class RequestContextMiddleware:
    """Outermost ASGI layer: the request's id (set, echoed), and its span when tracing is on."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(request_id_from(Headers(scope=scope).get("x-request-id")))
        _CURRENT.set(ctx)  # this request's task (and what it starts) only; never reset, so uvicorn's own
        # lines about this request (an exception after the 500) still carry the id
        header = (HEADER, ctx.request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        if not self.tracing.enabled or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send_with_id)
            return
        with self.tracing.request_span(scope, ctx):
            await self.app(scope, receive, send_with_id)
