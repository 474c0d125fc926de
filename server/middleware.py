"""`ServingMiddleware` (pure ASGI): drain refusal, request body cap, in-flight count and request metrics.

Runs around every HTTP request before routing, so it also sees what never reaches a route handler
(pydantic 422s, auth 401/403, rate-limit 429, 413): every predict answer is counted in
`adamix_requests_total{task,status}`. Public routes (health, metrics, docs) pass straight through.
"""
from __future__ import annotations

import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import PayloadTooLargeError, ShuttingDownError, error_response
from server.state import ServerState

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json"})
PREDICT_PATH = re.compile(r"^/v1/([^/]*)/predict$")
UPLOAD_PATH = re.compile(r"^/v1/adapters/[^/]*$")  # PUT streams its own body under max_upload_bytes


class ServingMiddleware:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
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
                await error_response(ShuttingDownError(
                    "the server is shutting down; retry on another replica", None,
                    {"Retry-After": "1", "Connection": "close"}), state.metrics)(scope, receive, send_status)
                return
            if not (scope["method"] == "PUT" and UPLOAD_PATH.match(path)):
                try:
                    receive = await self._buffered_body(scope, receive, state.settings.max_request_bytes)
                except PayloadTooLargeError as exc:
                    await error_response(exc, state.metrics)(scope, receive, send_status)
                    return
            state.in_flight += 1
            state.metrics.in_flight.inc()
            try:
                await self.app(scope, receive, send_status)
            finally:
                state.in_flight -= 1
                state.metrics.in_flight.dec()
        finally:
            if match:
                self._count(match.group(1), status[0], time.perf_counter() - start)

    async def _buffered_body(self, scope: Scope, receive: Receive, limit: int) -> Receive:
        """Read the whole body (at most `limit` bytes, else 413) and return a receive that replays it."""
        too_large = PayloadTooLargeError(f"request body exceeds {limit} bytes (setting max_request_bytes)", None,
                                         {"Connection": "close"})
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                return _replay([message], receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            more = message.get("more_body", False)
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)

    def _count(self, task: str, status: int, seconds: float) -> None:
        state = self.state
        known = state.registry is not None and task in state.registry
        label = state.metrics.task_label(task) if known else "_unknown"  # client-chosen names never become labels
        state.metrics.requests.labels(label, str(status)).inc()
        if status == 200:
            state.metrics.request_duration.labels(label).observe(seconds)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()
    return replay
