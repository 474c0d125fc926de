"""The official clients of each protocol, unchanged, against a real `adamix serve` with API keys: the `openai`
client's embeddings and models, `tritonclient[http]` on a classification and a pair task with pinned versions.
Every answer equals the native route's for the same input; tenant ACLs and errors in each protocol's shape."""
from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from adamix.registry import AdapterRegistry
from tests.integration.conftest import ADMIN, TENANT, TENANT_KEY, ServerProcess, write_keys
from tests.server.helpers import adapter_bytes, make_adapter

pytestmark = pytest.mark.slow
TEXTS = ["a gripping, beautifully acted film", "a tedious mess", "it rains"]
PAIRS = [("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris."), ("Who wrote it?", "It rained all day.")]


@pytest.fixture(scope="module")
def server(tmp_path_factory, ops_backbone):
    """One server for the module: the tenant key covers team-*, not `other`."""
    _, model, _, info = ops_backbone
    root = tmp_path_factory.mktemp("protocol-clients")
    reg = AdapterRegistry(root / "registry", info)
    first = reg.publish("team-sent", adapter_bytes(make_adapter(model, info, r=4, seed=71))).version
    reg.publish("team-sent", adapter_bytes(make_adapter(model, info, kind="lora", r=2, std=0.1, seed=72)))
    pair = reg.publish("team-pair", adapter_bytes(make_adapter(model, info, kind="lora", r=2, std=0.05, seed=73,
                                                               labels=("entailment", "not_entailment"),
                                                               task_type="pair_classification"))).version
    reg.publish("team-emb", adapter_bytes(make_adapter(model, info, r=3, seed=74, task_type="embedding",
                                                       embedding_dim=16)))
    reg.publish("other", adapter_bytes(make_adapter(model, info, r=2, seed=75, task_type="embedding")))
    proc = ServerProcess(["--backbone", str(ops_backbone[0]), "--registry", str(root / "registry"),
                          "--api-keys", str(write_keys(root / "keys.json"))], root / "server.log")
    try:
        proc.wait_ready()
        yield proc, info, first, pair
    finally:
        proc.stop()


def native(server, task: str, inputs: list, version: str | None = None) -> dict:
    r = httpx.post(f"{server.url}/v1/{task}/predict", json={"inputs": inputs}, headers=TENANT,
                   params={} if version is None else {"version": version}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_openai_client_embeds_and_lists_models(server):
    proc, info, _, _ = server
    client = openai.OpenAI(base_url=f"{proc.url}/v1", api_key=TENANT_KEY, max_retries=0, timeout=30)
    try:
        for model in ("team-emb", info.name):
            expected = [p["embedding"] for p in native(proc, model, TEXTS)["predictions"]]
            default = client.embeddings.create(model=model, input=TEXTS)  # the client asks for base64
            floats = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
            for result in (default, floats):
                assert [d.index for d in result.data] == [0, 1, 2] and result.model == model
                for d, e in zip(result.data, expected):
                    assert np.allclose(d.embedding, e, atol=1e-5, rtol=0)
                assert result.usage.prompt_tokens == result.usage.total_tokens > 6
            one = client.embeddings.create(model=model, input=TEXTS[1])
            assert np.allclose(one.data[0].embedding, expected[1], atol=1e-5, rtol=0)
        assert len(client.embeddings.create(model="team-emb", input="x").data[0].embedding) == 16
        models = {m.id: m for m in client.models.list()}
        assert set(models) == {info.name, "team-sent", "team-pair", "team-emb"}  # never `other`
        assert (models["team-emb"].task_type, models["team-pair"].task_type) == ("embedding", "pair_classification")
        assert client.models.retrieve("team-sent").id == "team-sent"
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.embeddings.create(model="other", input="x")
        assert denied.value.body["type"] == "permission_error" and denied.value.body["param"] == "model"
        with pytest.raises(openai.PermissionDeniedError):
            client.models.retrieve("other")
        with pytest.raises(openai.NotFoundError) as missing:
            client.embeddings.create(model="team-missing", input="x")
        assert set(missing.value.body) == {"message", "type", "param", "code"}
        with pytest.raises(openai.UnprocessableEntityError) as wrong_type:
            client.embeddings.create(model="team-sent", input="x")
        assert "classification task" in wrong_type.value.body["message"]
    finally:
        client.close()
    stranger = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="amx_wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.models.list()
    assert refused.value.body["type"] == "authentication_error"
    stranger.close()


def _triton_input(name: str, texts: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object), binary_data=binary)
    return tensor


