"""Open Inference Protocol v2 (KServe / Triton REST): its bodies, and the binary tensor data extension,
translated to and from the engine's inputs and outputs. No engine and no routes here (server/api/oip.py).

A task is a model: inputs are BYTES tensors `text` and, for pair tasks, `text_pair` (shape [n] or [n, 1],
one row each); outputs are the native prediction as tensors, in the task's label order:
    classification   label BYTES [n], score FP32 [n], scores FP32 [n, C]
    regression       value FP32 [n]
    embedding        embedding FP32 [n, D] (unit length)
Binary tensor data: with the `Inference-Header-Content-Length: N` header the body is N bytes of JSON, then each
binary input's bytes in input order (BYTES elements as a 4-byte little-endian length and the UTF-8 bytes; FP32
little-endian, row-major); outputs asked for with `binary_data` (or the request's `binary_data_output`) come
back the same way.
"""
from __future__ import annotations

import json
import struct
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adamix import TaskSpec
from server.errors import InvalidInputError
from server.responses import predictions
from server.schemas import TextInput

HEADER_LENGTH = "inference-header-content-length"
PLATFORM = "adamix"
INPUT_NAMES = ("text", "text_pair")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "qnli", "versions": ["3f2a9c0d1e4b5a6c"], "platform": PLATFORM,
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                   {"name": "text_pair", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "score", "datatype": "FP32", "shape": [-1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, 2]}],
        "parameters": {"task_type": "pair_classification", "labels": ["entailment", "not_entailment"],
                       "version": "3f2a9c0d1e4b5a6c"}}]})

    name: str
    versions: list[str] = Field(description="Every version of the task (pin one with /versions/{version}/infer).")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(description="task_type, labels (the order of `scores`) and the version "
                                                   "this metadata describes.")


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="`text`, or `text_pair` for pair tasks.")
    shape: list[int] = Field(description="[n] or [n, 1]: n rows.")
    datatype: str = Field(description="BYTES.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="`binary_data_size` for binary data.")
    data: list[Any] | None = Field(None, description="The texts, row-major (absent with binary data).")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict, description="`binary_data`: true for binary data.")


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "req-1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                    "data": ["a gripping film", "a tedious mess"]}]},
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Where is the Eiffel Tower?"]},
                    {"name": "text_pair", "shape": [1], "datatype": "BYTES",
                     "data": ["The Eiffel Tower is in Paris."]}],
         "outputs": [{"name": "scores"}]}]})

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict, description="`binary_data_output`: every output as "
                                                                         "binary data.")
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = Field(None, description="Which outputs (default every one).")


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model_name": "sst2", "model_version": "3f2a9c0d1e4b5a6c", "id": "req-1",
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [1], "data": ["positive"]},
                    {"name": "score", "datatype": "FP32", "shape": [1], "data": [0.97]},
                    {"name": "scores", "datatype": "FP32", "shape": [1, 2], "data": [0.03, 0.97]}]}]})

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


# ---------------------------------------------------------------- metadata

def output_metadata(task: TaskSpec, embedding_size: int) -> list[TensorMetadata]:
    if task.type == "embedding":
        return [TensorMetadata(name="embedding", datatype="FP32", shape=[-1, embedding_size])]
    if task.regression:
        return [TensorMetadata(name="value", datatype="FP32", shape=[-1])]
    return [TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            TensorMetadata(name="score", datatype="FP32", shape=[-1]),
            TensorMetadata(name="scores", datatype="FP32", shape=[-1, len(task.labels)])]


def model_metadata(name: str, versions: list[str], version: str, task: TaskSpec, embedding_size: int
                   ) -> ModelMetadata:
    inputs = [TensorMetadata(name=n, datatype="BYTES", shape=[-1]) for n in INPUT_NAMES[:1 + task.pair]]
    return ModelMetadata(name=name, versions=versions, platform=PLATFORM, inputs=inputs,
                         outputs=output_metadata(task, embedding_size),
                         parameters={"task_type": task.type, "labels": list(task.labels), "version": version})


# ---------------------------------------------------------------- requests

def parse_infer_request(body: bytes, header_length: str | None) -> tuple[InferRequest, list[TextInput]]:
    """The request (JSON, or JSON + binary tensor data) and its rows as the engine's inputs."""
    try:
        header, binary = _split_body(body, header_length)
        request = InferRequest.model_validate_json(header)
    except (InvalidInputError, ValidationError) as exc:
        # A stale length: tritonclient writes it into the caller's headers dict, which a JSON request may reuse.
        request, binary = _whole_body(body) if header_length is not None else (None, b"")
        if request is None:
            raise _as_input_error(exc) from None
    columns: dict[str, list[str]] = {}
    offset = 0
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        if tensor.name not in INPUT_NAMES or tensor.name in columns:
            raise InvalidInputError(f"{where}.name: inputs are BYTES tensors named {list(INPUT_NAMES)}, each once; "
                                    f"got {tensor.name[:64]!r}", f"{where}.name")
        if tensor.datatype != "BYTES":
            raise InvalidInputError(f"{where}.datatype: {tensor.name!r} must be BYTES, got {tensor.datatype[:16]!r}",
                                    f"{where}.datatype")
        rows = _rows_of(tensor.shape, where)
        size = tensor.parameters.get("binary_data_size")
        if size is None:
            texts = _json_texts(tensor.data, rows, where)
        else:
            if tensor.data is not None or not isinstance(size, int) or isinstance(size, bool) \
                    or not 0 <= size <= len(binary) - offset:
                raise InvalidInputError(f"{where}.parameters.binary_data_size: {ascii(size)[:32]} does not fit the "
                                        f"{len(binary) - offset} binary bytes left (and data must be absent)",
                                        f"{where}.parameters")
            texts = _binary_texts(binary[offset:offset + size], rows, where)
            offset += size
        columns[tensor.name] = texts
    if offset != len(binary):
        raise InvalidInputError(f"body: {len(binary) - offset} binary bytes follow the JSON that no input's "
                                "binary_data_size claims", "body")
    if "text" not in columns:
        raise InvalidInputError("inputs: a BYTES input named 'text' is required", "inputs")
    text, pair = columns["text"], columns.get("text_pair")
    if pair is not None and len(pair) != len(text):
        raise InvalidInputError(f"inputs: 'text' has {len(text)} rows, 'text_pair' {len(pair)}", "inputs")
    return request, [TextInput(text=t, text_pair=None if pair is None else pair[j]) for j, t in enumerate(text)]


