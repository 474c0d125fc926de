"""`adamix serve` as a real uvicorn process: predictions, errors, readiness and metrics over HTTP."""
from __future__ import annotations

import concurrent.futures

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_predict_over_http(tiny_server):
    r = httpx.post(f"{tiny_server.url}/v1/sst2/predict", json={"inputs": ["a fine film", "dull"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "sst2" and len(body["predictions"]) == 2
    assert set(body["predictions"][0]["scores"]) == {"negative", "positive"}
    r = httpx.post(f"{tiny_server.url}/v1/rte/predict",
                   json={"inputs": [{"text": "it rains", "text_pair": "the street is wet"}]})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("entailment", "not_entailment")


def test_concurrent_mixed_requests_match_sequential_ones(tiny_server):
    texts = [f"review number {i} is {'good' if i % 2 else 'bad'}" for i in range(16)]
    tasks = ["sst2" if i % 3 else "rte" for i in range(16)]

    def ask(i: int) -> dict:
        body = {"inputs": [texts[i] if tasks[i] == "sst2" else {"text": texts[i], "text_pair": "fine"}]}
        r = httpx.post(f"{tiny_server.url}/v1/{tasks[i]}/predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(16)))
    alone = [ask(i) for i in range(16)]
    for a, b in zip(together, alone):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


@pytest.mark.parametrize("path, body, status, code", [
    ("/v1/unknown/predict", {"inputs": ["x"]}, 404, "task_not_found"),
    ("/v1/sst2/predict", {"inputs": []}, 422, "invalid_input"),
    ("/v1/sst2/predict", {"inputs": [1, 2]}, 422, "invalid_input"),
    ("/v1/sst2/predict", {"inputs": ["x" * 30_000]}, 422, "invalid_input"),
    ("/v1/sst2/predict", {"texts": ["x"]}, 422, "invalid_input"),
    ("/v1/%2e%2e/predict", {"inputs": ["x"]}, 422, "invalid_task_name"),
    ("/v1/..%2Fetc/predict", {"inputs": ["x"]}, 404, "not_found"),  # decoded '/' matches no route
])
def test_errors_over_http(tiny_server, path, body, status, code):
    r = httpx.post(f"{tiny_server.url}{path}", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_malformed_json_is_422(tiny_server):
    r = httpx.post(f"{tiny_server.url}/v1/sst2/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"


def test_ready_and_metrics(tiny_server):
    assert httpx.get(f"{tiny_server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{tiny_server.url}/readyz").status_code == 200
    httpx.post(f"{tiny_server.url}/v1/sst2/predict", json={"inputs": ["x"]})
    text = httpx.get(f"{tiny_server.url}/metrics").text
    assert 'adamix_requests_total{status="200",task="sst2"}' in text
    assert "adamix_batch_size_count" in text and "adamix_build_info{" in text
