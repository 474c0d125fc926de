"""X-Request-Id on every answer (errors and middleware refusals too) and in every log line of its request."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.auth import hash_key
from server.logs import log_handler
from server.request_context import request_id_from
from server.settings import Settings
from tests.server.helpers import tiny_registry, wait_ready

KEY = "amx_test_request_ids"
AUTH = {"Authorization": f"Bearer {KEY}"}
GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory, tiny_loaded):
    return tiny_registry(tmp_path_factory.mktemp("registry"), tiny_loaded, "sent")


def keys_file(path):
    path.write_text(json.dumps({"keys": [{"name": "ops", "sha256": hash_key(KEY), "admin": True}]}))
    return path


@pytest.fixture(scope="module")
def client(tiny_backbone_dir, registry_dir, tmp_path_factory):
    settings = Settings(backbone=tiny_backbone_dir, registry=registry_dir, demo_adapters=None,
                        api_keys_file=keys_file(tmp_path_factory.mktemp("keys") / "keys.json"),
                        max_request_bytes=1024, auth_failures_per_s=0.001, auth_failures_burst=2)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def json_log():
    """The server's log lines (debug and up), as `adamix serve --log-format json` writes them, parsed."""
    stream, logger = io.StringIO(), logging.getLogger("adamix")
    handler, level = log_handler("json", stream), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("sent, kept", [
    ("order-1234", True), ("0af7651916cd43dd8448eb211c80319c", True), ("a.b_c:d-9", True), ("x" * 64, True),
    ("x" * 65, False), ("", False), ("has space", False), ("semi;colon", False), ("naïve", False),
    ("<script>", False), ("a\tb", False),
])
def test_a_client_id_is_kept_only_when_bounded_and_plain(sent, kept):
    got = request_id_from(sent)
    assert got == sent if kept else GENERATED.fullmatch(got)


def test_the_id_is_echoed_or_generated_on_every_route(client):
    for method, path in (("get", "/healthz"), ("get", "/readyz"), ("get", "/openapi.json"), ("get", "/metrics")):
        r = getattr(client, method)(path, headers={**AUTH, "X-Request-Id": f"probe-{path.strip('/')}"})
        assert r.status_code == 200 and r.headers["x-request-id"] == f"probe-{path.strip('/')}"
    r = client.post("/v1/sent/predict", json={"inputs": ["a fine film"]}, headers=AUTH)
    assert r.status_code == 200 and GENERATED.fullmatch(r.headers["x-request-id"])
    other = client.post("/v1/sent/predict", json={"inputs": ["a fine film"]}, headers=AUTH)
    assert other.headers["x-request-id"] != r.headers["x-request-id"]
    r = client.post("/v1/sent/predict", json={"inputs": ["x"]},
                    headers={**AUTH, "X-Request-Id": "bad id\u00e9".encode()})  # latin-1 on the wire
    assert GENERATED.fullmatch(r.headers["x-request-id"]) and r.headers.get_list("x-request-id") == [
        r.headers["x-request-id"]]


@pytest.mark.parametrize("request_kwargs, status", [
    ({"method": "POST", "url": "/v1/nope/predict", "json": {"inputs": ["x"]}}, 404),  # unknown task
    ({"method": "GET", "url": "/no/such/route"}, 404),
    ({"method": "POST", "url": "/v1/sent/predict", "json": {"inputs": []}}, 422),
    ({"method": "POST", "url": "/v1/sent/predict", "content": b"{" * 2000}, 413),  # refused by the middleware
    ({"method": "DELETE", "url": "/v1/sent/predict"}, 405),
])
def test_errors_carry_the_id(client, request_kwargs, status):
    r = client.request(**request_kwargs, headers={**AUTH, "X-Request-Id": f"err-{status}"})
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"] == f"err-{status}" and set(r.json()) == {"error"}


def test_auth_refusals_and_their_rate_limit_carry_the_id(client):
    statuses = []
    for i in range(4):  # the failed-authentication bucket holds 2
        r = client.post("/v1/sent/predict", json={"inputs": ["x"]},
                        headers={"Authorization": "Bearer wrong", "X-Request-Id": f"auth-{i}"})
        assert r.headers["x-request-id"] == f"auth-{i}"
        statuses.append(r.status_code)
    assert statuses == [401, 401, 429, 429]


def test_every_line_logged_for_a_request_names_it_the_engines_too(client, json_log):
    r = client.post("/v1/sent/predict", json={"inputs": ["a fine film", "dull"]},
                    headers={**AUTH, "X-Request-Id": "trace-me-1"})
    assert r.status_code == 200
    lines = json_log()
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= set(line) and line["ts"].endswith("+00:00")
        assert line.get("request_id") == "trace-me-1" or line.get("request_ids") == ["trace-me-1"], line
    batch = [line for line in lines if line["message"].startswith("batch:")]
    forward = [line for line in lines if line["message"].startswith("forward:")]  # logged on the worker thread
    assert batch and forward
    for line in batch + forward:
        assert line["logger"] == "adamix.engine" and line["request_ids"] == ["trace-me-1"], line
    assert KEY not in json.dumps(lines) and "a fine film" not in json.dumps(lines)


def test_a_client_that_leaves_is_logged_as_499_and_a_draining_refusal_answered_under_its_id(tiny_backbone_dir, registry_dir, json_log):
    """A request queued for longer than its client stays: the 499 line carries the request's id; once draining,
    the 503 carries its id too."""
    settings = Settings(backbone=tiny_backbone_dir, registry=registry_dir, demo_adapters=None, max_wait_ms=800)
    app = create_app(settings)
    body = json.dumps({"inputs": ["left early"]}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/sent/predict", "raw_path": b"/v1/sent/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"gone-early")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(0.1)  # the batch waits 800 ms for company: the client leaves first
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    with TestClient(app) as c:
        wait_ready(c)
        c.portal.call(app, scope, receive, send)
        app.state.server.begin_drain()  # SIGTERM: the middleware refuses what comes next, under its id
        r = c.post("/v1/sent/predict", json={"inputs": ["x"]}, headers={"X-Request-Id": "too-late"})
        assert (r.status_code, r.headers["x-request-id"]) == (503, "too-late")
    assert sent == []  # no answer to a client that left
    gone = [line for line in json_log() if line.get("status") == 499]
    assert len(gone) == 1 and gone[0]["request_id"] == "gone-early" and gone[0]["task"] == "sent"
