"""`AdapterRegistry`: the on-disk adapter store (the disk tier).

Layout under `root`:
    blobs/<sha256>.safetensors   content-addressed adapter files (immutable)
    tasks/<task>.json            one manifest per task: its versions and the active one
    tmp/                         files being written; anything left here after a crash is never served
Every write is atomic (temp file, fsync, rename, directory fsync); every manifest change is a new
immutable `TaskManifest` swapped in by one reference assignment, so a reader sees either the old or the
new state. Every blob is validated (`adamix.read_adapter_bytes`) and hash-checked whenever it is read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from adamix import AdapterFile, AdapterFileError, BackboneInfo, read_adapter_bytes
from adamix.adapter_file import MAX_FILE_BYTES
from adamix.atomic import atomic_write, fsync_dir
from server.errors import (AdapterUnavailableError, InvalidAdapterError, InvalidTaskNameError, ServeError,
                           TaskNotFoundError, VersionNotFoundError)

log = logging.getLogger("adamix.registry")

TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_CHARS = 16  # version id = the first 16 hex digits of the blob's sha256
_VERSION = re.compile(r"^[0-9a-f]{16}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MANIFEST_FORMAT = 1
STALE_TEMP_SECONDS = 600  # temp files older than this are leftovers of a crash; younger ones may be in use


def check_task_name(task: str) -> str:
    """The only gate between a client-sent task name and a path."""
    if not isinstance(task, str) or not TASK_NAME.fullmatch(task):
        raise InvalidTaskNameError(f"task name {task!r} is invalid: expected 1-64 characters of a-z, 0-9, '_' or '-',"
                                   " starting with a letter or digit", "task")
    return task


@dataclass(frozen=True)
class VersionRecord:
    """One immutable version of a task's adapter."""

    version: str
    sha256: str
    size: int
    created: float
    kind: str
    task_type: str
    labels: tuple[str, ...]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> VersionRecord:
        return cls(version=data["version"], sha256=data["sha256"], size=int(data["size"]),
                   created=float(data["created"]), kind=data["kind"], task_type=data["task_type"],
                   labels=tuple(data["labels"]))


@dataclass(frozen=True)
class TaskManifest:
    """A task's versions (oldest first) and its active version; replaced whole on every change."""

    task: str
    active: str | None
    versions: tuple[VersionRecord, ...]

    def record(self, version: str) -> VersionRecord:
        for record in self.versions:
            if record.version == version:
                return record
        raise VersionNotFoundError(f"task {self.task!r} has no version {version!r}; versions: "
                                   f"{[r.version for r in self.versions]}", "version")

    @property
    def active_record(self) -> VersionRecord:
        if self.active is None:
            raise TaskNotFoundError(f"task {self.task!r} has no active version", "task")
        return self.record(self.active)

    def to_dict(self) -> dict:
        return {"format_version": MANIFEST_FORMAT, "task": self.task, "active": self.active,
                "versions": [r.to_dict() for r in self.versions]}


