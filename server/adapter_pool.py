"""The device tier: a stacked pool of resident adapters, and the multi-task sites that gather from it.

Every adaptable layer of the backbone (both adapter placements, LoRA on query/key/value) is wrapped
once by a pool site. A pool slot holds one (task, version): for each site it uses, its weights padded
with zeros to the pool's rank; for every other site, zeros. A zero adapter adds `up(gelu(0)) = 0` and a
zero LoRA adds 0, so rows of both kinds and of any rank share one forward pass exactly:
    adapter site: h + up(gelu(down(h)))          with down_t[slot], up[slot] gathered per row (bmm)
    LoRA site:    base(x) + (x @ A[slot].T) @ (scaling * B[slot]).T
A fused q|k|v LoRA (GPT-2 c_attn; the file stores one rank-r pair per target slice) enters its slot as the one
rank-(n * r) LoRA it equals, B dense (out, n * r) and zero off each target's block, so rows that adapt different
slices (q+v, q+k+v, k alone) still share one bmm; the zeros add 0.
A batch whose rows all use one slot takes the plain `F.linear` path; a site that no row uses is skipped.
The batch plan reaches the sites only inside `with pool.batch(slots):` (a context variable, reset on exit, so a
plan can never outlive its forward). Only the executor's worker thread touches the pool's tensors.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from adamix import AdaMixConfig
from adamix.adapter_file import AdapterWeights
from adamix.config import LORA_TARGETS
from adamix.layers import layer_features
from adamix.model import site_names
from server import packing
from server.served import AdapterKey, ServedAdapter


@dataclass(frozen=True)
class SiteSpec:
    name: str
    kind: str  # "adapter" | "lora"
    in_features: int
    out_features: int


@dataclass
class BatchPlan:
    """What the sites need for one forward: each row's slot and, per site, the batch's max rank there."""

    slots: torch.Tensor  # (B,) long, on the pool's device
    single: int | None  # the slot when every row uses the same one
    ranks: dict[str, int] = field(default_factory=dict)  # site -> max rank over the batch's slots (absent: skip)
    num_outputs: int = 0  # max head rows over the batch's slots


def pool_site_specs(backbone: nn.Module, model_type: str, num_layers: int) -> dict[str, SiteSpec]:
    """Every site any adapter file can use in this backbone."""
    adapter = site_names(AdaMixConfig(kind="adapter", placement="both"), model_type, num_layers)
    lora = site_names(AdaMixConfig(kind="lora", lora_targets=LORA_TARGETS), model_type, num_layers)
    specs = {}
    for kind, names in (("adapter", adapter), ("lora", lora)):
        for name in names:
            in_f, out_f = layer_features(backbone.get_submodule(name))
            specs[name] = SiteSpec(name, kind, in_f, out_f)
    return specs


class AdapterPool:
    """`slots` resident adapters stacked per site (ranks padded to `max_rank`) plus a stacked head pool."""

    def __init__(self, specs: dict[str, SiteSpec], hidden: int, slots: int, max_rank: int, max_labels: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.specs = specs
        self.num_slots = slots
        self.max_rank = max_rank
        self.max_labels = max_labels
        self.device, self.dtype = device, dtype
        self._weights: dict[str, tuple[torch.Tensor, ...]] = {}  # site -> stacked tensors, allocated on first use
        self.head_w = torch.zeros(slots, max_labels, hidden, device=device, dtype=dtype)  # (S, L, d)
        self.head_b = torch.zeros(slots, max_labels, device=device, dtype=dtype)  # (S, L)
        self.slot_ranks: list[dict[str, int]] = [{} for _ in range(slots)]
        self.slot_outputs = [0] * slots
        self.slot_pooling = ["mean"] * slots
        self.resident: OrderedDict[AdapterKey, int] = OrderedDict()  # LRU order, most recent last
        self.pinned: set[AdapterKey] = set()
        self._free = list(range(slots - 1, -1, -1))
        self._nbytes = self.head_w.nbytes + self.head_b.nbytes  # grows with sites
        self._plan: ContextVar[BatchPlan | None] = ContextVar(f"adamix_batch_plan_{id(self)}", default=None)

    # ------------------------------------------------------------------ sizing

    @staticmethod
    def slot_bytes(specs: dict[str, SiteSpec], hidden: int, max_rank: int, max_labels: int, itemsize: int) -> int:
        """Bytes one slot takes when every site is allocated (the bound the byte budget is divided by)."""
        n = max_labels * (hidden + 1)
        for s in specs.values():
            n += max_rank * (s.in_features + s.out_features) + (max_rank + s.out_features if s.kind == "adapter" else 0)
        return n * itemsize

    def nbytes(self) -> int:
        """Bytes the pool's tensors hold (kept up to date as sites are allocated: the engine reads it per batch)."""
        return self._nbytes

    # ------------------------------------------------------------------ residency

    def acquire(self, adapters: list[ServedAdapter]
                ) -> tuple[dict[AdapterKey, int], list[AdapterKey], list[AdapterKey]]:
        """Slots for every adapter (loading missing ones, evicting least-recently-used unpinned others).

        Returns (slot per key, keys loaded, keys evicted). At most `num_slots` distinct adapters per call.
        """
        wanted = {a.key: a for a in adapters}
        if len(wanted) > self.num_slots:
            raise ValueError(f"{len(wanted)} adapters in one batch, the pool has {self.num_slots} slots")
        loaded, evicted = [], []
        for key in wanted:
            if key in self.resident:
                self.resident.move_to_end(key)
        for key, adapter in wanted.items():
            if key not in self.resident:
                slot = self._free.pop() if self._free else self._evict(wanted.keys(), evicted)
                self._write_slot(slot, adapter)
                self.resident[key] = slot
                loaded.append(key)
        return {key: self.resident[key] for key in wanted}, loaded, evicted

    def release(self, key: AdapterKey) -> None:
        """Free `key`'s slot now (a probe's), if it holds one."""
        slot = self.resident.pop(key, None)
        if slot is not None:
            self._clear_slot(slot)
            self._free.append(slot)

    def _evict(self, keep, evicted: list[AdapterKey]) -> int:
        for key in self.resident:  # least recently used first
            if key not in keep and key not in self.pinned:
                evicted.append(key)
                return self.resident.pop(key)
        raise RuntimeError("every pool slot is pinned or in use by this batch; raise the device pool budget")

    # ------------------------------------------------------------------ slot contents

    def _site_weights(self, name: str) -> tuple[torch.Tensor, ...]:
        if name not in self._weights:
            s, S, R = self.specs[name], self.num_slots, self.max_rank
            z = dict(device=self.device, dtype=self.dtype)
            # adapter: down_t (S, d, R) = down.weight.T, down_b (S, R), up (S, 1 + R, d) = [up.bias; up.weight.T]
            if s.kind == "adapter":
                self._weights[name] = (torch.zeros(S, s.out_features, R, **z), torch.zeros(S, R, **z),
                                       torch.zeros(S, 1 + R, s.out_features, **z))
            else:  # A (S, R, in), bt (S, R, out) = (scaling * B).T
                self._weights[name] = (torch.zeros(S, R, s.in_features, **z), torch.zeros(S, R, s.out_features, **z))
            self._nbytes += sum(t.nbytes for t in self._weights[name])
        return self._weights[name]

    def _zero(self, name: str, slot: int, start: int, stop: int) -> None:
        """Zero rank columns [start, stop) of `name`'s weights in `slot` (from 0: up's bias row too)."""
        weights = self._weights[name]
        if self.specs[name].kind == "adapter":
            down_t, down_b, up = weights
            down_t[slot, :, start:stop].zero_()  # (d, R)
            down_b[slot, start:stop].zero_()
            up[slot, 1 + start if start else 0:1 + stop].zero_()  # (1 + R, d): row 0 is the bias
        else:
            for t in weights:  # A, bt (R, .)
                t[slot, start:stop].zero_()

    def _clear_slot(self, slot: int) -> None:
        """Zero what `slot` holds: per site its first `rank` columns, and its head's first rows (the rest of a slot
        is always zero), so clearing costs what the adapter held, not the pool's largest rank."""
        for name, r in self.slot_ranks[slot].items():
            self._zero(name, slot, 0, r)
        self.slot_ranks[slot] = {}
        n = self.slot_outputs[slot]
        self.head_w[slot, :n].zero_()
        self.head_b[slot, :n].zero_()
        self.slot_outputs[slot] = 0

    @torch.no_grad()
    def _write_slot(self, slot: int, adapter: ServedAdapter) -> None:
        """Overwrite `slot` with `adapter`, zeroing only what the previous occupant held beyond it (an eviction of
        an adapter of the same shape zeroes nothing). `slot_ranks` covers every non-zero column at every step."""
        old = self.slot_ranks[slot]
        self.slot_ranks[slot] = ranks = dict(old)
        for name, weights in adapter.sites.items():
            r, held = weights[0].shape[0], old.get(name, 0)
            stored = self._site_weights(name)
            ranks[name] = max(r, held)
            if isinstance(weights, AdapterWeights):
                down_t, down_b, up = stored
                down_t[slot, :, :r] = weights.down_weight.T  # (d, r)
                down_b[slot, :r] = weights.down_bias
                up[slot, 0] = weights.up_bias  # (d,)
                up[slot, 1:1 + r] = weights.up_weight.T  # (r, d)
            else:
                a, bt = stored
                a[slot, :r] = weights.A  # (k, in)
                bt[slot, :r] = (adapter.lora_scaling * weights.dense_b()).T  # (k, out)
            if held > r:
                self._zero(name, slot, r, held)
            ranks[name] = r
        for gone in [name for name in old if name not in adapter.sites]:
            self._zero(gone, slot, 0, old[gone])
            del ranks[gone]
        n, held = adapter.num_outputs, self.slot_outputs[slot]  # n = 0 for an embedding task (no pool head)
        self.slot_outputs[slot] = max(n, held)
        if n:
            head_w, head_b = adapter.head
            self.head_w[slot, :n] = head_w  # (C, d)
            self.head_b[slot, :n] = head_b
        self.head_w[slot, n:held].zero_()
        self.head_b[slot, n:held].zero_()
        self.slot_outputs[slot] = n
        self.slot_pooling[slot] = adapter.task.pooling

    # ------------------------------------------------------------------ per batch

    @contextlib.contextmanager
    def batch(self, slots: list[int]) -> Iterator[BatchPlan]:
        """The scope of one forward whose row i uses pool slot `slots[i]`: the sites see its plan only inside."""
        token = self._plan.set(self._make_plan(slots))
        try:
            yield self._plan.get()
        finally:
            self._plan.reset(token)

    def current_plan(self) -> BatchPlan | None:
        return self._plan.get()

    def _make_plan(self, slots: list[int]) -> BatchPlan:
        unique = set(slots)
        ranks: dict[str, int] = {}
        for s in unique:
            for name, r in self.slot_ranks[s].items():
                if r > ranks.get(name, 0):
                    ranks[name] = r
        index = torch.tensor(slots, dtype=torch.long, device=self.device)  # (B,)
        return BatchPlan(index, slots[0] if len(unique) == 1 else None, ranks,
                         max(self.slot_outputs[s] for s in unique))

    def heads(self, pooled: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
        """(B, d) pooled states -> (B, C_max) logits; row i's first `slot_outputs` columns are its task's."""
        c = plan.num_outputs
        if plan.single is not None:
            return F.linear(pooled, self.head_w[plan.single, :c], self.head_b[plan.single, :c])  # (B, c)
        w = self.head_w[:, :c].index_select(0, plan.slots)  # (B, c, d)
        return torch.baddbmm(self.head_b[:, :c].index_select(0, plan.slots).unsqueeze(1), pooled.unsqueeze(1),
                             w.transpose(1, 2)).squeeze(1)  # (B, c)

    def site_forward(self, spec: SiteSpec, plan: BatchPlan, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """The site's output for this batch: `base_out` (B, T, out) plus each row's adapter or LoRA."""
        r = plan.ranks[spec.name]  # the batch's largest rank here; other rows' extra columns are zeros
        if spec.kind == "adapter":
            # h + up(gelu(down(h))), accumulated into h, the base layer's fresh output (nothing else holds it), in
            # two GEMMs and no other pass over h: z = [1, gelu(down(h))] carries a ones column, so up's bias
            # (row 0 of `up`) is added inside the second GEMM. Measured on one FFN site (459 tokens, r=16), this
            # cut the site's cost from 12% to 7% of the base layer's own GEMM (benchmarks/RESULTS.md).
            h = base_out  # (B, T, d)
            if plan.single is not None:
                s = plan.single
                down_t, down_b, up = self._weights[spec.name]
                h2 = h.view(-1, h.shape[-1])  # (B*T, d)
                z = h2.new_ones(h2.shape[0], 1 + r)  # (B*T, 1 + r)
                z[:, 1:] = F.gelu(torch.addmm(down_b[s, :r], h2, down_t[s, :, :r]))
                h2.addmm_(z, up[s, :1 + r])  # (B*T, d) += (B*T, 1 + r) @ (1 + r, d)
                return h
            idx = plan.slots
            grid = packing.current()
            if grid is not None and grid.holds(h):  # (1, N, d) real tokens: rows gather their weights on the grid
                return grid.pack(self._gathered_adapter(spec.name, r, idx, grid.unpack(h)))
            return self._gathered_adapter(spec.name, r, idx, h)
        a, bt = self._weights[spec.name]
        if plan.single is not None:
            s = plan.single
            delta = F.linear(F.linear(x, a[s, :r]), bt[s, :r].T)  # (B, T, out)
        else:
            idx = plan.slots  # LoRA sites (q, k, v) sit inside self-attention: on the (B, T) grid when packed
            delta = torch.bmm(torch.bmm(x, a[:, :r].index_select(0, idx).transpose(1, 2)),
                              bt[:, :r].index_select(0, idx))  # (B, T, out)
        return base_out.add_(delta)  # the base layer's fresh output, nothing else holds it

    def _gathered_adapter(self, name: str, r: int, idx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, d) + each row's adapter (row i: slot idx[i]), accumulated into h."""
        down_t, down_b, up = self._weights[name]
        z = h.new_ones(*h.shape[:2], 1 + r)  # (B, T, 1 + r)
        z[..., 1:] = F.gelu(torch.baddbmm(down_b[:, :r].index_select(0, idx).unsqueeze(1), h,
                                          down_t[:, :, :r].index_select(0, idx)))
        return h.baddbmm_(z, up[:, :1 + r].index_select(0, idx))  # (B, T, d)


class PoolSite(nn.Module):
    """Wraps a frozen base layer; adds, per row, the adapter or LoRA of that row's pool slot."""

    def __init__(self, base_layer: nn.Module, spec: SiteSpec, pool: AdapterPool) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.spec = spec
        self._pool = [pool]  # a list, so the pool is not registered as a submodule

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        pool = self._pool[0]
        plan = pool.current_plan()
        if plan is None or self.spec.name not in plan.ranks:  # outside a batch, or no row adapts this site
            return out
        return pool.site_forward(self.spec, plan, x, out)


def install_pool_sites(backbone: nn.Module, pool: AdapterPool) -> None:
    """Wrap every site of `pool.specs` in `backbone` (in place)."""
    for name, spec in pool.specs.items():
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name)
        setattr(parent, child, PoolSite(getattr(parent, child), spec, pool))
