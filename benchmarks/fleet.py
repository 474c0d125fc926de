"""Fleet benchmark: two `adamix serve` replicas on one registry behind real nginx, affinity vs round-robin.

    python benchmarks/fleet.py [--tasks 2000] [--zipf 1.1] [--clients 16] [--seconds 20] [--reps 3]
                               [--device-pool-mb 64] [--propagations 40]

Real MiniLM; a registry of `--tasks` synthetic merged adapters (random weights of the file format's exact
shapes: speed and residency do not depend on values); two replicas with one torch thread each and a device
pool smaller than the active set; Zipf-distributed tasks, one SST-2 dev sentence per request. nginx (Debian's)
fronts both replicas twice, with the shipped router config (deploy/router/nginx.conf): as shipped, `hash
$adamix_hash_key consistent` (affinity: a task's requests reach one replica), and without its hash line
(round-robin). The windows alternate (affinity, round-robin, ...); each window's first `--warmup` seconds are not
measured, so the pools settle into the routing under test. Per window: requests/s through the router and the
device-tier hit rate (`adamix_adapter_cache_hits_total{tier="device"}` over lookups, both replicas). Then the
propagation delay of an upload: a new version PUT through replica A, timed until replica B serves it
(polled every 5 ms), `--propagations` times, with `ADAMIX_REGISTRY_POLL_S` at its default 1 s.
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import KEY, ROOT, RawClient, closed_loop, glue_inputs, synthetic_adapter  # noqa: E402
from procs import free_port, wait_ready  # noqa: E402
from stats import paired_ratio  # noqa: E402

from adamix import load_backbone  # noqa: E402
from adamix.registry import AdapterRegistry  # noqa: E402
from server.auth import hash_key  # noqa: E402

AUTH = {"Authorization": f"Bearer {KEY}"}
SHIPPED_ROUTER = ROOT / "deploy" / "router" / "nginx.conf"


def router_conf(work: Path, replicas: list[int], port: int, affinity: bool) -> Path:
    """The shipped router config (deploy/router/nginx.conf) on loopback ports, with or without its hash line."""
    text = SHIPPED_ROUTER.read_text()
    servers = "".join(f"        server 127.0.0.1:{r} max_fails=1 fail_timeout=10s;\n" for r in replicas)
    text = re.sub(r"(?m)^\s*server adamix-serve-\d+:8000[^;]*;\n", "", text)
    text = text.replace("        keepalive 32;", servers + "        keepalive 32;", 1)
    if not affinity:
        text = re.sub(r"(?m)^\s*hash \$adamix_hash_key consistent;\n", "", text)
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};").replace("access_log /dev/stdout adamix;",
                                                                            "access_log off;")
    text = text.replace("/tmp/nginx", str(work / f"nginx-{port}"))
    path = work / f"nginx-{port}.conf"
    path.write_text(text)
    return path


def zipf_tasks(n_tasks: int, s: float, n: int, seed: int = 0) -> list[str]:
    weights = [1 / (k + 1) ** s for k in range(n_tasks)]
    rng = random.Random(seed)
    return [f"t{k}" for k in rng.choices(range(n_tasks), weights, k=n)]


def device_counts(port: int) -> tuple[float, float]:
    """(device-tier hits, device-tier lookups) so far on the replica at `port`."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=AUTH, timeout=30).text
    get = lambda name: sum(float(v) for v in re.findall(rf'^{name}{{tier="device"}} (\S+)$', text, re.M))  # noqa
    return get("adamix_adapter_cache_hits_total"), get("adamix_adapter_cache_lookups_total")


def device_resident(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=AUTH, timeout=30).text
    return int(float(re.search(r'^adamix_adapters_resident{tier="device"} (\S+)$', text, re.M).group(1)))


