"""The `adamix` command. Its subcommands come from the `adamix.commands` entry-point group (see pyproject.toml):
each is a `register(subparsers)` function that adds one subcommand whose `func(args) -> int` runs it, so this
module names no package that provides them. Also `python -m adamix.cli` (e.g. under torchrun)."""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from adamix import allocator

COMMAND_GROUP = "adamix.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adamix",
                                     description="AdaMix Serve: train, serve and manage AdaMix adapters.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name)
    if not commands:
        parser.error(f"no subcommands are registered in the {COMMAND_GROUP!r} entry-point group: install the "
                     "package (pip install -e .)")
    for command in commands:
        command.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    allocator.tune()  # every command runs forwards: keep their freed activations mapped (see adamix/allocator.py)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
