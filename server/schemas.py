"""Request and response bodies of the public API (with OpenAPI examples).

The registry's records (`adamix.manifest.VersionRecord`, `TaskManifest`) are served as they are: the
adapter listing only adds where each task's active version is resident.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from adamix.manifest import TaskManifest


class TextInput(BaseModel):
    """One input from the API to the engine: a text, and for pair tasks its second segment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(description="The text (first segment).")
    text_pair: str | None = Field(None, description="Second segment, for pair tasks (e.g. RTE, STS-B).")


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"inputs": ["a gripping, funny and humane film", "the plot is thin"]},
            {"inputs": [{"text": "A man is playing a guitar.", "text_pair": "A person plays an instrument."}]},
        ]},
    )

    inputs: list[str | TextInput] = Field(description="Texts, or {text, text_pair} objects; one prediction each.")

    def texts(self) -> list[TextInput]:
        return [TextInput(text=x) if isinstance(x, str) else x for x in self.inputs]


class Prediction(BaseModel):
    label: str | None = Field(None, description="Classification: the most probable label.")
    score: float | None = Field(None, description="Classification: the probability of `label`.")
    scores: dict[str, float] | None = Field(None, description="Classification: every label's probability.")
    value: float | None = Field(None, description="Regression: the predicted value.")
    embedding: list[float] | None = Field(None, description="Embedding: the L2-normalised vector.")


class PredictResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "task": "sst2", "version": "3f2a9c0d1e4b5a6c",
        "predictions": [{"label": "positive", "score": 0.97, "scores": {"negative": 0.03, "positive": 0.97}}],
    }]})

    task: str
    version: str = Field(description="The immutable adapter version that served every prediction.")
    predictions: list[Prediction]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class TaskInfo(TaskManifest):
    residency: str = Field(description="Where the active version is: device, host or disk.")


class AdapterList(BaseModel):
    tasks: list[TaskInfo]


class UploadResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "task": "sst2", "version": "3f2a9c0d1e4b5a6c", "sha256": "3f2a9c0d1e4b5a6c" + "0" * 48, "created": True}]})

    task: str
    version: str = Field(description="The new active version: the first 16 hex digits of the file's sha256.")
    sha256: str
    created: bool = Field(description="False when these exact bytes already were a version (HTTP 200, not 201).")
