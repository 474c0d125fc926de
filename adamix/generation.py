"""The registry's generation: a counter that every write bumps, with the tasks the latest writes changed.

`<root>/generation` is one small JSON file, replaced atomically under the registry's write lock:
    {"generation": 42, "changes": [[41, "sst2", 1764583200.5], [42, "team-a", 1764583201.2]]}
A replica polls it (one small read) and re-reads only the manifests of the tasks changed since the
generation it last applied; one that fell behind the window of recent changes re-reads every manifest.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from adamix.atomic import atomic_write

WINDOW = 1024  # recent changes kept in the file


@dataclass(frozen=True)
class Generation:
    number: int
    changes: tuple[tuple[int, str, float], ...] = ()  # (generation, task, time of the write), oldest first

    def changed_since(self, seen: int) -> dict[str, float] | None:
        """Task -> time of its latest change after generation `seen`; None when the window no longer reaches back."""
        if self.number == seen:
            return {}
        if not self.changes or self.changes[0][0] > seen + 1:
            return None
        return {task: when for number, task, when in self.changes if number > seen}


def read_generation(path: Path) -> Generation:
    """The generation in `path` (0 when there is none yet); ValueError when the file is not one."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Generation(0)
    number, changes = data["generation"], data["changes"]
    if not isinstance(number, int) or number < 0:
        raise ValueError(f"{path}: generation must be a non-negative integer")
    return Generation(number, tuple((int(n), str(t), float(w)) for n, t, w in changes))


def bump(path: Path, task: str, tmp_dir: Path) -> Generation:
    """Record a change to `task` (call it under the registry's write lock); returns the new generation."""
    try:
        current = read_generation(path)
    except (ValueError, KeyError, TypeError):  # unreadable: start a new window past it (readers rescan)
        current = Generation(0)
    new = Generation(current.number + 1, (*current.changes, (current.number + 1, task, time.time()))[-WINDOW:])
    atomic_write(path, json.dumps({"generation": new.number, "changes": new.changes}).encode(), tmp_dir=tmp_dir)
    return new
