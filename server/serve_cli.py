"""`adamix serve`: flags override `ADAMIX_*` environment settings; runs uvicorn on `create_app`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Flags and the Settings field each one sets; a flag left out keeps the env/default value.
_FLAGS = {"host": "host", "port": "port", "backbone": "backbone", "registry": "registry", "device": "device",
          "dtype": "dtype", "max_batch_rows": "max_batch_rows", "max_wait_ms": "max_wait_ms",
          "device_pool_mb": "device_pool_mb", "host_cache_mb": "host_cache_mb", "pinned_tasks": "pinned_tasks",
          "log_level": "log_level", "api_keys_file": "api_keys_file", "rate_limit_per_s": "rate_limit_per_s",
          "drain_timeout_s": "drain_timeout_s"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve every registered task over HTTP from one backbone",
                              description="Start the multi-task inference server. Flags override ADAMIX_* "
                                          "environment variables.")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--backbone", type=Path, help="local Hugging Face model directory (default: embedded MiniLM)")
    p.add_argument("--registry", type=Path, help="adapter registry directory (default ./adamix-registry)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"],
                   help="default auto: float16 on cuda, float32 on cpu")
    p.add_argument("--max-batch-rows", type=int, help="rows per backbone forward (default 64)")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits for more requests (default 2)")
    p.add_argument("--device-pool-mb", type=float, help="memory budget for resident adapters (default 512)")
    p.add_argument("--host-cache-mb", type=float, help="memory budget for parsed adapters (default 512)")
    p.add_argument("--pin", dest="pinned_tasks", action="append", metavar="TASK", help="keep TASK resident (repeat)")
    p.add_argument("--api-keys", dest="api_keys_file", type=Path, metavar="FILE",
                   help="JSON file of API keys (`adamix keys new`); without it the server only listens on loopback")
    p.add_argument("--rate-limit-per-s", type=float, help="requests/s per API key, beyond it 429 (default: none)")
    p.add_argument("--drain-timeout-s", type=float, help="on SIGTERM, how long accepted requests may take to finish "
                                                         "(default 30)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    from server.settings import Settings

    overrides = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag, None) is not None}
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from server.app import create_app
    from server.auth import KeyFileError
    from server.drain import DrainingServer

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"adamix serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if settings.backbone is not None and not (settings.backbone / "config.json").is_file():
        print(f"adamix serve: --backbone {settings.backbone} is not a Hugging Face model directory (no config.json)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except KeyFileError as exc:
        print(f"adamix serve: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=max(1.0, settings.drain_timeout_s))
    DrainingServer(config, app.state.server).run()
    return 0
