"""`adamix serve`: one flag per `Settings` field (generated, so the two never drift); flags override
`ADAMIX_*` environment settings, which override the defaults. Runs uvicorn on `create_app`, or with
`--engine ray` the same app in N Ray Serve replicas behind Ray's HTTP proxy (server/ray_serve.py)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import types
import typing
from pathlib import Path

from server.settings import Settings

# Ray registers a node under the machine's interface address (and binds its listeners there) unless told
# otherwise; this, read when `ray` is imported, keeps a private local Ray on 127.0.0.1.
LOOPBACK_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Shorter spellings kept alongside the generated `--<field>` flags.
_ALIASES = {"api_keys_file": "--api-keys", "pinned_tasks": "--pin"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve every registered task over HTTP from one backbone",
                              description="Start the multi-task inference server. Every flag is also an ADAMIX_* "
                                          "environment variable (the flag wins).")
    for name, field in Settings.model_fields.items():
        flags = [f"--{name.replace('_', '-')}", *([_ALIASES[name]] if name in _ALIASES else [])]
        default = "none" if field.default is None else field.default
        if field.default_factory is not None:
            default = field.default_factory()
        help_ = f"{field.description or ''} (ADAMIX_{name.upper()}; default {default})".replace("%", "%%")
        p.add_argument(*flags, dest=name, help=help_, **_argument_kind(field.annotation))
    ray = p.add_argument_group("Ray Serve (pip install 'adamix-serve[ray]')")
    ray.add_argument("--engine", choices=["uvicorn", "ray"], default="uvicorn",
                     help="uvicorn: one process (default); ray: --replicas copies of the app behind Ray Serve's HTTP "
                          "proxy on --host/--port, each task's requests routed to a replica that holds it")
    ray.add_argument("--replicas", type=int, default=1, metavar="N", help="Ray Serve replicas (default 1)")
    ray.add_argument("--ray-address", metavar="ADDRESS",
                     help="join this Ray cluster (e.g. 10.0.0.5:6379 or auto), deploy or update the application and "
                          "return: the cluster keeps running it (`serve status`, `serve shutdown`). Without it a "
                          "private local Ray starts on 127.0.0.1 and runs until SIGTERM/SIGINT")
    ray.add_argument("--ray-replica-cpus", type=float, default=1.0, metavar="CPUS",
                     help="CPUs Ray reserves for each replica (default 1)")
    p.set_defaults(func=run)


def _argument_kind(annotation) -> dict:
    """argparse keywords for a Settings field's type: choices for Literals, repeatable for lists, --no-X for bools."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]  # `X | None`
        args = list(typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": args}
    if typing.get_origin(annotation) is list:
        return {"action": "append", "metavar": "VALUE", "type": args[0]}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": annotation, "metavar": annotation.__name__.upper() if annotation is not Path else "PATH"}


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from server.app import create_app
    from server.auth import KeyFileError
    from server.drain import DrainingServer
    from server.logs import configure_logging
    from server.tracing import TracingUnavailableError

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"adamix serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if settings.backbone is not None and not (settings.backbone / "config.json").is_file():
        print(f"adamix serve: --backbone {settings.backbone} is not a Hugging Face model directory (no config.json)",
              file=sys.stderr)
        return 2
    try:
        app = create_app(settings)
    except (KeyFileError, TracingUnavailableError) as exc:
        print(f"adamix serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.engine == "ray":
        return run_ray(settings, args)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=max(1.0, settings.drain_timeout_s),
                            limit_concurrency=settings.max_connections, log_config=None)  # server/logs.py's
    DrainingServer(config, app.state.server).run()
    return 0


def run_ray(settings: Settings, args: argparse.Namespace) -> int:
    if args.replicas < 1:
        print("adamix serve: --replicas must be at least 1", file=sys.stderr)
        return 2
    if settings.metrics_port is not None:
        print("adamix serve: --metrics-port is one listener per process, so not with --engine ray: there /metrics "
              "(with a metrics key) answers for the replica the request reaches", file=sys.stderr)
        return 2
    if args.ray_address is None:
        os.environ.update(LOOPBACK_RAY_ENV)  # before `ray` is imported; inherited by the processes it starts
    try:
        from server import ray_serve
    except ImportError as exc:
        print(f"adamix serve: --engine ray needs Ray Serve: pip install 'adamix-serve[ray]' ({exc})", file=sys.stderr)
        return 2
    ray_serve.deploy(settings, args.replicas, args.ray_address, args.ray_replica_cpus)
    print(f"adamix serve: {args.replicas} Ray Serve replica(s) on http://{settings.host}:{settings.port}", flush=True)
    if args.ray_address is not None:
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    import ray
    from ray import serve

    serve.shutdown()  # each replica drains (graceful_shutdown_timeout_s = drain_timeout_s), then stops
    ray.shutdown()
    return 0
