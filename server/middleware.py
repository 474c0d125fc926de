"""`ServingMiddleware` (pure ASGI): everything a request meets before routing, in this order:

1. draining (after SIGTERM): 503 at once;
2. authentication, before a byte of the body is read: no valid key, 401 (429 once the client's address
   has failed too often); the principal rides in the scope for the routes' policy checks;
3. the body, read under a size cap (413) and a deadline (408), except uploads, which stream their own;
4. the app, watched for the client going away: its work is cancelled (queued rows never reach a
   forward) and it is counted as status 499.
It also keeps the one in-flight count (the drain waits for it) and counts every predict answer in
`adamix_requests_total{task,status}`, under the task only for an authenticated caller of a known task.
Public routes (health, docs) pass straight through.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import Principal
from server.errors import (CLIENT_CLOSED, ClientClosedError, PayloadTooLargeError, RateLimitedError,
                           RequestTimeoutError, ServeError, ShuttingDownError, UnauthorizedError, error_response)
from server.metrics import UNAUTHENTICATED, UNKNOWN_TASK
from server.request_context import annotate
from server.state import ServerState
from server.uploads import declared_over

log = logging.getLogger("adamix.server")
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                          "/v2/health/live", "/v2/health/ready"})
# Every surface's predict: native, OIP infer (task in the path), OpenAI embeddings (the route names it, TASK_SCOPE).
PREDICT_PATH = re.compile(r"^/v1/([^/]*)/predict$|^/v2/models/([^/]*)(?:/versions/[^/]*)?/infer$|^/v1/embeddings$")
UPLOAD_PATH = re.compile(r"^/v1/adapters/[^/]*$")  # PUT streams its own body under max_upload_bytes
PRINCIPAL = "adamix.principal"  # the scope key the routes read the caller from
TASK_SCOPE = "adamix.task"  # the scope key a route whose task is in the body names it under, for the count


class ServingMiddleware:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or (
                scope["path"] == "/metrics" and not self.state.auth.enabled):
            await self.app(scope, receive, send)
            return
        state, path = self.state, scope["path"]
        match = PREDICT_PATH.match(path)
        start, status = time.perf_counter(), [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if state.draining:
                raise ShuttingDownError("the server is shutting down; retry on another replica", None,
                                        {"Retry-After": "1", "Connection": "close"})
            scope[PRINCIPAL] = self._authenticate(scope)
            body = None
            if not (scope["method"] == "PUT" and UPLOAD_PATH.match(path)):
                body = await self._read_body(scope, receive)
        except ServeError as exc:
            exc.headers.setdefault("Connection", "close")  # the body may be unread: never reuse this connection
            await error_response(exc, state.metrics, path)(scope, receive, send_status)
            self._count(scope, match, status[0], start)
            return
        counted = path != "/metrics"  # a scrape is not work to drain (nor counted in what it reports)
        state.in_flight += counted
        state.metrics.in_flight.inc(counted)
        try:
            if body is None:
                await self.app(scope, receive, send_status)
            else:
                if not await _run_unless_client_leaves(self.app(scope, _replay(body), send_status), receive):
                    status[0] = CLIENT_CLOSED
                    annotate(status=CLIENT_CLOSED)
                    log.info("%s %s: the client closed the connection before the answer (499); its work was "
                             "dropped", scope["method"], path, extra={"status": CLIENT_CLOSED})
        finally:
            state.in_flight -= counted
            state.metrics.in_flight.dec(counted)
            self._count(scope, match, status[0], start)

    def _authenticate(self, scope: Scope) -> Principal:
        """The caller, from the Authorization header alone; failures are rate limited per client address."""
        auth = self.state.auth
        try:
            return auth.authenticate(_header(scope, b"authorization"))
        except UnauthorizedError:
            address = (scope.get("client") or ("unknown",))[0]
            limiter = self.state.auth_failures
            if limiter is not None:
                try:
                    limiter.take(address, unit="failed authentications")
                except RateLimitedError as exc:
                    raise RateLimitedError(f"too many failed authentications: {exc.message}", None,
                                           {**exc.headers, "Connection": "close"}) from None
            raise

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body: at most max_request_bytes (else 413), within body_timeout_s (else 408)."""
        s = self.state.settings
        too_large = PayloadTooLargeError(f"request body exceeds {s.max_request_bytes} bytes (setting "
                                         "max_request_bytes)", None, {"Connection": "close"})
        if declared_over(_header(scope, b"content-length"), s.max_request_bytes):
            raise too_large
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(s.body_timeout_s):
                while more:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away while sending
                        raise _ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > s.max_request_bytes:
                        raise too_large
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            raise RequestTimeoutError(f"the request body did not arrive within {s.body_timeout_s:g} s (setting "
                                      "body_timeout_s)", None, {"Connection": "close"}) from None
        except _ClientGone:
            raise ClientClosedError("the client closed the connection while sending the body", None) from None
        return b"".join(chunks)

    def _count(self, scope: Scope, match: re.Match | None, status: int, start: float) -> None:
        if match is None:
            return
        state, task = self.state, match.group(1) or match.group(2) or scope.get(TASK_SCOPE)
        if scope.get(PRINCIPAL) is None:
            label = UNAUTHENTICATED
        elif state.registry is not None and (task in state.registry or state.is_backbone(task)):
            label = state.metrics.task_label(task)
        else:
            label = UNKNOWN_TASK
        state.metrics.requests.labels(label, str(status)).inc()
        if status == 200:
            state.metrics.request_duration.labels(label).observe(time.perf_counter() - start)


class _ClientGone(Exception):
    pass


async def _run_unless_client_leaves(app_call, receive: Receive) -> bool:
    """Run the app; if the client disconnects first, cancel it. True when the app finished."""
    app = asyncio.ensure_future(app_call)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({app, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if app.done():
        app.result()  # re-raise what the app raised
        return True
    app.cancel()
    try:
        await app
    except asyncio.CancelledError:
        pass
    return False


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _replay(body: bytes) -> Receive:
    """A receive that hands the app the buffered body, then waits forever (the middleware watches the client)."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the real receive is the watcher's
        raise AssertionError("unreachable")
    return replay
