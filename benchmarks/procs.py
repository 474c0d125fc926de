"""Server processes for benchmarks and tests: a free loopback port, and waiting until a started server is ready."""
from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import time
from pathlib import Path


_GIVEN: set[int] = set()  # ports this process handed out already, bound yet or not
LOWEST = 20000  # above Ray's worker ports (10002-19999)


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default range starts here


def free_port() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range, never the same one twice in a process.

    A port found by binding port 0 lies in the ephemeral range, where the kernel may hand it to any process that binds
    port 0 before our server binds it. Ray's agents bind their ports that way. On 2026-12-07 one of them took a Ray
    Serve proxy's port in CI. Nothing else takes ports between LOWEST and the start of the ephemeral range."""
    top = _ephemeral_start()
    if top - LOWEST < 1000:  # an unusual ip_local_port_range: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(LOWEST, top)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free 127.0.0.1 port in {LOWEST}-{top - 1} after 1000 tries")


async def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll `GET /readyz` on 127.0.0.1:`port` until it answers 200; exit if `proc` dies or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            ok = (await reader.readline()).split()[1] == b"200"
            writer.close()
            if ok:
                return
        except (OSError, IndexError):
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("server not ready")
