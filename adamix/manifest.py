"""What the registry stores, described once: task names, version records, task manifests, and its domain errors.

The records are pydantic models: the store reads and writes them, and the server's API serialises the
same models (it adds only what the store cannot know, such as where an adapter is resident).
"""
from __future__ import annotations

import re
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adamix.adapter_file import AdapterFile

TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_CHARS = 16  # version id = the first 16 hex digits of the blob's sha256
MANIFEST_FORMAT = 1


# ---------------------------------------------------------------- domain errors

class RegistryError(Exception):
    """Base of the registry's errors; `field` names what was wrong (for the API's error body)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidTaskNameError(RegistryError):
    """A task name outside `TASK_NAME`: never turned into a path."""


class TaskNotFoundError(RegistryError):
    pass


class VersionNotFoundError(RegistryError):
    pass


class CorruptEntryError(RegistryError):
    """A stored blob is missing, fails its hash or no longer validates: that version is never served."""


class StorageFullError(RegistryError):
    """The disk (or quota) is full; nothing half-written is left behind."""


def check_task_name(task: str) -> str:
    """The only gate between a client-sent task name and a path."""
    if not isinstance(task, str) or not TASK_NAME.fullmatch(task):
        raise InvalidTaskNameError(f"task name {task!r} is invalid: expected 1-64 characters of a-z, 0-9, '_' or "
                                   "'-', starting with a letter or digit", "task")
    return task


# ---------------------------------------------------------------- records (the store's and the API's)

class VersionRecord(BaseModel):
    """One immutable version of a task's adapter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(pattern=r"^[0-9a-f]{16}$", description="The first 16 hex digits of the file's sha256.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, description="File size in bytes.")
    created: float = Field(description="Upload time (Unix seconds).")
    kind: str = Field(description="adapter or lora.")
    task_type: str
    labels: tuple[str, ...]

    @model_validator(mode="after")
    def _version_is_hash_prefix(self) -> VersionRecord:
        if not self.sha256.startswith(self.version):
            raise ValueError(f"version {self.version!r} does not match its sha256")
        return self


class TaskManifest(BaseModel):
    """A task's versions (oldest first) and its active version; replaced whole on every change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field(pattern=TASK_NAME.pattern)
    active: str | None
    versions: tuple[VersionRecord, ...]

    @model_validator(mode="after")
    def _active_is_a_version(self) -> TaskManifest:
        if self.active is not None and self.active not in {v.version for v in self.versions}:
            raise ValueError(f"active version {self.active!r} is not among the versions")
        return self

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


class Published(NamedTuple):
    record: VersionRecord  # the (new, or identical earlier) version, now active
    adapter: AdapterFile  # the parsed, validated file
    created: bool  # False when these exact bytes already were a version of the task
