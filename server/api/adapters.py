"""Read-only adapter listing: `GET /v1/adapters`, `GET /v1/adapters/{task}`."""
from __future__ import annotations

from fastapi import APIRouter

from server.deps import ReadyStateDep
from server.registry import TaskManifest
from server.schemas import AdapterList, ErrorResponse, TaskInfo
from server.state import ServerState

router = APIRouter(tags=["adapters"])


def task_info(state: ServerState, manifest: TaskManifest) -> dict:
    return {"task": manifest.task, "active": manifest.active, "residency": state.residency(manifest),
            "versions": [r.to_dict() for r in manifest.versions]}


@router.get("/v1/adapters", response_model=AdapterList, summary="Every task, its versions and residency")
async def list_adapters(state: ReadyStateDep) -> dict:
    registry = state.registry
    return {"tasks": [task_info(state, registry.get(t)) for t in registry.tasks()]}


@router.get("/v1/adapters/{task}", response_model=TaskInfo, responses={404: {"model": ErrorResponse}},
            summary="One task's versions and residency")
async def get_adapter(task: str, state: ReadyStateDep) -> dict:
    return task_info(state, state.registry.get(task))
