"""Adapter management: list, read, upload (`PUT`, raw .safetensors), activate (rollback), delete."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from adamix.manifest import TaskManifest, VersionRecord, check_task_name
from server.deps import ADMIN, ANY_KEY, TASK, PrincipalDep, ReadyStateDep, access
from server.errors import DELIBERATE_ERRORS, as_serve_error
from server.schemas import AdapterList, ErrorResponse, TaskInfo, UploadResponse
from server.state import ServerState
from server.uploads import UPLOAD_MEDIA_TYPE, check_upload_headers, stream_to_file

router = APIRouter(tags=["adapters"])
_UPLOAD_RESULTS = {"payload_too_large": "too_large", "unsupported_media_type": "invalid", "invalid_adapter": "invalid",
                   "invalid_task_name": "invalid", "invalid_input": "invalid", "unservable_adapter": "unservable"}
_ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 422, 503)}


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": "3f2a9c0d1e4b5a6c"}]})

    version: str = Field(description="A version the task already has (see GET /v1/adapters/{task}).")


def task_info(state: ServerState, manifest: TaskManifest) -> TaskInfo:
    return TaskInfo(**dict(manifest), residency=state.residency(manifest))


@router.get("/v1/adapters", response_model=AdapterList, responses=_ERRORS,
            summary="Every task (a tenant key sees its own), versions, residency")
@access(ANY_KEY)
async def list_adapters(state: ReadyStateDep, principal: PrincipalDep) -> AdapterList:
    registry = state.registry
    return AdapterList(tasks=[task_info(state, registry.get(t)) for t in registry.tasks() if principal.may_use(t)])


@router.get("/v1/adapters/{task}", response_model=TaskInfo, responses=_ERRORS,
            summary="One task's versions and residency")
@access(TASK)
async def get_adapter(task: str, state: ReadyStateDep) -> TaskInfo:
    return task_info(state, state.registry.get(task))


@router.put("/v1/adapters/{task}", response_model=UploadResponse, status_code=201,
            responses={200: {"model": UploadResponse, "description": "These exact bytes already were a version of "
                                                                     "the task: it is active again, nothing stored"},
                       **_ERRORS, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}},
            openapi_extra={"requestBody": {"required": True, "content": {UPLOAD_MEDIA_TYPE: {
                "schema": {"type": "string", "format": "binary"}}}}},
            summary="Upload a new version (raw .safetensors bytes) and activate it")
@access(ADMIN)
async def upload_adapter(task: str, request: Request, response: Response, state: ReadyStateDep) -> dict:
    """Streamed to a temp file under `max_upload_bytes`, validated against the loaded backbone, stored
    content-addressed, then activated in one swap: requests in flight finish on their version.
    201 for a new version, 200 when the identical file was uploaded before (idempotent)."""
    check_task_name(task)
    limit = state.settings.max_upload_bytes
    result = "failed"
    try:
        check_upload_headers(request, limit)
        path = state.registry.upload_path()
        try:
            await stream_to_file(request, path, limit, state.settings.upload_timeout_s)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        record, created = await state.upload(task, path)  # moves the file into the store, or removes it
        result = "created" if created else "unchanged"
    except DELIBERATE_ERRORS as exc:
        result = _UPLOAD_RESULTS.get(as_serve_error(exc).code, "failed")
        raise
    finally:
        state.metrics.uploads.labels(result).inc()
    response.status_code = 201 if created else 200
    return {"task": task, "version": record.version, "sha256": record.sha256, "created": created}


@router.post("/v1/adapters/{task}/activate", response_model=VersionRecord, responses=_ERRORS,
             summary="Make an existing version active (rollback)")
@access(ADMIN)
async def activate_adapter(task: str, body: ActivateRequest, state: ReadyStateDep) -> VersionRecord:
    return await state.activate(task, body.version)


@router.delete("/v1/adapters/{task}", status_code=204, responses=_ERRORS, summary="Delete a task, every version")
@access(ADMIN)
async def delete_task(task: str, state: ReadyStateDep) -> Response:
    await state.delete(task)
    return Response(status_code=204)


@router.delete("/v1/adapters/{task}/versions/{version}", status_code=204, responses=_ERRORS,
               summary="Delete one version (deleting the active one activates the newest left)")
@access(ADMIN)
async def delete_version(task: str, version: str, state: ReadyStateDep) -> Response:
    await state.delete(task, version)
    return Response(status_code=204)
