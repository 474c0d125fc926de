"""The protocol surfaces in process: OpenAI-compatible embeddings and models, Open Inference Protocol v2, pinned
versions; every answer equal to the native route's, one ACL and one error map rendered in each protocol's shape."""
from __future__ import annotations

import base64
import json
import struct

import pytest
import torch
from fastapi.testclient import TestClient

from adamix.model import backbone_of
from adamix.registry import AdapterRegistry
from server.app import create_app
from server.auth import hash_key
from server.settings import Settings
from tests.server.helpers import adapter_bytes, make_adapter, wait_ready

ADMIN = {"Authorization": "Bearer amx_admin"}
TENANT = {"Authorization": "Bearer amx_tenant"}  # may use sent and emb only
TEXTS = ["a fine film", "dull and far too long", "it rains"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_loaded, tiny_backbone_dir):
    model, _, info = tiny_loaded
    root = tmp_path_factory.mktemp("protocols")
    reg = AdapterRegistry(root / "registry", info)
    first = reg.publish("sent", adapter_bytes(make_adapter(model, info, r=4, seed=1)))
    reg.publish("nli", adapter_bytes(make_adapter(model, info, kind="lora", r=2, seed=2, std=0.05,
                                                  labels=("entailment", "neutral", "contradiction"),
                                                  task_type="pair_classification")))
    reg.publish("sts", adapter_bytes(make_adapter(model, info, r=3, seed=3, labels=())))
    reg.publish("emb", adapter_bytes(make_adapter(model, info, r=4, seed=4, task_type="embedding", embedding_dim=8)))
    reg.publish("emb-plain", adapter_bytes(make_adapter(model, info, kind="lora", r=2, seed=5, std=0.05,
                                                        task_type="embedding")))
    second = reg.publish("sent", adapter_bytes(make_adapter(model, info, r=4, seed=11)))
    keys = root / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "ops", "sha256": hash_key("amx_admin"), "admin": True},
                                         {"name": "team", "sha256": hash_key("amx_tenant"),
                                          "tasks": ["sent", "emb"]}]}))
    settings = Settings(backbone=tiny_backbone_dir, registry=root / "registry", demo_adapters=None,
                        api_keys_file=keys, max_inputs_per_request=4, max_text_chars=100)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client, info, first.version, second.version


@pytest.fixture(scope="module")
def client(setup):
    return setup[0]


def native(client, task: str, inputs: list, version: str | None = None) -> dict:
    r = client.post(f"/v1/{task}/predict", json={"inputs": inputs}, headers=ADMIN,
                    params={} if version is None else {"version": version})
    assert r.status_code == 200, r.text
    return r.json()


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


# ---------------------------------------------------------------- embedding tasks on the native route

def test_embedding_tasks_and_the_backbone_answer_unit_vectors_natively(setup):
    client, info, _, _ = setup
    for model, size in (("emb", 8), ("emb-plain", 32), (info.name, 32)):
        body = native(client, model, TEXTS)
        vectors = [p["embedding"] for p in body["predictions"]]
        assert [len(v) for v in vectors] == [size] * 3, model
        assert all(abs(sum(x * x for x in v) - 1.0) < 1e-5 for v in vectors)
    assert native(client, info.name, ["x"])["version"] == info.fingerprint[:16]


def test_the_backbone_is_the_mean_pooled_normalised_bare_backbone(setup, tiny_loaded):
    client, info, _, _ = setup
    model, tokenizer, _ = tiny_loaded
    served = native(client, info.name, TEXTS[:2])["predictions"]
    for text, prediction in zip(TEXTS[:2], served):
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = backbone_of(model)(**enc).last_hidden_state[0]  # (T, d)
        expected = torch.nn.functional.normalize(hidden.mean(0), dim=0).tolist()
        assert close(prediction["embedding"], expected)


# ---------------------------------------------------------------- OpenAI-compatible

def test_openai_embeddings_equal_native_in_float_and_base64(setup):
    client, info, _, _ = setup
    for model in ("emb", "emb-plain", info.name):
        expected = [p["embedding"] for p in native(client, model, TEXTS)["predictions"]]
        key = ADMIN if model == "emb-plain" else TENANT  # the tenant's key covers emb, and the backbone
        r = client.post("/v1/embeddings", json={"model": model, "input": TEXTS}, headers=key)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == model
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert all(close(d["embedding"], e) for d, e in zip(body["data"], expected))
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 3 * 2  # [CLS] .. [SEP] each
        r = client.post("/v1/embeddings", json={"model": model, "input": TEXTS[1], "encoding_format": "base64"},
                        headers=key)
        raw = base64.b64decode(r.json()["data"][0]["embedding"])
        assert close(list(struct.unpack(f"<{len(raw) // 4}f", raw)), expected[1])


