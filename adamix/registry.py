"""`AdapterRegistry`: the on-disk adapter store (tasks -> immutable, validated versions), for one backbone.

Layout under `root`:
    blobs/<sha256>.safetensors   content-addressed adapter files (immutable)
    tasks/<task>.json            one manifest per task: its versions and the active one
    tmp/                         files being written; anything left here after a crash is never served
    lock                         taken (`fcntl.flock`, exclusive) around every write
    generation                   a counter every write bumps, with the tasks changed (`adamix.generation`)
Every write is atomic (temp file, fsync, rename, directory fsync) and happens under the lock, after
re-reading the task's manifest from disk, so writers in other processes are never lost; `refresh()`
applies what other processes wrote (a replica polls it: one small read when nothing changed). Readers see
immutable `TaskManifest`s swapped in by one reference assignment: the old state or the new, never half.
Every blob is validated (`read_adapter_bytes`) and hash-checked whenever it is read. Errors are the domain
errors of `adamix.manifest`; the server maps them to HTTP in `server/errors.py`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from adamix.adapter_file import MAX_FILE_BYTES, AdapterFile, AdapterFileError, read_adapter_bytes
from adamix.atomic import atomic_write, fsync_dir
from adamix.backbone import BackboneInfo
from adamix.generation import Generation, bump, read_generation
from adamix.manifest import (MANIFEST_FORMAT, TASK_NAME, VERSION_CHARS, CorruptEntryError, Published,
                             StorageFullError, TaskManifest, TaskNotFoundError, VersionRecord, check_task_name)

log = logging.getLogger("adamix.registry")
QUARANTINE = ".corrupt-"  # tasks/<task>.json.corrupt-<time>: an unreadable manifest, moved aside
STALE_TEMP_SECONDS = 600  # temp files older than this are leftovers of a crash; younger ones may be in use


# ---------------------------------------------------------------- the store

class AdapterRegistry:
    """Tasks -> immutable, validated adapter versions on disk, for one backbone."""

    def __init__(self, root: str | os.PathLike, backbone: BackboneInfo, verify: bool = True) -> None:
        self.root = Path(root)
        self.backbone = backbone
        self._blobs, self._tasks, self._tmp = self.root / "blobs", self.root / "tasks", self.root / "tmp"
        self.created = not self._tasks.is_dir()  # a fresh store (the server installs demo adapters into it)
        for d in (self._blobs, self._tasks, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()  # flock is per open file: threads of one process queue here first
        self._manifests: dict[str, TaskManifest] = {}  # readers only ever read this
        self.problems: list[str] = []  # what start-up verification found, for logs and operators
        self._bad_blobs: set[str] = set()
        self._generation_file = self.root / "generation"
        self.generation = 0
        self.generation = self._read_generation().number  # before the scan: later changes are refreshed
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
            raise CorruptEntryError(f"version {version} of task {task!r} failed verification and is not served; "
                                    "upload it again", "version")
        try:
            data = self._blob_path(record.sha256).read_bytes()
        except FileNotFoundError:
            data = b""
        if hashlib.sha256(data).hexdigest() != record.sha256:
            self._bad_blobs.add(record.sha256)
            log.error("blob %s of task %r version %s is missing or corrupt", record.sha256, task, version)
            raise CorruptEntryError(f"version {version} of task {task!r} is missing or corrupt on disk and is not "
                                    "served; upload it again", "version")
        return data

    def load(self, task: str, version: str) -> AdapterFile:
        """Read, hash-check and validate one version against the backbone."""
        data = self.read_bytes(task, version)
        try:
            return read_adapter_bytes(data, self.backbone)
        except AdapterFileError as exc:  # a stored blob that no longer validates: never served
            self._bad_blobs.add(self.get(task).record(version).sha256)
            raise CorruptEntryError(f"stored version {version} of task {task!r} does not validate: {exc}",
                                    "version") from None

    def refresh(self) -> dict[str, float]:
        """Apply what other processes changed since the generation last applied: task -> seconds since its write.

        Each changed task's manifest is swapped in by one reference assignment (requests already holding a
        version finish on it); a replica that fell behind the window of recent changes re-reads them all.
        """
        current = self._read_generation()
        changed = current.changed_since(self.generation)
        if changed == {}:
            return {}
        now = time.time()
        if changed is None:
            changed = {path.stem: now for path in self._tasks.glob("*.json")} | {t: now for t in self._manifests}
        for task in changed:
            path = self._tasks / f"{task}.json"
            try:
                self._manifests[task] = self._read_manifest(path)
            except FileNotFoundError:
                self._manifests.pop(task, None)
            except (OSError, ValueError) as exc:  # mid-repair or broken: keep what was served, say so
                log.warning("registry %s: manifest %s unreadable on refresh, kept the version in memory: %s",
                            self.root, path.name, exc)
        self.generation = current.number
        return {task: max(0.0, now - when) for task, when in changed.items()}

    def _read_generation(self) -> Generation:
        try:
            return read_generation(self._generation_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("registry %s: unreadable generation file (%s): treating every manifest as changed", self.root,
                        exc)
            return Generation(self.generation + 1)

    # ------------------------------------------------------------------ writing

    def upload_path(self) -> Path:
        """A fresh, empty temp file for an upload in progress (never served; removed at start-up if stale)."""
        with _storage("creating an upload file"):
            fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="upload-", suffix=".part")
        os.close(fd)
        return Path(tmp)

    def publish(self, task: str, data: bytes, check: Callable[[AdapterFile], None] | None = None) -> VersionRecord:
        """Validate `data` (against the backbone, then `check`), store it and make it the active version.

        Re-publishing identical bytes is idempotent: that version is active again, nothing is stored.
        """
        return self._publish(task, data, check, None).record

    def publish_file(self, task: str, path: Path, check: Callable[[AdapterFile], None] | None = None) -> Published:
        """`publish` a file written under `upload_path()`, moving it into the store (it is consumed either way)."""
        try:
            return self._publish(task, path.read_bytes(), check, path)
        finally:
            path.unlink(missing_ok=True)

    def _publish(self, task: str, data: bytes, check: Callable[[AdapterFile], None] | None,
                 source: Path | None) -> Published:
        check_task_name(task)
        if len(data) > MAX_FILE_BYTES:
            raise AdapterFileError(f"adapter is {len(data)} bytes, at most {MAX_FILE_BYTES} allowed", "file")
        adapter = read_adapter_bytes(data, self.backbone)
        if check is not None:
            check(adapter)
        sha = hashlib.sha256(data).hexdigest()
        record = VersionRecord(version=sha[:VERSION_CHARS], sha256=sha, size=len(data), created=time.time(),
                               kind=adapter.kind, task_type=adapter.task.type, labels=adapter.task.labels)
        with self._write_lock():
            blob = self._blob_path(sha)
            if not blob.is_file() or sha in self._bad_blobs:
                with _storage(f"storing version {record.version} of task {task!r}"):
                    if source is not None:
                        _move_durably(source, blob)
                    else:
                        atomic_write(blob, data, tmp_dir=self._tmp)
                self._bad_blobs.discard(sha)
            old = self._reread(task)
            versions = old.versions if old else ()
            existing = next((r for r in versions if r.version == record.version), None)
            if existing is None:
                versions = (*versions, record)
            self._save(TaskManifest(task=task, active=record.version, versions=versions))
        return Published(existing or record, adapter, existing is None)

    def activate(self, task: str, version: str) -> VersionRecord:
        with self._write_lock():
            manifest = self._reread_existing(task)
            record = manifest.record(version)
            self._save(manifest.model_copy(update={"active": version}))
        return record

    def delete(self, task: str, version: str | None = None) -> None:
        """Delete a task (every version), or one version; deleting the active version activates the newest left.

        A blob is removed only when no manifest on disk references it any more; requests already holding
        the parsed adapter finish.
        """
        with self._write_lock():
            manifest = self._reread_existing(task)
            gone = manifest.versions if version is None else (manifest.record(version),)
            left = tuple(r for r in manifest.versions if r not in gone)
            if left:
                active = manifest.active if manifest.active not in {r.version for r in gone} else left[-1].version
                self._save(TaskManifest(task=task, active=active, versions=left))
            else:
                (self._tasks / f"{task}.json").unlink(missing_ok=True)
                fsync_dir(self._tasks)
                self._manifests.pop(task, None)
                self._bump(task)
            used = self._referenced_on_disk()
            for record in gone:
                if record.sha256 not in used:
                    self._blob_path(record.sha256).unlink(missing_ok=True)

    def repair(self) -> list[str]:
        """Rebuild the manifests moved aside at start-up from the blobs they name; what was done, line by line.

        A version is recovered when its blob is present and hash-checks; its record comes from the blob's
        own metadata, in the order the broken manifest named them, the last one active (unless the task has
        been uploaded to since: then the recovered versions join it, its active version unchanged).
        """
        done = []
        with self._write_lock():
            for aside in sorted(self._tasks.glob(f"*.json{QUARANTINE}*")):
                task = aside.name.partition(".json")[0]
                shas = list(dict.fromkeys(re.findall(r"[0-9a-f]{64}", aside.read_text(errors="replace"))))
                records = [r for r in (self._record_of(sha) for sha in shas) if r is not None]
                if not records or not TASK_NAME.fullmatch(task):
                    done.append(f"{aside.name}: no intact blob named in it; left as it is")
                    continue
                current = self._reread(task)
                known = {r.version for r in current.versions} if current else set()
                versions = (*(current.versions if current else ()), *(r for r in records if r.version not in known))
                active = current.active if current else records[-1].version
                self._save(TaskManifest(task=task, active=active, versions=versions))
                aside.unlink()
                done.append(f"{task}: recovered {len(records)} version(s) from {aside.name}; active {active}")
        return done

    def _record_of(self, sha: str) -> VersionRecord | None:
        """The record of an intact blob, read from its own metadata (None if missing, corrupt or not ours)."""
        try:
            data = self._blob_path(sha).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha:
                return None
            adapter = read_adapter_bytes(data, self.backbone)
        except (OSError, AdapterFileError):
            return None
        return VersionRecord(version=sha[:VERSION_CHARS], sha256=sha, size=len(data),
                             created=self._blob_path(sha).stat().st_mtime, kind=adapter.kind,
                             task_type=adapter.task.type, labels=adapter.task.labels)

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Exclusive across threads (a mutex) and processes or hosts sharing the directory (`flock`)."""
        with self._thread_lock, open(self.root / "lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _reread(self, task: str) -> TaskManifest | None:
        """Under the write lock: the task's manifest as another process may have left it on disk."""
        path = self._tasks / f"{task}.json"
        if not path.exists():
            self._manifests.pop(task, None)
            return None
        manifest = self._read_manifest(path)
        self._manifests[task] = manifest
        return manifest

    def _reread_existing(self, task: str) -> TaskManifest:
        manifest = self._reread(check_task_name(task))
        if manifest is None:
            raise TaskNotFoundError(f"unknown task {task!r}", "task")
        return manifest

    def _referenced_on_disk(self) -> set[str]:
        """Every blob any manifest on disk names (written by any process); unreadable and moved-aside ones keep
        every blob they might name."""
        used: set[str] = set()
        for path in self._tasks.glob("*.json*"):
            try:
                used.update(r.sha256 for r in self._read_manifest(path).versions)
            except (OSError, ValueError):  # unreadable: never delete a blob it might name
                used.update(re.findall(r"[0-9a-f]{64}", path.read_text(errors="replace")))
        return used

    def _blob_path(self, sha: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError(f"not a sha256: {sha!r}")
        return self._blobs / f"{sha}.safetensors"

    def _save(self, manifest: TaskManifest) -> None:
        data = json.dumps({"format_version": MANIFEST_FORMAT, **manifest.model_dump(mode="json")}, indent=1,
                          sort_keys=True).encode()
        with _storage(f"writing the manifest of task {manifest.task!r}"):
            atomic_write(self._tasks / f"{manifest.task}.json", data, tmp_dir=self._tmp)
        self._manifests[manifest.task] = manifest  # the single reference swap readers observe
        self._bump(manifest.task)

    def _bump(self, task: str) -> None:
        """Tell other processes that `task` changed (under the write lock, after the manifest is on disk)."""
        with _storage("bumping the registry generation"):
            new = bump(self._generation_file, task, self._tmp)
        if new.number == self.generation + 1:  # nothing else happened in between: this replica is current
            self.generation = new.number

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
            except (OSError, ValueError) as exc:  # moved aside, never overwritten: `repair()` rebuilds it
                aside = path.with_name(f"{path.name}{QUARANTINE}{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(path, aside)
                fsync_dir(self._tasks)
                self.problems.append(f"moved unreadable manifest {path.name} aside to {aside.name} ({_brief(exc)}); "
                                     "`adamix registry check --repair` rebuilds its versions from the blobs")
                continue
            self._manifests[manifest.task] = manifest
        if verify:
            for sha in sorted({r.sha256 for m in self._manifests.values() for r in m.versions}):
                try:
                    ok = hashlib.sha256(self._blob_path(sha).read_bytes()).hexdigest() == sha
                except FileNotFoundError:
                    ok = False
                if not ok:
                    self._bad_blobs.add(sha)
                    self.problems.append(f"blob {sha} is missing or corrupt; versions using it are not served")
        for problem in self.problems:
            log.warning("registry %s: %s", self.root, problem)

    @staticmethod
    def _read_manifest(path: Path) -> TaskManifest:
        """Parse and validate one manifest file (ValueError when it is not one)."""
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.pop("format_version", None) != MANIFEST_FORMAT:
            raise ValueError(f"not a manifest of format version {MANIFEST_FORMAT}")
        manifest = TaskManifest.model_validate(data)
        if path.stem != manifest.task:
            raise ValueError(f"manifest names task {manifest.task!r} but is stored as {path.name}")
        return manifest


def _move_durably(source: Path, path: Path) -> None:
    """Make the finished temp file `source` (under tmp/) durable, then rename it to `path`."""
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, path)
    fsync_dir(path.parent)


def _brief(exc: Exception) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= 200 else text[:200] + " ..."


@contextlib.contextmanager
def _storage(doing: str) -> Iterator[None]:
    """Turn a full disk or quota into `StorageFullError` (the temp file is already gone: atomic_write cleans up)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(f"the registry's storage is full while {doing}: {exc.strerror}; nothing was "
                                   "changed. Free space or grow the volume, then retry", "registry") from None
        raise
