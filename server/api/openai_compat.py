"""OpenAI-compatible `POST /v1/embeddings` and `GET /v1/models[/{model}]` (the official client works unchanged).

A model is a task (an embedding task on /v1/embeddings) or the backbone's own name. Thin translations onto
`ServerState`: the same auth, tenant ACLs, rate limits, admission and batcher as the native route; errors
render in OpenAI's shape `{"error": {"message", "type", "param", "code"}}` (server/errors.py).
"""
from __future__ import annotations

import base64
import struct
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from server.deps import ANY_KEY, TASK, PrincipalDep, ReadyStateDep, access
from server.errors import InvalidInputError
from server.middleware import TASK_SCOPE
from server.schemas import TextInput
from server.state import ServerState

router = APIRouter(tags=["openai"])
_ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {
    "type": "object", "properties": {k: {"type": "string"} for k in ("message", "type", "param", "code")}}}}}}}
_ERRORS = {code: _ERROR for code in (401, 403, 404, 413, 422, 429, 503)}
OWNER = "adamix-serve"


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "all-MiniLM-L6-v2", "input": ["A cat sits on the mat.", "A dog sleeps."]},
        {"model": "my-embedding-task", "input": "one text", "encoding_format": "base64"}]})

    model: str = Field(description="An embedding task, or the backbone's own name (see GET /v1/models).")
    input: str | list[str] = Field(description="A text or a list of texts; one embedding each.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes, base64-encoded.")
    dimensions: int | None = Field(None, description="Must equal the model's size if given: embeddings are never "
                                                     "shortened (no task's projection is truncatable).")
    user: str | None = Field(None, description="Accepted and ignored.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens after truncation, special tokens included.")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "list", "model": "all-MiniLM-L6-v2", "data": [{"object": "embedding", "index": 0,
                                                                 "embedding": [0.0123, -0.0456, 0.0789]}],
        "usage": {"prompt_tokens": 9, "total_tokens": 9}}]})

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the active version was uploaded (Unix seconds; 0 for the backbone).")
    owned_by: str
    task_type: str = Field(description="embedding, classification, pair_classification, regression, ...")
    version: str = Field(description="The active version.")


class ModelList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"object": "list", "data": [
        {"id": "all-MiniLM-L6-v2", "object": "model", "created": 0, "owned_by": OWNER, "task_type": "embedding",
         "version": "a1b2c3d4e5f60718"},
        {"id": "sst2", "object": "model", "created": 1764590000, "owned_by": OWNER,
         "task_type": "classification", "version": "3f2a9c0d1e4b5a6c"}]}]})

    object: Literal["list"] = "list"
    data: list[Model]


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=_ERRORS,
             summary="Embeddings (OpenAI-compatible) from an embedding task or the bare backbone")
@access(ANY_KEY, rate_cost="inputs")
async def embeddings(body: EmbeddingsRequest, state: ReadyStateDep, principal: PrincipalDep, request: Request,
                     response: Response) -> EmbeddingsResponse:
    """Unit-length (L2-normalised) embeddings; `usage` counts the tokens after truncation."""
    request.scope[TASK_SCOPE] = body.model  # counted under it (if known) in adamix_requests_total
    state.require_access(principal, body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    outcome = await state.predict(body.model, [TextInput(text=t) for t in texts], principal.name,
                                  task_types=("embedding",))
    size = len(outcome.outputs[0])
    if body.dimensions is not None and body.dimensions != size:
        raise InvalidInputError(f"model {body.model!r} makes {size}-dimensional embeddings, not {body.dimensions}: "
                                f"this server does not shorten embeddings; omit dimensions or give {size}",
                                "dimensions")
    response.headers["X-Adamix-Registry-Generation"] = str(state.registry.generation)
    data = [Embedding(index=i, embedding=_base64(v.tolist()) if body.encoding_format == "base64" else v.tolist())
            for i, v in enumerate(outcome.outputs)]
    return EmbeddingsResponse(data=data, model=body.model,
                              usage=Usage(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens))


def _base64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def _models(state: ServerState, principal) -> list[Model]:
    backbone = state.backbone_model
    out = [Model(id=backbone.key.task, created=0, owned_by=OWNER, task_type="embedding",
                 version=backbone.key.version)]
    for task in state.registry.tasks():
        manifest = state.registry.get(task)
        if manifest.active is not None and principal.may_use(task):
            record = manifest.active_record
            out.append(Model(id=task, created=int(record.created), owned_by=OWNER, task_type=record.task_type,
                             version=record.version))
    return out


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS,
            summary="Models (OpenAI-compatible): the backbone and every task this key may use, with its type")
@access(ANY_KEY)
async def list_models(state: ReadyStateDep, principal: PrincipalDep) -> ModelList:
    return ModelList(data=_models(state, principal))


@router.get("/v1/models/{task}", response_model=Model, responses=_ERRORS, summary="One model (OpenAI-compatible)")
@access(TASK)
async def get_model(task: str, state: ReadyStateDep, principal: PrincipalDep) -> Model:
    found = [m for m in _models(state, principal) if m.id == task]
    if not found:
        state.registry.get(task).active_record  # raises: 404 for an unknown task or one with no active version
    return found[0]
