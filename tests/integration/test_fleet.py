"""Two real `adamix serve` processes on one registry directory: every change through either is served by both."""
from __future__ import annotations

import threading
import time

import httpx

from tests.integration.conftest import ADMIN, OCTET


def _until(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def _served_version(server, task: str) -> str | None:
    r = httpx.post(f"{server.url}/v1/{task}/predict", json={"inputs": ["a fine film"]}, headers=ADMIN, timeout=30)
    return r.json()["version"] if r.status_code == 200 else None


def test_uploads_rollbacks_and_deletes_through_either_replica_reach_both(tmp_path, start_server, versions):
    registry = tmp_path / "reg"
    a = start_server(registry, registry_poll_s=0.2)
    b = start_server(registry, registry_poll_s=0.2)
    put = lambda server, task, data: httpx.put(f"{server.url}/v1/adapters/{task}", content=data,  # noqa: E731
                                                headers={**ADMIN, **OCTET}, timeout=60)
    v1 = put(a, "team-x", versions[0][1]).json()["version"]
    _until(lambda: _served_version(b, "team-x") == v1, "b serves the task uploaded through a")
    v2 = put(b, "team-x", versions[1][1]).json()["version"]
    _until(lambda: _served_version(a, "team-x") == v2, "a serves the new version uploaded through b")
    r = httpx.post(f"{a.url}/v1/team-x/predict", json={"inputs": ["x"]}, headers=ADMIN)
    assert int(r.headers["x-adamix-registry-generation"]) >= 2
    assert httpx.post(f"{a.url}/v1/adapters/team-x/activate", json={"version": v1}, headers=ADMIN).status_code == 200
    _until(lambda: _served_version(b, "team-x") == v1, "b serves the rollback made through a")

    # the same bytes under two tasks, through different replicas; deleting one must not take the other's blob
    put(a, "team-y", versions[2][1])
    put(b, "team-z", versions[2][1])
    _until(lambda: _served_version(b, "team-y"), "b knows team-y")
    assert httpx.delete(f"{b.url}/v1/adapters/team-z", headers=ADMIN).status_code == 204
    _until(lambda: _served_version(a, "team-z") is None, "a forgets the task deleted through b")
    assert _served_version(a, "team-y") and _served_version(b, "team-y")


def test_concurrent_uploads_to_one_task_through_both_replicas_all_survive(tmp_path, start_server, versions):
    registry = tmp_path / "reg"
    a = start_server(registry, registry_poll_s=0.2)
    b = start_server(registry, registry_poll_s=0.2)
    created: list[str] = []

    def upload(server, data):
        r = httpx.put(f"{server.url}/v1/adapters/team-c", content=data, headers={**ADMIN, **OCTET}, timeout=60)
        assert r.status_code in (200, 201), r.text
        created.append(r.json()["version"])

    threads = [threading.Thread(target=upload, args=(server, data))
               for server, (_, data) in zip((a, b, a), versions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(created) == 3

    def agree():
        infos = [httpx.get(f"{s.url}/v1/adapters/team-c", headers=ADMIN).json() for s in (a, b)]
        same = infos[0]["active"] == infos[1]["active"] and len(infos[0]["versions"]) == len(infos[1]["versions"])
        return same and {v["version"] for v in infos[0]["versions"]} == set(created)
    _until(agree, "both replicas list all three versions and the same active one")


def test_hot_swap_soak_across_replicas_fails_no_request(tmp_path, start_server, versions):
    """Clients on three replicas while versions are swapped through random ones: every answer is 200 and comes
    from one of the uploaded versions."""
    import random

    registry = tmp_path / "reg"
    replicas = [start_server(registry, registry_poll_s=0.2) for _ in range(3)]
    uploaded = []
    for (_, data), server in zip(versions, replicas):
        r = httpx.put(f"{server.url}/v1/adapters/team-s", content=data, headers={**ADMIN, **OCTET}, timeout=60)
        uploaded.append(r.json()["version"])
    _until(lambda: all(_served_version(s, "team-s") == uploaded[-1] for s in replicas), "all serve the last upload")
    stop = threading.Event()
    answers: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def client(server):
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/team-s/predict", json={"inputs": ["a fine film"]})
                with lock:
                    answers.append((r.status_code, r.json().get("version") if r.status_code == 200 else r.text))

    clients = [threading.Thread(target=client, args=(s,)) for s in replicas]
    for t in clients:
        t.start()
    rng = random.Random(0)
    try:
        for i in range(20):  # a swap through a random replica every 0.3 s
            server = rng.choice(replicas)
            r = httpx.post(f"{server.url}/v1/adapters/team-s/activate", json={"version": uploaded[i % 3]},
                           headers=ADMIN, timeout=30)
            assert r.status_code == 200, r.text
            time.sleep(0.3)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=60)
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert {version for _, version in answers} <= set(uploaded)
