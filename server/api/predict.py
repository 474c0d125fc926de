"""`POST /v1/{task}/predict`."""
from __future__ import annotations

from fastapi import APIRouter, Response

from server.deps import TASK, PrincipalDep, ReadyStateDep, access
from server.responses import predictions
from server.schemas import ErrorResponse, PredictRequest, PredictResponse

router = APIRouter(tags=["predict"])
_ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422, 429, 503)}


@router.post("/v1/{task}/predict", response_model=PredictResponse, response_model_exclude_none=True,
             responses=_ERRORS, summary="Predict with a task's active adapter")
@access(TASK, rate_cost="inputs")
async def predict(task: str, body: PredictRequest, state: ReadyStateDep, principal: PrincipalDep,
                  response: Response) -> dict:
    """Run every input through the task's active adapter version; mixed into batches with other tasks.

    The `X-Adamix-Registry-Generation` header says which registry generation this replica had applied."""
    response.headers["X-Adamix-Registry-Generation"] = str(state.registry.generation)
    adapter, logits = await state.predict(task, body.texts(), principal.name)
    return {"task": task, "version": adapter.key.version, "predictions": predictions(adapter.task, logits)}