class AdapterRegistry:
    """Tasks -> immutable, validated adapter versions on disk, for one backbone."""

    def __init__(self, root: str | os.PathLike, backbone: BackboneInfo, verify: bool = True) -> None:
        self.root = Path(root)
        self.backbone = backbone
        self._blobs = self.root / "blobs"
        self._tasks = self.root / "tasks"
        self._tmp = self.root / "tmp"
        self.created = not self._tasks.is_dir()  # a fresh store (the server installs demo adapters into it)
        for d in (self._blobs, self._tasks, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # serialises writers; readers only read `self._manifests`
        self._manifests: dict[str, TaskManifest] = {}
        self.problems: list[str] = []  # what start-up verification found, for logs and operators
        self._bad_blobs: set[str] = set()
        self._scan(verify)

    # ------------------------------------------------------------------ reading

    def tasks(self) -> list[str]:
        return sorted(self._manifests)

    def get(self, task: str) -> TaskManifest:
        manifest = self._manifests.get(check_task_name(task))
        if manifest is None:
            raise TaskNotFoundError(f"unknown task {task!r}", "task")
        return manifest

    def __contains__(self, task: str) -> bool:
        return task in self._manifests

    def __len__(self) -> int:
        return len(self._manifests)

    def read_bytes(self, task: str, version: str) -> bytes:
        """The blob of (task, version), hash-checked."""
        record = self.get(task).record(version)
        if record.sha256 in self._bad_blobs:
            raise AdapterUnavailableError(f"version {version} of task {task!r} failed verification and is not "
                                          "served; upload it again", "version")
        try:
            data = self._blob_path(record.sha256).read_bytes()
        except FileNotFoundError:
            data = b""
        if hashlib.sha256(data).hexdigest() != record.sha256:
            self._bad_blobs.add(record.sha256)
            log.error("blob %s of task %r version %s is missing or corrupt", record.sha256, task, version)
            raise AdapterUnavailableError(f"version {version} of task {task!r} is missing or corrupt on disk and is "
                                          "not served; upload it again", "version")
        return data

    def load(self, task: str, version: str) -> AdapterFile:
        """Read, hash-check and validate one version against the backbone."""
        data = self.read_bytes(task, version)
        try:
            return read_adapter_bytes(data, self.backbone)
        except AdapterFileError as exc:  # a stored blob that no longer validates: never served
            self._bad_blobs.add(self.get(task).record(version).sha256)
            raise AdapterUnavailableError(f"stored version {version} of task {task!r} does not validate: {exc}",
                                          "version") from None

    # ------------------------------------------------------------------ writing

    def publish(self, task: str, data: bytes, check: Callable[[AdapterFile], None] | None = None) -> VersionRecord:
        """Validate `data` against the backbone (and `check`), store it, make it the active version. Idempotent."""
        return self._publish(task, data, check, None)[0]

    def publish_file(self, task: str, path: Path, check: Callable[[AdapterFile], None] | None = None
                     ) -> tuple[VersionRecord, bool]:
        """`publish` a file written under `upload_path()`, moving it into the store (it is consumed either way).

        Returns (record, created): created is False when these exact bytes already were a version of `task`.
        """
        try:
            return self._publish(task, path.read_bytes(), check, path)
        finally:
            path.unlink(missing_ok=True)

    def upload_path(self) -> Path:
        """A fresh, empty temp file for an upload in progress (never served; removed at start-up if stale)."""
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="upload-", suffix=".part")
        os.close(fd)
        return Path(tmp)

    def _publish(self, task: str, data: bytes, check: Callable[[AdapterFile], None] | None,
                 source: Path | None) -> tuple[VersionRecord, bool]:
        check_task_name(task)
        if len(data) > MAX_FILE_BYTES:
            raise InvalidAdapterError(f"adapter is {len(data)} bytes, at most {MAX_FILE_BYTES} allowed", "file")
        try:
            adapter = read_adapter_bytes(data, self.backbone)
        except AdapterFileError as exc:
            raise InvalidAdapterError(str(exc), exc.field) from None
        if check is not None:
            check(adapter)
        sha = hashlib.sha256(data).hexdigest()
        record = VersionRecord(version=sha[:VERSION_CHARS], sha256=sha, size=len(data), created=time.time(),
                               kind=adapter.kind, task_type=adapter.task.type, labels=adapter.task.labels)
        with self._lock:
            blob = self._blob_path(sha)
            if not blob.is_file() or sha in self._bad_blobs:
                if source is not None:
                    self._move_atomic(source, blob)
                else:
                    self._write_atomic(blob, data)
                self._bad_blobs.discard(sha)
            old = self._manifests.get(task)
            versions = old.versions if old else ()
            existing = next((r for r in versions if r.version == record.version), None)
            if existing is not None:
                record = existing
            else:
                versions = (*versions, record)
            self._save(TaskManifest(task, record.version, versions))
        return record, existing is None

    def activate(self, task: str, version: str) -> VersionRecord:
        with self._lock:
            manifest = self.get(task)
            record = manifest.record(version)
            self._save(replace(manifest, active=version))
        return record

    def delete(self, task: str, version: str | None = None) -> None:
        """Delete a task (every version), or one version; deleting the active version activates the newest left.

        Blobs no task references any more are removed; requests already holding the parsed adapter finish.
        """
        with self._lock:
            manifest = self.get(task)
            gone = manifest.versions if version is None else (manifest.record(version),)
            left = tuple(r for r in manifest.versions if r not in gone)
            if left:
                active = manifest.active if manifest.active not in {r.version for r in gone} else left[-1].version
                self._save(TaskManifest(task, active, left))
            else:
                self._remove_manifest(task)
            used = {r.sha256 for m in self._manifests.values() for r in m.versions}
            for record in gone:
                if record.sha256 not in used:
                    self._blob_path(record.sha256).unlink(missing_ok=True)

    # ------------------------------------------------------------------ internals

    def _blob_path(self, sha: str) -> Path:
        if not SHA256_HEX.fullmatch(sha):
            raise ValueError(f"not a sha256: {sha!r}")
        return self._blobs / f"{sha}.safetensors"

    def _save(self, manifest: TaskManifest) -> None:
        data = json.dumps(manifest.to_dict(), indent=1, sort_keys=True).encode()
        self._write_atomic(self._tasks / f"{manifest.task}.json", data)
        self._manifests[manifest.task] = manifest  # the single reference swap readers observe

    def _remove_manifest(self, task: str) -> None:
        (self._tasks / f"{task}.json").unlink(missing_ok=True)
        fsync_dir(self._tasks)
        self._manifests.pop(task, None)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        atomic_write(path, data, tmp_dir=self._tmp)

    def _move_atomic(self, source: Path, path: Path) -> None:
        """Make the finished temp file `source` (under tmp/) durable, then rename it to `path`."""
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(source, path)
        fsync_dir(path.parent)

    def _scan(self, verify: bool) -> None:
        """Read every manifest; drop leftover temp files; with `verify`, hash-check every referenced blob."""
        for leftover in self._tmp.iterdir():  # never served: only manifests name versions
            if time.time() - leftover.stat().st_mtime < STALE_TEMP_SECONDS:
                self.problems.append(f"left {leftover.name} in tmp/: recent, maybe another process's write")
                continue
            self.problems.append(f"removed half-written file {leftover.name} (interrupted write)")
            leftover.unlink(missing_ok=True)
        for path in sorted(self._tasks.glob("*.json")):
            try:
                manifest = self._read_manifest(path)
            except (OSError, ValueError, KeyError, TypeError, ServeError) as exc:
                self.problems.append(f"ignored unreadable manifest {path.name}: {exc}")
                continue
            self._manifests[manifest.task] = manifest
        if verify:
            for sha in sorted({r.sha256 for m in self._manifests.values() for r in m.versions}):
                path = self._blob_path(sha)
                try:
                    ok = hashlib.sha256(path.read_bytes()).hexdigest() == sha
                except FileNotFoundError:
                    ok = False
                if not ok:
                    self._bad_blobs.add(sha)
                    self.problems.append(f"blob {sha} is missing or corrupt; versions using it are not served")
        for problem in self.problems:
            log.warning("registry %s: %s", self.root, problem)

    def _read_manifest(self, path: Path) -> TaskManifest:
        data = json.loads(path.read_text())
        task = check_task_name(data["task"])
        if path.stem != task:
            raise ValueError(f"manifest names task {task!r} but is stored as {path.name}")
        versions = tuple(VersionRecord.from_dict(v) for v in data["versions"])
        for v in versions:
            if not SHA256_HEX.fullmatch(v.sha256) or not _VERSION.fullmatch(v.version) \
                    or not v.sha256.startswith(v.version):
                raise ValueError(f"version {v.version!r} does not match its sha256")
        active = data["active"]
        if active is not None and active not in {v.version for v in versions}:
            raise ValueError(f"active version {active!r} is not among the versions")
        return TaskManifest(task, active, versions)
