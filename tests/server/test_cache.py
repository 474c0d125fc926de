"""The host tier: concurrent first loads coalesce, memory stays within its byte budget, pins stay."""
from __future__ import annotations

import asyncio

import pytest

from adamix.manifest import TaskNotFoundError
from adamix.registry import AdapterRegistry
from server.cache import HostCache
from server.metrics import ServerMetrics
from server.served import AdapterKey, ServingLimits
from tests.server.helpers import adapter_bytes, make_adapter

LIMITS = ServingLimits(max_rank=48, max_labels=64, has_pooler=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_loaded):
    model, _, info = tiny_loaded
    reg = AdapterRegistry(tmp_path_factory.mktemp("reg"), info)
    for i in range(6):
        reg.publish(f"t{i}", adapter_bytes(make_adapter(model, info, r=2, seed=i)))
    return reg


def key(registry, task: str) -> AdapterKey:
    return AdapterKey(task, registry.get(task).active)


def test_concurrent_first_loads_of_one_task_read_the_disk_once(registry):
    cache = HostCache(registry, LIMITS, 1 << 30, ServerMetrics())

    async def main():
        return await asyncio.gather(*(cache.get(key(registry, "t0")) for _ in range(50)))

    adapters = asyncio.run(main())
    assert cache.loads == 1 and all(a is adapters[0] for a in adapters)


def test_failed_load_is_not_cached_and_reaches_every_waiter(registry):
    cache = HostCache(registry, LIMITS, 1 << 30, ServerMetrics())

    async def main():
        return await asyncio.gather(*(cache.get(AdapterKey("missing", "0" * 16)) for _ in range(5)),
                                    return_exceptions=True)

    assert all(isinstance(r, TaskNotFoundError) for r in asyncio.run(main()))
    assert len(cache) == 0


def test_byte_budget_evicts_least_recently_used_but_never_pinned(registry):
    one = HostCache(registry, LIMITS, 1 << 30, ServerMetrics()).get_sync(key(registry, "t0")).nbytes
    cache = HostCache(registry, LIMITS, 3 * one, ServerMetrics(), is_pinned=lambda k: k.task == "t0")
    for task in ["t0", "t1", "t2", "t3", "t4", "t5"]:
        cache.get_sync(key(registry, task))
    assert cache.nbytes <= 3 * one and len(cache) == 3
    assert key(registry, "t0") in cache and key(registry, "t5") in cache and key(registry, "t1") not in cache
