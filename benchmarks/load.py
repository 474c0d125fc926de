"""HTTP load benchmark: concurrent clients against a real `adamix serve` vs the engine in process.

    python benchmarks/load.py [--clients 32] [--seconds 15] [--reps 2] [--synthetic 6]

Real MiniLM, a fresh registry with the shipped demo adapters plus `--synthetic` random adapters (so tasks
mix in every batch), real GLUE dev inputs (SST-2 sentences; STS-B pairs for pair and
regression tasks), one input per request, tasks drawn uniformly at random. Both sides run the same
closed loop (`--clients` concurrent requests) with the same batch settings; the windows alternate
(in-process, HTTP, in-process, HTTP, ...) so load from other processes hits both alike. The HTTP side
goes through everything a client meets: uvicorn, the middleware, bearer-key auth, JSON, the engine.
The HTTP clients are minimal keep-alive HTTP/1.1 connections (asyncio streams) in this process, so
client overhead stays small; it still shares the CPU with the server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamix import AdaMixConfig, AdapterFile, TaskSpec, load_backbone  # noqa: E402
from procs import wait_ready  # noqa: E402
from adamix.adapter_file import adapter_to_bytes, expected_shapes  # noqa: E402
from server.auth import hash_key  # noqa: E402
from server.responses import predictions  # noqa: E402
from server.schemas import TextInput  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.state import ServerState  # noqa: E402

GLUE = ROOT.parent / "shared" / "data" / "glue"
KEY = "amx_bench_admin"


def glue_inputs() -> tuple[list[dict | str], list[dict | str]]:
    """(SST-2 dev sentences, STS-B dev sentence pairs) as predict inputs."""
    singles = [line.split("\t")[0].strip() for line in (GLUE / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    pairs = []
    for line in (GLUE / "STS-B" / "dev.tsv").read_text().splitlines()[1:]:
        cols = line.split("\t")
        pairs.append({"text": cols[7], "text_pair": cols[8]})
    return singles, pairs


def synthetic_adapter(info, seed: int) -> bytes:
    """A merged adapter of the file format's exact shapes (random weights: speed does not depend on values)."""
    config = AdaMixConfig(kind="lora" if seed % 2 else "adapter", bottleneck=16, lora_r=8, num_experts=1)
    task = TaskSpec("classification", ("negative", "positive"), "mean", 128)
    g = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in expected_shapes(config, info, task).items()}
    return adapter_to_bytes(AdapterFile(config, info, task, tensors, {"benchmark": True}))


