#!/usr/bin/env python3
"""Real traffic through the router to the composed replicas, then Prometheus must show it (stdlib only;
.ci/deploy-check e2e).

  ADAMIX_API_KEY=<admin key> e2e_traffic.py ROUTER_URL PROMETHEUS_URL ADAPTER_FILE REPLICA_URL...

Through the router: a prediction without the key is refused (401) and the router passes X-Request-Id; then, with
the key, predictions for the five demo tasks (concurrently, so batches mix tasks), one invalid request (422), and
one upload of ADAPTER_FILE under a new task name, which then serves. Then polls Prometheus's HTTP API until
`adamix_requests_total` counts every request sent, checks that every replica's scrape target is up and the alert
rules are loaded and healthy, and that each task's requests all landed on one replica (the consistent hash). Last,
each replica, asked directly, serves the uploaded version at the same registry generation: an upload through the
router reaches the whole fleet through the shared registry. Only loopback URLs are accepted.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEMO_INPUTS = {
    "sst2": ["a gripping, funny and humane film", "the plot is thin and the jokes fall flat"],
    "cola": ["The book was written by John.", "Book the John written was by."],
    "qnli": [{"text": "Where is the Eiffel Tower?", "text_pair": "The Eiffel Tower is in Paris."}],
    "nli": [{"text": "The Eiffel Tower is in Paris.", "text_pair": "The Eiffel Tower is located in France."}],
    "stsb": [{"text": "A man is playing a guitar.", "text_pair": "A person plays an instrument."}],
}
UPLOADED = "sst2-uploaded"
ROUNDS = 4
POLL_SECONDS = 90  # the first scrape lands ~6 s after start; the target waits for the server to be ready
PROPAGATION_SECONDS = 20  # a replica applies another's write within ADAMIX_REGISTRY_POLL_S (1 s)


def is_loopback(host: str | None) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def call(method: str, url: str, body: bytes | None = None, content_type: str = "application/json",
         key: str | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, response headers with lower-case names)."""
    if not is_loopback(urllib.parse.urlsplit(url).hostname):
        raise SystemExit(f"refusing a non-loopback URL: {url}")
    headers = {"content-type": content_type} | ({"authorization": f"Bearer {key}"} if key else {}) | (headers or {})
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), {k.lower(): v for k, v in exc.headers.items()}


API_KEY = os.environ.get("ADAMIX_API_KEY")


def predict(server: str, task: str, inputs: list, key: str | None = API_KEY,
            headers: dict | None = None) -> tuple[int, dict, dict]:
    return call("POST", f"{server}/v1/{task}/predict", json.dumps({"inputs": inputs}).encode(), key=key,
                headers=headers)


def check_auth(router: str) -> None:
    request_id = "deploy-check-no-key"
    status, body, headers = predict(router, "sst2", DEMO_INPUTS["sst2"], key=None, headers={"x-request-id": request_id})
    if status != 401:
        raise SystemExit(f"a prediction without an API key should be refused with 401, got {status}: {body}")
    if headers.get("x-request-id") != request_id:
        raise SystemExit(f"the router should pass X-Request-Id {request_id!r} back, got {headers.get('x-request-id')!r}")
    print(f"  no API key -> 401 (X-Request-Id {request_id} passed through the router)")


def send_predictions(server: str) -> int:
    """Every demo task, ROUNDS times, all tasks of a round at once; returns the number of 200s."""
    with ThreadPoolExecutor(max_workers=len(DEMO_INPUTS)) as pool:
        for round_ in range(ROUNDS):
            futures = {task: pool.submit(predict, server, task, inputs) for task, inputs in DEMO_INPUTS.items()}
            for task, future in futures.items():
                status, body, _ = future.result()
                if status != 200 or len(body.get("predictions", [])) != len(DEMO_INPUTS[task]):
                    raise SystemExit(f"predict {task}: HTTP {status}: {body}")
                if round_ == 0:
                    print(f"  {task}: version {body['version']}: {json.dumps(body['predictions'])[:160]}")
    return ROUNDS * len(DEMO_INPUTS)


def send_invalid(server: str) -> None:
    status, body, _ = predict(server, "sst2", [])
    if status != 422:
        raise SystemExit(f"an empty `inputs` should be refused with 422, got {status}: {body}")
    print(f"  empty inputs -> 422 {body['error']['code']}")


def upload(server: str, adapter: Path) -> str:
    """PUT ADAPTER_FILE as UPLOADED, then predict with it; returns the new version."""
    status, body, _ = call("PUT", f"{server}/v1/adapters/{UPLOADED}", adapter.read_bytes(), "application/octet-stream",
                           key=API_KEY)
    if status != 201:
        raise SystemExit(f"upload of {adapter.name}: HTTP {status}: {body}")
    print(f"  uploaded {adapter.name} as {UPLOADED} -> HTTP {status}, version {body['version']}")
    version = body["version"]
    status, body, _ = predict(server, UPLOADED, DEMO_INPUTS["sst2"])
    if status != 200 or body.get("version") != version:
        raise SystemExit(f"predict with the uploaded adapter: HTTP {status}: {body}")
    return version


