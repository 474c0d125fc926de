"""The registry: validated, content-addressed, atomic, and safe against hostile names and broken files."""
from __future__ import annotations

import json
import os
import time

import pytest

from adamix import AdapterFileError
from adamix.manifest import (CorruptEntryError, InvalidTaskNameError, StorageFullError, TaskNotFoundError,
                             VersionNotFoundError)
from adamix.registry import AdapterRegistry
from tests.server.helpers import adapter_bytes, make_adapter


@pytest.fixture(scope="module")
def blobs(tiny_loaded):
    model, _, info = tiny_loaded
    return [adapter_bytes(make_adapter(model, info, seed=s, r=2)) for s in range(3)]


def test_publish_activate_delete_roundtrip(tmp_path, tiny_loaded, blobs):
    info = tiny_loaded[2]
    reg = AdapterRegistry(tmp_path, info)
    v1 = reg.publish("sst2", blobs[0])
    v2 = reg.publish("sst2", blobs[1])
    assert reg.get("sst2").active == v2.version and v1.version != v2.version
    assert reg.publish("sst2", blobs[1]) == v2  # identical bytes: idempotent, no new version
    assert len(reg.get("sst2").versions) == 2
    reg.activate("sst2", v1.version)
    assert reg.load("sst2", v1.version).tensors.keys() == reg.load("sst2", v2.version).tensors.keys()
    reopened = AdapterRegistry(tmp_path, info)  # state survives a restart
    assert reopened.get("sst2").active == v1.version and reopened.problems == []
    reg.delete("sst2", v1.version)
    assert reg.get("sst2").active == v2.version
    assert not (tmp_path / "blobs" / f"{v1.sha256}.safetensors").exists()
    reg.delete("sst2")
    assert reg.tasks() == [] and not (tmp_path / "tasks" / "sst2.json").exists()
    assert list((tmp_path / "blobs").iterdir()) == []
    with pytest.raises(TaskNotFoundError):
        reg.get("sst2")


def test_versions_are_content_addressed(tmp_path, tiny_loaded, blobs):
    reg = AdapterRegistry(tmp_path, tiny_loaded[2])
    a, b = reg.publish("one", blobs[0]), reg.publish("two", blobs[0])
    assert a.sha256 == b.sha256 and len(list((tmp_path / "blobs").iterdir())) == 1
    with pytest.raises(VersionNotFoundError):
        reg.activate("one", "0" * 16)
    reg.delete("one")
    assert reg.load("two", b.version)  # the shared blob stays while a task still uses it


@pytest.mark.parametrize("name", ["../x", "a/b", "%2e%2e", "A", "", "-x", "x" * 65, "sst2.json", "a b"])
def test_hostile_task_names_never_become_paths(tmp_path, tiny_loaded, blobs, name):
    reg = AdapterRegistry(tmp_path, tiny_loaded[2])
    with pytest.raises(InvalidTaskNameError):
        reg.publish(name, blobs[0])
    with pytest.raises(InvalidTaskNameError):
        reg.get(name)
    assert list((tmp_path / "tasks").iterdir()) == [] and list((tmp_path / "blobs").iterdir()) == []


def test_invalid_adapters_are_refused_and_nothing_is_written(tmp_path, tiny_loaded, blobs):
    reg = AdapterRegistry(tmp_path, tiny_loaded[2])
    for bad in (b"", b"\x80\x04pickle", blobs[0][:-4], blobs[0].replace(b'"F32"', b'"F16"', 1)):
        with pytest.raises(AdapterFileError):
            reg.publish("task", bad)
    assert reg.tasks() == [] and list((tmp_path / "blobs").iterdir()) == []


def test_other_backbone_is_refused(tmp_path, tiny_loaded, blobs):
    info = tiny_loaded[2]
    other = type(info)(info.name, info.model_type, info.num_layers, info.hidden_size, "0" * 64)
    with pytest.raises(AdapterFileError, match="fingerprint"):
        AdapterRegistry(tmp_path, other).publish("task", blobs[0])


