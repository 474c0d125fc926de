"""The batcher (event loop): a bounded queue of admitted requests, collected into batches for the executor.

A batch forms by max rows or max wait, mixing tasks freely, with at most as many adapter versions as the
pool has free slots; a request that does not fit is carried over to open the next batch. A full queue
answers 503 at once. Requests whose clients went away before their batch ran are dropped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import torch

from server.admission import Row
from server.errors import NotReadyError, OverloadedError
from server.metrics import ServerMetrics
from server.settings import Settings

log = logging.getLogger("adamix.engine")


@dataclass
class _Pending:
    rows: list[Row]
    future: asyncio.Future
    enqueued: float


class Batcher:
    """`await submit(rows)` -> each row's logits, once a batch holding it has run through `run`."""

    def __init__(self, run: Callable[[list[Row]], Awaitable[list[torch.Tensor]]], key_limit: Callable[[], int],
                 settings: Settings, metrics: ServerMetrics) -> None:
        self._run_rows = run
        self._key_limit = key_limit  # most distinct adapter versions in one batch
        self.settings = settings
        self.metrics = metrics
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None  # taken from the queue, waiting for the next batch
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue(self.settings.max_queue_requests)
        self._arrived = asyncio.Event()
        self._loop_task = asyncio.create_task(self._batch_loop(), name="adamix-batcher")

    async def stop(self) -> None:
        """Stop batching; whatever is still queued fails with 503 (the server drains before it stops)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        left = [self._carry] if self._carry is not None else []
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        _fail(left, NotReadyError("the server is shutting down", None))
        self._queue, self._carry, self._loop_task = None, None, None

    def queue_depth(self) -> int:
        """Requests admitted and waiting for a batch (the carried-over one included)."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return queued + (self._carry is not None)

    def check_capacity(self) -> None:
        """503 at once when the queue is full (before admission spends any work on the request)."""
        if self._queue is None:
            raise NotReadyError("the engine is not running", None)
        if self._queue.full():
            raise OverloadedError(f"the request queue is full ({self.settings.max_queue_requests} requests); "
                                  "retry", None, {"Retry-After": "1"})

    async def submit(self, rows: list[Row]) -> list[torch.Tensor]:
        self.check_capacity()  # again: the queue may have filled while the request was tokenised
        pending = _Pending(rows, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._queue.put_nowait(pending)
        self._arrived.set()
        return await pending.future

    async def _batch_loop(self) -> None:
        while True:
            batch: list[_Pending] = []
            try:
                await self._collect(batch)
                batch = [p for p in batch if not p.future.done()]  # drop requests whose clients went away
                if batch:
                    await self._run(batch)
            except asyncio.CancelledError:
                _fail(batch, NotReadyError("the server shut down before this request finished", None))
                raise

    async def _collect(self, batch: list[_Pending]) -> None:
        """Fill `batch` for one forward: up to max_batch_rows rows, as many versions as the pool has free slots."""
        loop = asyncio.get_running_loop()
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch.append(first)
        rows, keys = len(first.rows), {r.adapter.key for r in first.rows}
        deadline = loop.time() + self.settings.max_wait_ms / 1000
        max_keys = self._key_limit()
        while rows < self.settings.max_batch_rows:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
                continue
            item = self._queue.get_nowait()
            merged = keys | {r.adapter.key for r in item.rows}
            if rows + len(item.rows) > self.settings.max_batch_rows or len(merged) > max_keys:
                self._carry = item
                break
            batch.append(item)
            rows, keys = rows + len(item.rows), merged

    async def _run(self, batch: list[_Pending]) -> None:
        now = time.perf_counter()
        for p in batch:
            self.metrics.queue_duration.observe(now - p.enqueued)
        try:
            results = await self._run_rows([r for p in batch for r in p.rows])
        except Exception as exc:  # one bad batch fails its requests, never the batcher
            log.exception("batch of %d requests failed", len(batch))
            _fail(batch, exc)
            return
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result(results[start:start + len(p.rows)])
            start += len(p.rows)


def _fail(pending: list[_Pending], exc: Exception) -> None:
    for p in pending:
        if not p.future.done():
            p.future.set_exception(exc)
