"""`/healthz` (alive), `/readyz` (ready to serve), `/metrics` (Prometheus)."""
from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.deps import METRICS, PUBLIC, StateDep, access
from server.schemas import ErrorResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
@access(PUBLIC)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: backbone loaded and warmed, registry read",
            responses={503: {"model": ErrorResponse}})
@access(PUBLIC)
async def readyz(state: StateDep) -> dict:
    state.check_readiness()
    return {"status": "ready", "tasks": len(state.registry), "registry_problems": state.registry.problems}


@router.get("/metrics", summary="Prometheus metrics (with API keys: a metrics or admin key)", response_class=Response)
@access(METRICS)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
