"""The batcher: fair across tenants, bounded per tenant and overall, and it drops work nobody waits for."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from server.admission import Row
from server.batcher import Batcher
from server.errors import OverloadedError, TenantOverloadedError
from server.metrics import ServerMetrics
from server.served import AdapterKey
from server.settings import Settings


def rows(n: int, task: str = "t", tokens: int = 100) -> list[Row]:
    adapter = SimpleNamespace(key=AdapterKey(task, "v1"))
    return [Row(adapter, [1] * tokens, None) for _ in range(n)]


class Recorder:
    """A stand-in executor that records each batch's requests (by tenant) and takes `seconds` per forward."""

    def __init__(self, seconds: float = 0.01) -> None:
        self.batches: list[list[str]] = []
        self.seconds = seconds
        self.tag: dict[int, str] = {}

    def submit(self, batcher: Batcher, tenant: str, n: int = 64, task: str = "t", tokens: int = 100) -> asyncio.Task:
        """`n` rows of `tokens` tokens from `tenant`, submitted in a task (tagged so batches show whose they are)."""
        r = rows(n, task, tokens)
        self.tag.update({id(x): tenant for x in r})
        return asyncio.create_task(batcher.submit(r, tenant))

    async def __call__(self, batch_rows: list[Row]) -> list[torch.Tensor]:
        self.batches.append(sorted({self.tag[id(r)] for r in batch_rows}))
        await asyncio.sleep(self.seconds)
        return [torch.zeros(2) for _ in batch_rows]


def make(recorder: Recorder, **settings) -> Batcher:
    s = Settings(demo_adapters=None, max_wait_ms=0, **{"max_batch_rows": 64, **settings})
    return Batcher(recorder, lambda: 64, s, ServerMetrics())


def test_one_tenants_backlog_delays_another_by_about_one_batch():
    recorder = Recorder()

    async def main():
        batcher = make(recorder, max_tenant_queue_tokens=10**6)
        batcher.start()
        hostile = [recorder.submit(batcher, "hostile") for _ in range(8)]  # eight forwards of work
        await asyncio.sleep(0)
        victim = recorder.submit(batcher, "victim", 1, "other", 10)
        await asyncio.gather(victim, *hostile)
        await batcher.stop()

    asyncio.run(main())
    first_with_victim = next(i for i, b in enumerate(recorder.batches) if "victim" in b)
    assert first_with_victim <= 1, recorder.batches  # the batch already running, then the victim's turn


def test_small_requests_of_several_tenants_share_batches_round_robin():
    recorder = Recorder()

    async def main():
        batcher = make(recorder, max_batch_rows=4, max_inputs_per_request=4)
        batcher.start()
        await asyncio.gather(*(recorder.submit(batcher, tenant, 1, tokens=5) for tenant in ("a", "b")
                               for _ in range(4)))
        await batcher.stop()

    asyncio.run(main())
    assert all(b == ["a", "b"] for b in recorder.batches), recorder.batches  # never all of one tenant first


def test_a_tenant_over_its_queued_tokens_gets_429_and_others_still_get_in():
    recorder = Recorder(seconds=0.5)

    async def main():
        batcher = make(recorder, max_tenant_queue_tokens=6400 * 2)
        batcher.start()
        running = recorder.submit(batcher, "greedy")  # taken into the first batch at once
        await asyncio.sleep(0.05)
        queued = [recorder.submit(batcher, "greedy") for _ in range(2)]  # 2 x 6,400 tokens: exactly the bound
        await asyncio.sleep(0)
        with pytest.raises(TenantOverloadedError) as info:
            await batcher.submit(rows(1), "greedy")
        assert int(info.value.headers["Retry-After"]) >= 1
        await recorder.submit(batcher, "other", 1)  # not refused: the bound is per tenant
        await asyncio.gather(running, *queued)
        await batcher.stop()

    asyncio.run(main())


def test_the_whole_queue_is_bounded_in_tokens():
    async def main():
        recorder = Recorder(seconds=0.3)
        batcher = make(recorder, max_queue_tokens=6400, max_tenant_queue_tokens=10**6)
        batcher.start()
        running = recorder.submit(batcher, "a")
        await asyncio.sleep(0.05)
        waiting = recorder.submit(batcher, "b")
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await batcher.submit(rows(1), "c")
        await asyncio.gather(running, waiting)
        await batcher.stop()

    asyncio.run(main())


def test_requests_whose_clients_went_away_never_reach_a_forward():
    recorder = Recorder(seconds=0.3)

    async def main():
        batcher = make(recorder)
        batcher.start()
        running = recorder.submit(batcher, "busy")
        await asyncio.sleep(0.05)
        abandoned = recorder.submit(batcher, "gone", 2)
        await asyncio.sleep(0)
        abandoned.cancel()  # what the middleware does when the client disconnects
        await running
        await asyncio.sleep(0.05)
        assert batcher.queue_depth() == 0
        await batcher.stop()

    asyncio.run(main())
    assert all("gone" not in b for b in recorder.batches), recorder.batches