def prometheus(base: str, path: str, **params: str) -> dict:
    status, body, _ = call("GET", f"{base}{path}?{urllib.parse.urlencode(params)}")
    if status != 200 or body.get("status") != "success":
        raise SystemExit(f"Prometheus {path} {params}: HTTP {status}: {body}")
    return body["data"]


def wait_for_requests(base: str, expected: int) -> None:
    """Poll until Prometheus has scraped a count of successful predictions that covers all of ours."""
    query = 'sum(adamix_requests_total{status="200"})'
    start, seen = time.monotonic(), None
    while time.monotonic() - start < POLL_SECONDS:
        result = prometheus(base, "/api/v1/query", query=query)["result"]
        seen = float(result[0]["value"][1]) if result else None
        if seen is not None and seen >= expected:
            print(f"  Prometheus: {query} = {seen:g} (>= {expected} sent) after {time.monotonic() - start:.0f}s")
            return
        time.sleep(2)
    raise SystemExit(f"Prometheus never counted our {expected} predictions within {POLL_SECONDS}s (last: {seen})")


def check_targets_and_rules(base: str, replicas: int) -> None:
    targets = [t for t in prometheus(base, "/api/v1/targets")["activeTargets"] if t["labels"]["job"] == "adamix-serve"]
    up = sorted(t["labels"]["instance"] for t in targets if t["health"] == "up")
    if len(targets) != replicas or len(up) != replicas:
        raise SystemExit(f"expected {replicas} adamix-serve scrape targets, all up: {targets}")
    rules = [r for g in prometheus(base, "/api/v1/rules")["groups"] for r in g["rules"] if r["type"] == "alerting"]
    bad = [r["name"] for r in rules if r["health"] != "ok"]
    if len(rules) < 6 or bad:
        raise SystemExit(f"alert rules: {len(rules)} loaded, unhealthy: {bad}")
    print(f"  Prometheus: adamix-serve targets up: {', '.join(up)}; {len(rules)} alert rules loaded, all healthy")


def check_affinity(base: str) -> None:
    """Every task's requests (all sent through the router) were counted by exactly one replica."""
    tasks = "|".join([*DEMO_INPUTS, UPLOADED])
    query = f'sum by (task, instance) (adamix_requests_total{{task=~"{tasks}"}}) > 0'
    where: dict[str, list[str]] = {}
    for series in prometheus(base, "/api/v1/query", query=query)["result"]:
        where.setdefault(series["metric"]["task"], []).append(series["metric"]["instance"])
    if sorted(where) != sorted([*DEMO_INPUTS, UPLOADED]) or any(len(i) != 1 for i in where.values()):
        raise SystemExit(f"each task's requests should all land on one replica: {where}")
    used = sorted({i[0] for i in where.values()})
    print(f"  consistent hash: each task on one replica ({', '.join(f'{t} -> {i[0]}' for t, i in where.items())};"
          f" {len(used)} replica(s) used)")


def check_every_replica_serves(replicas: list[str], version: str) -> None:
    """Each replica, asked directly, answers UPLOADED with `version`, all at one registry generation."""
    deadline, answers = time.monotonic() + PROPAGATION_SECONDS, {}
    for url in replicas:
        while True:
            status, body, headers = predict(url, UPLOADED, DEMO_INPUTS["sst2"])
            answers[url] = (status, body.get("version"), headers.get("x-adamix-registry-generation"))
            if answers[url][:2] == (200, version) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    generations = {a[2] for a in answers.values()}
    if any(a[:2] != (200, version) for a in answers.values()) or len(generations) != 1 or None in generations:
        raise SystemExit(f"every replica should serve {UPLOADED} version {version} at one registry generation: "
                         f"{answers}")
    print(f"  every replica serves the upload: {', '.join(answers)} -> version {version}, "
          f"registry generation {generations.pop()}")


def main(argv: list[str]) -> int:
    if len(argv) < 4 or not API_KEY:
        print(__doc__, file=sys.stderr)
        return 2
    router, prom, adapter = argv[0].rstrip("/"), argv[1].rstrip("/"), Path(argv[2])
    replicas = [url.rstrip("/") for url in argv[3:]]
    check_auth(router)
    sent = send_predictions(router)
    send_invalid(router)
    version = upload(router, adapter)
    wait_for_requests(prom, sent + 1)  # + the prediction with the uploaded adapter
    check_targets_and_rules(prom, len(replicas))
    check_affinity(prom)  # before the direct requests below, which reach every replica on purpose
    check_every_replica_serves(replicas, version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
