"""Tokenisation rows/s by tokenizer workers, against the engine's forward rows/s (section 6 of serving.py,
and of gpu.py on an accelerator).

Admission exactly as the server runs it (`Admission.admit`: the checks, the bounded tokenisation, on one
thread or on `tokenizer_workers` processes), driven by `clients` concurrent one-input requests; the forward rate
is the engine's rows/s on full batches of the same sentences, measured just before.
"""
from __future__ import annotations

import asyncio
import statistics
import time

from adamix.model import backbone_of
from server.admission import Admission
from server.schemas import TextInput
from server.settings import Settings


async def _admit_all(admission: Admission, adapter, texts: list[str], clients: int) -> float:
    admission.start()
    try:
        await admission.admit(adapter, [TextInput(text=texts[0])])  # warm-up
        queue = iter(texts)

        async def client() -> None:
            for text in queue:
                await admission.admit(adapter, [TextInput(text=text)])

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return len(texts) / (time.perf_counter() - start)
    finally:
        admission.stop()


def tokenizer_rows_per_s(bench, workers: list[int], rows: int = 4000, clients: int = 64) -> dict[int, float]:
    """Rows/s of admission with each worker count (0 = the one in-process thread), printed beside the forward's."""
    from serving import synthetic_adapter

    adapter = bench.serve("tok", synthetic_adapter(bench.info, "adapter", 16, 7))
    batch = bench.rows([adapter] * bench.n, bench.batch)
    bench.run(batch)  # warm-up
    walls = []
    for _ in range(5):
        start = time.perf_counter()
        bench.run(batch)
        walls.append(time.perf_counter() - start)
    forward = bench.n / statistics.median(walls)
    bench.record(f"6. engine forward, {bench.n}-row batches (rows/s, wall)", round(forward))
    texts = [bench.sentences[i % len(bench.sentences)] for i in range(rows)]
    rates = {}
    for n in workers:
        admission = Admission(bench.tokenizer, backbone_of(bench.model), Settings(demo_adapters=None,
                                                                                  tokenizer_workers=n))
        rates[n] = asyncio.run(_admit_all(admission, adapter, texts, clients))
        bench.record(f"6. tokenisation, tokenizer_workers={n}, {clients} concurrent 1-row requests (rows/s; "
                     "x forward rate)", f"{rates[n]:.0f} ({rates[n] / forward:.1f}x)")
    return rates
