#!/usr/bin/env python3
"""The replica names agree everywhere they are written (.ci/deploy-check static; PyYAML, Debian's python3-yaml).

The router's consistent hash is keyed on the names in deploy/router/nginx.conf's upstream, and that one file serves
compose and Kubernetes; so compose's replica services, Prometheus's targets, the Kubernetes per-replica Services
and the StatefulSet's pods must be exactly adamix-serve-0 .. adamix-serve-(N-1), the same N in each.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
REPLICA = re.compile(r"^adamix-serve-\d+$")


def names_by_file() -> dict[str, list[str]]:
    nginx = (DEPLOY / "router/nginx.conf").read_text()
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    services = list(yaml.safe_load_all((DEPLOY / "k8s/replicas.yaml").read_text()))
    statefulset = yaml.safe_load((DEPLOY / "k8s/statefulset.yaml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "adamix-serve")
    for service in services:
        pod = service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"]
        if pod != service["metadata"]["name"]:
            raise SystemExit(f"k8s/replicas.yaml: Service {service['metadata']['name']} selects pod {pod}")
    pods = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    return {
        "router/nginx.conf upstream": re.findall(r"^\s*server\s+([\w.-]+):8000\b", nginx, re.M),
        "docker-compose.yml services": [s for s in compose["services"] if REPLICA.match(s)],
        "prometheus/prometheus.yml targets": [t.split(":")[0] for c in job["static_configs"] for t in c["targets"]],
        "k8s/replicas.yaml Services": [s["metadata"]["name"] for s in services],
        "k8s/statefulset.yaml pods": [f"{pods[0]}-{i}" for i in range(pods[1])],
    }


def main() -> int:
    found = names_by_file()
    expected = [f"adamix-serve-{i}" for i in range(len(found["k8s/statefulset.yaml pods"]))]
    wrong = {where: names for where, names in found.items() if sorted(names) != sorted(expected)}
    if wrong:
        print(f"replica names disagree (expected {expected}): {wrong}", file=sys.stderr)
        return 1
    print(f"replica names agree in {len(found)} places: {', '.join(expected)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
