"""The app factory: `create_app(settings)` builds one FastAPI app around one `ServerState`."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from adamix import allocator
from server.api import adapters, health, oip, openai_compat, predict
from server.deps import authorize
from server.errors import install_error_handlers
from server.middleware import ServingMiddleware
from server.request_context import RequestContextMiddleware
from server.settings import Settings
from server.state import ServerState, __version__

DESCRIPTION = """One frozen backbone, many tasks: every request names its task, requests for different
tasks share one forward pass, each row computed with its own task's merged AdaMix adapter and head."""


class AdaMixApp(FastAPI):
    """FastAPI with the request context (id, span) outside every layer, Starlette's 500 handler included, so
    every answer carries its X-Request-Id and every line logged for it names it."""

    def build_middleware_stack(self):
        return RequestContextMiddleware(super().build_middleware_stack(), self.state.server.tracing)


def create_app(settings: Settings | None = None, tracer_provider=None) -> FastAPI:
    """`tracer_provider`: an OpenTelemetry SDK provider to trace to (default: the settings' otlp_endpoint)."""
    settings = settings or Settings()
    allocator.tune()  # here too, for apps not started by the `adamix` command (Ray replicas, plain uvicorn)
    state = ServerState(settings, tracer_provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(state.start(), name="adamix-start")  # /healthz answers while it loads
        try:
            yield
        finally:
            starting.cancel()
            try:
                await starting
            except asyncio.CancelledError:
                pass
            await state.stop()

    app = AdaMixApp(title="AdaMix Serve", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                    dependencies=[Depends(authorize)],  # default-deny: every route declares its access policy
                    redirect_slashes=False)  # no redirects: a Location built from the client's Host header, never
    app.state.server = state
    app.add_middleware(ServingMiddleware, state=state)
    install_error_handlers(app)
    for module in (predict, adapters, health, openai_compat, oip):
        app.include_router(module.router)
    return app
