"""A real server under overload (only 429/503 beyond capacity) and its auth on every route of its OpenAPI."""
from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from tests.integration.conftest import ADMIN, OCTET, TENANT

pytestmark = pytest.mark.slow
PUBLIC = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}  # with keys, /metrics needs a metrics key
TENANT_READABLE = {  # any key; a listing shows only the key's own tasks (and the backbone, which every key may use)
    ("get", "/v1/adapters"): lambda body: [t["task"] for t in body["tasks"]] == ["team-a"],
    ("get", "/v1/models"): lambda body: [m["id"] for m in body["data"]][1:] == ["team-a"],
    ("get", "/v2"): lambda body: body["name"] == "adamix-serve",
}
OIP_TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}{{{want}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_overload_answers_only_429_or_503_and_accepted_requests_complete(tmp_path, start_server, versions):
    server = start_server(tmp_path / "reg", tenants=8, max_queue_requests=2, max_batch_rows=4, max_wait_ms=20,
                          rate_limit_per_s=10, rate_limit_burst=10)
    assert httpx.put(f"{server.url}/v1/adapters/load-a", content=versions[0][1],
                     headers={**ADMIN, **OCTET}).status_code == 201
    results: list[tuple[int, str | None, float]] = []
    lock = threading.Lock()

    def hammer(key: str) -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for _ in range(25):
                start = time.perf_counter()
                r = client.post("/v1/load-a/predict", json={"inputs": ["a fine film", "dull"]})
                with lock:
                    results.append((r.status_code, r.headers.get("retry-after"), time.perf_counter() - start))

    threads = [threading.Thread(target=hammer, args=(f"amx_test_t{i % 8}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    statuses = [s for s, _, _ in results]
    assert len(results) == 16 * 25 and set(statuses) <= {200, 429, 503}
    assert all(retry and int(retry) >= 1 for s, retry, _ in results if s != 200)
    assert statuses.count(200) > 0 and statuses.count(429) > 0 and statuses.count(503) > 0
    assert max(t for s, _, t in results if s == 200) < 30  # generous: accepted requests are never starved
    text = httpx.get(f"{server.url}/metrics", headers=ADMIN).text
    for status, reason in ((429, "rate_limited"), (503, "overloaded")):
        assert _metric(text, "adamix_requests_total", task="load-a", status=str(status)) == statuses.count(status)
        assert _metric(text, "adamix_rejections_total", reason=reason) == statuses.count(status)
    assert _metric(text, "adamix_queue_depth") == 0 and _metric(text, "adamix_requests_in_flight") == 0


def _call(client: httpx.Client, method: str, path: str, headers: dict) -> httpx.Response:
    """A well-formed request to one OpenAPI route, for a task outside the tenant's patterns."""
    url = path.replace("{task}", "other-task").replace("{version}", "0" * 16)
    if method == "put":
        return client.put(url, content=b"\0" * 16, headers={**headers, **OCTET})
    if method == "post":
        body = ({"version": "0" * 16} if path.endswith("/activate") else OIP_TEXT if path.endswith("/infer")
                else {"model": "other-task", "input": "x"} if path == "/v1/embeddings" else {"inputs": ["x"]})
        return client.post(url, json=body, headers=headers)
    return client.request(method.upper(), url, headers=headers)


def _refused(r: httpx.Response, status: int, code: str) -> bool:
    """The status, and the code where the protocol's error shape carries one (OIP's is the message only)."""
    error = r.json()["error"]
    return r.status_code == status and (isinstance(error, str) or error["code"] == code)


def test_every_non_public_route_is_401_without_a_key_and_403_outside_a_tenants_tasks(tmp_path, start_server,
                                                                                     versions):
    server = start_server(tmp_path / "reg", auth_failures_burst=1000)  # this test fails auth on purpose, often
    client = httpx.Client(base_url=server.url, timeout=30)
    assert client.put("/v1/adapters/other-task", content=versions[0][1], headers={**ADMIN, **OCTET}).status_code == 201
    assert client.put("/v1/adapters/team-a", content=versions[0][1], headers={**ADMIN, **OCTET}).status_code == 201
    routes = [(m, p) for p, ops in client.get("/openapi.json").json()["paths"].items() for m in ops]
    assert {p for _, p in routes} >= PUBLIC | {"/v1/{task}/predict", "/v1/adapters/{task}"}
    checked = 0
    for method, path in routes:
        if path in PUBLIC:
            assert _call(client, method, path, {}).status_code == 200, path
            continue
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic b3BzOm9wcw=="}):
            r = _call(client, method, path, headers)
            assert _refused(r, 401, "unauthorized"), (method, path, r.text)
        r = _call(client, method, path, TENANT)
        if (method, path) in TENANT_READABLE:
            assert r.status_code == 200 and TENANT_READABLE[method, path](r.json()), (method, path, r.text)
        else:
            assert _refused(r, 403, "forbidden"), (method, path, r.text)
        checked += 1
    assert checked >= 6
    assert client.get("/v1/adapters/other-task", headers=ADMIN).json()["active"]  # nothing changed it
    client.close()
