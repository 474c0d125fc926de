"""The pieces of `--engine ray` that need no cluster: the task a path routes by, the ASGI replay, the CLI checks."""
from __future__ import annotations

import asyncio

import pytest

from adamix.cli import build_parser

ray_serve = pytest.importorskip("server.ray_serve", reason="the ray extra is not installed")


@pytest.mark.parametrize("path, task", [("/v1/sst2/predict", "sst2"), ("/v1/adapters/team-a", "team-a"),
                                        ("/v1/adapters/team-a/activate", "team-a"), ("/v2/models/qnli/infer", "qnli"),
                                        ("/v1/adapters", ""), ("/v1/embeddings", ""), ("/healthz", ""),
                                        ("/v1/Bad!/predict", ""), ("/v1/" + "a" * 65 + "/predict", ""),
                                        ("/v1/sst2/predict/extra", "")])
def test_the_task_a_path_routes_by(path, task):
    assert ray_serve.task_of(path) == task


def test_a_forwarded_request_replays_through_the_app_with_its_client_address():
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope=scope, body=await receive())
        await send({"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"he", "more_body": True})
        await send({"type": "http.response.body", "body": b"llo"})
        seen["after"] = await receive()  # the connection reads as closed once the response is complete

    request = ray_serve.Forwarded("PUT", "/v1/adapters/t", b"q=1", [(b"authorization", b"Bearer k")], b"data",
                                  ("10.0.0.7", 5555))
    status, headers, body = asyncio.run(ray_serve.call_asgi(app, request))
    assert (status, headers, body) == (201, [(b"x-a", b"1")], b"hello")
    assert seen["scope"]["client"] == ("10.0.0.7", 5555) and seen["scope"]["query_string"] == b"q=1"
    assert seen["body"] == {"type": "http.request", "body": b"data", "more_body": False}
    assert seen["after"] == {"type": "http.disconnect"}


@pytest.mark.parametrize("flags, message", [(["--replicas", "0"], "--replicas must be at least 1"),
                                            (["--metrics-port", "9100"], "--metrics-port is one listener per process")])
def test_ray_engine_refuses_what_it_cannot_do(flags, message, capsys):
    args = build_parser().parse_args(["serve", "--engine", "ray", *flags])
    assert args.func(args) == 2
    assert message in capsys.readouterr().err


def test_what_the_router_refuses_comes_in_the_surface_shape():
    import json

    from server.errors import PayloadTooLargeError

    def body(path):
        response = ray_serve._error(PayloadTooLargeError("too big", None, {"Retry-After": "1"}), path)
        assert (response.status_code, response.headers["retry-after"]) == (413, "1")
        return json.loads(response.body)

    assert body("/v1/sst2/predict") == {"error": {"code": "payload_too_large", "message": "too big", "field": None}}
    assert body("/v2/models/sst2/infer") == {"error": "too big"}
    assert body("/v1/embeddings")["error"]["type"] == "invalid_request_error"
