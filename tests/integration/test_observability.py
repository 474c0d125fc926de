"""A real `adamix serve --log-format json --otlp-endpoint ...`: JSON log lines (uvicorn's too) naming each request,
and the spans of a predict received by an OTLP/HTTP endpoint on loopback, through the real exporter."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from adamix import load_backbone
from adamix.registry import AdapterRegistry
from tests.conftest import save_tiny_backbone
from tests.integration.conftest import ADMIN_KEY, TENANT, TENANT_KEY, ServerProcess, write_keys
from tests.server.helpers import adapter_bytes, make_adapter

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otel extra (part of dev) is not installed")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

pytestmark = pytest.mark.slow


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint: keeps each span it is sent (name -> list of (attributes, links))."""

    spans: dict[str, list[tuple[dict, list[dict]]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        attrs = {a.key: _value(a.value) for a in span.attributes}
                        links = [{a.key: _value(a.value) for a in link.attributes} for link in span.links]
                        self.spans.setdefault(span.name, []).append((attrs, links))
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind)


@pytest.fixture(scope="module")
def collector():
    handler = type("ModuleCollector", (Collector,), {"spans": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler.spans
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def observed(tmp_path_factory, collector):
    base = tmp_path_factory.mktemp("observed")
    backbone_dir = save_tiny_backbone(base / "backbone")
    model, _, info = load_backbone(backbone_dir)
    AdapterRegistry(base / "registry", info).publish("team-a", adapter_bytes(make_adapter(model, info, seed=5)))
    endpoint = f"http://127.0.0.1:{collector[0].server_address[1]}"
    server = ServerProcess(["--backbone", str(backbone_dir), "--registry", str(base / "registry"), "--api-keys",
                            str(write_keys(base / "keys.json")), "--log-format", "json", "--log-level", "debug",
                            "--otlp-endpoint", endpoint], base / "server.log", env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def log_lines(server: ServerProcess) -> list[dict]:
    text = server.log()
    not_json = []
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            not_json.append(line)
    assert not_json == [], "log lines that are not JSON objects"
    return lines


def test_json_logs_name_each_request_uvicorns_access_lines_too(observed):
    r = httpx.post(f"{observed.url}/v1/team-a/predict", json={"inputs": ["a fine film"]},
                   headers={**TENANT, "X-Request-Id": "int-ok"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-request-id"] == "int-ok"
    version = r.json()["version"]
    r = httpx.post(f"{observed.url}/v1/team-a/predict", json={"inputs": ["x"]},
                   headers={"Authorization": "Bearer amx_wrong_key", "X-Request-Id": "int-401"}, timeout=30)
    assert r.status_code == 401 and r.headers["x-request-id"] == "int-401"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the access line of the 401 is the last to be written
        lines = log_lines(observed)
        if any(line.get("request_id") == "int-401" for line in lines):
            break
        time.sleep(0.1)
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= set(line), line
    assert any(line["logger"] == "uvicorn.error" and "startup complete" in line["message"] for line in lines)
    (ok,) = [line for line in lines if line["logger"] == "uvicorn.access" and line.get("request_id") == "int-ok"]
    assert (ok["status"], ok["method"], ok["path"], ok["task"], ok["version"]) == (
        200, "POST", "/v1/team-a/predict", "team-a", version)
    assert 0 < ok["duration_s"] < 30
    (refused,) = [line for line in lines if line["logger"] == "uvicorn.access" and line.get("request_id") == "int-401"]
    assert refused["status"] == 401
    engine = [line for line in lines if line["logger"] == "adamix.engine" and "int-ok" in line.get("request_ids", [])]
    assert {line["message"].split(":")[0] for line in engine} == {"batch", "forward"}
    text = observed.log()
    for secret in (ADMIN_KEY, TENANT_KEY, "amx_wrong_key", "a fine film"):
        assert secret not in text


def test_spans_reach_the_otlp_endpoint(observed, collector):
    r = httpx.post(f"{observed.url}/v1/team-a/predict", json={"inputs": ["traced"]},
                   headers={**TENANT, "X-Request-Id": "int-traced"}, timeout=30)
    assert r.status_code == 200
    spans = collector[1]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            "int-traced" in attrs.get("adamix.request_ids", []) for attrs, _ in spans.get("adamix.forward", [])):
        time.sleep(0.1)
    (request,) = [a for a, _ in spans.get("adamix.request", []) if a["adamix.request_id"] == "int-traced"]
    assert (request["adamix.task"], request["http.response.status_code"]) == ("team-a", 200)
    (links,) = [links for a, links in spans["adamix.forward"] if "int-traced" in a["adamix.request_ids"]]
    assert [link["adamix.request_id"] for link in links] == ["int-traced"]
    assert {"adamix.admission", "adamix.queue"} <= set(spans)
