"""`adamix serve --engine ray` on a real local Ray cluster (`ray start --head`, every listener on 127.0.0.1):
the same client suite as a single process, task affinity, and a scale-out from 1 to 2 replicas under traffic."""
from __future__ import annotations

import collections
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import httpx
import pytest

from benchmarks.procs import free_port
from server.serve_cli import LOOPBACK_RAY_ENV
from tests.integration.conftest import ADMIN, OCTET, ROOT, TENANT, ServerProcess, registry_snapshot, write_keys
from tests.server.helpers import adapter_bytes, assert_same, make_adapter

pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytestmark = pytest.mark.slow

RAY_ENV = {**os.environ, **LOOPBACK_RAY_ENV, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "RAY_AUTH_MODE": "token",  # Ray's token auth, as `ray start` enables it by default
           # Ray kills workers when the node's memory passes 95%: on a shared test machine that is other processes'
           "RAY_memory_monitor_refresh_ms": "0"}
DEPLOY_TIMEOUT_S = 420  # replicas import torch and load the backbone; a loaded 2-core machine is slow


class RayCluster:
    """`ray start --head --block` in its own session; stopped by signalling that process group only."""

    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="amx-ray-", dir="/tmp")  # Ray's socket paths must stay short
        self.log = open(base / "ray.log", "ab")
        token = base / "ray-token"  # this cluster's own token: every client below must present it
        token.write_text(secrets.token_hex(32))
        self.env = {**RAY_ENV, "RAY_AUTH_TOKEN_PATH": str(token)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address",
             "127.0.0.1", "--port", str(self.port), "--num-cpus", "2", "--include-dashboard", "false",
             "--disable-usage-stats", "--temp-dir", self.temp_dir],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (base / "ray.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("the Ray head did not come up in 120 s")

    def pids(self) -> set[int]:
        """Every live process of the cluster (its process group)."""
        out = subprocess.run(["ps", "-o", "pid=", "--sid", str(self.proc.pid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def stop(self) -> None:
        """`ray start --block` stops its cluster on SIGTERM; whatever is left of the group is killed after."""
        for kill, sig, wait in ((os.kill, signal.SIGTERM, 40), (os.killpg, signal.SIGKILL, 10)):
            try:
                kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while (self.proc.poll() is None or self.pids()) and time.monotonic() < deadline:
                time.sleep(0.5)  # poll() reaps the leader, so it does not linger as a zombie in pids()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray = RayCluster(tmp_path_factory.mktemp("ray"))
    try:
        yield ray
    finally:
        ray.stop()


@pytest.fixture(scope="module")
def fleet(cluster, ops_backbone, tmp_path_factory):
    """A registry with two tasks, API keys, and `deploy(replicas)` of `adamix serve --engine ray` onto the cluster."""
    base = tmp_path_factory.mktemp("ray-fleet")
    _, model, _, info = ops_backbone
    registry, keys = base / "registry", write_keys(base / "keys.json")
    from adamix.registry import AdapterRegistry

    store = AdapterRegistry(registry, info)

    def publish(tasks: tuple[str, ...], seed: int) -> None:
        """A random rank-4 adapter per task, published into the fleet's registry."""
        for i, task in enumerate(tasks):
            store.publish(task, adapter_bytes(make_adapter(model, info, r=4, seed=seed + i)))

    publish(("team-a", "team-b", "ops-c"), seed=70)
    port = free_port()
    args = ["--backbone", str(ops_backbone[0]), "--registry", str(registry), "--api-keys", str(keys),
            "--registry-poll-s", "0.2"]

    def deploy(replicas: int) -> None:
        """Deploy or resize the application; returns once Ray reports it healthy at that size."""
        done = subprocess.run([sys.executable, "-m", "adamix.cli", "serve", "--engine", "ray", "--replicas",
                               str(replicas), "--ray-address", cluster.address, "--ray-replica-cpus", "0.5",
                               "--port", str(port), *args],
                              cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=DEPLOY_TIMEOUT_S)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    return types.SimpleNamespace(url=f"http://127.0.0.1:{port}", deploy=deploy, publish=publish, args=args,
                                 registry=registry, base=base)


def _predict(url: str, task: str, headers=ADMIN, texts=("a fine film", "dull")) -> httpx.Response:
    return httpx.post(f"{url}/v1/{task}/predict", json={"inputs": list(texts)}, headers=headers, timeout=60)


def _served(url: str, task: str) -> str | None:
    r = _predict(url, task)
    return r.json()["version"] if r.status_code == 200 else None


def test_scale_from_one_to_two_replicas_fails_no_request(fleet):
    fleet.deploy(1)
    failures: list[str] = []
    replicas: collections.Counter = collections.Counter()
    stop = threading.Event()

    def client(task: str) -> None:
        for _ in range(100_000):  # bounded; stopped by `stop` long before
            if stop.is_set():
                return
            try:
                r = _predict(fleet.url, task)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    replicas[r.headers["x-adamix-replica"]] += 1
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(t,)) for t in ("team-a", "team-b", "ops-c", "team-a")]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        fleet.deploy(2)  # Ray rolls the application over to its new size while the clients keep going
        # requests that name no task go to either replica (Ray's power of two choices): both answer
        answered = {httpx.get(f"{fleet.url}/v1/adapters", headers=ADMIN, timeout=60).headers.get("x-adamix-replica")
                    for _ in range(12)}
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:5]
    assert sum(replicas.values()) > 20
    assert len(answered) == 2, (answered, replicas)


def test_the_same_client_suite_as_one_process(fleet, ops_backbone, versions):
    fleet.deploy(2)
    single = ServerProcess(fleet.args, fleet.base / "single.log")  # the same registry and keys, one process
    try:
        single.wait_ready()
        big = {"inputs": ["x" * 1000] * 1500}
        cases = [("POST", "/v1/team-a/predict", TENANT, {"inputs": ["a fine film", "dull"]}),
                 ("POST", "/v1/team-a/predict", {}, {"inputs": ["x"]}),  # 401
                 ("POST", "/v1/team-a/predict", {"Authorization": "Bearer amx_wrong"}, {"inputs": ["x"]}),  # 401
                 ("POST", "/v1/ops-c/predict", TENANT, {"inputs": ["x"]}),  # 403: not the tenant's task
                 ("POST", "/v1/nope/predict", ADMIN, {"inputs": ["x"]}),  # 404
                 ("POST", "/v1/Bad!Name/predict", ADMIN, {"inputs": ["x"]}),  # 422 (or 404): the name gate
                 ("POST", "/v1/team-a/predict", ADMIN, {"inputs": [3]}),  # 422
                 ("POST", "/v1/team-a/predict", ADMIN, {"inputs": []}),  # 422
                 ("POST", "/v1/team-a/predict", ADMIN, big),  # 413
                 ("GET", "/v1/adapters", TENANT, None),
                 ("GET", "/v1/adapters/team-b", TENANT, None),
                 ("DELETE", "/v1/adapters/team-b", TENANT, None),  # 403: admin scope
                 ("GET", "/healthz", {}, None)]
        for method, path, headers, body in cases:
            a = httpx.request(method, fleet.url + path, headers=headers, json=body, timeout=60)
            b = httpx.request(method, single.url + path, headers=headers, json=body, timeout=60)
            assert a.status_code == b.status_code, (path, a.text, b.text)
            assert len(a.headers.get_list("x-request-id")) == 1, a.headers  # Ray's proxy and the app: one id
            if path.endswith("predict") and a.status_code == 200:
                for x, y in zip(a.json()["predictions"], b.json()["predictions"]):
                    assert_same(x, y)
            elif path == "/v1/adapters":
                assert [t["task"] for t in a.json()["tasks"]] == [t["task"] for t in b.json()["tasks"]]
            elif a.status_code >= 400:
                assert a.json()["error"]["code"] == b.json()["error"]["code"], (path, a.text, b.text)

        r = _predict(fleet.url, "team-a", headers={**TENANT, "X-Request-Id": "amx-test-1"})
        assert r.headers.get_list("x-request-id") == ["amx-test-1"]  # the client's id, through Ray, once

        # an upload through Ray (admin only) is served by the single process too: the shared registry
        before = registry_snapshot(fleet.registry)
        r = httpx.put(f"{fleet.url}/v1/adapters/team-new", content=versions[0][1], headers={**TENANT, **OCTET})
        assert r.status_code == 403 and registry_snapshot(fleet.registry) == before
        r = httpx.put(f"{fleet.url}/v1/adapters/team-new", content=versions[0][1], headers={**ADMIN, **OCTET},
                      timeout=60)
        assert r.status_code == 201, r.text
        version = r.json()["version"]
        # Every replica serves it within the registry poll (0.2 s here), whichever replica Ray picks
        for url in (fleet.url, single.url):
            deadline = time.monotonic() + 10
            while _served(url, "team-new") != version and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _served(url, "team-new") == version, url
    finally:
        single.stop()


def test_a_tasks_requests_go_to_one_replica(fleet):
    fleet.deploy(2)
    # Tasks no earlier test has routed: the tests before this one sent concurrent traffic, which may have spread
    # their tasks over both replicas (as Ray spreads a hot task), and Ray never takes that back.
    tasks = ("aff-a", "aff-b", "aff-c")
    fleet.publish(tasks, seed=80)
    # A task's first request makes one replica hold it. Ray's routers learn that through its controller, and
    # until they do (about 0.1 s idle; seconds on a loaded 2-core machine, beyond Ray's 1 to 2 s matching wait) a
    # second request may go to another replica, which then holds the task too. This checks the steady state,
    # once each task's first replica is known to every router.
    time.sleep(2)  # every replica sees the new tasks within the registry poll (0.2 s)
    for task in tasks:
        r = _predict(fleet.url, task)
        assert r.status_code == 200, r.text
    time.sleep(5)
    seen = {t: collections.Counter() for t in tasks}
    for _ in range(15):
        for task, counter in seen.items():
            r = _predict(fleet.url, task)
            assert r.status_code == 200, r.text
            counter[r.headers["x-adamix-replica"]] += 1
    for task, counter in seen.items():
        assert counter.most_common(1)[0][1] >= 12, (task, counter)  # at least 80% on one replica


def test_every_ray_listener_is_on_loopback(cluster, fleet):
    fleet.deploy(2)
    pids = cluster.pids()
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    listeners = [line.split() for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]
    assert listeners, out
    exposed = [(f[3], f[-1]) for f in listeners
               if not f[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:"))]
    assert not exposed, exposed
