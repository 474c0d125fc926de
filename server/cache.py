"""The host tier: served adapters in memory (LRU by bytes) over the registry (the disk tier).

An adapter is read, validated and prepared for serving (`server.served.prepare`) once, when it enters
this tier. Concurrent first loads of one (task, version) are coalesced into one read: the first caller
starts the load in a thread, later callers await the same future.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from adamix.registry import AdapterRegistry
from server.metrics import ServerMetrics
from server.served import AdapterKey, ServedAdapter, ServingLimits, prepare


class HostCache:
    """(task, version) -> ServedAdapter, bounded by `budget_bytes`; keys `is_pinned` accepts are never evicted."""

    def __init__(self, registry: AdapterRegistry, limits: ServingLimits, budget_bytes: int, metrics: ServerMetrics,
                 is_pinned: Callable[[AdapterKey], bool] = lambda key: False) -> None:
        self.registry = registry
        self.limits = limits
        self.budget_bytes = budget_bytes
        self.metrics = metrics
        self.is_pinned = is_pinned
        self._entries: OrderedDict[AdapterKey, ServedAdapter] = OrderedDict()
        self._bytes = 0
        self._loading: dict[AdapterKey, asyncio.Future[ServedAdapter]] = {}
        self.loads = 0  # reads from disk, for tests and benchmarks

    def __contains__(self, key: AdapterKey) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[AdapterKey]:
        return list(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    async def get(self, key: AdapterKey) -> ServedAdapter:
        """The adapter for `key`, from memory or (once, however many callers) from disk."""
        adapter = self._entries.get(key)
        self.metrics.lookup("host", adapter is not None)
        if adapter is not None:
            self._entries.move_to_end(key)
            return adapter
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().run_in_executor(None, self._read, key)
            self._loading[key] = pending
            pending.add_done_callback(lambda done, key=key: self._loaded(key, done))
        return await asyncio.shield(pending)  # a cancelled caller never cancels the shared load

    def get_sync(self, key: AdapterKey) -> ServedAdapter:
        """Blocking variant for start-up and benchmarks (no coalescing needed: one caller)."""
        adapter = self._entries.get(key)
        self.metrics.lookup("host", adapter is not None)
        if adapter is None:
            adapter = self._read(key)
            self._insert(key, adapter)
        return adapter

    def put(self, adapter: ServedAdapter) -> None:
        """Insert an adapter prepared elsewhere (a fresh upload), so its first request reads nothing from disk."""
        self._insert(adapter.key, adapter)

    def _loaded(self, key: AdapterKey, done: asyncio.Future[ServedAdapter]) -> None:
        self._loading.pop(key, None)
        if not done.cancelled() and done.exception() is None:
            self._insert(key, done.result())

    def _read(self, key: AdapterKey) -> ServedAdapter:
        start = time.perf_counter()
        adapter = prepare(key, self.registry.load(key.task, key.version), self.limits)
        self.metrics.load_duration.observe(time.perf_counter() - start)
        self.metrics.lookup("disk", True)
        self.loads += 1
        return adapter

    def _insert(self, key: AdapterKey, adapter: ServedAdapter) -> None:
        if key in self._entries:
            return
        self._entries[key] = adapter
        self._bytes += adapter.nbytes
        while self._bytes > self.budget_bytes:
            victim = next((k for k in self._entries if k != key and not self.is_pinned(k)), None)  # LRU first
            if victim is None:
                break
            self._bytes -= self._entries.pop(victim).nbytes
            self.metrics.evictions.labels("host").inc()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.resident.labels("host").set(len(self._entries))
        self.metrics.cache_bytes.labels("host").set(self._bytes)