def start_replica(args, work: Path, port: int, registry: Path, keys: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(work / f"replica-{port}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "adamix.cli", "serve", "--port", str(port), "--registry",
                             str(registry), "--api-keys", str(keys), "--device-pool-mb", str(args.device_pool_mb),
                             "--host-cache-mb", str(args.host_cache_mb), "--no-verify-registry",
                             "--max-adapter-rank", "16", "--max-labels", "2",
                             "--max-wait-ms", "5"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


async def window(port: int, replicas: list[int], tasks: list[str], texts: list[str], args) -> dict:
    clients = [RawClient(port) for _ in range(args.clients)]
    requests = [(t, [texts[i % len(texts)]]) for i, t in enumerate(tasks)]
    offset = random.randrange(len(requests))
    requests = requests[offset:] + requests[:offset]

    async def send(i: int, task: str, inputs: list) -> None:
        status, body = await clients[i].post(f"/v1/{task}/predict", json.dumps({"inputs": inputs}).encode())
        if status != 200:
            raise RuntimeError(f"{status} {body[:200]!r}")

    await closed_loop(send, requests, args.clients, args.warmup)  # settle the pools into this routing
    before = [device_counts(p) for p in replicas]
    result = await closed_loop(send, requests, args.clients, args.seconds)
    after = [device_counts(p) for p in replicas]
    for c in clients:
        c.close()
    resident = [device_resident(p) for p in replicas]
    hits = sum(a[0] - b[0] for a, b in zip(after, before))
    lookups = sum(a[1] - b[1] for a, b in zip(after, before))
    return {**result, "device_hit_rate": hits / lookups if lookups else float("nan"), "resident": resident}


def propagation(a: int, b: int, info, n: int) -> list[float]:
    """Seconds from replica A's upload response until replica B serves the new version."""
    delays = []
    with httpx.Client(headers=AUTH, timeout=60) as http:
        for i in range(n):
            data = synthetic_adapter(info, seed=10_000 + i)
            r = http.put(f"http://127.0.0.1:{a}/v1/adapters/prop", content=data,
                         headers={"Content-Type": "application/octet-stream"})
            r.raise_for_status()
            version, start = r.json()["version"], time.perf_counter()
            deadline = start + 30
            while time.perf_counter() < deadline:
                p = http.post(f"http://127.0.0.1:{b}/v1/prop/predict", json={"inputs": ["x"]})
                if p.status_code == 200 and p.json()["version"] == version:
                    break
                time.sleep(0.005)
            else:
                raise SystemExit(f"replica B did not serve version {version} within 30 s")
            delays.append(time.perf_counter() - start)
            time.sleep(random.uniform(0, 0.5))  # uploads land at random phases of B's poll
    return delays


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--warmup", type=float, default=5)
    p.add_argument("--reps", type=int, default=3, help="affinity/round-robin window pairs")
    p.add_argument("--device-pool-mb", type=float, default=64, help="per replica (slots sized for rank 16)")
    p.add_argument("--host-cache-mb", type=float, default=2048)
    p.add_argument("--propagations", type=int, default=40)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx not found: apt-get install nginx-light (Debian)")

    work = Path(tempfile.mkdtemp(prefix="adamix-fleet-"))
    procs: list[subprocess.Popen] = []
    try:
        _, _, info = load_backbone(None)
        registry = AdapterRegistry(work / "registry", info)
        t0 = time.perf_counter()
        for k in range(args.tasks):
            registry.publish(f"t{k}", synthetic_adapter(info, seed=k))
        print(f"published {args.tasks} adapters in {time.perf_counter() - t0:.0f} s", flush=True)
        keys = work / "keys.json"
        keys.write_text(json.dumps({"keys": [{"name": "bench", "sha256": hash_key(KEY), "admin": True}]}))
        replicas = [free_port(), free_port()]
        procs = [start_replica(args, work, port, work / "registry", keys) for port in replicas]
        for port, proc in zip(replicas, procs):
            asyncio.run(wait_ready(port, proc))
        ports = {"affinity": free_port(), "round_robin": free_port()}
        for mode, port in ports.items():
            conf = router_conf(work, replicas, port, affinity=mode == "affinity")
            procs.append(subprocess.Popen([nginx, "-p", str(work), "-c", str(conf), "-g", "daemon off;"]))
        time.sleep(1)
        if any(proc.poll() is not None for proc in procs[-2:]):
            raise SystemExit("nginx exited (its log is above)")

        texts, _ = glue_inputs()
        tasks = zipf_tasks(args.tasks, args.zipf, 50_000)
        print(f"{len(set(tasks))} distinct tasks in the request stream; Zipf s={args.zipf}", flush=True)
        results: dict[str, list[dict]] = {"affinity": [], "round_robin": []}
        for rep in range(args.reps):
            for mode in (("affinity", "round_robin") if rep % 2 == 0 else ("round_robin", "affinity")):
                r = asyncio.run(window(ports[mode], replicas, tasks, texts, args))
                results[mode].append(r)
                print(f"rep {rep} {mode:11s} {r['rps']:6.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 "
                      f"{r['p99_ms']:7.1f} ms  device hit rate {r['device_hit_rate']:.3f}  resident {r['resident']}  "
                      f"errors {r['errors']}",
                      flush=True)
        for key, name in (("rps", "throughput"), ("device_hit_rate", "device-tier hit rate")):
            ratio = paired_ratio([a[key] for a in results["affinity"]], [b[key] for b in results["round_robin"]])
            print(f"affinity / round-robin {name}: {ratio}")
        delays = propagation(replicas[0], replicas[1], info, args.propagations)
        q = statistics.quantiles(delays, n=100, method="inclusive")  # never past the largest
        print(f"propagation A -> B over {len(delays)} uploads: p50 {q[49] * 1e3:.0f} ms, p99 {q[98] * 1e3:.0f} ms, "
              f"max {max(delays) * 1e3:.0f} ms (poll 1 s)")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


if __name__ == "__main__":
    main()
