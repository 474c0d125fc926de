"""Bearer API keys with scopes, and a per-key token-bucket rate limit.

Keys live in a JSON file (`adamix keys new` writes it) that stores only each key's sha256:
    {"keys": [{"name": "ops", "sha256": "<hex>", "admin": true},
              {"name": "team-a", "sha256": "<hex>", "tasks": ["sst2", "team-a-*"]}]}
`admin` keys manage adapters and may predict on every task; tenant keys predict (and read adapter
info) only on tasks matching one of their patterns (`*` matches any run of name characters); a key
with `"metrics": true` may read `/metrics` (so may admin keys). The file is read again when it changes
on disk (checked every few seconds) and on SIGHUP, so a revoked key stops working without a restart;
a file that no longer parses keeps the keys last read and is reported.
"""
from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from server.errors import ForbiddenError, RateLimitedError, UnauthorizedError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_BUCKETS = 100_000
_PATTERN = re.compile(r"^[a-z0-9_*-]{1,64}$")


class KeyFileError(ValueError):
    """The API keys file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a named key, its admin flag and task patterns."""

    name: str
    admin: bool = False
    tasks: tuple[str, ...] = ()
    metrics: bool = False

    def may_use(self, task: str) -> bool:
        return self.admin or any(fnmatch.fnmatchcase(task, p) for p in self.tasks)

    def require_task(self, task: str) -> None:
        if not self.may_use(task):
            raise ForbiddenError(f"API key {self.name!r} may not use task {task!r}; its tasks: {list(self.tasks)}",
                                 "task")

    def require_metrics(self) -> None:
        if not (self.admin or self.metrics):
            raise ForbiddenError(f"API key {self.name!r} may not read metrics; it needs \"metrics\": true "
                                 "(`adamix keys new NAME --metrics`)", "authorization")

    def require_admin(self) -> None:
        if not self.admin:
            raise ForbiddenError(f"API key {self.name!r} is not an admin key; managing adapters needs one",
                                 "authorization")


OPEN_ACCESS = Principal("anonymous", admin=True)  # no keys configured: loopback only (or insecure_no_auth)


@dataclass(frozen=True)
class StoredKey:
    principal: Principal
    sha256: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(data: object, source: str = "keys file") -> list[StoredKey]:
    """Validate the keys file's JSON, naming the bad entry and field."""
    if not isinstance(data, dict) or set(data) != {"keys"} or not isinstance(data["keys"], list):
        raise KeyFileError(f'{source}: expected {{"keys": [...]}}')
    out, names = [], set()
    for i, entry in enumerate(data["keys"]):
        where = f"{source}: keys[{i}]"
        if not isinstance(entry, dict) or not set(entry) <= {"name", "sha256", "admin", "tasks", "metrics"}:
            raise KeyFileError(f"{where}: expected an object with name, sha256 and admin, tasks and/or metrics")
        name, sha, admin, tasks = entry.get("name"), entry.get("sha256"), entry.get("admin", False), entry.get(
            "tasks", [])
        metrics = entry.get("metrics", False)
        if not isinstance(name, str) or not name or name in names:
            raise KeyFileError(f"{where}.name: a non-empty, unique string is required, got {name!r}")
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            raise KeyFileError(f"{where}.sha256: 64 lower-case hex digits required (the key's sha256, never the key)")
        if not isinstance(admin, bool):
            raise KeyFileError(f"{where}.admin: true or false required, got {admin!r}")
        if not isinstance(tasks, list) or not all(isinstance(p, str) and _PATTERN.fullmatch(p) for p in tasks):
            raise KeyFileError(f"{where}.tasks: a list of task-name patterns (a-z, 0-9, '_', '-', '*') required")
        if not isinstance(metrics, bool):
            raise KeyFileError(f"{where}.metrics: true or false required, got {metrics!r}")
        if not admin and not tasks and not metrics:
            raise KeyFileError(f"{where}: a key needs admin: true or at least one task pattern (or metrics: true)")
        names.add(name)
        out.append(StoredKey(Principal(name, admin, tuple(tasks), metrics), sha))
    return out


def load_keys(path: Path) -> list[StoredKey]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise KeyFileError(f"API keys file {path} does not exist; create it with `adamix keys new`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"API keys file {path} is unreadable: {exc}") from None
    return parse_keys(data, str(path))


class Authenticator:
    """Maps an `Authorization: Bearer <key>` header to a `Principal` (or open access with no keys)."""

    def __init__(self, keys: list[StoredKey] | None, path: Path | None = None) -> None:
        self.keys = keys  # None = no keys configured: every route open (loopback only)
        self.path = path
        self._seen = _file_state(path)

    @classmethod
    def from_file(cls, path: Path | None) -> Authenticator:
        return cls(None if path is None else load_keys(path), path)

    def reload(self, force: bool = False) -> bool:
        """Read the keys file again if it changed on disk (or `force`); True when new keys took effect.

        A file that no longer parses leaves the keys as they were and raises `KeyFileError`.
        """
        if self.path is None:
            return False
        seen = _file_state(self.path)
        if not force and seen == self._seen:
            return False
        self._seen = seen
        self.keys = load_keys(self.path)  # one reference swap: a request sees the old list or the new
        return True

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def authenticate(self, authorization: str | None) -> Principal:
        if self.keys is None:
            return OPEN_ACCESS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("this route needs an API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(token.strip())
        found = None
        for stored in self.keys:  # every key compared, in constant time, so timing reveals nothing
            if hmac.compare_digest(digest, stored.sha256):
                found = stored.principal
        if found is None:
            raise UnauthorizedError("unknown API key")
        return found


def _file_state(path: Path | None) -> tuple | None:
    """What tells a changed file: inode, size and modification time (a rewrite by rename changes the inode)."""
    try:
        st = Path(path).stat() if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)


class RateLimiter:
    """One token bucket per key name: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, name: str, cost: float = 1.0, unit: str = "requests") -> None:
        """Spend `cost` tokens of `name`'s bucket or raise 429 saying when they will be available.

        A cost above the burst is capped at the burst (it waits for a full bucket rather than forever).
        """
        now = time.monotonic()
        cost = min(float(cost), float(self.burst))
        with self._lock:
            tokens, last = self._buckets.get(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[name] = (tokens - cost, now)
                return
            self._buckets[name] = (tokens, now)
            if len(self._buckets) > MAX_BUCKETS:  # many addresses: forget the full (idle) buckets
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
        wait = (cost - tokens) / self.rate
        raise RateLimitedError(f"rate limit of {self.rate:g} {unit}/s (burst {self.burst}) exceeded for "
                               f"{name!r}; retry in {wait:.2f} s", None, {"Retry-After": str(max(1, math.ceil(wait)))})
