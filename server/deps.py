"""Typed FastAPI dependencies."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.auth import OPEN_ACCESS, Principal
from server.errors import UnauthorizedError
from server.middleware import PRINCIPAL
from server.state import ServerState

# Route access policies, set on an endpoint with `@access(...)`; a route without one is admin-only.
PUBLIC, ADMIN, TASK, ANY_KEY, METRICS = "public", "admin", "task", "any_key", "metrics"


def get_state(request: Request) -> ServerState:
    return request.app.state.server


def get_ready_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    state.require_ready()
    return state


def access(policy: str, rate_cost: str = "request"):
    """Mark an endpoint's access policy: PUBLIC, ADMIN, TASK (key must cover the `task` path parameter),
    ANY_KEY (any valid key; the route filters what it shows, or checks a task named in the body with
    `ServerState.require_access`), METRICS (a metrics or admin key; public
    when no keys are configured). `rate_cost="inputs"`: the route charges the rate limit itself, in the
    setting rate_limit_unit (rows or tokens); otherwise one request here."""
    if policy not in (PUBLIC, ADMIN, TASK, ANY_KEY, METRICS) or rate_cost not in ("request", "inputs"):
        raise ValueError(f"unknown access policy {policy!r} or rate cost {rate_cost!r}")

    def mark(endpoint):
        endpoint.adamix_access = policy
        endpoint.adamix_rate_cost = rate_cost
        return endpoint
    return mark


async def authorize(request: Request) -> None:
    """App-wide dependency, default-deny: the route's policy for the caller the middleware authenticated,
    then the rate limit (per request here; predicts charged in rows or tokens pay in `ServerState.predict`)."""
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    policy = getattr(endpoint, "adamix_access", ADMIN)
    state: ServerState = request.app.state.server
    if policy == PUBLIC or (policy == METRICS and not state.auth.enabled):
        return
    principal = request.scope.get(PRINCIPAL)
    if principal is None:  # a route the middleware let through unauthenticated: never served
        raise UnauthorizedError("this route needs an API key: send 'Authorization: Bearer <key>'")
    if policy == ADMIN:
        principal.require_admin()
    elif policy == TASK:
        state.require_access(principal, request.path_params["task"])
    elif policy == METRICS:
        principal.require_metrics()
    charged_by_route = getattr(endpoint, "adamix_rate_cost", "request") == "inputs"
    if state.rate_limiter is not None and policy != METRICS and not (
            charged_by_route and state.settings.rate_limit_unit != "requests"):
        state.rate_limiter.take(principal.name)


def get_principal(request: Request) -> Principal:
    return request.scope.get(PRINCIPAL) or OPEN_ACCESS


StateDep = Annotated[ServerState, Depends(get_state)]
ReadyStateDep = Annotated[ServerState, Depends(get_ready_state)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
