"""The executor: the one worker thread that owns the backbone and the adapter pool (the device tier).

`run_batch(rows)` takes rows of any tasks and returns each row's output, computed with only that row's
adapter: logits for classification and regression rows, a unit-length embedding for embedding rows (the
pooled state through the task's projection, if any, then L2-normalised; in float32 on the CPU, so an
embedding row's answer does not depend on what else shares its batch). One backbone forward per length
group, every forward under `torch.inference_mode`; an encoder built as BERT is runs it on the real tokens
only, outside self-attention (`server/packing.py`).
"""
from __future__ import annotations

import array
import asyncio
import contextvars
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from adamix.task import embedding_of, pool_states
from server.adapter_pool import AdapterPool, install_pool_sites, pool_site_specs
from server.admission import Row
from server.errors import NotReadyError
from server.metrics import ServerMetrics
from server.packing import install_packing, packed
from server.served import AdapterKey, ServedAdapter, ServingLimits
from server.settings import Settings

log = logging.getLogger("adamix.engine")
MAX_SLOTS = 4096
# The fixed cost of one extra backbone forward, in padded tokens: on a CPU compute follows tokens and a
# forward's overhead is small; on an accelerator small forwards waste the device, so batches stay whole.
FORWARD_COST_TOKENS = {"cpu": 64, "default": 1 << 20}
_MAX_SPLIT_CANDIDATES = 64