def test_tritonclient_infers_on_classification_and_pair_tasks_with_pinned_versions(server):
    proc, _, first, pair_version = server
    client = triton.InferenceServerClient(url=proc.url.removeprefix("http://"))
    auth = {"Authorization": f"Bearer {TENANT_KEY}"}  # the client writes binary lengths into this dict; reused
    try:
        assert client.is_server_live() and client.is_server_ready()  # public, as for probes
        assert client.is_model_ready("team-sent", headers=auth)
        assert client.is_model_ready("team-sent", first, headers=auth)
        meta = client.get_model_metadata("team-pair", headers=auth)
        assert [i["name"] for i in meta["inputs"]] == ["text", "text_pair"]

        # classification, a pinned (not the active) version, binary tensor data both ways (the client's default)
        result = client.infer("team-sent", [_triton_input("text", TEXTS, True)], model_version=first, headers=auth)
        expected = native(proc, "team-sent", TEXTS, first)
        assert expected["version"] == first != native(proc, "team-sent", TEXTS)["version"]
        assert result.get_response()["model_version"] == first
        labels = list(expected["predictions"][0]["scores"])
        want = np.array([[p["scores"][k] for k in labels] for p in expected["predictions"]])
        assert np.allclose(result.as_numpy("scores"), want, atol=1e-5, rtol=0)
        assert [x.decode() for x in result.as_numpy("label")] == [p["label"] for p in expected["predictions"]]

        # pair classification, JSON both ways, one requested output, pinned to its version
        inputs = [_triton_input("text", [a for a, _ in PAIRS], False),
                  _triton_input("text_pair", [b for _, b in PAIRS], False)]
        result = client.infer("team-pair", inputs, model_version=pair_version, headers=auth,
                              outputs=[triton.InferRequestedOutput("scores", binary_data=False)])
        expected = native(proc, "team-pair", [{"text": a, "text_pair": b} for a, b in PAIRS], pair_version)
        want = np.array([[p["scores"][k] for k in ("entailment", "not_entailment")] for p in expected["predictions"]])
        assert np.allclose(result.as_numpy("scores"), want, atol=1e-5, rtol=0)
        assert result.as_numpy("label") is None

        with pytest.raises(InferenceServerException) as denied:
            client.infer("other", [_triton_input("text", ["x"], True)], headers=auth)
        assert denied.value.status() == "403" and "may not use task 'other'" in denied.value.message()
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("team-sent", [_triton_input("text", ["x"], True)], model_version="0" * 16, headers=auth)
        assert unknown.value.status() == "404"
        with pytest.raises(InferenceServerException) as unauthenticated:
            client.infer("team-sent", [_triton_input("text", ["x"], True)])
        assert unauthenticated.value.status() == "401"
        assert not client.is_model_ready("other", headers=auth)
    finally:
        client.close()


def test_errors_before_routing_come_in_each_protocols_shape(server):
    proc = server[0]
    r = httpx.post(f"{proc.url}/v2/models/team-sent/infer", content=b"x" * (2 << 20), headers=TENANT, timeout=30)
    assert r.status_code == 413 and isinstance(r.json()["error"], str)
    r = httpx.post(f"{proc.url}/v1/embeddings", content=b"x" * (2 << 20), headers=TENANT, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(f"{proc.url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    r = httpx.get(f"{proc.url}/v1/adapters", headers=ADMIN, timeout=30)
    assert r.status_code == 200  # the native surface is unchanged
