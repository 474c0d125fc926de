"""`adamix adapters list|upload|activate|delete`: a client of a running server's adapter endpoints."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from adamix.client import DEFAULT_URL


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("adapters", help="list, upload, activate or delete adapters on a running server",
                              description="Manage the adapters of a running `adamix serve`.")
    p.add_argument("--url", default=os.environ.get("ADAMIX_URL", DEFAULT_URL),
                   help=f"server URL (default $ADAMIX_URL or {DEFAULT_URL})")
    p.add_argument("--api-key", default=os.environ.get("ADAMIX_API_KEY"),
                   help="bearer API key (default $ADAMIX_API_KEY); admin for upload/activate/delete")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    sub = p.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="every task (or one) with its versions")
    ls.add_argument("task", nargs="?")
    up = sub.add_parser("upload", help="upload a .safetensors adapter as a new active version of TASK")
    up.add_argument("task")
    up.add_argument("file", type=Path)
    act = sub.add_parser("activate", help="make an existing version of TASK active (rollback)")
    act.add_argument("task")
    act.add_argument("version")
    rm = sub.add_parser("delete", help="delete TASK (every version) or one --version")
    rm.add_argument("task")
    rm.add_argument("--version")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adamix.client import AdapterClient, ClientError

    client, cmd = AdapterClient(args.url, args.api_key, args.timeout), args.adapters_command
    try:
        if cmd == "list":
            result = client.list(args.task)
        elif cmd == "upload":
            result = client.upload(args.task, args.file.read_bytes())
        elif cmd == "activate":
            result = client.activate(args.task, args.version)
        else:
            result = client.delete(args.task, args.version)
    except OSError as exc:  # the local file
        print(f"adamix adapters: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"adamix adapters: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=None if cmd == "delete" else 1))
    return 0
