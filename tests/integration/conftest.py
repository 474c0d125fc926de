"""A real `adamix serve` process on a free loopback port, over a tiny saved backbone and a tmp registry."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adamix import load_backbone
from server.registry import AdapterRegistry
from tests.server.helpers import adapter_bytes, make_adapter, save_tiny_backbone

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), *args],
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
