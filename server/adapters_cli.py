"""`adamix adapters list|upload|activate|delete`: a client of a running server's adapter endpoints."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


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


def _request(args: argparse.Namespace):
    """(method, path, keyword arguments for httpx) for the chosen action."""
    cmd = args.adapters_command
    if cmd == "list":
        return "GET", "/v1/adapters" + (f"/{args.task}" if args.task else ""), {}
    if cmd == "upload":
        return "PUT", f"/v1/adapters/{args.task}", {"content": args.file.read_bytes(),
                                                   "headers": {"Content-Type": "application/octet-stream"}}
    if cmd == "activate":
        return "POST", f"/v1/adapters/{args.task}/activate", {"json": {"version": args.version}}
    path = f"/v1/adapters/{args.task}" + (f"/versions/{args.version}" if args.version else "")
    return "DELETE", path, {}


def run(args: argparse.Namespace) -> int:
    import httpx

    try:
        method, path, kwargs = _request(args)
    except OSError as exc:
        print(f"adamix adapters: {exc}", file=sys.stderr)
        return 2
    headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {args.api_key}"} if args.api_key else {})}
    url = args.url.rstrip("/") + path
    try:
        response = httpx.request(method, url, headers=headers, timeout=args.timeout, **kwargs)
    except httpx.HTTPError as exc:
        print(f"adamix adapters: could not reach {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code >= 400:
        try:
            err = response.json()["error"]
            print(f"adamix adapters: {response.status_code} {err['code']}: {err['message']}", file=sys.stderr)
        except (ValueError, KeyError, TypeError):
            print(f"adamix adapters: {response.status_code}: {response.text[:500]}", file=sys.stderr)
        return 1
    if response.status_code == 204:
        print(json.dumps({"deleted": args.task, "version": args.version}))
    else:
        print(json.dumps(response.json(), indent=1))
    return 0