class RawClient:
    """One keep-alive HTTP/1.1 connection; `post` -> (status, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            return await self._post(path, body)
        except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
            self.close()  # a broken connection is never reused
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                          f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, data


async def closed_loop(send, requests: list[tuple[str, list]], clients: int, seconds: float,
                      server_cpu=time.process_time) -> dict:
    """`clients` workers send `requests` round-robin for `seconds`; -> requests/s, latency percentiles, errors,
    CPU per request of the serving side (`server_cpu()`, seconds) and of this process (clients included)."""
    latencies, errors, stop_at = [], [], time.perf_counter() + seconds
    cpu0, own0 = server_cpu(), time.process_time()

    async def worker(i: int) -> None:
        j = i
        while time.perf_counter() < stop_at:
            task, inputs = requests[j % len(requests)]
            j += clients
            start = time.perf_counter()
            try:
                await send(i, task, inputs)
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # counted, never hidden
                errors.append(repr(exc))

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    cpu, own = server_cpu() - cpu0, time.process_time() - own0
    if len(latencies) < 2:
        raise SystemExit(f"only {len(latencies)} requests succeeded; errors: {errors[:3]}")
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / elapsed, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "ok": len(latencies),
            "errors": len(errors), "error_sample": errors[:3], "cpu_ms": cpu / len(latencies) * 1e3,
            "own_cpu_ms": own / len(latencies) * 1e3}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(registry: Path, keys: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ADAMIX_LOG_LEVEL": "warning",
           "ADAMIX_MAX_WAIT_MS": str(args.max_wait_ms), "ADAMIX_MAX_BATCH_ROWS": str(args.max_batch_rows)}
    return subprocess.Popen([sys.executable, "-m", "adamix.cli", "serve", "--port", str(port), "--registry",
                             str(registry), "--api-keys", str(keys)], cwd=ROOT, env=env)


async def http_get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1].decode()


def mean_batch(metrics_text: str) -> float:
    total = float(re.search(r"^adamix_batch_size_sum (\S+)$", metrics_text, re.M).group(1))
    count = float(re.search(r"^adamix_batch_size_count (\S+)$", metrics_text, re.M).group(1))
    return total / max(count, 1)


async def main(args: argparse.Namespace) -> None:
    from prometheus_client import generate_latest

    workdir = Path(tempfile.mkdtemp(prefix="adamix-load-"))
    registry, keys = workdir / "registry", workdir / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "bench", "sha256": hash_key(KEY), "admin": True}]}))
    settings = Settings(registry=registry, max_batch_rows=args.max_batch_rows, max_wait_ms=args.max_wait_ms)
    state = ServerState(settings)  # in process: installs the demo adapters into the fresh registry
    await state.start()
    if not state.ready:
        raise SystemExit(state.status)
    _, _, info = load_backbone()
    for i in range(args.synthetic):
        state.registry.publish(f"synthetic-{i}", synthetic_adapter(info, seed=i))
    singles, pairs = glue_inputs()
    rng = random.Random(0)
    tasks = {t: state.registry.get(t).active_record.task_type for t in state.registry.tasks()}
    requests = []
    for _ in range(4096):
        task = rng.choice(sorted(tasks))
        requests.append((task, [rng.choice(pairs if tasks[task] in ("regression", "pair_classification")
                                           else singles)]))

    port = args.port
    proc = start_server(registry, keys, port, args)
    try:
        await wait_ready(port, proc)
        conns = [RawClient(port) for _ in range(args.clients)]

        async def via_http(i: int, task: str, inputs: list) -> None:
            status, body = await conns[i].post(f"/v1/{task}/predict", json.dumps({"inputs": inputs}).encode())
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")

        async def in_process(i: int, task: str, inputs: list) -> None:
            text = [TextInput(text=x) if isinstance(x, str) else TextInput(**x) for x in inputs]
            outcome = await state.predict(task, text, f"client{i}")
            predictions(outcome.adapter.task, outcome.outputs)  # shaped as the route does

        rows = {"in-process": [], "http": []}
        sides = (("in-process", in_process, time.process_time), ("http", via_http, lambda: process_cpu(proc.pid)))
        for name, send, cpu in sides:  # warm-up, not recorded
            for conn in conns:
                conn.close()
            await closed_loop(send, requests, args.clients, 3, cpu)
        for rep in range(args.reps):
            for name, send, cpu in sides:
                for conn in conns:  # fresh connections: uvicorn closes ones idle past its keep-alive timeout
                    conn.close()
                result = await closed_loop(send, requests, args.clients, args.seconds, cpu)
                rows[name].append(result)
                print(f"rep {rep} {name:10s} {result['rps']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
                      f"p99 {result['p99_ms']:6.1f} ms  serving CPU {result['cpu_ms']:5.2f} ms/req  "
                      f"(this process {result['own_cpu_ms']:5.2f})  errors {result['errors']} "
                      f"{result['error_sample']}", flush=True)
        server_batch = mean_batch(await http_get(port, "/metrics"))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        await state.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    local_batch = mean_batch(generate_latest(state.metrics.registry).decode())
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms")}
           for name, rs in rows.items()}
    print(f"\ntasks: {len(tasks)} ({', '.join(sorted(tasks))}); clients {args.clients}; max_batch_rows "
          f"{args.max_batch_rows}; max_wait_ms {args.max_wait_ms}; torch threads {torch.get_num_threads()}")
    print("| side | requests/s (median of reps) | p50 ms | p99 ms | serving CPU ms/request | errors | rows/batch |")
    print("|---|---|---|---|---|---|---|")
    for name, batch in (("engine in process", local_batch), ("HTTP (uvicorn, auth, JSON)", server_batch)):
        key = "in-process" if name.startswith("engine") else "http"
        m, errs = med[key], sum(r["errors"] for r in rows[key])
        print(f"| {name} | {m['rps']:.1f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['cpu_ms']:.2f} | {errs} "
              f"| {batch:.1f} |")
    ratios = ", ".join(f"{h['rps'] / i['rps']:.2f}" for h, i in zip(rows["http"], rows["in-process"]))
    cpu_ratio = med["in-process"]["cpu_ms"] / med["http"]["cpu_ms"]
    print(f"| **HTTP / in process** | **{med['http']['rps'] / med['in-process']['rps']:.2f}x** (per rep: {ratios}) "
          f"| | | **{cpu_ratio:.2f}x** (in-process CPU / HTTP server CPU) | | |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--synthetic", type=int, default=6, help="random adapters added to the demo ones")
    parser.add_argument("--max-batch-rows", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--port", type=int, default=8765)
    asyncio.run(main(parser.parse_args()))