def test_corrupt_blob_and_leftover_temp_file_are_reported_and_never_served(tmp_path, tiny_loaded, blobs):
    info = tiny_loaded[2]
    reg = AdapterRegistry(tmp_path, info)
    good = reg.publish("good", blobs[0])
    bad = reg.publish("bad", blobs[1])
    blob = tmp_path / "blobs" / f"{bad.sha256}.safetensors"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    crashed, writing = tmp_path / "tmp" / "write-crashed", tmp_path / "tmp" / "write-in-progress"
    crashed.write_bytes(b"half an upload")
    os.utime(crashed, (time.time() - 3600, time.time() - 3600))
    writing.write_bytes(b"another process is writing this")
    reopened = AdapterRegistry(tmp_path, info)
    assert any("corrupt" in p for p in reopened.problems)
    assert any("half-written" in p for p in reopened.problems)
    assert not crashed.exists() and writing.exists()
    with pytest.raises(CorruptEntryError):
        reopened.load("bad", bad.version)
    reopened.load("good", good.version)
    # A corruption that happens after start-up is caught on read, too.
    blob.write_bytes(b"garbage")
    with pytest.raises(CorruptEntryError):
        reg.load("bad", bad.version)


def test_unreadable_manifest_is_ignored_not_fatal(tmp_path, tiny_loaded, blobs):
    info = tiny_loaded[2]
    AdapterRegistry(tmp_path, info).publish("ok", blobs[0])
    (tmp_path / "tasks" / "broken.json").write_text("{not json")
    (tmp_path / "tasks" / "liar.json").write_text(json.dumps({"task": "other", "active": None, "versions": []}))
    reg = AdapterRegistry(tmp_path, info)
    assert reg.tasks() == ["ok"] and len(reg.problems) == 2


def test_publish_file_moves_the_upload_in_says_whether_it_was_new_and_check_can_refuse(tmp_path, tiny_loaded,
                                                                                         blobs):
    reg = AdapterRegistry(tmp_path, tiny_loaded[2])

    def upload(data: bytes, check=None):
        path = reg.upload_path()
        path.write_bytes(data)
        try:
            return reg.publish_file("task", path, check)
        finally:
            assert not path.exists()  # consumed whatever happened

    record, adapter, created = upload(blobs[0])
    assert created and (tmp_path / "blobs" / f"{record.sha256}.safetensors").read_bytes() == blobs[0]
    assert adapter.rank == 2
    again = upload(blobs[0])
    assert (again.record, again.created) == (record, False)

    class TooBig(Exception):
        pass

    def refuse(adapter):
        raise TooBig("too big for this server")
    with pytest.raises(TooBig):
        upload(blobs[1], refuse)
    assert len(reg.get("task").versions) == 1 and len(list((tmp_path / "blobs").iterdir())) == 1
    assert list((tmp_path / "tmp").iterdir()) == []


def test_manifest_with_a_malformed_sha256_is_ignored_not_fatal(tmp_path, tiny_loaded, blobs):
    info = tiny_loaded[2]
    record = AdapterRegistry(tmp_path, info).publish("ok", blobs[0])
    manifest = json.loads((tmp_path / "tasks" / "ok.json").read_text())
    manifest["task"] = "bad"
    manifest["versions"][0]["sha256"] = record.version + "/../x"  # starts with the version, not 64 hex digits
    (tmp_path / "tasks" / "bad.json").write_text(json.dumps(manifest))
    reg = AdapterRegistry(tmp_path, info)
    assert reg.tasks() == ["ok"]
    assert any("bad.json" in p for p in reg.problems)


