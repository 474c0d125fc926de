"""The batcher (event loop): admitted requests queued per tenant, collected fairly into batches for the executor.

Each tenant (API key) has its own queue; a batch is filled by deficit round-robin over the tenants with
queued work, in tokens (a request's cost is its rows' tokens after truncation): every turn a tenant's
deficit grows by `QUANTUM_TOKENS` and it may take requests up to it. A tenant that had nothing queued goes
to the front of the order. So one tenant's backlog delays another tenant's request by about one batch
(the one already running), whatever its size. A batch forms by max rows or max wait, mixes
tasks freely, and holds at most as many adapter versions as the pool has free slots; what does not fit
stays at the head of its queue for the next batch. Bounds, checked before any work is queued: the whole
queue (requests and tokens: 503) and each tenant's queued tokens (429, that tenant alone). Requests whose
clients went away are dropped before their forward. While a batch runs, its log lines name the requests
it serves (`server.request_context.serving_batch`); traced, each request's queue wait is a span, and the
batch is one `adamix.forward` span linked to every request it serves (`server/tracing.py`).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from server.admission import Row
from server.errors import NotReadyError, OverloadedError, TenantOverloadedError
from server.metrics import ServerMetrics
from server.request_context import current_request_id, serving_batch
from server.settings import Settings
from server.tracing import Tracing

log = logging.getLogger("adamix.engine")
QUANTUM_TOKENS = 512  # a tenant's deficit grows by this much per round-robin turn


@dataclass
class _Pending:
    rows: list[Row]
    tenant: str
    cost: int  # tokens
    future: asyncio.Future
    enqueued: float
    request_id: str | None = None
    span_context: Any = None  # the request's span (a traced request): the batch's span links to it
    queue_span: Any = None  # its wait for a batch (a traced request), ended when the batch starts or it leaves

    def left_queue(self, _: object = None) -> None:
        if self.queue_span is not None:
            self.queue_span.end()
            self.queue_span = None


class Batcher:
    """`await submit(rows, tenant)` -> each row's logits, once a batch holding them has run through `run`."""

    def __init__(self, run: Callable[[list[Row]], Awaitable[list[torch.Tensor]]], key_limit: Callable[[], int],
                 settings: Settings, metrics: ServerMetrics, tracing: Tracing | None = None) -> None:
        self._run_rows = run
        self.tracing = tracing or Tracing()
        self._key_limit = key_limit  # most distinct adapter versions in one batch
        self.settings = settings
        self.metrics = metrics
        self._queues: dict[str, deque[_Pending]] = {}  # tenant -> its queued requests, oldest first
        self._turns: deque[str] = deque()  # tenants with queued work, in round-robin order
        self._deficit: dict[str, int] = {}
        self._queued = self._queued_tokens = 0
        self._tenant_tokens: dict[str, int] = {}
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
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
        left = [p for q in self._queues.values() for p in q]
        for p in left:
            self._dequeued(p)
        _fail(left, NotReadyError("the server is shutting down", None))
        self._queues.clear()
        self._turns.clear()
        self._loop_task = None

    def queue_depth(self) -> int:
        """Requests admitted and waiting for a batch."""
        return self._queued

    def check_capacity(self, tenant: str, cost: int = 0) -> None:
        """Refuse at once (before admission spends work, and again with the cost known) when a bound is reached."""
        s = self.settings
        if self._loop_task is None:
            raise NotReadyError("the engine is not running", None)
        if self._queued >= s.max_queue_requests or self._queued_tokens + cost > s.max_queue_tokens:
            raise OverloadedError(f"the request queue is full ({self._queued} requests, {self._queued_tokens} "
                                  f"tokens queued); retry", None, {"Retry-After": "1"})
        queued = self._tenant_tokens.get(tenant, 0)
        if queued and queued + cost > s.max_tenant_queue_tokens:
            wait = max(1, math.ceil(queued / max(1, s.max_batch_rows * 64)))  # about a batch per 64 tokens a row
            raise TenantOverloadedError(f"API key {tenant!r} already has {queued} tokens queued (at most "
                                        f"{s.max_tenant_queue_tokens}, setting max_tenant_queue_tokens); retry "
                                        "when some have been answered", None, {"Retry-After": str(wait)})

    async def submit(self, rows: list[Row], tenant: str) -> list[torch.Tensor]:
        cost = sum(len(r.input_ids) for r in rows)
        self.check_capacity(tenant, cost)
        key, tracing = rows[0].adapter.key, self.tracing
        pending = _Pending(rows, tenant, cost, asyncio.get_running_loop().create_future(), time.perf_counter(),
                           current_request_id(), tracing.current_span_context(),
                           tracing.start_child_span("adamix.queue", {"adamix.task": key.task,
                                                                     "adamix.version": key.version}))
        if pending.queue_span is not None:
            pending.future.add_done_callback(pending.left_queue)  # dropped or failed before its batch
        if not self._queues.get(tenant):
            self._queues[tenant] = deque()
            if tenant not in self._turns:
                self._turns.appendleft(tenant)  # a tenant with nothing queued goes first (sparse flows first)
        self._queues[tenant].append(pending)
        self._queued += 1
        self._queued_tokens += cost
        self._tenant_tokens[tenant] = self._tenant_tokens.get(tenant, 0) + cost
        self._arrived.set()
        return await pending.future

    def _dequeued(self, p: _Pending) -> None:
        self._queued -= 1
        self._queued_tokens -= p.cost
        left = self._tenant_tokens[p.tenant] - p.cost
        if left:
            self._tenant_tokens[p.tenant] = left
        else:
            del self._tenant_tokens[p.tenant]

    async def _batch_loop(self) -> None:
        while True:
            batch: list[_Pending] = []
            try:
                await self._collect(batch)
                batch = [p for p in batch if not p.future.done()]  # clients that went away meanwhile
                if batch:
                    await self._run(batch)
            except asyncio.CancelledError:
                _fail(batch, NotReadyError("the server shut down before this request finished", None))
                raise

    async def _collect(self, batch: list[_Pending]) -> None:
        """Fill `batch` for one forward, fairly across tenants, within max rows and the pool's free slots."""
        loop = asyncio.get_running_loop()
        while not self._take_round(batch):  # nothing queued yet: wait for the first request
            self._arrived.clear()
            await self._arrived.wait()
        deadline = loop.time() + self.settings.max_wait_ms / 1000
        while self._rows(batch) < self.settings.max_batch_rows:
            if self._take_round(batch):
                continue
            if any(self._queues[t] for t in self._turns):
                break  # work is queued but does not fit this batch: it opens the next one
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break

    def _take_round(self, batch: list[_Pending]) -> bool:
        """One deficit round-robin turn per tenant with queued work; True when anything joined `batch`.

        A tenant whose head does not fit this batch keeps its place at the front for the next one; a tenant
        that took its turn goes to the back.
        """
        took = False
        max_rows, max_keys = self.settings.max_batch_rows, self._key_limit()
        keys = {r.adapter.key for p in batch for r in p.rows}
        waiting, served = [], []
        for tenant in self._turns:
            queue = self._queues[tenant]
            while queue and queue[0].future.done():  # its client went away: drop it before any forward
                self._dequeued(queue.popleft())
            if not queue:
                self._deficit.pop(tenant, None)
                continue
            head = queue[0]
            merged = keys | {r.adapter.key for r in head.rows}
            if batch and (self._rows(batch) + len(head.rows) > max_rows or len(merged) > max_keys):
                waiting.append(tenant)
                continue
            deficit = self._deficit.get(tenant, 0) + QUANTUM_TOKENS
            if batch and head.cost > deficit:  # saves up for a later turn (an empty batch always takes a head)
                self._deficit[tenant] = deficit
                served.append(tenant)
                continue
            batch.append(queue.popleft())
            self._dequeued(head)
            keys, took = merged, True
            self._deficit[tenant] = max(0, deficit - head.cost)
            if queue:
                served.append(tenant)
            else:
                self._deficit.pop(tenant)
        self._turns = deque(waiting + served)
        return took

    @staticmethod
    def _rows(batch: list[_Pending]) -> int:
        return sum(len(p.rows) for p in batch)

    async def _run(self, batch: list[_Pending]) -> None:
        now = time.perf_counter()
        for p in batch:
            self.metrics.queue_duration.observe(now - p.enqueued)
            p.left_queue()
        rows = [r for p in batch for r in p.rows]
        keys = {r.adapter.key for r in rows}
        ids = [p.request_id for p in batch if p.request_id is not None]
        with serving_batch(ids):  # the lines logged for this batch, here or on the worker thread, name its requests
            log.debug("batch: %d rows of %d requests, %d adapter versions, waited up to %.1f ms", len(rows),
                      len(batch), len(keys), 1000 * (now - min(p.enqueued for p in batch)))
            try:
                with self._forward_span(batch, keys, ids):  # records a failure too
                    results = await self._run_rows(rows)
            except Exception as exc:  # one bad batch fails its requests, never the batcher
                log.exception("batch of %d requests failed", len(batch))
                _fail(batch, exc)
                return
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result(results[start:start + len(p.rows)])
            start += len(p.rows)

    def _forward_span(self, batch: list[_Pending], keys: set, ids: list[str]):
        """The batch's `adamix.forward` span (when tracing), linked to the span of each request it serves."""
        if not self.tracing.enabled:
            return nullcontext()
        links = [(p.span_context, {"adamix.request_id": p.request_id or "", "adamix.task": p.rows[0].adapter.key.task,
                                   "adamix.version": p.rows[0].adapter.key.version}) for p in batch]
        return self.tracing.batch_span("adamix.forward", links, {
            "adamix.batch.rows": self._rows(batch), "adamix.batch.requests": len(batch), "adamix.request_ids": ids,
            "adamix.tasks": sorted({k.task for k in keys}), "adamix.versions": sorted({k.version for k in keys})})


def _fail(pending: list[_Pending], exc: Exception) -> None:
    for p in pending:
        if not p.future.done():
            p.future.set_exception(exc)
