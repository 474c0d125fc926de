"""`adamix registry check [--repair]`: verify a registry directory offline; rebuild manifests moved aside."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("registry", help="check (and repair) an adapter registry directory",
                              description="Check an adapter registry directory: every manifest, every blob's hash. "
                                          "Unreadable manifests are moved aside (never overwritten); --repair "
                                          "rebuilds their versions from the blobs they name.")
    sub = p.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="report problems; with --repair, recover what can be recovered")
    check.add_argument("--registry", type=Path, required=True, help="the registry directory")
    check.add_argument("--backbone", type=Path, help="local Hugging Face model directory (default: embedded MiniLM)")
    check.add_argument("--repair", action="store_true", help="rebuild the manifests moved aside from their blobs")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from adamix import load_backbone
    from adamix.registry import AdapterRegistry

    if not (args.registry / "tasks").is_dir():
        print(f"adamix registry check: {args.registry} is not a registry (no tasks/ directory)", file=sys.stderr)
        return 2
    _, _, info = load_backbone(args.backbone)
    registry = AdapterRegistry(args.registry, info)
    for problem in registry.problems:
        print(f"problem: {problem}")
    if args.repair:
        for line in registry.repair():
            print(f"repair: {line}")
    print(f"{len(registry)} task(s), {len(registry.problems)} problem(s)")
    return 0 if not registry.problems or args.repair else 1