def test_openai_usage_counts_tokens_after_truncation(setup, tiny_loaded):
    client, _, _, _ = setup
    tokenizer = tiny_loaded[1]
    r = client.post("/v1/embeddings", json={"model": "emb", "input": ["one two", "three"]}, headers=ADMIN)
    assert r.json()["usage"]["prompt_tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in ["one two", "three"])


def openai_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize("headers, body, status, kind, param, code", [
    ({}, {"model": "emb", "input": "x"}, 401, "authentication_error", "authorization", "unauthorized"),
    ({"Authorization": "Bearer wrong"}, {"model": "emb", "input": "x"}, 401, "authentication_error",
     "authorization", "unauthorized"),
    (TENANT, {"model": "emb-plain", "input": "x"}, 403, "permission_error", "model", "forbidden"),
    (ADMIN, {"model": "nope", "input": "x"}, 404, "not_found_error", "model", "task_not_found"),
    (ADMIN, {"model": "sent", "input": "x"}, 422, "invalid_request_error", "model", "invalid_input"),
    (ADMIN, {"model": "emb", "input": []}, 422, "invalid_request_error", "input", "invalid_input"),
    (ADMIN, {"model": "emb", "input": ["a"] * 5}, 422, "invalid_request_error", "input", "invalid_input"),
    (ADMIN, {"model": "emb", "input": ["x" * 101]}, 422, "invalid_request_error", "input[0]", "invalid_input"),
    (ADMIN, {"model": "emb", "input": [[1, 2, 3]]}, 422, "invalid_request_error", "input", "invalid_input"),
    (ADMIN, {"model": "emb", "input": "x", "dimensions": 4}, 422, "invalid_request_error", "dimensions",
     "invalid_input"),
    (ADMIN, {"model": "emb", "input": "x", "encoding_format": "int8"}, 422, "invalid_request_error",
     "encoding_format", "invalid_input"),
])
def test_openai_errors_come_in_openai_shape(client, headers, body, status, kind, param, code):
    err = openai_error(client.post("/v1/embeddings", json=body, headers=headers), status)
    assert (err["type"], err["code"]) == (kind, code) and (err["param"] or "").startswith(param), err


def test_openai_dimensions_must_be_the_models_size(setup):
    """Embeddings are never shortened: `dimensions` equal to the size is accepted, any other is named and refused."""
    client, info, _, _ = setup
    for model, size in (("emb", 8), (info.name, 32)):  # the projection's rows; the tiny backbone's width
        r = client.post("/v1/embeddings", json={"model": model, "input": "x", "dimensions": size}, headers=ADMIN)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == size, r.text
        err = openai_error(client.post("/v1/embeddings", json={"model": model, "input": "x", "dimensions": size - 1},
                                       headers=ADMIN), 422)
        assert err["param"] == "dimensions" and f"omit dimensions or give {size}" in err["message"], err


def test_openai_models_lists_what_the_key_may_use_with_types(setup):
    client, info, _, second = setup
    listed = {m["id"]: m for m in client.get("/v1/models", headers=ADMIN).json()["data"]}
    assert {k: m["task_type"] for k, m in listed.items()} == {
        info.name: "embedding", "emb": "embedding", "emb-plain": "embedding", "sent": "classification",
        "nli": "pair_classification", "sts": "regression"}
    assert listed["sent"]["version"] == second and all(m["object"] == "model" for m in listed.values())
    tenant = client.get("/v1/models", headers=TENANT).json()["data"]
    assert sorted(m["id"] for m in tenant) == sorted([info.name, "emb", "sent"])
    assert client.get("/v1/models/emb", headers=TENANT).json()["task_type"] == "embedding"
    assert client.get(f"/v1/models/{info.name}", headers=TENANT).json()["id"] == info.name
    assert openai_error(client.get("/v1/models/nli", headers=TENANT), 403)["type"] == "permission_error"
    assert openai_error(client.get("/v1/models/missing", headers=ADMIN), 404)["param"] == "model"
    assert openai_error(client.get("/v1/models"), 401)["code"] == "unauthorized"


# ---------------------------------------------------------------- pinned versions (native)

def test_a_pinned_version_serves_that_version(setup):
    client, _, first, second = setup
    assert native(client, "sent", TEXTS)["version"] == second
    pinned = native(client, "sent", TEXTS, first)
    assert pinned["version"] == first
    assert pinned["predictions"] != native(client, "sent", TEXTS)["predictions"]
    r = client.post("/v1/sent/predict", params={"version": "0" * 16}, json={"inputs": ["x"]}, headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"


# ---------------------------------------------------------------- Open Inference Protocol v2

def oip_infer(client, task: str, columns: dict[str, list[str]], version: str | None = None, headers=ADMIN,
              **extra) -> dict:
    path = f"/v2/models/{task}" + (f"/versions/{version}" if version else "") + "/infer"
    inputs = [{"name": n, "shape": [len(v)], "datatype": "BYTES", "data": v} for n, v in columns.items()]
    return client.post(path, json={"inputs": inputs, **extra}, headers=headers)


def outputs_of(body: dict) -> dict[str, tuple[list[int], list]]:
    return {o["name"]: (o["shape"], o["data"]) for o in body["outputs"]}


def test_oip_infer_equals_native_for_every_task_type(setup):
    client, info, first, _ = setup
    pairs = [{"text": "a man sleeps", "text_pair": "nobody sleeps"}, {"text": "it rains", "text_pair": "wet"}]
    cases = [("sent", {"text": TEXTS}, TEXTS, None), ("sent", {"text": TEXTS}, TEXTS, first),
             ("nli", {"text": [p["text"] for p in pairs], "text_pair": [p["text_pair"] for p in pairs]}, pairs, None),
             ("sts", {"text": TEXTS}, TEXTS, None), ("emb", {"text": TEXTS}, TEXTS, None),
             (info.name, {"text": TEXTS}, TEXTS, None)]
    for task, columns, inputs, version in cases:
        r = oip_infer(client, task, columns, version, id="req-7")
        assert r.status_code == 200, r.text
        body, expected = r.json(), native(client, task, inputs, version)
        assert (body["model_name"], body["model_version"], body["id"]) == (task, expected["version"], "req-7")
        out, preds = outputs_of(body), expected["predictions"]
        if "label" in preds[0]:
            labels = list(preds[0]["scores"])
            assert out["label"] == ([len(preds)], [p["label"] for p in preds])
            assert close(out["score"][1], [p["score"] for p in preds])
            assert out["scores"][0] == [len(preds), len(labels)]
            assert close(out["scores"][1], [p["scores"][label] for p in preds for label in labels])
        elif "value" in preds[0]:
            assert close(out["value"][1], [p["value"] for p in preds])
        else:
            assert out["embedding"][0] == [3, len(preds[0]["embedding"])]
            assert close(out["embedding"][1], [x for p in preds for x in p["embedding"]])


def _bytes_tensor(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def test_oip_binary_tensor_data_both_ways(client):
    blob = _bytes_tensor(TEXTS)
    header = json.dumps({"inputs": [{"name": "text", "shape": [3, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    r = client.post("/v2/models/sent/infer", content=header + blob,
                    headers={**ADMIN, "Content-Type": "application/octet-stream",
                             "Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta, data = json.loads(r.content[:n]), r.content[n:]
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in meta["outputs"]}
    assert list(sizes) == ["label", "score", "scores"] and sum(sizes.values()) == len(data)
    scores = struct.unpack("<6f", data[sizes["label"] + sizes["score"]:])
    expected = native(client, "sent", TEXTS)["predictions"]
    assert close(list(scores), [p["scores"][k] for p in expected for k in ("negative", "positive")])
    labels, at = [], 0
    while at < sizes["label"]:
        (k,) = struct.unpack_from("<I", data, at)
        labels.append(data[at + 4:at + 4 + k].decode())
        at += 4 + k
    assert labels == [p["label"] for p in expected]
    only = oip_infer(client, "sent", {"text": TEXTS}, outputs=[{"name": "score"}]).json()["outputs"]
    assert [o["name"] for o in only] == ["score"]


def test_oip_metadata_readiness_and_health(setup):
    client, info, first, second = setup
    meta = client.get("/v2/models/nli", headers=ADMIN).json()
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("text", "BYTES"), ("text_pair", "BYTES")]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"label": [-1], "score": [-1], "scores": [-1, 3]}
    assert meta["parameters"]["labels"] == ["entailment", "neutral", "contradiction"]
    sent = client.get(f"/v2/models/sent/versions/{first}", headers=ADMIN).json()
    assert sent["versions"] == [first, second] and sent["parameters"]["version"] == first
    assert [i["name"] for i in sent["inputs"]] == ["text"]
    emb = client.get("/v2/models/emb", headers=TENANT).json()
    assert emb["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 8]}]
    assert client.get(f"/v2/models/{info.name}", headers=TENANT).json()["outputs"][0]["shape"] == [-1, 32]
    assert client.get("/v2/models/sent/ready", headers=TENANT).status_code == 200
    assert client.get(f"/v2/models/sent/versions/{first}/ready", headers=TENANT).status_code == 200
    assert client.get("/v2/health/live").status_code == 200 and client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2", headers=TENANT).json()["name"] == "adamix-serve"


def oip_error(r, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and "Traceback" not in r.text, body
    return body["error"]


def test_oip_errors_come_in_oip_shape(setup):
    client, _, _, _ = setup
    assert "API key" in oip_error(oip_infer(client, "sent", {"text": ["x"]}, headers={}), 401)
    assert "may not use task 'nli'" in oip_error(client.get("/v2/models/nli", headers=TENANT), 403)
    assert "may not use" in oip_error(oip_infer(client, "sts", {"text": ["x"]}, headers=TENANT), 403)
    assert "unknown task" in oip_error(oip_infer(client, "nope", {"text": ["x"]}), 404)
    assert "no version" in oip_error(oip_infer(client, "sent", {"text": ["x"]}, "0" * 16), 404)
    assert "no version" in oip_error(client.get("/v2/models/sent/versions/00000000/ready", headers=ADMIN), 404)
    assert "at most 4" in oip_error(oip_infer(client, "sent", {"text": ["a"] * 5}), 422)
    assert "at most 100" in oip_error(oip_infer(client, "sent", {"text": ["x" * 101]}), 422)
    assert "takes pairs" in oip_error(oip_infer(client, "nli", {"text": ["x"]}), 422)
    assert "single texts" in oip_error(oip_infer(client, "sent", {"text": ["x"], "text_pair": ["y"]}), 422)
    assert "'text' is required" in oip_error(oip_infer(client, "sent", {"text_pair": ["x"]}), 422)
    assert "has outputs" in oip_error(oip_infer(client, "sent", {"text": ["x"]}, outputs=[{"name": "logits"}]), 422)
    bad = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["only one"]}]}
    assert "expected 2 strings" in oip_error(client.post("/v2/models/sent/infer", json=bad, headers=ADMIN), 422)
    bad = {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    assert "must be BYTES" in oip_error(client.post("/v2/models/sent/infer", json=bad, headers=ADMIN), 422)
    r = client.post("/v2/models/sent/infer", content=b"{not json", headers=ADMIN)
    assert "body" in oip_error(r, 422)
    for header, blob in (("999", b"{}"), ("2", b"{}" + struct.pack("<I", 50) + b"short")):
        r = client.post("/v2/models/sent/infer", content=blob,
                        headers={**ADMIN, "Inference-Header-Content-Length": header})
        oip_error(r, 422)
    header = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 6}}]}).encode()
    r = client.post("/v2/models/sent/infer", content=header + struct.pack("<I", 2) + b"\xff\xfe",
                    headers={**ADMIN, "Inference-Header-Content-Length": str(len(header))})
    assert "not valid UTF-8" in oip_error(r, 422)
    assert "not found" in oip_error(client.get("/v2/nothing/here", headers=ADMIN), 404).lower()


def test_native_errors_keep_the_native_shape_and_statuses_agree(client):
    native_body = client.post("/v1/nope/predict", json={"inputs": ["x"]}, headers=ADMIN)
    assert native_body.status_code == 404 and set(native_body.json()["error"]) == {"code", "message", "field"}
    oip = oip_infer(client, "nope", {"text": ["x"]})
    openai = client.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=ADMIN)
    assert oip.status_code == openai.status_code == 404
    assert native_body.json()["error"]["message"] == oip.json()["error"] == openai.json()["error"]["message"]


def test_the_docs_show_every_surface(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/embeddings", "/v1/models", "/v2/models/{task}/infer", "/v2/models/{task}/versions/{version}/infer",
                 "/v2/health/ready", "/v2/models/{task}"):
        assert path in spec["paths"], path
    text = json.dumps(spec)
    assert "all-MiniLM-L6-v2" in text and "binary_data_size" in text


def test_a_stale_header_length_on_a_json_request_is_read_as_json(client):
    """tritonclient writes Inference-Header-Content-Length into the caller's headers dict; a reused dict
    then sends a stale length with a plain JSON request."""
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a fine film"]}]})
    for stale in ("40", "100000"):
        r = client.post("/v2/models/sent/infer", content=body,
                        headers={**ADMIN, "Inference-Header-Content-Length": stale})
        assert r.status_code == 200, r.text
        assert outputs_of(r.json())["label"][1] == [native(client, "sent", ["a fine film"])["predictions"][0]["label"]]


def test_every_surface_is_counted_under_its_task(setup):
    client, info, _, _ = setup

    def count(task: str) -> float:
        for line in client.get("/metrics", headers=ADMIN).text.splitlines():
            if line.startswith(f'adamix_requests_total{{status="200",task="{task}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = {t: count(t) for t in ("emb", "sent", info.name)}
    client.post("/v1/embeddings", json={"model": "emb", "input": "x"}, headers=ADMIN)
    oip_infer(client, "sent", {"text": ["x"]})
    client.post("/v1/embeddings", json={"model": info.name, "input": "x"}, headers=ADMIN)
    assert {t: count(t) - before[t] for t in before} == {"emb": 1, "sent": 1, info.name: 1}
