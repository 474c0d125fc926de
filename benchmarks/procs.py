"""Server processes for the benchmarks: a free loopback port, and waiting until a started server is ready."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