def _as_input_error(exc: InvalidInputError | ValidationError) -> InvalidInputError:
    if isinstance(exc, InvalidInputError):
        return exc
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return InvalidInputError(f"{where}: {first['msg']}", where)


def _whole_body(body: bytes) -> tuple[InferRequest | None, bytes]:
    """The body as one JSON request without binary data, or None if it is not one."""
    try:
        request = InferRequest.model_validate_json(body)
    except ValidationError:
        return None, b""
    return (None if any("binary_data_size" in t.parameters for t in request.inputs) else request), b""


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidInputError(f"Inference-Header-Content-Length {header_length[:24]!r} is not a length within "
                                f"the {len(body)}-byte body", "body")
    n = int(header_length)
    return body[:n], body[n:]


def _rows_of(shape: list[int], where: str) -> int:
    if not 1 <= len(shape) <= 2 or any(d < 0 for d in shape) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInputError(f"{where}.shape: expected [n] or [n, 1] (one text a row), got {shape[:4]}",
                                f"{where}.shape")
    return shape[0]


def _json_texts(data: list | None, rows: int, where: str) -> list[str]:
    flat = [x[0] if isinstance(x, list) and len(x) == 1 else x for x in (data or [])]  # [n, 1] sent nested
    if data is None or len(flat) != rows or not all(isinstance(x, str) for x in flat):
        raise InvalidInputError(f"{where}.data: expected {rows} strings (its shape), got "
                                f"{'none' if data is None else len(flat)}", f"{where}.data")
    return flat


def _binary_texts(raw: bytes, rows: int, where: str) -> list[str]:
    """BYTES binary data: each element a 4-byte little-endian length, then that many bytes (UTF-8 here)."""
    texts, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInputError(f"{where}: binary data ends inside an element's length", where)
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise InvalidInputError(f"{where}: a binary element of {n} bytes overruns the input's data", where)
        try:
            texts.append(raw[at + 4:at + 4 + n].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{where}[{len(texts)}] is not valid UTF-8: {exc.reason}",
                                    f"{where}[{len(texts)}]") from None
        at += 4 + n
    if len(texts) != rows:
        raise InvalidInputError(f"{where}: binary data holds {len(texts)} elements, its shape says {rows}", where)
    return texts


# ---------------------------------------------------------------- responses

def output_tensors(task: TaskSpec, outputs: list[torch.Tensor]) -> dict[str, tuple[str, list[int], list]]:
    """name -> (datatype, shape, row-major values): the native predictions, as tensors."""
    n = len(outputs)
    shaped = predictions(task, outputs)  # the native route's numbers, exactly
    if task.type == "embedding":
        width = len(shaped[0]["embedding"]) if shaped else 0
        return {"embedding": ("FP32", [n, width], [x for p in shaped for x in p["embedding"]])}
    if task.regression:
        return {"value": ("FP32", [n], [p["value"] for p in shaped])}
    return {"label": ("BYTES", [n], [p["label"] for p in shaped]),
            "score": ("FP32", [n], [p["score"] for p in shaped]),
            "scores": ("FP32", [n, len(task.labels)], [p["scores"][label] for p in shaped for label in task.labels])}


def encode_infer_response(model_name: str, version: str, request: InferRequest,
                          tensors: dict[str, tuple[str, list[int], list]]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensor data follows it (else None)."""
    binary_default = request.parameters.get("binary_data_output") is True
    wanted = request.outputs if request.outputs is not None else [RequestedOutput(name=n) for n in tensors]
    outputs, blobs = [], []
    for i, asked in enumerate(wanted):
        if asked.name not in tensors:
            raise InvalidInputError(f"outputs[{i}].name: model {model_name!r} has outputs {list(tensors)}, not "
                                    f"{asked.name[:64]!r}", f"outputs[{i}].name")
        datatype, shape, values = tensors[asked.name]
        binary = asked.parameters.get("binary_data", binary_default) is True
        if binary:
            blob = _pack(datatype, values)
            blobs.append(blob)
            outputs.append({"name": asked.name, "datatype": datatype, "shape": shape,
                            "parameters": {"binary_data_size": len(blob)}})
        else:
            outputs.append({"name": asked.name, "datatype": datatype, "shape": shape, "data": values})
    body: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    header = json.dumps(body, allow_nan=False).encode()
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)


def _pack(datatype: str, values: list) -> bytes:
    if datatype == "BYTES":
        encoded = [v.encode("utf-8") for v in values]
        return b"".join(struct.pack("<I", len(b)) + b for b in encoded)
    return struct.pack(f"<{len(values)}f", *values)
