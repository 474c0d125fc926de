"""A corpus of hostile and broken uploads against a real server: each its own 4xx, nothing written, still serving."""
from __future__ import annotations

import http.client
import io
import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from adamix import BackboneInfo
from tests.integration.conftest import ADMIN, OCTET, registry_snapshot
from tests.server.helpers import adapter_bytes, make_adapter

pytestmark = pytest.mark.slow
MAX_UPLOAD = 64 * 1024


def _metadata(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])["__metadata__"]


def _edited(data: bytes, edit) -> bytes:
    """The valid file `data` with its tensors changed by `edit(tensors)`, written by safetensors itself."""
    tensors = st_load(data)
    edit(tensors)
    return st_save(tensors, metadata=_metadata(data))


def _torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"head.weight": torch.zeros(2, 32)}, buffer)
    return buffer.getvalue()


def _corpus(good: bytes, other_backbone: bytes) -> list[tuple[str, str, bytes, int, str]]:
    """(case, task, body, status, error code)."""
    nan = _edited(good, lambda t: t["head.weight"].__setitem__((0, 0), float("nan")))
    wrong_shape = _edited(good, lambda t: t.__setitem__("head.weight", torch.zeros(3, 32)))
    extra_key = _edited(good, lambda t: t.__setitem__("adapter.encoder.extra.weight", torch.zeros(2)))
    header = b'{"__metadata__": {"adamix": "' + b"x" * (2 << 20) + b'"}}'
    return [
        ("pickle", "team-x", pickle.dumps({"head.weight": [0.0] * 4}, protocol=4), 422, "invalid_adapter"),
        ("torch.save zip", "team-x", _torch_zip(), 422, "invalid_adapter"),
        ("NaN", "team-x", nan, 422, "invalid_adapter"),
        ("wrong shape", "team-x", wrong_shape, 422, "invalid_adapter"),
        ("extra key", "team-x", extra_key, 422, "invalid_adapter"),
        ("other backbone", "team-x", other_backbone, 422, "invalid_adapter"),
        ("truncated", "team-x", good[:-100], 422, "invalid_adapter"),
        ("oversized header", "team-x", struct.pack("<Q", len(header)) + header[:MAX_UPLOAD - 100], 422,
         "invalid_adapter"),
        ("empty", "team-x", b"", 422, "invalid_adapter"),
        ("over the size cap", "team-x", good + b"\0" * MAX_UPLOAD, 413, "payload_too_large"),
        ("name ../x", "../x", good, 404, "not_found"),  # a '/' in the name matches no route
        ("name a/b", "a/b", good, 404, "not_found"),
        ("name %2e%2e", "%2e%2e", good, 422, "invalid_task_name"),
        ("name ..%2fx", "..%2fx", good, 404, "not_found"),
        ("name 65 chars", "a" * 65, good, 422, "invalid_task_name"),
        ("name uppercase", "Team-X", good, 422, "invalid_task_name"),
        ("name leading dash", "-x", good, 422, "invalid_task_name"),
        ("name dot", "team.json", good, 422, "invalid_task_name"),
    ]


def _put_raw(port: int, task: str, body: bytes) -> tuple[int, dict]:
    """PUT with the path sent byte for byte (no client-side normalisation of '..' or '%2e')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("PUT", f"/v1/adapters/{task}", body=body, headers={**OCTET, **ADMIN})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_bad_uploads_get_their_own_4xx_and_leave_the_registry_untouched(tmp_path, start_server, ops_backbone,
                                                                         versions):
    _, model, _, info = ops_backbone
    good = versions[0][1]
    other = BackboneInfo(info.name, info.model_type, info.num_layers, info.hidden_size, "f" * 64)
    registry = tmp_path / "reg"
    server = start_server(registry, max_upload_bytes=MAX_UPLOAD)
    assert _put_raw(server.port, "team-x", good)[0] == 201
    before = registry_snapshot(registry)
    failed = []
    for case, task, body, status, code in _corpus(good, adapter_bytes(make_adapter(model, other, seed=3))):
        got_status, got = _put_raw(server.port, task, body)
        if (got_status, got["error"]["code"]) != (status, code):
            failed.append((case, got_status, got))
        elif code == "invalid_adapter":
            assert got["error"]["field"] and got["error"]["message"], (case, got)
    assert failed == []
    assert registry_snapshot(registry) == before
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/team-x/predict", body=json.dumps({"inputs": ["still serving"]}),
                 headers={**ADMIN, "Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    conn.close()
