"""A real `adamix serve` process on a free loopback port, over a tiny saved backbone and a tmp registry."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch

from adamix import AdapterFile, load_backbone, task_model_from_adapter
from adamix.registry import AdapterRegistry
from benchmarks.procs import free_port
from tests.conftest import save_tiny_backbone
from tests.server.helpers import adapter_bytes, make_adapter

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               **(env or {})}
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "adamix.cli", "serve", "--port", str(self.port), *args],
                                     cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("serve")
    backbone_dir = save_tiny_backbone(base / "backbone")
    model, _, info = load_backbone(backbone_dir)
    registry = AdapterRegistry(base / "registry", info)
    registry.publish("sst2", adapter_bytes(make_adapter(model, info, r=4, seed=1)))
    registry.publish("rte", adapter_bytes(make_adapter(model, info, kind="lora", r=2, std=0.05, seed=2,
                                                       labels=("entailment", "not_entailment"),
                                                       task_type="pair_classification")))
    server = ServerProcess(["--backbone", str(backbone_dir), "--registry", str(base / "registry")],
                           base / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- servers with API keys (adapter operations)

ADMIN_KEY, TENANT_KEY = "amx_test_admin", "amx_test_tenant"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TENANT = {"Authorization": f"Bearer {TENANT_KEY}"}  # may use tasks matching "team-*"
OCTET = {"Content-Type": "application/octet-stream"}


def write_keys(path: Path, tenants: int = 0) -> Path:
    """ops (admin), team (tenant of team-*), plus `tenants` more tenant keys amx_test_t{i} for "load-*"."""
    from server.auth import hash_key

    keys = [{"name": "ops", "sha256": hash_key(ADMIN_KEY), "admin": True},
            {"name": "team", "sha256": hash_key(TENANT_KEY), "tasks": ["team-*"]}]
    keys += [{"name": f"t{i}", "sha256": hash_key(f"amx_test_t{i}"), "tasks": ["load-*"]} for i in range(tenants)]
    path.write_text(json.dumps({"keys": keys}))
    return path


@pytest.fixture(scope="session")
def ops_backbone(tmp_path_factory):
    """(directory, model, tokenizer, info) of a tiny saved backbone shared by the adapter-operations tests."""
    directory = save_tiny_backbone(tmp_path_factory.mktemp("ops-backbone"))
    return (directory, *load_backbone(directory))


@pytest.fixture(scope="session")
def versions(ops_backbone) -> list[tuple[AdapterFile, bytes]]:
    """Three clearly different versions of one classification adapter (both kinds)."""
    _, model, _, info = ops_backbone
    adapters = [make_adapter(model, info, seed=61, r=4), make_adapter(model, info, kind="lora", r=2, std=0.1, seed=62),
                make_adapter(model, info, seed=63, r=3, std=0.5)]
    return [(a, adapter_bytes(a)) for a in adapters]


@pytest.fixture
def start_server(tmp_path, ops_backbone) -> Iterator[Callable[..., ServerProcess]]:
    """`start_server(registry, tenants=0, **env)`: a ready `adamix serve` with API keys; stopped at teardown."""
    started: list[ServerProcess] = []

    def start(registry: Path, tenants: int = 0, **env: str) -> ServerProcess:
        keys = write_keys(tmp_path / f"keys-{len(started)}.json", tenants)
        server = ServerProcess(["--backbone", str(ops_backbone[0]), "--registry", str(registry),
                                "--api-keys", str(keys)], tmp_path / "server.log",
                               {f"ADAMIX_{k.upper()}": str(v) for k, v in env.items()})
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()
        server._log.close()


def registry_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the registry with its contents (to prove a refused upload wrote nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def offline_scores(ops_backbone, adapter: AdapterFile, texts: list[str]) -> list[list[float]]:
    """Class probabilities of `adapter` applied offline (a fresh backbone + its merged modules + head)."""
    _, model, tokenizer, _ = ops_backbone
    offline = task_model_from_adapter(copy.deepcopy(model), adapter)
    out = []
    for text in texts:
        with torch.no_grad():
            out.append(torch.softmax(offline(**tokenizer(text, return_tensors="pt"))[0], -1).tolist())
    return out
