"""`adamix serve --engine ray`: the same app in N Ray Serve replicas behind Ray's HTTP proxy, routed by task.

    client -> Ray Serve HTTP proxy -> TaskRouter -> AdamixReplica x N
                                       (path -> task)   (the whole `create_app` app each)

`TaskRouter` is a thin forwarder: it reads the task from the path and calls a replica with it as Ray Serve's
*multiplexed model id*, so Ray sends a task's requests to a replica that already holds its adapter (and a new
task to the least loaded one). Each `AdamixReplica` is the unchanged single-process app (auth, limits, its
own mixed-task batcher, errors), driven in-process through ASGI, so routes, auth and errors are exactly those
of `adamix serve`. Ray's `@serve.batch` is not used: it splits batches by model id, and ours mix tasks.
Version changes reach the replicas through the shared registry directory (each replica polls its
generation, `registry_poll_s`), never through Ray. Ray is an optional extra: `pip install 'adamix-serve[ray]'`.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from adamix.manifest import TASK_NAME
from server.app import create_app
from server.errors import (ClientClosedError, NotReadyError, OverloadedError, PayloadTooLargeError,
                           RequestTimeoutError, ServeError, render_error)
from server.settings import Settings
from server.uploads import declared_over

APP_NAME = "adamix"
REPLICA_HEADER = "x-adamix-replica"  # which replica answered (operators, affinity checks)
# Tasks Ray counts as "held" per replica for routing (its LRU). The engine's own tiers decide what stays in
# memory; a generous figure keeps a task sticky to the replica that first served it.
TASKS_PER_REPLICA = 1024
_TASK_PATHS = [re.compile(p) for p in (r"^/v1/(?P<task>[^/]+)/predict$", r"^/v1/adapters/(?P<task>[^/]+)(?:/.*)?$",
                                       r"^/v2/models/(?P<task>[^/]+)(?:/.*)?$")]


def task_of(path: str) -> str:
    """The task a path names, or "" (no affinity) for task-less routes and names the app will refuse."""
    for pattern in _TASK_PATHS:
        match = pattern.match(path)
        if match and TASK_NAME.fullmatch(match["task"]):
            return match["task"]
    return ""


@dataclass(frozen=True)
class Forwarded:
    """One HTTP request, read by the router and replayed into a replica's ASGI app."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int] | None


async def call_asgi(app, request: Forwarded) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run one request through an ASGI app; returns (status, headers, body). After the body the app's
    `receive` waits until the response is complete, then reports a disconnect (as a live connection does)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
             "method": request.method, "path": request.path, "raw_path": request.path.encode(), "root_path": "",
             "query_string": request.query, "headers": request.headers, "client": request.client, "server": None}
    complete = asyncio.Event()
    pending = [{"type": "http.request", "body": request.body, "more_body": False}]
    start: dict = {}
    chunks: list[bytes] = []

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                complete.set()

    try:
        await app(scope, receive, send)
    finally:
        complete.set()
    return start.get("status", 500), list(start.get("headers", [])), b"".join(chunks)


def _bind_serve_grpc_to_node_address() -> None:
    """Ray binds its servers to the node's address (127.0.0.1 for a local Ray), but Ray Serve 2.60 starts each
    replica's inter-deployment gRPC server on [::], every interface (`ray/serve/_private/replica.py`). Bind it to
    the node's address too, before Ray starts it (after the deployment's constructor). A no-op where Ray Serve
    no longer has that hook."""
    import ray
    from ray.serve._private import replica as serve_replica

    bind = getattr(serve_replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "adamix_node_address", False):
        return
    node = ray.util.get_node_ip_address()
    host = f"[{node}]" if ":" in node else node

    def bind_node_address(server, address: str):
        return bind(server, f"{host}:{address[5:]}" if address.startswith("[::]:") else address)

    bind_node_address.adamix_node_address = True
    serve_replica.add_port_to_grpc_server = bind_node_address


def _error(exc: ServeError, path: str) -> JSONResponse:
    """What the router itself refuses, in the shape of the surface `path` belongs to (as the app would)."""
    return render_error(path, exc.status_code, exc.code, exc.message, exc.field, exc.headers)


