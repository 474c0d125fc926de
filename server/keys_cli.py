"""`adamix keys new|list|revoke`: the API keys file (only each key's sha256 is ever stored).

A running server re-reads the file when it changes (and on SIGHUP), so a revoked key stops working
within `keys_reload_s`, with no restart.
"""
from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

from adamix.atomic import atomic_write

KEY_PREFIX = "amx_"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="manage the server's API keys file",
                              description="Manage the API keys file the server reads (--api-keys).")
    sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = sub.add_parser("new", help="generate a key, print it once, store only its sha256",
                         description="Generate an API key, print it once on stdout, and add its sha256 to FILE "
                                     "(created with mode 0600 if missing). The key itself is never stored.")
    new.add_argument("name", help="a unique name for the key (shown in logs and errors)")
    new.add_argument("--admin", action="store_true", help="may manage adapters and predict on every task")
    new.add_argument("--tasks", nargs="+", metavar="PATTERN", default=[],
                     help="task-name patterns this key may predict on ('*' matches any run), e.g. sst2 team-a-*")
    new.add_argument("--metrics", action="store_true", help="may read /metrics (e.g. for Prometheus)")
    new.add_argument("--file", type=Path, required=True, help="the keys file (JSON)")
    new.set_defaults(func=run_new)
    ls = sub.add_parser("list", help="the keys' names and scopes (never the keys)")
    ls.add_argument("--file", type=Path, required=True, help="the keys file (JSON)")
    ls.set_defaults(func=run_list)
    rm = sub.add_parser("revoke", help="remove a key; a running server stops accepting it within seconds")
    rm.add_argument("name")
    rm.add_argument("--file", type=Path, required=True, help="the keys file (JSON)")
    rm.set_defaults(func=run_revoke)


def add_key(path: Path, name: str, admin: bool, tasks: list[str], metrics: bool = False) -> str:
    """Append a new key to the keys file atomically (temp file 0600, fsync, rename); return the key."""
    from server.auth import KeyFileError, hash_key

    if not admin and not tasks and not metrics:
        raise KeyFileError("give --admin, --tasks PATTERN... or --metrics: a key with neither scope could do nothing")
    data = _read(path)
    if any(e["name"] == name for e in data["keys"]):
        raise KeyFileError(f"{path} already has a key named {name!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry: dict = {"name": name, "sha256": hash_key(key), "admin": admin}
    if tasks:
        entry["tasks"] = tasks
    if metrics:
        entry["metrics"] = True
    data["keys"].append(entry)
    _write(path, data)
    return key


def revoke_key(path: Path, name: str) -> None:
    from server.auth import KeyFileError

    data = _read(path, must_exist=True)
    left = [e for e in data["keys"] if e["name"] != name]
    if len(left) == len(data["keys"]):
        raise KeyFileError(f"{path} has no key named {name!r}; keys: {[e['name'] for e in data['keys']]}")
    _write(path, {"keys": left})


def _read(path: Path, must_exist: bool = False) -> dict:
    from server.auth import KeyFileError, load_keys

    if not path.exists() and not must_exist:
        return {"keys": []}
    load_keys(path)  # refuses a malformed file, naming the problem
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def _write(path: Path, data: dict) -> None:
    from server.auth import parse_keys

    parse_keys(data, str(path))  # refuse bad patterns before anything is written
    atomic_write(path, json.dumps(data, indent=1).encode() + b"\n", mode=0o600)


def run_new(args: argparse.Namespace) -> int:
    from server.auth import KeyFileError

    try:
        key = add_key(args.file, args.name, args.admin, args.tasks, args.metrics)
    except (KeyFileError, json.JSONDecodeError, OSError) as exc:
        print(f"adamix keys new: {exc}", file=sys.stderr)
        return 2
    print(key)
    scope = "admin" if args.admin else f"tasks {args.tasks}" if args.tasks else "metrics"
    print(f"key {args.name!r} ({scope}) added to {args.file}; it is shown only this once, store it now",
          file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from server.auth import KeyFileError, load_keys

    try:
        keys = load_keys(args.file)
    except KeyFileError as exc:
        print(f"adamix keys list: {exc}", file=sys.stderr)
        return 2
    for k in keys:
        p = k.principal
        scopes = ["admin"] * p.admin + ["metrics"] * p.metrics + [f"tasks {list(p.tasks)}"] * bool(p.tasks)
        print(f"{p.name}\t{', '.join(scopes)}\tsha256 {k.sha256[:12]}...")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from server.auth import KeyFileError

    try:
        revoke_key(args.file, args.name)
    except (KeyFileError, OSError) as exc:
        print(f"adamix keys revoke: {exc}", file=sys.stderr)
        return 2
    print(f"key {args.name!r} removed from {args.file}; running servers stop accepting it within seconds",
          file=sys.stderr)
    return 0
