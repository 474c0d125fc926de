"""Tenant isolation under load: a victim tenant's one-row latency with and without a hostile tenant.

Starts a real `adamix serve` (the embedded MiniLM, the demo adapters, two API keys) on a free loopback port.
Phase 1: the victim alone sends one-row `cola` requests back to back for --seconds. Phase 2: the same, while the
hostile tenant keeps --hostile requests in flight, each the largest the server accepts (64 inputs of long text,
under the 1 MB body cap), and half of its clients hang up after 0.5 s. Prints the victim's p50 / p99 and the
server's RSS growth; `--json-out` writes them. Loops are bounded by --seconds; only the server it started is
stopped, by its pid.

    python benchmarks/fairness.py --seconds 60 --hostile 4
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from procs import free_port  # noqa: E402
from server.auth import hash_key  # noqa: E402

HOSTILE_TEXT = "unbelievably " * 1100  # ~14 KB: 64 of them fill most of the 1 MB body cap
VICTIM_TEXTS = ["The book was written by John.", "The book was wrote by John.", "She sings beautifully.",
                "Him and me went to the store yesterday."]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def victim_loop(url: str, key: str, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        i = 0
        while time.monotonic() < deadline:
            start = time.perf_counter()
            r = client.post(f"{url}/v1/cola/predict", json={"inputs": [VICTIM_TEXTS[i % len(VICTIM_TEXTS)]]})
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise RuntimeError(f"victim got {r.status_code}: {r.text[:200]}")
            i += 1
    return latencies


def hostile_loop(url: str, key: str, stop: threading.Event, hang_up: bool, statuses: list[int]) -> None:
    body = json.dumps({"inputs": [HOSTILE_TEXT] * 64})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    while not stop.is_set():
        try:
            r = httpx.post(f"{url}/v1/sst2/predict", content=body, headers=headers,
                           timeout=0.5 if hang_up else 300)
            statuses.append(r.status_code)
        except httpx.TimeoutException:
            statuses.append(499)  # this client hung up
        if statuses and statuses[-1] in (429, 503):
            time.sleep(0.2)


def summary(latencies: list[float]) -> dict:
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--hostile", type=int, default=4, help="hostile requests kept in flight")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adamix-fairness-"))
    victim_key, hostile_key = (f"amx_{secrets.token_urlsafe(16)}" for _ in range(2))
    keys = {"keys": [{"name": "victim", "sha256": hash_key(victim_key), "tasks": ["cola"]},
                     {"name": "hostile", "sha256": hash_key(hostile_key), "tasks": ["sst2"]}]}
    (work / "keys.json").write_text(json.dumps(keys))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "adamix.cli", "serve", "--port", str(port), "--registry",
                             str(work / "registry"), "--api-keys", str(work / "keys.json")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        victim_loop(url, victim_key, 3)  # warm-up
        rss_start = rss_mib(proc.pid)
        alone = summary(victim_loop(url, victim_key, args.seconds))
        print("victim alone:", alone, flush=True)
        stop, statuses = threading.Event(), []
        threads = [threading.Thread(target=hostile_loop, args=(url, hostile_key, stop, i % 2 == 1, statuses))
                   for i in range(args.hostile)]
        for t in threads:
            t.start()
        time.sleep(2)
        rss_peak = [rss_mib(proc.pid)]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.5):
                rss_peak.append(rss_mib(proc.pid))
        sampler = threading.Thread(target=sample)
        sampler.start()
        loaded = summary(victim_loop(url, victim_key, args.seconds))
        stop.set()
        for t in threads:
            t.join(timeout=330)
        sampling.set()
        sampler.join()
        print("victim with a hostile tenant:", loaded, flush=True)
        result = {"victim_alone": alone, "victim_with_hostile": loaded,
                  "hostile_in_flight": args.hostile, "hostile_statuses": {str(s): statuses.count(s)
                                                                          for s in sorted(set(statuses))},
                  "rss_mib_start": round(rss_start), "rss_mib_peak": round(max(rss_peak)),
                  "rss_growth_mib": round(max(rss_peak) - rss_start), "seconds_per_phase": args.seconds,
                  "server_cpu_threads": os.environ.get("OMP_NUM_THREADS", "default")}
        print(json.dumps(result, indent=1))
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=1))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


if __name__ == "__main__":
    main()
