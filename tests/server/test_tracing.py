"""OpenTelemetry spans of real predicts through the real engine (tiny backbone), recorded by the SDK in memory."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (part of dev) is not installed")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from server.app import create_app  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.tracing import Tracing, TracingUnavailableError, otlp_traces_url  # noqa: E402
from tests.server.helpers import tiny_registry, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory, tiny_loaded):
    return tiny_registry(tmp_path_factory.mktemp("registry"), tiny_loaded, "sent", "sts")


@pytest.fixture(scope="module")
def traced(tiny_backbone_dir, registry_dir):
    """(client, exporter): a server tracing into memory. A batch is 2 rows: a 2-input request runs at once,
    two 1-input requests share one forward (the batch waits up to 1 s for the second)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(backbone=tiny_backbone_dir, registry=registry_dir, demo_adapters=None, max_batch_rows=2,
                        max_wait_ms=1000)
    with TestClient(create_app(settings, tracer_provider=provider)) as c:
        wait_ready(c)
        yield c, exporter


def spans_by_name(exporter) -> dict[str, list]:
    found: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def test_warm_up_and_probes_make_no_span(traced):
    client, exporter = traced
    assert client.get("/readyz").status_code == 200 and client.get("/metrics").status_code == 200
    assert exporter.get_finished_spans() == ()


def test_a_predict_is_a_request_span_with_admission_queue_and_a_linked_forward(traced):
    client, exporter = traced
    exporter.clear()
    r = client.post("/v1/sent/predict", json={"inputs": ["a fine film", "dull"]}, headers={"X-Request-Id": "t-1"})
    assert r.status_code == 200
    version = r.json()["version"]
    spans = spans_by_name(exporter)
    assert sorted(spans) == ["adamix.admission", "adamix.forward", "adamix.queue", "adamix.request"]
    (request,), (admission,), (queue,), (forward,) = (spans[n] for n in ("adamix.request", "adamix.admission",
                                                                          "adamix.queue", "adamix.forward"))
    assert request.kind == SpanKind.SERVER and request.parent is None
    assert dict(request.attributes) == {
        "http.request.method": "POST", "url.path": "/v1/sent/predict", "http.route": "/v1/{task}/predict",
        "http.response.status_code": 200, "adamix.request_id": "t-1", "adamix.task": "sent", "adamix.version": version}
    for child in (admission, queue):
        assert child.parent.span_id == request.context.span_id
        assert child.context.trace_id == request.context.trace_id
        assert child.attributes["adamix.task"] == "sent" and child.attributes["adamix.version"] == version
        assert request.start_time <= child.start_time <= child.end_time <= request.end_time
    assert admission.attributes["adamix.rows"] == 2 and admission.attributes["adamix.tokens"] >= 2 * 3
    assert admission.end_time <= queue.start_time
    assert forward.parent is None and forward.context.trace_id != request.context.trace_id  # the batch's own trace
    (link,) = forward.links
    assert link.context.span_id == request.context.span_id and link.context.trace_id == request.context.trace_id
    assert dict(link.attributes) == {"adamix.request_id": "t-1", "adamix.task": "sent", "adamix.version": version}
    assert dict(forward.attributes) == {"adamix.batch.rows": 2, "adamix.batch.requests": 1,
                                        "adamix.request_ids": ("t-1",), "adamix.tasks": ("sent",),
                                        "adamix.versions": (version,)}
    assert queue.end_time <= forward.start_time and forward.end_time <= request.end_time


def test_one_forward_serving_two_requests_links_to_both(traced):
    client, exporter = traced
    exporter.clear()
    answers = {}

    def post(task: str) -> None:
        answers[task] = client.post(f"/v1/{task}/predict", json={"inputs": ["one row"]},
                                    headers={"X-Request-Id": f"pair-{task}"})

    threads = [threading.Thread(target=post, args=(task,)) for task in ("sent", "sts")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [answers[t].status_code for t in ("sent", "sts")] == [200, 200]
    spans = spans_by_name(exporter)
    (forward,) = spans["adamix.forward"]
    requests = {s.attributes["adamix.request_id"]: s for s in spans["adamix.request"]}
    assert {link.context.span_id for link in forward.links} == {s.context.span_id for s in requests.values()}
    assert sorted(forward.attributes["adamix.request_ids"]) == ["pair-sent", "pair-sts"]
    assert forward.attributes["adamix.tasks"] == ("sent", "sts") and forward.attributes["adamix.batch.rows"] == 2
    queues = {s.parent.span_id for s in spans["adamix.queue"]}
    assert queues == {s.context.span_id for s in requests.values()}  # each request waited under its own span


def test_a_callers_trace_is_continued_and_errors_are_spans_too(traced):
    client, exporter = traced
    exporter.clear()
    r = client.post("/v1/nope/predict", json={"inputs": ["x", "y"]},
                    headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "X-Request-Id": "t-404"})
    assert r.status_code == 404
    (request,) = exporter.get_finished_spans()  # no admission: the task is unknown
    assert f"{request.context.trace_id:032x}" == CALLER_TRACE and f"{request.parent.span_id:016x}" == CALLER_SPAN
    assert request.attributes["http.response.status_code"] == 404 and request.attributes["adamix.task"] == "nope"
    assert "adamix.version" not in request.attributes


def test_an_endpoint_without_the_extra_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(TracingUnavailableError, match=r"pip install 'adamix-serve\[otel\]'"):
        Tracing.from_settings(Settings(otlp_endpoint="http://127.0.0.1:4318", demo_adapters=None))
    from adamix.cli import build_parser

    args = build_parser().parse_args(["serve", "--otlp-endpoint", "http://127.0.0.1:4318"])
    assert args.func(args) == 2 and "adamix-serve[otel]" in capsys.readouterr().err


def test_the_endpoint_setting_and_the_standard_variable(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert Settings().otlp_endpoint is None and not Tracing.from_settings(Settings()).enabled
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert Settings().otlp_endpoint == "http://collector:4318"
    monkeypatch.setenv("ADAMIX_OTLP_ENDPOINT", "https://other:4318/")
    assert Settings().otlp_endpoint == "https://other:4318/"
    assert otlp_traces_url("https://other:4318/") == "https://other:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    with pytest.raises(ValueError, match="otlp_endpoint"):
        Settings(otlp_endpoint="collector:4318")


def test_without_an_endpoint_the_sdk_is_never_imported(tiny_backbone_dir, tmp_path):
    """Tracing off costs nothing: a server that answered a predict has loaded neither OpenTelemetry's SDK nor an
    exporter (the API alone may be there: recent FastAPI imports it for its own, unconfigured, telemetry)."""
    code = f"""
import sys
from fastapi.testclient import TestClient
from server.app import create_app
from server.settings import Settings
from tests.server.helpers import wait_ready

settings = Settings(backbone={str(tiny_backbone_dir)!r}, registry={str(tmp_path)!r}, demo_adapters=None)
with TestClient(create_app(settings)) as client:
    wait_ready(client)
    assert client.post("/v1/x/predict", json={{"inputs": ["a"]}}).status_code == 404
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ADAMIX_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
