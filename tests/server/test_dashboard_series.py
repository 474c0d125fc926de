"""Every series the shipped Grafana dashboard queries is in a fresh server's first scrape, before any traffic."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.errors import rejection_reasons
from server.metrics import UPLOAD_RESULTS
from server.settings import Settings
from tests.server.helpers import tiny_registry, wait_ready

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "adamix-serve.json"
SELECTOR = re.compile(r"\b(adamix_[a-z_]+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")


def dashboard_queries():
    """The dashboard's queries as CI's deploy check reads them (`.ci/dashboard_queries.py`, macros substituted)."""
    spec = importlib.util.spec_from_file_location("dashboard_queries", ROOT / ".ci" / "dashboard_queries.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_queries(DASHBOARD), module.variable_metrics(DASHBOARD)


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]], set[str]]]:
    """(metric, label matchers, labels the query groups by) for each adamix_ series selector in `expr`."""
    grouped = {label.strip() for clause in GROUPING.findall(expr) for label in clause.split(",") if label.strip()}
    return [(name, MATCHER.findall(matchers or ""), grouped) for name, matchers in SELECTOR.findall(expr)]


def matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        got = labels.get(label, "")
        ok = {"=": got == value, "!=": got != value, "=~": re.fullmatch(value, got) is not None,
              "!~": re.fullmatch(value, got) is None}[op]
        if not ok:
            return False
    return True


@pytest.fixture(scope="module")
def first_scrape(tiny_backbone_dir, tiny_loaded, tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets of its samples, from /metrics of a server that has answered no request."""
    root = tiny_registry(tmp_path_factory.mktemp("registry"), tiny_loaded, "sent")
    with TestClient(create_app(Settings(backbone=tiny_backbone_dir, registry=root, demo_adapters=None))) as c:
        wait_ready(c)
        text = c.get("/metrics").text
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    return samples


def test_the_dashboard_queries_series_by_their_labels():
    queries, variables = dashboard_queries()
    found = [s for _, expr in queries for s in selectors(expr)]
    assert len(queries) >= 20 and len(found) >= len(queries) - 1  # all but `up` (Prometheus's own)
    assert ("adamix_adapter_uploads_total", [], {"result"}) in found and variables


def test_every_dashboard_series_is_in_a_fresh_servers_first_scrape(first_scrape):
    queries, variables = dashboard_queries()
    missing = []
    for title, expr in queries:
        for name, matchers, grouped in selectors(expr):
            needed = grouped - {"le"} if not name.endswith("_bucket") else grouped
            if not any(matches(labels, matchers) and needed <= set(labels) for labels in first_scrape.get(name, [])):
                missing.append(f"{title}: {name}{{{matchers}}} by {sorted(grouped)}")
    for name, label in variables:
        if not any(label in labels for labels in first_scrape.get(name, [])):
            missing.append(f"variable label_values({name}, {label})")
    assert missing == []


def test_known_label_values_start_at_zero(first_scrape):
    assert {labels["result"] for labels in first_scrape["adamix_adapter_uploads_total"]} == set(UPLOAD_RESULTS)
    assert {labels["tier"] for labels in first_scrape["adamix_adapter_evictions_total"]} == {"device", "host"}
    assert {labels["reason"] for labels in first_scrape["adamix_rejections_total"]} == set(rejection_reasons())
    assert {"too_large", "unauthorized", "overloaded", "body_timeout"} <= set(rejection_reasons())
    requests = {(labels["task"], labels["status"]) for labels in first_scrape["adamix_requests_total"]}
    assert requests == {("sent", "200"), ("sent", "500"), ("_unknown", "404")}  # no keys: no unauthenticated
    assert {labels["task"] for labels in first_scrape["adamix_request_duration_seconds_count"]} == {"sent"}


def test_the_upload_route_counts_only_results_the_metric_declares():
    from server.api.adapters import _UPLOAD_RESULTS

    assert set(_UPLOAD_RESULTS.values()) | {"created", "unchanged", "failed"} <= set(UPLOAD_RESULTS)
