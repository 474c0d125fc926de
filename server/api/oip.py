"""Open Inference Protocol v2 (KServe / Triton REST): health, server and model metadata, readiness, infer.

Thin translations (server/oip.py) onto `ServerState`: the same auth, tenant ACLs, rate limits, admission,
batcher and error map as the native route; errors render as OIP's `{"error": "..."}` (server/errors.py).
"""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.errors import UnsupportedMediaTypeError
from server.deps import ANY_KEY, PUBLIC, TASK, PrincipalDep, ReadyStateDep, StateDep, access
from server.oip import (HEADER_LENGTH, InferRequest, InferResponse, ModelMetadata, encode_infer_response,
                        model_metadata, output_tensors, parse_infer_request)
from server.served import ServedAdapter
from server.state import ServerState, __version__

router = APIRouter(tags=["open inference protocol v2"])
_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}
_ERRORS = {code: _ERROR for code in (401, 403, 404, 413, 422, 429, 503)}
_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": InferRequest.model_json_schema()},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "Binary tensor data: Inference-Header-Content-Length bytes of JSON "
                                                "(an InferRequest), then each binary input's bytes."}}}}


@router.get("/v2/health/live", summary="Liveness (OIP)")
@access(PUBLIC)
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready", summary="Readiness (OIP): backbone loaded and warmed, not draining",
            responses={503: _ERROR})
@access(PUBLIC)
async def ready(state: StateDep) -> dict:
    state.check_readiness()
    return {"ready": True}


@router.get("/v2", summary="Server metadata (OIP)", responses=_ERRORS)
@access(ANY_KEY)
async def server_metadata() -> dict:
    return {"name": "adamix-serve", "version": __version__, "extensions": ["binary_tensor_data"]}


async def _metadata(state: ServerState, task: str, version: str | None) -> ModelMetadata:
    adapter = await state.resolve(task, version)
    versions = ([adapter.key.version] if state.is_backbone(task)
                else [r.version for r in state.registry.get(task).versions])
    return model_metadata(task, versions, adapter.key.version, adapter.task, _embedding_size(state, adapter))


def _embedding_size(state: ServerState, adapter: ServedAdapter) -> int:
    return adapter.task.embedding_dim or state.backbone.hidden_size


@router.get("/v2/models/{task}", response_model=ModelMetadata, responses=_ERRORS,
            summary="Model metadata (OIP): a task's inputs, outputs and versions")
@access(TASK)
async def metadata(task: str, state: ReadyStateDep) -> ModelMetadata:
    return await _metadata(state, task, None)


@router.get("/v2/models/{task}/versions/{version}", response_model=ModelMetadata, responses=_ERRORS,
            summary="Model metadata (OIP) of one version")
@access(TASK)
async def version_metadata(task: str, version: str, state: ReadyStateDep) -> ModelMetadata:
    return await _metadata(state, task, version)


@router.get("/v2/models/{task}/ready", responses=_ERRORS, summary="Model readiness (OIP): the active version loads")
@access(TASK)
async def model_ready(task: str, state: ReadyStateDep) -> dict:
    return {"name": task, "ready": bool(await state.resolve(task))}


@router.get("/v2/models/{task}/versions/{version}/ready", responses=_ERRORS,
            summary="Model readiness (OIP) of one version")
@access(TASK)
async def version_ready(task: str, version: str, state: ReadyStateDep) -> dict:
    return {"name": task, "ready": bool(await state.resolve(task, version))}


async def _infer(task: str, version: str | None, request: Request, state: ServerState, tenant: str) -> Response:
    if request.headers.get("content-encoding", "identity") != "identity":
        raise UnsupportedMediaTypeError("compressed request bodies are not accepted (send them uncompressed)",
                                        "content-encoding")
    body = await request.body()
    parsed, inputs = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
    outcome = await state.predict(task, inputs, tenant, version)
    content, header_length = encode_infer_response(task, outcome.adapter.key.version, parsed,
                                                   output_tensors(outcome.adapter.task, outcome.outputs))
    headers = {"X-Adamix-Registry-Generation": str(state.registry.generation)}
    if header_length is None:
        return Response(content, media_type="application/json", headers=headers)
    return Response(content, media_type="application/octet-stream",
                    headers={**headers, "Inference-Header-Content-Length": str(header_length)})


@router.post("/v2/models/{task}/infer", response_model=InferResponse, responses=_ERRORS, openapi_extra=_INFER_BODY,
             summary="Infer (OIP) with the task's active version")
@access(TASK, rate_cost="inputs")
async def infer(task: str, request: Request, state: ReadyStateDep, principal: PrincipalDep) -> Response:
    """BYTES inputs `text` (and `text_pair` for pair tasks), JSON or binary tensor data; mixed into batches
    with every other surface's requests."""
    return await _infer(task, None, request, state, principal.name)


@router.post("/v2/models/{task}/versions/{version}/infer", response_model=InferResponse, responses=_ERRORS,
             openapi_extra=_INFER_BODY, summary="Infer (OIP) with a pinned version (canaries, reproducible runs)")
@access(TASK, rate_cost="inputs")
async def infer_version(task: str, version: str, request: Request, state: ReadyStateDep,
                        principal: PrincipalDep) -> Response:
    return await _infer(task, version, request, state, principal.name)
