"""`adamix keys new NAME [--admin] [--tasks PATTERN...] --file FILE`: make an API key, store only its hash."""
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
    new.add_argument("--file", type=Path, required=True, help="the keys file (JSON)")
    new.set_defaults(func=run_new)


def add_key(path: Path, name: str, admin: bool, tasks: list[str]) -> str:
    """Append a new key to the keys file atomically (temp file 0600, fsync, rename); return the key."""
    from server.auth import KeyFileError, hash_key, parse_keys

    if not admin and not tasks:
        raise KeyFileError("give --admin or --tasks PATTERN...: a key with neither could do nothing")
    data = json.loads(path.read_text()) if path.exists() else {"keys": []}
    existing = parse_keys(data, str(path))
    if any(k.principal.name == name for k in existing):
        raise KeyFileError(f"{path} already has a key named {name!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry: dict = {"name": name, "sha256": hash_key(key), "admin": admin}
    if tasks:
        entry["tasks"] = tasks
    data["keys"].append(entry)
    parse_keys(data, str(path))  # refuse bad patterns before anything is written
    atomic_write(path, json.dumps(data, indent=1).encode() + b"\n", mode=0o600)
    return key


def run_new(args: argparse.Namespace) -> int:
    from server.auth import KeyFileError

    try:
        key = add_key(args.file, args.name, args.admin, args.tasks)
    except (KeyFileError, json.JSONDecodeError, OSError) as exc:
        print(f"adamix keys new: {exc}", file=sys.stderr)
        return 2
    print(key)
    scope = "admin" if args.admin else f"tasks {args.tasks}"
    print(f"key {args.name!r} ({scope}) added to {args.file}; it is shown only this once, store it now",
          file=sys.stderr)
    return 0
