#!/usr/bin/env python3
"""Real traffic against the composed server, then Prometheus must show it (stdlib only; .ci/deploy-check e2e).

  ADAMIX_API_KEY=<admin key> e2e_traffic.py SERVER_URL PROMETHEUS_URL ADAPTER_FILE

Checks that a prediction without the key is refused (401), then, with the key: predictions for the four
demo tasks (concurrently, so batches mix tasks), one invalid request (422), and one upload of ADAPTER_FILE
under a new task name, which then serves. Then polls Prometheus's HTTP API until `adamix_requests_total` counts every request sent, and checks that
the scrape target is up and the alert rules are loaded and healthy. Only loopback URLs are accepted.
"""
from __future__ import annotations

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
    "stsb": [{"text": "A man is playing a guitar.", "text_pair": "A person plays an instrument."}],
}
ROUNDS = 4
POLL_SECONDS = 90  # the first scrape lands ~6 s after start; the target waits for the server to be ready


def call(method: str, url: str, body: bytes | None = None, content_type: str = "application/json",
         key: str | None = None) -> tuple[int, dict]:
    host = urllib.parse.urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing a non-loopback URL: {url}")
    headers = {"content-type": content_type} | ({"authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


API_KEY = os.environ.get("ADAMIX_API_KEY")


def predict(server: str, task: str, inputs: list, key: str | None = API_KEY) -> tuple[int, dict]:
    return call("POST", f"{server}/v1/{task}/predict", json.dumps({"inputs": inputs}).encode(), key=key)


def check_auth(server: str) -> None:
    status, body = predict(server, "sst2", DEMO_INPUTS["sst2"], key=None)
    if status != 401:
        raise SystemExit(f"a prediction without an API key should be refused with 401, got {status}: {body}")
    print("  no API key -> 401")


def send_predictions(server: str) -> int:
    """Every demo task, ROUNDS times, all tasks of a round at once; returns the number of 200s."""
    with ThreadPoolExecutor(max_workers=len(DEMO_INPUTS)) as pool:
        for round_ in range(ROUNDS):
            futures = {task: pool.submit(predict, server, task, inputs) for task, inputs in DEMO_INPUTS.items()}
            for task, future in futures.items():
                status, body = future.result()
                if status != 200 or len(body.get("predictions", [])) != len(DEMO_INPUTS[task]):
                    raise SystemExit(f"predict {task}: HTTP {status}: {body}")
                if round_ == 0:
                    print(f"  {task}: version {body['version']}: {json.dumps(body['predictions'])[:160]}")
    return ROUNDS * len(DEMO_INPUTS)


def send_invalid(server: str) -> None:
    status, body = predict(server, "sst2", [])
    if status != 422:
        raise SystemExit(f"an empty `inputs` should be refused with 422, got {status}: {body}")
    print(f"  empty inputs -> 422 {body['error']['code']}")


def upload(server: str, adapter: Path) -> None:
    status, body = call("PUT", f"{server}/v1/adapters/sst2-uploaded", adapter.read_bytes(), "application/octet-stream",
                        key=API_KEY)
    if status != 201:
        raise SystemExit(f"upload of {adapter.name}: HTTP {status}: {body}")
    print(f"  uploaded {adapter.name} as sst2-uploaded -> HTTP {status}")
    status, body = predict(server, "sst2-uploaded", DEMO_INPUTS["sst2"])
    if status != 200:
        raise SystemExit(f"predict with the uploaded adapter: HTTP {status}: {body}")


def prometheus(base: str, path: str, **params: str) -> dict:
    status, body = call("GET", f"{base}{path}?{urllib.parse.urlencode(params)}")
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


def check_target_and_rules(base: str) -> None:
    targets = prometheus(base, "/api/v1/targets")["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets}
    if health.get("adamix-serve") != "up":
        raise SystemExit(f"the adamix-serve scrape target is not up: {targets}")
    rules = [r for g in prometheus(base, "/api/v1/rules")["groups"] for r in g["rules"] if r["type"] == "alerting"]
    bad = [r["name"] for r in rules if r["health"] != "ok"]
    if len(rules) < 6 or bad:
        raise SystemExit(f"alert rules: {len(rules)} loaded, unhealthy: {bad}")
    print(f"  Prometheus: target adamix-serve up; {len(rules)} alert rules loaded, all healthy")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not API_KEY:
        print(__doc__, file=sys.stderr)
        return 2
    server, prom = argv[0].rstrip("/"), argv[1].rstrip("/")
    check_auth(server)
    sent = send_predictions(server)
    send_invalid(server)
    upload(server, Path(argv[2]))
    wait_for_requests(prom, sent + 1)  # + the prediction with the uploaded adapter
    check_target_and_rules(prom)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
