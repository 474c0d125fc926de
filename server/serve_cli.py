"""`adamix serve`: one flag per `Settings` field (generated, so the two never drift); flags override
`ADAMIX_*` environment settings, which override the defaults. Runs uvicorn on `create_app`."""
from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from server.settings import Settings

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
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=max(1.0, settings.drain_timeout_s),
                            limit_concurrency=settings.max_connections, log_config=None)  # server/logs.py's
    DrainingServer(config, app.state.server).run()
    return 0