def test_two_registries_on_one_directory_lose_no_version_and_no_used_blob(tmp_path, tiny_loaded, blobs):
    """Writers in different processes (here two instances, each with its own memory) re-read under the lock."""
    info = tiny_loaded[2]
    a, b = AdapterRegistry(tmp_path, info), AdapterRegistry(tmp_path, info)
    v1 = a.publish("shared", blobs[0])
    v2 = b.publish("shared", blobs[1])  # b never saw v1 in memory
    assert [r.version for r in AdapterRegistry(tmp_path, info).get("shared").versions] == [v1.version, v2.version]
    a.publish("other", blobs[2])
    b.publish("mine", blobs[2])  # same bytes as `other`, whose manifest b has never read
    b.delete("mine")
    assert AdapterRegistry(tmp_path, info).load("other", a.get("other").active)  # its blob is still there


def test_a_full_disk_is_a_storage_full_error_and_leaves_nothing_half_written(tmp_path, tiny_loaded, blobs,
                                                                            monkeypatch):
    import errno

    import adamix.registry

    reg = AdapterRegistry(tmp_path, tiny_loaded[2])
    reg.publish("kept", blobs[0])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(adamix.registry, "atomic_write", full)
    with pytest.raises(StorageFullError, match="storage is full"):
        reg.publish("new", blobs[1])
    assert reg.tasks() == ["kept"] and list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "tasks" / "new.json").exists()


def test_a_corrupt_manifest_is_moved_aside_never_overwritten_and_repair_recovers_it(tmp_path, tiny_loaded, blobs):
    info = tiny_loaded[2]
    reg = AdapterRegistry(tmp_path, info)
    v1, v2 = reg.publish("task", blobs[0]), reg.publish("task", blobs[1])
    manifest = tmp_path / "tasks" / "task.json"
    manifest.write_bytes(manifest.read_bytes()[:-40])  # truncated
    reopened = AdapterRegistry(tmp_path, info)
    assert reopened.tasks() == [] and "moved unreadable manifest task.json aside" in reopened.problems[0]
    aside = list((tmp_path / "tasks").glob("task.json.corrupt-*"))
    assert len(aside) == 1
    v3 = reopened.publish("task", blobs[2])  # a new upload starts a fresh manifest: the broken one stays aside
    assert aside[0].exists() and (tmp_path / "blobs" / f"{v1.sha256}.safetensors").exists()
    done = reopened.repair()
    assert done and "recovered" in done[0]
    versions = [r.version for r in reopened.get("task").versions]
    assert set(versions) >= {v2.version, v3.version} and reopened.get("task").active == v3.version
    assert not list((tmp_path / "tasks").glob("*.corrupt-*"))


def test_a_second_registry_on_the_directory_sees_every_change_on_refresh(tmp_path, tiny_loaded, blobs):
    info = tiny_loaded[2]
    a, b = AdapterRegistry(tmp_path, info), AdapterRegistry(tmp_path, info)
    assert b.refresh() == {}  # nothing changed: one small read
    v1 = a.publish("task", blobs[0])
    assert set(b.refresh()) == {"task"} and b.get("task").active == v1.version
    v2 = a.publish("task", blobs[1])
    a.activate("task", v1.version)
    delays = b.refresh()
    assert set(delays) == {"task"} and all(0 <= d < 60 for d in delays.values())
    assert b.get("task").active == v1.version and [r.version for r in b.get("task").versions] == [v1.version,
                                                                                                  v2.version]
    a.delete("task")
    assert set(b.refresh()) == {"task"} and "task" not in b


def test_a_replica_that_fell_behind_the_window_rereads_everything(tmp_path, tiny_loaded, blobs, monkeypatch):
    import adamix.generation

    monkeypatch.setattr(adamix.generation, "WINDOW", 2)
    info = tiny_loaded[2]
    a, b = AdapterRegistry(tmp_path, info), AdapterRegistry(tmp_path, info)
    for i, name in enumerate(["one", "two", "three", "four"]):
        a.publish(name, blobs[i % len(blobs)])
    assert set(b.refresh()) == {"one", "two", "three", "four"} and b.tasks() == ["four", "one", "three", "two"]
