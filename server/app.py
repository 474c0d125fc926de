"""The app factory: `create_app(settings)` builds one FastAPI app around one `ServerState`."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from server.api import adapters, health, oip, openai_compat, predict
from server.deps import authorize
from server.errors import install_error_handlers
from server.middleware import ServingMiddleware
from server.settings import Settings
from server.state import ServerState, __version__

DESCRIPTION = """One frozen backbone, many tasks: every request names its task, requests for different
tasks share one forward pass, each row computed with its own task's merged AdaMix adapter and head."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = ServerState(settings)

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

    app = FastAPI(title="AdaMix Serve", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  dependencies=[Depends(authorize)],  # default-deny: every route declares its access policy
                  redirect_slashes=False)  # no redirects: a Location built from the client's Host header, never
    app.state.server = state
    app.add_middleware(ServingMiddleware, state=state)
    install_error_handlers(app)
    for module in (predict, adapters, health, openai_compat, oip):
        app.include_router(module.router)
    return app
