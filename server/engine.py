"""`BatchingEngine`: requests for any tasks -> batches -> one backbone forward -> per-row predictions.

Event loop: admission (tokenisation in a thread), a bounded queue, and a batcher that forms batches
by max rows or max wait, mixing tasks freely. One worker thread owns the backbone and the adapter pool
(the device tier) and runs every forward under `torch.inference_mode`.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from adamix import AdapterFile, BackboneInfo
from adamix.model import backbone_of
from adamix.task import pool as pool_tokens
from server.errors import NotReadyError, OverloadedError, UnservableAdapterError
from server.metrics import ServerMetrics
from server.pool import AdapterKey, AdapterPool, BatchPlan, install_pool_sites, pool_site_specs
from server.settings import Settings

log = logging.getLogger("adamix.engine")
MAX_SLOTS = 4096
# The fixed cost of one extra backbone forward, in padded tokens: on a CPU compute follows tokens and a
# forward's overhead is small; on an accelerator small forwards waste the device, so batches stay whole.
FORWARD_COST_TOKENS = {"cpu": 64, "default": 1 << 20}
_MAX_SPLIT_CANDIDATES = 64


@dataclass(frozen=True)
class TextInput:
    text: str
    text_pair: str | None = None


@dataclass
class Row:
    """One tokenised input of one request, bound to the adapter version resolved at admission."""

    key: AdapterKey
    adapter: AdapterFile
    input_ids: list[int]
    token_type_ids: list[int] | None


@dataclass
class _Pending:
    rows: list[Row]
    future: asyncio.Future
    enqueued: float


class BatchingEngine:
    """One backbone, many tasks: `await submit(key, adapter, inputs)` -> one prediction dict per input."""

    def __init__(self, model: torch.nn.Module, tokenizer, info: BackboneInfo, settings: Settings,
                 metrics: ServerMetrics) -> None:
        self.backbone = backbone_of(model)
        self.tokenizer = tokenizer
        self.info = info
        self.settings = settings
        self.metrics = metrics
        ref = next(self.backbone.parameters())
        self.device, self.dtype = ref.device, ref.dtype
        specs = pool_site_specs(self.backbone, info.model_type, info.num_layers)
        slot_bytes = AdapterPool.slot_bytes(specs, info.hidden_size, settings.max_adapter_rank, settings.max_labels,
                                            ref.element_size())
        slots = int(min(MAX_SLOTS, max(1, settings.device_pool_mb * 2**20 // slot_bytes)))
        self.pool = AdapterPool(specs, info.hidden_size, slots, settings.max_adapter_rank, settings.max_labels,
                                self.device, self.dtype)
        install_pool_sites(self.backbone, self.pool)
        self.has_pooler = getattr(self.backbone, "pooler", None) is not None
        self._forward_cost_tokens = FORWARD_COST_TOKENS.get(self.device.type, FORWARD_COST_TOKENS["default"])
        self.max_len = min(settings.max_seq_len, _max_positions(self.backbone.config, tokenizer))
        self._uses_token_types = ("token_type_ids" in getattr(tokenizer, "model_input_names", ())
                                  and "token_type_ids" in inspect.signature(self.backbone.forward).parameters)
        self._worker: ThreadPoolExecutor | None = None
        self._tokenize: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None  # taken from the queue, waiting for the next batch
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._submitted = 0  # requests queued or in a batch whose answer is not yet delivered
        log.info("adapter pool: %d slots of <= %.1f MiB (rank <= %d, labels <= %d) on %s/%s", slots,
                 slot_bytes / 2**20, settings.max_adapter_rank, settings.max_labels, self.device, self.dtype)

    # ------------------------------------------------------------------ admission (event loop)

    def check_servable(self, adapter: AdapterFile) -> None:
        """Refuse a valid adapter this engine cannot serve, saying which limit it exceeds."""
        task = adapter.task
        if task.type == "generation":
            raise UnservableAdapterError("generation adapters are not served by /predict", "task.type")
        if task.num_outputs > self.pool.max_labels:
            raise UnservableAdapterError(f"task has {task.num_outputs} labels, this server serves at most "
                                         f"{self.pool.max_labels} (setting max_labels)", "task.labels")
        rank = max((t.shape[0] for k, t in adapter.tensors.items() if k.endswith((".down.weight", ".A"))), default=0)
        if rank > self.pool.max_rank:
            raise UnservableAdapterError(f"adapter rank {rank} exceeds this server's max_adapter_rank "
                                         f"{self.pool.max_rank}", "config")
        if task.pooling == "pooler" and not self.has_pooler:
            raise UnservableAdapterError("task pools with the backbone's pooler, and this backbone has none",
                                         "task.pooling")

    def encode(self, key: AdapterKey, adapter: AdapterFile, inputs: list[TextInput]) -> list[Row]:
        """Tokenise (truncating to the task's and the server's max length) without padding."""
        max_len = min(adapter.task.max_seq_len, self.max_len)
        ids: list[list[int]] = [[] for _ in inputs]
        types: list[list[int] | None] = [None for _ in inputs]
        for with_pair in (False, True):
            idx = [i for i, x in enumerate(inputs) if (x.text_pair is not None) == with_pair]
            if not idx:
                continue
            texts = [inputs[i].text for i in idx]
            pairs = [inputs[i].text_pair for i in idx] if with_pair else None
            enc = self.tokenizer(texts, pairs, truncation=True, max_length=max_len)
            for j, i in enumerate(idx):
                ids[i] = enc["input_ids"][j]
                if self._uses_token_types and "token_type_ids" in enc:
                    types[i] = enc["token_type_ids"][j]
        return [Row(key, adapter, ids[i], types[i]) for i in range(len(inputs))]

    async def submit(self, key: AdapterKey, adapter: AdapterFile, inputs: list[TextInput]) -> list[dict]:
        if self._queue is None:
            raise NotReadyError("the engine is not running", None)
        if self._queue.full():
            raise self._overloaded()
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._tokenize, self.encode, key, adapter, inputs)
        pending = _Pending(rows, loop.create_future(), time.perf_counter())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise self._overloaded() from None
        self._arrived.set()
        self._submitted += 1
        try:
            return await pending.future
        finally:
            self._submitted -= 1

    def _overloaded(self) -> OverloadedError:
        return OverloadedError(f"the request queue is full ({self.settings.max_queue_requests} requests); retry",
                               None, {"Retry-After": "1"})

    # ------------------------------------------------------------------ batching (event loop)

    async def start(self) -> None:
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="adamix-engine")
        self._tokenize = ThreadPoolExecutor(1, thread_name_prefix="adamix-tokenize")
        self._queue = asyncio.Queue(self.settings.max_queue_requests)
        self._arrived = asyncio.Event()
        self._loop_task = asyncio.create_task(self._batch_loop(), name="adamix-batcher")

    def queue_depth(self) -> int:
        """Requests admitted and waiting for a batch (the carried-over one included)."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return queued + (self._carry is not None)

    async def drain(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until every submitted request has its answer; True when it did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._submitted and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._submitted:
            log.warning("drain timeout (%.1f s): %d request(s) still unanswered", timeout, self._submitted)
        return not self._submitted

    async def stop(self) -> None:
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
        self._queue, self._carry = None, None
        for pool in (self._worker, self._tokenize):
            if pool is not None:
                pool.shutdown(wait=True)
        self._worker = self._tokenize = None

    async def run_in_worker(self, fn, *args):
        """Run `fn(*args)` on the engine's worker thread (the only thread that touches the pool)."""
        if self._worker is None:
            raise NotReadyError("the engine is not running", None)
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

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
        rows, keys = len(first.rows), {r.key for r in first.rows}
        deadline = loop.time() + self.settings.max_wait_ms / 1000
        max_keys = max(1, self.pool.num_slots - len(self.pool.pinned))
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
            merged = keys | {r.key for r in item.rows}
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
            results = await self.run_in_worker(self.run_batch, [r for p in batch for r in p.rows])
        except Exception as exc:  # one bad batch fails its requests, never the batcher
            log.exception("batch of %d requests failed", len(batch))
            _fail(batch, exc)
            return
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result(results[start:start + len(p.rows)])
            start += len(p.rows)

    # ------------------------------------------------------------------ the forward (worker thread)

    def run_batch(self, rows: list[Row]) -> list[dict]:
        """Rows of any tasks -> predictions; row i's prediction uses only row i's adapter.

        The rows share the backbone; on CPU they are split by length into a few forwards when that
        saves more padded tokens than the extra forwards cost (see `length_groups`).
        """
        adapters: dict[AdapterKey, AdapterFile] = {}
        for r in rows:
            adapters.setdefault(r.key, r.adapter)
        slot_of, loaded, evicted = self.pool.acquire(adapters)
        self._observe_pool(len(adapters), loaded, evicted, len(rows))
        slots = [slot_of[r.key] for r in rows]
        predictions: list[dict] = [{} for _ in rows]
        for group in length_groups([len(r.input_ids) for r in rows], self._forward_cost_tokens):
            group_rows = [rows[i] for i in group]
            logits = self._forward(group_rows, [slots[i] for i in group])  # (b, C_max)
            for i, prediction in zip(group, _predictions(group_rows, logits)):
                predictions[i] = prediction
        return predictions

    def _forward(self, rows: list[Row], slots: list[int]) -> torch.Tensor:
        """One backbone forward: (b,) rows -> (b, C_max) float32 logits on the CPU."""
        input_ids, attention_mask, token_types = self._pad(rows)
        plan = self.pool.make_plan(slots)
        self.pool.plan = plan
        try:
            with torch.inference_mode():
                kwargs = {} if token_types is None else {"token_type_ids": token_types}
                out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
                pooled = self._pool_rows(out, attention_mask, slots)  # (b, d)
                return self.pool.heads(pooled, plan).float().cpu()  # (b, C_max)
        finally:
            self.pool.plan = BatchPlan(None, None)

    def warmup(self) -> None:
        """One forward with no adapter, so the first request does not pay for lazy initialisation."""
        enc = self.tokenizer(["warm up the backbone"], truncation=True, max_length=self.max_len, return_tensors="pt")
        kwargs = {"token_type_ids": enc["token_type_ids"].to(self.device)} if "token_type_ids" in enc else {}
        with torch.inference_mode():
            self.backbone(input_ids=enc["input_ids"].to(self.device),
                          attention_mask=enc["attention_mask"].to(self.device), **kwargs)

    def pin(self, key: AdapterKey, adapter: AdapterFile) -> None:
        """Make `key` resident and never evict it (worker thread)."""
        self.pool.acquire({key: adapter})
        self.pool.pinned.add(key)

    def _pad(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        T = max(len(r.input_ids) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([r.input_ids + [pad] * (T - len(r.input_ids)) for r in rows])  # (B, T), right padding
        mask = torch.tensor([[1] * len(r.input_ids) + [0] * (T - len(r.input_ids)) for r in rows])  # (B, T)
        types = None
        if self._uses_token_types:
            types = torch.tensor([(r.token_type_ids or [0] * len(r.input_ids)) + [0] * (T - len(r.input_ids))
                                  for r in rows])  # (B, T)
        to = self.device
        return ids.to(to), mask.to(to), None if types is None else types.to(to)

    def _pool_rows(self, out, attention_mask: torch.Tensor, slots: list[int]) -> torch.Tensor:
        hidden = out.last_hidden_state  # (B, T, d)
        pooler = getattr(out, "pooler_output", None)  # (B, d) or None
        kinds = [self.pool.slot_pooling[s] for s in slots]
        if len(set(kinds)) == 1:
            return pool_tokens(hidden, attention_mask, kinds[0], pooler)
        pooled = torch.empty(hidden.shape[0], hidden.shape[2], device=hidden.device, dtype=hidden.dtype)  # (B, d)
        for kind in set(kinds):
            idx = torch.tensor([i for i, k in enumerate(kinds) if k == kind], device=hidden.device)
            pooled[idx] = pool_tokens(hidden[idx], attention_mask[idx], kind, None if pooler is None else pooler[idx])
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


def _fail(pending: list[_Pending], exc: Exception) -> None:
    for p in pending:
        if not p.future.done():
            p.future.set_exception(exc)


def _predictions(rows: list[Row], logits: torch.Tensor) -> list[dict]:
    """(b, C_max) logits -> one response dict per row; softmax over each row's own labels only."""
    outputs = torch.tensor([r.adapter.task.num_outputs for r in rows])  # (b,)
    padding = torch.arange(logits.shape[1]) >= outputs.unsqueeze(1)  # (b, C_max): columns of other tasks
    probs = torch.softmax(logits.masked_fill(padding, float("-inf")), dim=-1).tolist()
    values = logits[:, 0].tolist()
    out = []
    for r, p, value in zip(rows, probs, values):
        task = r.adapter.task
        if task.type == "regression":
            out.append({"value": value})
            continue
        p = p[:task.num_outputs]
        best = max(range(len(p)), key=p.__getitem__)
        out.append({"label": task.labels[best], "score": p[best], "scores": dict(zip(task.labels, p))})
    return out


def _max_positions(config, tokenizer) -> int:
    limits = [getattr(tokenizer, "model_max_length", 10**9)]
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            limits.append(value - 2 if config.model_type in ("roberta", "xlm-roberta") else value)
    return min(limits)