class Executor:
    """Owns the backbone (with pool sites installed) and the pool; only its worker thread runs forwards."""

    def __init__(self, backbone: nn.Module, model_type: str, num_layers: int, hidden: int, pad_token_id: int,
                 settings: Settings, metrics: ServerMetrics) -> None:
        self.backbone = backbone
        self.metrics = metrics
        self.pad_token_id = pad_token_id
        ref = next(backbone.parameters())
        self.device = ref.device
        specs = pool_site_specs(backbone, model_type, num_layers)
        slot_bytes = AdapterPool.slot_bytes(specs, hidden, settings.max_adapter_rank, settings.max_labels,
                                            ref.element_size())
        slots = int(min(MAX_SLOTS, max(1, settings.device_pool_mb * 2**20 // slot_bytes)))
        self.pool = AdapterPool(specs, hidden, slots, settings.max_adapter_rank, settings.max_labels, self.device,
                                ref.dtype)
        install_pool_sites(backbone, self.pool)
        self.packs = install_packing(backbone)  # after the sites: they are found by their module names
        self.limits = ServingLimits(settings.max_adapter_rank, settings.max_labels,
                                    getattr(backbone, "pooler", None) is not None, float(torch.finfo(ref.dtype).max))
        self._forward_cost_tokens = FORWARD_COST_TOKENS.get(self.device.type, FORWARD_COST_TOKENS["default"])
        self._worker: ThreadPoolExecutor | None = None
        log.info("adapter pool: %d slots of <= %.1f MiB (rank <= %d, labels <= %d) on %s/%s", slots,
                 slot_bytes / 2**20, settings.max_adapter_rank, settings.max_labels, self.device, ref.dtype)

    # ------------------------------------------------------------------ the worker thread

    def start(self) -> None:
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="adamix-engine")

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self._worker = None

    async def call(self, fn, *args):
        """Run `fn(*args)` on the worker thread (the only thread that touches the pool), in the caller's context
        (so what it logs names the caller's request or batch)."""
        if self._worker is None:
            raise NotReadyError("the engine is not running", None)
        return await asyncio.get_running_loop().run_in_executor(self._worker, contextvars.copy_context().run, fn,
                                                                *args)

    def call_blocking(self, fn, *args):
        """`call` from a thread that is not the event loop's (waits for the worker thread)."""
        if self._worker is None:
            raise NotReadyError("the engine is not running", None)
        return self._worker.submit(contextvars.copy_context().run, fn, *args).result()

    def batch_key_limit(self) -> int:
        """Most distinct adapter versions one batch may hold: the slots not pinned."""
        return max(1, self.pool.num_slots - len(self.pool.pinned))

    # ------------------------------------------------------------------ on the worker thread

    def run_batch(self, rows: list[Row]) -> list[torch.Tensor]:
        """Rows of any tasks -> each row's (C,) float32 logits, or (p,) embedding, on the CPU; row i uses only
        row i's adapter.

        On CPU the rows are split by length into a few forwards when that saves more padded tokens than
        the extra forwards cost (see `length_groups`).
        """
        adapters = [r.adapter for r in rows]
        slot_of, loaded, evicted = self.pool.acquire(adapters)
        self._observe_pool(len(slot_of), loaded, evicted, len(rows))
        slots = [slot_of[a.key] for a in adapters]
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        groups = length_groups([len(r.input_ids) for r in rows], self._forward_cost_tokens)
        log.debug("forward: %d rows in %d length group(s); pool: %d adapter(s) loaded, %d evicted", len(rows),
                  len(groups), len(loaded), len(evicted))
        for group in groups:
            pooled, logits = self._forward([rows[i] for i in group], [slots[i] for i in group])  # (b, d), (b, C_max)
            for j, i in enumerate(group):
                out[i] = logits[j, :rows[i].adapter.num_outputs]  # (C,): the row's own task's columns
            at = [j for j, i in enumerate(group) if rows[i].adapter.embedding]  # embedding rows' places in the group
            if at:
                for j, vector in zip(at, self._embed([rows[group[j]] for j in at], pooled[at])):
                    out[group[j]] = vector
        return out

    @staticmethod
    def _embed(rows: list[Row], pooled: torch.Tensor) -> list[torch.Tensor]:
        """Embedding rows' (n, d) pooled states -> each row's (p,) unit vector, one projection per task version."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        by_adapter: dict[int, list[int]] = {}
        for j, row in enumerate(rows):
            by_adapter.setdefault(id(row.adapter), []).append(j)
        for idx in by_adapter.values():
            vectors = embedding_of(pooled[idx], rows[idx[0]].adapter.projection)  # (k, p)
            for j, vector in zip(idx, vectors):
                out[j] = vector
        return out

    def _forward(self, rows: list[Row], slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone forward: (b,) rows -> (b, d) pooled states and (b, C_max) logits, float32 on the CPU."""
        input_ids, attention_mask, token_types = self._pad(rows)
        kwargs = {} if token_types is None else {"token_type_ids": token_types}
        with torch.inference_mode(), self.pool.batch(slots) as plan, packed(attention_mask, self.packs):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            pooled = self._pool_rows(out, attention_mask, slots)  # (b, d)
            logits = self.pool.heads(pooled, plan).float().cpu() if plan.num_outputs else torch.empty(len(rows), 0)
            return pooled.float().cpu(), logits  # (b, d), (b, C_max)

    def warmup(self) -> None:
        """One forward with no adapter, so the first request does not pay for lazy initialisation."""
        ids = torch.full((1, 8), self.pad_token_id, device=self.device)  # (1, T)
        with torch.inference_mode():
            self.backbone(input_ids=ids, attention_mask=torch.ones_like(ids))

    def probe(self, rows: list[Row]) -> list[torch.Tensor]:
        """Run `rows` of one not-yet-published adapter, then free its pool slot again."""
        try:
            return self.run_batch(rows)
        finally:
            self.pool.release(rows[0].adapter.key)

    def pin(self, adapter: ServedAdapter) -> None:
        """Make `adapter` resident and never evict it."""
        self.pool.acquire([adapter])
        self.pool.pinned.add(adapter.key)

    def _pad(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, T) input ids (right-padded), attention mask and token types (None when no row has them).

        Each field is built as one flat list of Python ints and goes in through one int64 buffer: `torch.tensor`
        on nested lists converts item by item, and a boolean-mask scatter costs more than the lists
        (13 rows of 20 to 30 tokens: about 0.18 ms with the scatter, 0.07 to 0.12 ms like this)."""
        longest = max(len(r.input_ids) for r in rows)
        shape = (len(rows), longest)
        fill = [longest - len(r.input_ids) for r in rows]  # padding per row
        ids = _longs(t for r, f in zip(rows, fill) for t in (r.input_ids, [self.pad_token_id] * f))
        mask = _longs(t for r, f in zip(rows, fill) for t in ([1] * len(r.input_ids), [0] * f))
        types = None
        if any(r.token_type_ids is not None for r in rows):
            types = _longs(t for r, f in zip(rows, fill)
                           for t in (r.token_type_ids or [0] * len(r.input_ids), [0] * f)).view(shape).to(self.device)
        return ids.view(shape).to(self.device), mask.view(shape).to(self.device), types

    def _pool_rows(self, out, attention_mask: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Each row's token states pooled the way its task pools them: (B, d)."""
        hidden = out.last_hidden_state  # (B, T, d)
        pooler = getattr(out, "pooler_output", None)  # (B, d) or None
        kinds = [self.pool.slot_pooling[s] for s in slots]
        if len(set(kinds)) == 1:
            return pool_states(hidden, attention_mask, kinds[0], pooler)
        pooled = torch.empty(hidden.shape[0], hidden.shape[2], device=hidden.device, dtype=hidden.dtype)  # (B, d)
        for kind in set(kinds):
            idx = torch.tensor([i for i, k in enumerate(kinds) if k == kind], device=hidden.device)
            pooled[idx] = pool_states(hidden[idx], attention_mask[idx], kind, None if pooler is None else pooler[idx])
        return pooled

    def _observe_pool(self, keys: int, loaded: list[AdapterKey], evicted: list[AdapterKey], rows: int) -> None:
        m = self.metrics
        m.cache_lookups.labels("device").inc(keys)
        m.cache_hits.labels("device").inc(keys - len(loaded))
        if evicted:
            m.evictions.labels("device").inc(len(evicted))
        m.resident.labels("device").set(len(self.pool.resident))
        m.cache_bytes.labels("device").set(self.pool.nbytes())
        m.batch_size.observe(rows)
        m.batch_tasks.observe(keys)


def _longs(pieces) -> torch.Tensor:
    """A 1-D int64 tensor of lists of Python ints, concatenated, through one buffer."""
    return torch.frombuffer(array.array("q", list(itertools.chain.from_iterable(pieces))), dtype=torch.long)


def length_groups(lengths: list[int], forward_cost: int) -> list[list[int]]:
    """Row indices in groups of similar length minimising sum(rows * longest + forward_cost) over groups.

    Dynamic programming over the rows sorted by length; split points where the length changes, thinned
    to at most 64.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    changes = [k for k in range(1, n) if lengths[order[k]] != lengths[order[k - 1]]]  # optimal cuts lie here
    step = max(1, len(changes) // _MAX_SPLIT_CANDIDATES)
    cuts = [0, *changes[::step], n]  # candidate group boundaries in `order`
    best = {0: (0, 0)}  # boundary -> (cost of rows before it, previous boundary)
    for j in cuts[1:]:
        longest = lengths[order[j - 1]]
        best[j] = min((best[i][0] + (j - i) * longest + forward_cost, i) for i in cuts if i < j)
    groups, j = [], n
    while j > 0:
        i = best[j][1]
        groups.append(order[i:j])
        j = i
    return groups[::-1]
