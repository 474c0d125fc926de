"""Adapter management over the in-process app: upload, idempotency, rollback, delete, auth, limits, metrics."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from benchmarks.procs import free_port
from server.app import create_app
from server.auth import hash_key
from server.settings import Settings
from tests.server.helpers import adapter_bytes, make_adapter, wait_ready

ADMIN, TENANT = {"Authorization": "Bearer admin-key"}, {"Authorization": "Bearer tenant-key"}
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def files(tiny_loaded) -> list[bytes]:
    model, _, info = tiny_loaded
    return [adapter_bytes(make_adapter(model, info, seed=40 + i, r=2 + i)) for i in range(2)]


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "ops", "sha256": hash_key("admin-key"), "admin": True},
                                         {"name": "team", "sha256": hash_key("tenant-key"),
                                          "tasks": ["team-*"]}]}))
    return path


@pytest.fixture
def client(tmp_path, tiny_backbone_dir, keys_file):
    settings = Settings(backbone=tiny_backbone_dir, registry=tmp_path / "reg", demo_adapters=None,
                        api_keys_file=keys_file, max_request_bytes=4096, max_upload_bytes=200_000)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def put(client, task: str, data: bytes, headers: dict = ADMIN):
    return client.put(f"/v1/adapters/{task}", content=data, headers={**OCTET, **headers})


def predict(client, task: str, headers: dict = ADMIN):
    return client.post(f"/v1/{task}/predict", json={"inputs": ["a fine film"]}, headers=headers)


def test_upload_activate_rollback_and_delete(client, files):
    r = put(client, "team-x", files[0])
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["task"] == "team-x" and v1["sha256"].startswith(v1["version"]) and v1["created"]
    again = put(client, "team-x", files[0])
    assert again.status_code == 200 and again.json()["version"] == v1["version"] and not again.json()["created"]
    v2 = put(client, "team-x", files[1]).json()
    assert predict(client, "team-x").json()["version"] == v2["version"]
    info = client.get("/v1/adapters/team-x", headers=TENANT).json()
    assert info["active"] == v2["version"] and [v["version"] for v in info["versions"]] == [v1["version"],
                                                                                            v2["version"]]
    r = client.post("/v1/adapters/team-x/activate", json={"version": v1["version"]}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["version"] == v1["version"]
    assert predict(client, "team-x").json()["version"] == v1["version"]
    assert client.post("/v1/adapters/team-x/activate", json={"version": "0" * 16},
                       headers=ADMIN).json()["error"]["code"] == "version_not_found"
    assert client.delete(f"/v1/adapters/team-x/versions/{v1['version']}", headers=ADMIN).status_code == 204
    assert predict(client, "team-x").json()["version"] == v2["version"]  # the newest left took over
    assert client.delete("/v1/adapters/team-x", headers=ADMIN).status_code == 204
    assert predict(client, "team-x").status_code == 404
    assert client.delete("/v1/adapters/team-x", headers=ADMIN).status_code == 404


def test_scopes_over_http(client, files):
    assert put(client, "team-x", files[0]).status_code == 201
    assert put(client, "other", files[0]).status_code == 201
    assert put(client, "team-x", files[1], TENANT).json()["error"]["code"] == "forbidden"
    assert predict(client, "team-x", TENANT).status_code == 200
    assert predict(client, "other", TENANT).status_code == 403
    assert predict(client, "other", {}).status_code == 401
    assert predict(client, "other", {"Authorization": "Bearer wrong"}).headers["www-authenticate"] == "Bearer"
    assert [t["task"] for t in client.get("/v1/adapters", headers=TENANT).json()["tasks"]] == ["team-x"]
    assert [t["task"] for t in client.get("/v1/adapters", headers=ADMIN).json()["tasks"]] == ["other", "team-x"]
    for path in ("/healthz", "/readyz"):
        assert client.get(path).status_code == 200
    # with keys, the metrics (every tenant's task names) are no side channel: a metrics or admin key only
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=TENANT).status_code == 403
    assert client.get("/metrics", headers=ADMIN).status_code == 200


def test_size_limits_answer_413(client, files):
    r = put(client, "team-x", b"\0" * 200_001)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the cap is enforced while streaming
        for _ in range(30):
            yield b"\0" * 10_000
    r = client.put("/v1/adapters/team-x", content=chunks(), headers={**OCTET, **ADMIN})
    assert r.status_code == 413
    r = client.post("/v1/team-x/predict", json={"inputs": ["x" * 5000]}, headers=ADMIN)
    assert r.status_code == 413
    r = put(client, "team-x", files[0], {**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 415
    assert client.get("/v1/adapters").status_code == 401
    assert client.get("/v1/adapters", headers=ADMIN).json()["tasks"] == []
    assert list((client.app.state.server.settings.registry / "tmp").iterdir()) == []


def test_invalid_upload_is_422_naming_the_field_and_stores_nothing(client, files):
    root = client.app.state.server.settings.registry
    r = put(client, "team-x", files[0][:-10])
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_adapter"
    assert r.json()["error"]["field"] == "file"
    assert put(client, "Bad.Name", files[0]).json()["error"]["code"] == "invalid_task_name"
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == []


def test_draining_refuses_new_requests_and_readyz_turns_503(client, files):
    put(client, "team-x", files[0])
    client.app.state.server.begin_drain()
    r = predict(client, "team-x")
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down" and r.headers["retry-after"]
    assert client.get("/readyz").json()["error"]["code"] == "shutting_down"
    assert client.get("/healthz").status_code == 200


def test_metrics_count_uploads_rejections_and_every_predict_status(client, files):
    put(client, "team-x", files[0])
    put(client, "team-x", files[0])
    put(client, "team-x", b"junk")
    put(client, "team-x", b"\0" * 300_000)
    predict(client, "team-x", {})
    client.post("/v1/team-x/predict", json={"texts": ["x"]}, headers=ADMIN)  # pydantic 422
    predict(client, "team-x")
    text = client.get("/metrics", headers=ADMIN).text
    for line in ('adamix_adapter_uploads_total{result="created"} 1.0',
                 'adamix_adapter_uploads_total{result="unchanged"} 1.0',
                 'adamix_adapter_uploads_total{result="invalid"} 1.0',
                 'adamix_adapter_uploads_total{result="too_large"} 1.0',
                 'adamix_rejections_total{reason="unauthorized"} 1.0',
                 'adamix_rejections_total{reason="too_large"} 1.0',
                 'adamix_requests_total{status="401",task="_unauthenticated"} 1.0',  # not the name it sent
                 'adamix_requests_total{status="422",task="team-x"} 1.0',
                 'adamix_requests_total{status="200",task="team-x"} 1.0',
                 'adamix_task_resident{task="team-x",tier="host"} 1.0',
                 "adamix_queue_depth 0.0", "adamix_requests_in_flight 0.0", "adamix_registry_problems 0.0"):
        assert line in text, line


def test_rate_limit_is_per_key_with_retry_after(tmp_path, tiny_backbone_dir, keys_file, files):
    settings = Settings(backbone=tiny_backbone_dir, registry=tmp_path / "reg", demo_adapters=None,
                        api_keys_file=keys_file, rate_limit_per_s=0.01, rate_limit_burst=2)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        assert put(c, "team-x", files[0]).status_code == 201
        assert predict(c, "team-x").status_code == 200
        r = predict(c, "team-x")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert predict(c, "team-x", TENANT).status_code == 200  # another key, another bucket
        assert 'adamix_rejections_total{reason="rate_limited"} 1.0' in c.get("/metrics", headers=ADMIN).text


def test_the_metrics_listener_answers_without_a_key(tmp_path, tiny_backbone_dir, keys_file):
    import httpx

    port = free_port()
    settings = Settings(backbone=tiny_backbone_dir, registry=tmp_path / "reg", demo_adapters=None,
                        api_keys_file=keys_file, metrics_port=port)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        assert c.get("/metrics").status_code == 401  # the API port: a key is needed
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert r.status_code == 200 and "adamix_build_info" in r.text
