"""`POST /v1/{task}/predict`."""
from __future__ import annotations

from fastapi import APIRouter

from server.deps import TASK, StateDep, access
from server.engine import TextInput
from server.errors import InvalidInputError
from server.registry import check_task_name
from server.schemas import ErrorResponse, PairInput, PredictRequest, PredictResponse
from server.settings import Settings

router = APIRouter(tags=["predict"])
_ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422, 429, 503)}


def to_inputs(body: PredictRequest, settings: Settings) -> list[TextInput]:
    """Check the request against the server's limits, naming the offending field."""
    n = len(body.inputs)
    if n == 0:
        raise InvalidInputError("inputs must hold at least one text", "inputs")
    if n > settings.max_inputs_per_request:
        raise InvalidInputError(f"inputs holds {n} items, at most {settings.max_inputs_per_request} allowed "
                                "per request", "inputs")
    out = []
    for i, item in enumerate(body.inputs):
        pair = item if isinstance(item, PairInput) else None
        fields = [("text", pair.text), ("text_pair", pair.text_pair)] if pair else [("", item)]
        for name, text in fields:
            where = f"inputs[{i}]" + (f".{name}" if name else "")
            if text is None:
                continue
            if not text.strip():
                raise InvalidInputError(f"{where} is empty", where)
            if len(text) > settings.max_text_chars:
                raise InvalidInputError(f"{where} has {len(text)} characters, at most {settings.max_text_chars} "
                                        "allowed", where)
        out.append(TextInput(pair.text, pair.text_pair) if pair else TextInput(item))
    return out


@router.post("/v1/{task}/predict", response_model=PredictResponse, response_model_exclude_none=True,
             responses=_ERRORS, summary="Predict with a task's active adapter")
@access(TASK)
async def predict(task: str, body: PredictRequest, state: StateDep) -> dict:
    """Run every input through the task's active adapter version; mixed into batches with other tasks."""
    check_task_name(task)
    version, predictions = await state.predict(task, to_inputs(body, state.settings))
    return {"task": task, "version": version, "predictions": predictions}