@serve.deployment(name="replica", health_check_period_s=5)
class AdamixReplica:
    """One whole `adamix serve` app; Ray marks it ready only once its backbone is loaded and warmed."""

    async def __init__(self, settings: dict) -> None:
        _bind_serve_grpc_to_node_address()
        self.app = create_app(Settings(**settings))
        self.state = self.app.state.server
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        while not self.state.ready:  # bounded by Ray's replica start-up timeout
            if self.state.status.startswith("start-up failed"):
                raise RuntimeError(self.state.status)
            await asyncio.sleep(0.05)
        self.name = serve.get_replica_context().replica_id.unique_id

    @serve.multiplexed(max_num_models_per_replica=TASKS_PER_REPLICA)
    async def hold(self, task: str) -> str:
        """Ray's record that this replica serves `task`, made once it has answered a request for it (the engine
        loads the adapter on first use); names it refused never enter Ray's routing table."""
        return task

    async def handle(self, request: Forwarded) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        status, headers, body = await call_asgi(self.app, request)
        task = serve.get_multiplexed_model_id()
        if task and status < 400:  # a refused request (unknown task, no key, overload) holds nothing
            await self.hold(task)
        return status, [*headers, (REPLICA_HEADER.encode(), self.name.encode())], body

    def check_health(self) -> None:
        if not self.state.ready and not self.state.draining:
            raise RuntimeError(f"replica not ready: {self.state.status}")

    async def __del__(self) -> None:  # Ray's graceful shutdown: drain, then stop the engine
        await self._lifespan.__aexit__(None, None, None)


@serve.deployment(name="router")
class TaskRouter:
    """Ray Serve's ingress: forwards each request to a replica chosen by its task (multiplexed model id)."""

    def __init__(self, replicas, settings: dict) -> None:
        _bind_serve_grpc_to_node_address()
        self.replicas = replicas
        s = Settings(**settings)
        self.max_body = max(s.max_upload_bytes, s.max_request_bytes)  # the replica applies per-route limits
        self.body_timeout_s = max(s.upload_timeout_s, s.body_timeout_s)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read_body(request)
        except ServeError as exc:
            return _error(exc, path)
        except TimeoutError:
            return _error(RequestTimeoutError("the request body did not arrive in time"), path)
        except ClientDisconnect:
            return _error(ClientClosedError("the client closed the connection during the body"), path)
        forwarded = Forwarded(request.method, path, request.scope.get("query_string", b""),
                              list(request.scope["headers"]), body,
                              tuple(request.client) if request.client else None)
        task = task_of(forwarded.path)
        handle = self.replicas.options(multiplexed_model_id=task) if task else self.replicas
        try:
            status, headers, content = await handle.handle.remote(forwarded)
        except BackPressureError:
            return _error(OverloadedError("every replica is at its request limit", None, {"Retry-After": "1"}),
                          path)
        except RayError as exc:  # a replica that died or is not up yet: retryable
            return _error(NotReadyError(f"no replica answered ({type(exc).__name__})", None,
                                        {"Retry-After": "1"}), path)
        # Ray's proxy gives every request an x-request-id (the client's, or one it makes) and adds it to the
        # response itself: the replica's echo of that same id would be a second copy.
        incoming = request.headers.get("x-request-id", "").encode()
        response = Response(content, status)
        response.raw_headers = [(k, v) for k, v in headers if not (k.lower() == b"x-request-id" and v == incoming)]
        return response

    async def _read_body(self, request: Request) -> bytes:
        if declared_over(request.headers.get("content-length"), self.max_body):
            raise PayloadTooLargeError(f"the body is larger than {self.max_body} bytes")
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLargeError(f"the body is larger than {self.max_body} bytes")
            parts.append(chunk)
        return b"".join(parts)


def build(settings: Settings, replicas: int, replica_cpus: float = 1.0):
    """The Ray Serve application: the router in front of `replicas` replicas of the app."""
    config = settings.model_dump(mode="json")
    # Ray's default of 5 requests in flight per replica would starve the batcher: a replica takes as many
    # as its own queue admits, and refuses the rest itself (503 overloaded, 429 per tenant).
    replica = AdamixReplica.options(num_replicas=replicas, max_ongoing_requests=settings.max_queue_requests,
                                    max_queued_requests=settings.max_queue_requests,
                                    ray_actor_options={"num_cpus": replica_cpus},
                                    graceful_shutdown_timeout_s=max(1.0, settings.drain_timeout_s))
    router = TaskRouter.options(max_ongoing_requests=settings.max_queue_requests * replicas,
                                ray_actor_options={"num_cpus": 0})
    return router.bind(replica.bind(config), config)


def deploy(settings: Settings, replicas: int, address: str | None, replica_cpus: float = 1.0) -> None:
    """Start (or join) Ray, start Serve's HTTP proxy on settings.host:port, deploy or update the application.
    A private local Ray runs on 127.0.0.1 only (see `serve_cli.LOOPBACK_RAY_ENV`)."""
    import ray

    local = address is None
    ray.init(address=address, include_dashboard=False if local else None, namespace="serve",
             **({"_node_ip_address": "127.0.0.1"} if local else {}))
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build(settings, replicas, replica_cpus), name=APP_NAME, route_prefix="/")
