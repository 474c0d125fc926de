"""Typed FastAPI dependencies."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.auth import Principal
from server.state import ServerState

# Route access policies, set on an endpoint with `@access(...)`; a route without one is admin-only.
PUBLIC, ADMIN, TASK, ANY_KEY = "public", "admin", "task", "any_key"


def get_state(request: Request) -> ServerState:
    return request.app.state.server


def get_ready_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    state.require_ready()
    return state


def access(policy: str):
    """Mark an endpoint's access policy: PUBLIC, ADMIN, TASK (key must cover the `task` path parameter),
    ANY_KEY (any valid key; the route filters what it shows)."""
    if policy not in (PUBLIC, ADMIN, TASK, ANY_KEY):
        raise ValueError(f"unknown access policy {policy!r}")

    def mark(endpoint):
        endpoint.adamix_access = policy
        return endpoint
    return mark


async def authorize(request: Request) -> None:
    """App-wide dependency, default-deny: authenticate, check the route's policy, then the rate limit."""
    route = request.scope.get("route")
    policy = getattr(getattr(route, "endpoint", None), "adamix_access", ADMIN)
    if policy == PUBLIC:
        return
    state: ServerState = request.app.state.server
    principal = state.auth.authenticate(request.headers.get("authorization"))
    request.state.principal = principal
    if policy == ADMIN:
        principal.require_admin()
    elif policy == TASK:
        principal.require_task(request.path_params["task"])
    if state.rate_limiter is not None:
        state.rate_limiter.take(principal.name)


def get_principal(request: Request) -> Principal:
    return request.state.principal


StateDep = Annotated[ServerState, Depends(get_state)]
ReadyStateDep = Annotated[ServerState, Depends(get_ready_state)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
