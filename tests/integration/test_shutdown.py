"""Faults against a real server: SIGTERM under load drains cleanly; SIGKILL mid-upload leaves the old version."""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ADMIN, OCTET

pytestmark = pytest.mark.slow


def _wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _upload_parts(registry: Path) -> list[Path]:
    return list((registry / "tmp").glob("upload-*"))


def _slow_body(data: bytes, hold: threading.Event):
    """The first half of `data`, then wait for `hold`, then the rest: an upload that stays in flight."""
    yield data[:len(data) // 2]
    hold.wait(20)
    yield data[len(data) // 2:]


def test_sigterm_under_load_completes_accepted_requests_and_refuses_new_ones(tmp_path, start_server, versions):
    registry = tmp_path / "reg"
    server = start_server(registry, drain_timeout_s=30, max_wait_ms=20)
    admin = httpx.Client(base_url=server.url, headers=ADMIN, timeout=30)
    assert admin.put("/v1/adapters/team-x", content=versions[0][1], headers=OCTET).status_code == 201
    results: list[tuple[str, object]] = []

    def predict_until_refused() -> None:
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as client:
            while True:
                try:
                    r = client.post("/v1/team-x/predict", json={"inputs": ["a fine film", "dull"]})
                except httpx.TransportError as exc:
                    results.append(("transport", repr(exc)))
                    return
                results.append(("http", (r.status_code, r.json().get("error", {}).get("code"))))
                if r.status_code != 200:
                    return

    hold, upload = threading.Event(), {}

    def slow_upload() -> None:
        with httpx.Client(base_url=server.url, headers={**ADMIN, **OCTET}, timeout=60) as client:
            upload["response"] = client.put("/v1/adapters/team-x", content=_slow_body(versions[1][1], hold))

    clients = [threading.Thread(target=predict_until_refused) for _ in range(4)]
    uploader = threading.Thread(target=slow_upload)
    for t in [*clients, uploader]:
        t.start()
    try:
        _wait_for(lambda: _upload_parts(registry), what="the upload to be accepted")
        time.sleep(0.3)  # load keeps flowing
        server.proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, what="/readyz to turn 503")
        r = httpx.post(f"{server.url}/v1/team-x/predict", json={"inputs": ["x"]}, headers=ADMIN)
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down" and r.headers["retry-after"]
        for c in clients:
            c.join(timeout=30)
        assert server.proc.poll() is None  # the accepted upload is still in flight: the server waits for it
    finally:
        hold.set()
        uploader.join(timeout=30)
        admin.close()
    assert upload["response"].status_code == 201, upload["response"].text  # accepted before SIGTERM: completed
    assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    outcomes = [o for kind, o in results if kind == "http"]
    assert [r for r in results if r[0] == "transport"] == []  # nobody was cut off mid-request
    assert set(outcomes) <= {(200, None), (503, "shutting_down")}
    assert outcomes.count((503, "shutting_down")) == len(clients)  # every client was refused cleanly in the end
    assert "draining" in server.log()


def test_sigkill_mid_upload_then_restart_serves_the_old_version(tmp_path, start_server, versions):
    registry = tmp_path / "reg"
    server = start_server(registry)
    old = httpx.put(f"{server.url}/v1/adapters/team-x", content=versions[0][1], headers={**ADMIN, **OCTET}).json()
    hold = threading.Event()

    def slow_upload() -> None:
        try:
            httpx.put(f"{server.url}/v1/adapters/team-x", content=_slow_body(versions[1][1], hold),
                      headers={**ADMIN, **OCTET}, timeout=30)
        except httpx.HTTPError:
            pass  # the server died under it

    uploader = threading.Thread(target=slow_upload)
    uploader.start()
    try:
        _wait_for(lambda: _upload_parts(registry), what="the upload to reach the disk")
        server.proc.kill()
        server.proc.wait(timeout=10)
    finally:
        hold.set()
        uploader.join(timeout=30)
    assert _upload_parts(registry)  # the half-written upload is on disk...
    restarted = start_server(registry)
    info = httpx.get(f"{restarted.url}/v1/adapters/team-x", headers=ADMIN).json()
    assert info["active"] == old["version"] and [v["version"] for v in info["versions"]] == [old["version"]]
    r = httpx.post(f"{restarted.url}/v1/team-x/predict", json={"inputs": ["x"]}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["version"] == old["version"]  # ...and never served
    assert "adamix_registry_problems 1.0" in httpx.get(f"{restarted.url}/metrics", headers=ADMIN).text
    assert "upload-" in restarted.log().split("Started server process")[-1]  # reported at start-up
