"""`POST /v1/{task}/predict`."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from server.deps import TASK, PrincipalDep, ReadyStateDep, access
from server.responses import predictions
from server.schemas import ErrorResponse, PredictRequest, PredictResponse

router = APIRouter(tags=["predict"])
VersionQuery = Annotated[str | None, Query(
    description="Pin an adapter version (canaries, reproducible evaluations); default the active one.",
    examples=["3f2a9c0d1e4b5a6c"])]
_ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422, 429, 503)}


@router.post("/v1/{task}/predict", response_model=PredictResponse, response_model_exclude_none=True,
             responses=_ERRORS, summary="Predict with a task's active adapter")
@access(TASK, rate_cost="inputs")
async def predict(task: str, body: PredictRequest, state: ReadyStateDep, principal: PrincipalDep,
                  response: Response, version: VersionQuery = None) -> dict:
    """Run every input through the task's active adapter version (or the pinned `version`); mixed into
    batches with other tasks. An embedding task answers `{"embedding": [...]}` per input (unit length);
    the backbone's own name is such a task.

    The `X-Adamix-Registry-Generation` header says which registry generation this replica had applied."""
    response.headers["X-Adamix-Registry-Generation"] = str(state.registry.generation)
    outcome = await state.predict(task, body.texts(), principal.name, version)
    return {"task": task, "version": outcome.adapter.key.version,
            "predictions": predictions(outcome.adapter.task, outcome.outputs)}
