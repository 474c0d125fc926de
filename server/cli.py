"""The `adamix` command: one entry point; each package registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define `register(subparsers)`; each subcommand sets `func(args) -> int` as its default.
_COMMAND_MODULES = ("trainer.cli", "server.serve_cli", "server.keys_cli", "server.adapters_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adamix", description="AdaMix Serve: train, serve and manage AdaMix adapters.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not a not-yet-built command module
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
