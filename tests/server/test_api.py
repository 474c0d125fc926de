"""The HTTP API in process (TestClient runs the real app, lifespan included)."""
from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from adamix.registry import AdapterRegistry
from server.settings import Settings
from tests.server.helpers import adapter_bytes, make_adapter, wait_ready


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory, tiny_loaded):
    model, _, info = tiny_loaded
    root = tmp_path_factory.mktemp("registry")
    reg = AdapterRegistry(root, info)
    reg.publish("sent", adapter_bytes(make_adapter(model, info, r=4, seed=1)))
    reg.publish("nli", adapter_bytes(make_adapter(model, info, kind="lora", r=2, seed=2, std=0.05,
                                                  labels=("entailment", "neutral", "contradiction"),
                                                  task_type="pair_classification")))
    reg.publish("sts", adapter_bytes(make_adapter(model, info, r=3, seed=3, labels=())))
    return root


@pytest.fixture(scope="module")
def client(tiny_backbone_dir, registry_dir):
    settings = Settings(backbone=tiny_backbone_dir, registry=registry_dir, demo_adapters=None,
                        max_inputs_per_request=4, max_text_chars=100)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_predict_classification_pair_and_regression(client):
    r = client.post("/v1/sent/predict", json={"inputs": ["a fine film", "dull"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "sent" and len(body["version"]) == 16
    for p in body["predictions"]:
        assert set(p) == {"label", "score", "scores"} and set(p["scores"]) == {"negative", "positive"}
        assert sum(p["scores"].values()) == pytest.approx(1.0, abs=1e-5) and p["score"] == max(p["scores"].values())
    r = client.post("/v1/nli/predict", json={"inputs": [{"text": "a man sleeps", "text_pair": "nobody sleeps"}]})
    assert r.status_code == 200 and len(r.json()["predictions"][0]["scores"]) == 3
    r = client.post("/v1/sts/predict", json={"inputs": ["x"]})
    assert r.status_code == 200 and set(r.json()["predictions"][0]) == {"value"}


def test_same_input_same_answer_regardless_of_request_shape(client):
    one = client.post("/v1/sent/predict", json={"inputs": ["a fine film"]}).json()["predictions"][0]
    two = client.post("/v1/sent/predict", json={"inputs": ["dull and long", "a fine film"]}).json()["predictions"][1]
    assert one["scores"] == pytest.approx(two["scores"], abs=1e-5)


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert "Traceback" not in r.text
    return body["error"]


def test_unknown_task_is_404(client):
    err = error_of(client.post("/v1/nope/predict", json={"inputs": ["x"]}), 404)
    assert err["code"] == "task_not_found" and "nope" in err["message"]


@pytest.mark.parametrize("body, field", [
    ({"inputs": []}, "inputs"),
    ({"inputs": ["a"] * 5}, "inputs"),
    ({"inputs": ["x" * 101]}, "inputs[0]"),
    ({"inputs": ["ok", {"text": "fine", "text_pair": "y" * 101}]}, "inputs[1].text_pair"),
    ({"inputs": ["   "]}, "inputs[0]"),
    ({"inputs": [5]}, "inputs[0]"),
    ({"inputs": "not a list"}, "inputs"),
    ({"inputs": [{"text": "x", "extra": 1}]}, "inputs[0]"),
    ({}, "inputs"),
])
def test_bad_inputs_are_422_naming_the_field(client, body, field):
    err = error_of(client.post("/v1/sent/predict", json=body), 422)
    assert err["field"].startswith(field), err


def test_bad_task_name_is_422(client):
    err = error_of(client.post("/v1/Bad.Name/predict", json={"inputs": ["x"]}), 422)
    assert err["code"] == "invalid_task_name" and err["field"] == "task"


def test_unknown_route_uses_the_error_shape(client):
    assert error_of(client.get("/v1/adapters/x/nothing"), 404)["code"] == "not_found"


def test_health_ready_docs_and_listing(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["tasks"] == 3
    assert "examples" in client.get("/openapi.json").text and client.get("/docs").status_code == 200
    tasks = {t["task"]: t for t in client.get("/v1/adapters").json()["tasks"]}
    assert set(tasks) == {"sent", "nli", "sts"}
    client.post("/v1/sent/predict", json={"inputs": ["x"]})
    assert client.get("/v1/adapters/sent").json()["residency"] == "device"
    assert error_of(client.get("/v1/adapters/nope"), 404)["code"] == "task_not_found"


def test_metrics_use_the_design_names(client):
    client.post("/v1/sent/predict", json={"inputs": ["x"]})
    client.post("/v1/nope/predict", json={"inputs": ["x"]})
    text = client.get("/metrics").text
    for name in ("adamix_requests_total", "adamix_request_duration_seconds", "adamix_queue_duration_seconds",
                 "adamix_batch_size", "adamix_batch_tasks", "adamix_adapter_cache_lookups_total",
                 "adamix_adapter_cache_hits_total", "adamix_adapter_load_duration_seconds",
                 "adamix_adapters_resident", "adamix_adapter_cache_bytes", "adamix_build_info"):
        assert name in text, name
    assert 'adamix_requests_total{status="200",task="sent"}' in text
    assert 'adamix_requests_total{status="404",task="_unknown"}' in text  # unknown names never become labels


def test_fresh_registry_installs_fitting_demo_adapters(tmp_path, tiny_backbone_dir, tiny_loaded):
    model, _, info = tiny_loaded
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "sst2.safetensors").write_bytes(adapter_bytes(make_adapter(model, info, seed=5)))
    other = type(info)(info.name, info.model_type, info.num_layers, info.hidden_size, "f" * 64)
    (demo / "alien.safetensors").write_bytes(adapter_bytes(make_adapter(model, other, seed=6)))
    settings = Settings(backbone=tiny_backbone_dir, registry=tmp_path / "reg", demo_adapters=demo)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        assert [t["task"] for t in c.get("/v1/adapters").json()["tasks"]] == ["sst2"]
        assert c.post("/v1/sst2/predict", json={"inputs": ["great"]}).status_code == 200
        c.app.state.server.registry.delete("sst2")
    with TestClient(create_app(settings)) as c:  # an emptied registry is not fresh: nothing comes back
        wait_ready(c)
        assert c.get("/v1/adapters").json()["tasks"] == []


def test_not_ready_answers_503(tmp_path):
    settings = Settings(backbone=tmp_path / "missing", registry=tmp_path / "reg", demo_adapters=None)
    with TestClient(create_app(settings)) as c:
        time.sleep(0.2)
        err = error_of(c.get("/readyz"), 503)
        assert err["code"] == "not_ready"
        assert error_of(c.post("/v1/x/predict", json={"inputs": ["x"]}), 503)["code"] == "not_ready"
        assert c.get("/healthz").status_code == 200


def test_new_version_serves_at_once_and_rollback_restores_the_old_answers(tmp_path, tiny_backbone_dir, tiny_loaded):
    model, _, info = tiny_loaded
    settings = Settings(backbone=tiny_backbone_dir, registry=tmp_path / "reg", demo_adapters=None)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        registry = c.app.state.server.registry
        v1 = registry.publish("swap", adapter_bytes(make_adapter(model, info, seed=11)))
        first = c.post("/v1/swap/predict", json={"inputs": ["a fine film"]}).json()
        v2 = registry.publish("swap", adapter_bytes(make_adapter(model, info, kind="lora", std=0.05, seed=12)))
        second = c.post("/v1/swap/predict", json={"inputs": ["a fine film"]}).json()
        registry.activate("swap", v1.version)
        third = c.post("/v1/swap/predict", json={"inputs": ["a fine film"]}).json()
    assert (first["version"], second["version"], third["version"]) == (v1.version, v2.version, v1.version)
    assert first["predictions"][0]["scores"] != pytest.approx(second["predictions"][0]["scores"], abs=1e-3)
    assert third["predictions"] == first["predictions"]


def test_every_response_matches_exactly_the_version_it_names_while_versions_flip(tmp_path, tiny_backbone_dir,
                                                                                  tiny_loaded):
    import concurrent.futures
    import threading

    model, _, info = tiny_loaded
    settings = Settings(backbone=tiny_backbone_dir, registry=tmp_path / "reg", demo_adapters=None, max_wait_ms=5)
    body = {"inputs": ["a fine film", "dull"]}
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        registry = c.app.state.server.registry
        versions = [registry.publish("flip", adapter_bytes(make_adapter(model, info, seed=20 + i, r=2 + i)))
                    for i in range(3)]
        reference = {}
        for v in versions:  # each version served alone
            registry.activate("flip", v.version)
            reference[v.version] = c.post("/v1/flip/predict", json=body).json()["predictions"]
        stop = threading.Event()

        def flip():
            i = 0
            while not stop.is_set():
                registry.activate("flip", versions[i % 3].version)
                i += 1
                time.sleep(0.002)

        flipper = threading.Thread(target=flip)
        flipper.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(lambda _: c.post("/v1/flip/predict", json=body), range(80)))
        finally:
            stop.set()
            flipper.join()
    assert all(r.status_code == 200 for r in responses)
    seen = {r.json()["version"] for r in responses}
    assert len(seen) >= 2  # the flips really happened under load
    for r in responses:
        got = r.json()
        for a, b in zip(got["predictions"], reference[got["version"]]):
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
