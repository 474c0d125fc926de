#!/usr/bin/env python3
"""The Grafana dashboard's PromQL, checked for real (stdlib only; called by .ci/deploy-check).

  dashboard_queries.py rules DASHBOARD OUT.yml
      Write every panel query as a recording rule, so `promtool check rules OUT.yml` parses them all.
  dashboard_queries.py names FILE...
      Fail if any file (alert rules, say) names an `adamix_` metric that DESIGN.md does not define.
  dashboard_queries.py check DASHBOARD PROMETHEUS_URL
      Run every panel query (and the `task` variable's label query) against a live Prometheus and fail
      unless each one parses and returns data.

Grafana's own macros are replaced by what Grafana would send: `$__rate_interval` by a window several
scrape intervals long, a multi-value variable's "All" by its `allValue`.
"""
from __future__ import annotations

import json
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

RATE_INTERVAL = "1m"  # Grafana: max(4 x scrape interval, step); the scrape interval is 5s
# DESIGN.md "Metrics": the only names a panel or alert may use (plus Prometheus's own `up`).
DESIGN_METRICS = frozenset({
    "adamix_requests_total", "adamix_request_duration_seconds", "adamix_queue_duration_seconds",
    "adamix_batch_size", "adamix_batch_tasks", "adamix_adapter_cache_lookups_total",
    "adamix_adapter_cache_hits_total", "adamix_adapter_evictions_total", "adamix_adapter_load_duration_seconds",
    "adamix_adapters_resident", "adamix_adapter_cache_bytes", "adamix_adapter_uploads_total", "adamix_build_info",
})
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def load_queries(dashboard: Path) -> list[tuple[str, str]]:
    """(panel title / refId, PromQL with Grafana macros substituted) for every target of every panel."""
    dash = json.loads(dashboard.read_text())
    variables = {v["name"]: v.get("allValue") or ".*" for v in dash.get("templating", {}).get("list", [])}
    queries = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        if not panel.get("targets"):
            raise SystemExit(f"panel {panel['title']!r} has no query")
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for name, value in variables.items():
                expr = re.sub(r"\$\{?" + re.escape(name) + r"\}?(?![A-Za-z0-9_])", value, expr)
            if "$" in expr:
                raise SystemExit(f"panel {panel['title']!r}: unsubstituted macro in {expr!r}")
            queries.append((f"{panel['title']} / {target['refId']}", expr))
    return queries


def variable_metrics(dashboard: Path) -> list[tuple[str, str]]:
    """(metric, label) of each `label_values(metric, label)` template variable."""
    dash = json.loads(dashboard.read_text())
    found = []
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text.strip())
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def unknown_metrics(exprs: list[str]) -> set[str]:
    """Metric names in `exprs` that DESIGN.md does not define (histogram series map to their family)."""
    used = set(re.findall(r"\badamix_[a-z_]+", " ".join(exprs)))
    families = {re.sub(r"_(bucket|sum|count)$", "", name) if name.endswith(_SERIES_SUFFIXES) else name
                for name in used}
    return {name for name in families if name not in DESIGN_METRICS}


def write_rules(dashboard: Path, out: Path) -> None:
    queries = load_queries(dashboard)
    unknown = unknown_metrics([expr for _, expr in queries])
    if unknown:
        raise SystemExit(f"dashboard uses metrics DESIGN.md does not define: {sorted(unknown)}")
    lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
    for i, (_, expr) in enumerate(queries):
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    out.write_text("\n".join(lines) + "\n")
    print(f"{len(queries)} dashboard queries, all on DESIGN.md metric names, written to {out}")


def prometheus_get(base: str, path: str, params: dict[str, str]) -> dict:
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # 400 = the query does not parse
        body = json.load(exc)
    if body.get("status") != "success":
        raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def check(dashboard: Path, base: str) -> int:
    failures = 0
    for title, expr in load_queries(dashboard):
        try:
            result = prometheus_get(base, "/api/v1/query", {"query": expr})["result"]
            status = f"{len(result)} series" if result else "NO DATA"
        except RuntimeError as exc:
            result, status = [], f"ERROR {exc}"
        failures += not result
        print(f"  {'ok  ' if result else 'FAIL'} {title}: {status}\n         {expr}")
    for metric, label in variable_metrics(dashboard):
        values = prometheus_get(base, f"/api/v1/label/{label}/values", {"match[]": metric})
        failures += not values
        print(f"  {'ok  ' if values else 'FAIL'} variable label_values({metric}, {label}): {values}")
    print(f"{failures} dashboard queries without data" if failures else "every dashboard query returned data")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "rules":
        write_rules(Path(argv[1]), Path(argv[2]))
        return 0
    if len(argv) >= 2 and argv[0] == "names":
        unknown = unknown_metrics([Path(name).read_text() for name in argv[1:]])
        if unknown:
            print(f"metrics DESIGN.md does not define: {sorted(unknown)}", file=sys.stderr)
            return 1
        print(f"{', '.join(argv[1:])}: every adamix_ metric is one DESIGN.md defines")
        return 0
    if len(argv) == 3 and argv[0] == "check":
        return check(Path(argv[1]), argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
