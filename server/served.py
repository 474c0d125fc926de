"""A served adapter: one (task, version) prepared once, when the host cache loads it, never per request."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from adamix import AdapterFile, TaskSpec
from adamix.adapter_file import AdapterWeights, LoRAWeights, tensor_key
from adamix.values import FLOAT32_MAX, out_of_range
from server.errors import UnservableAdapterError


@dataclass(frozen=True)
class AdapterKey:
    """(task, version): a hot-swapped task gets a new key (and pool slot); in-flight rows keep the old one."""

    task: str
    version: str


@dataclass(frozen=True)
class ServingLimits:
    """What this server's adapter pool and backbone can hold."""

    max_rank: int
    max_labels: int
    has_pooler: bool
    max_value: float = FLOAT32_MAX  # the pool dtype's largest finite value


@dataclass(frozen=True, eq=False)
class ServedAdapter:
    """A validated adapter version with everything serving needs, parsed once."""

    key: AdapterKey
    task: TaskSpec
    rank: int  # the largest bottleneck / LoRA rank over its sites
    sites: dict[str, AdapterWeights | LoRAWeights]  # adapted layer -> merged weights
    lora_scaling: float | None  # alpha / r for LoRA sites
    head: tuple[torch.Tensor, torch.Tensor] | None  # (C, d) weight, (C,) bias; None for an embedding task
    nbytes: int
    projection: tuple[torch.Tensor, torch.Tensor] | None = None  # embedding: (p, d) weight, (p,) bias, or None

    @property
    def num_outputs(self) -> int:
        """Head rows in the adapter pool: the task's label count (1 for regression), 0 for an embedding task."""
        return 0 if self.embedding else self.task.num_outputs

    @property
    def embedding(self) -> bool:
        return self.task.type == "embedding"


def check_servable(adapter: AdapterFile, limits: ServingLimits) -> None:
    """Refuse a valid adapter (read and validated: its tensors are finite float32) this server cannot serve, saying
    which limit it exceeds."""
    task = adapter.task
    if task.type == "generation":
        raise UnservableAdapterError("generation adapters are not served by /predict", "task.type")
    if task.type != "embedding" and task.num_outputs > limits.max_labels:
        raise UnservableAdapterError(f"task has {task.num_outputs} labels, this server serves at most "
                                     f"{limits.max_labels} (setting max_labels)", "task.labels")
    if adapter.rank > limits.max_rank:
        raise UnservableAdapterError(f"adapter rank {adapter.rank} exceeds this server's max_adapter_rank "
                                     f"{limits.max_rank}", "config")
    if task.pooling == "pooler" and not limits.has_pooler:
        raise UnservableAdapterError("task pools with the backbone's pooler, and this backbone has none",
                                     "task.pooling")
    bad = out_of_range(dict(_served_values(adapter, limits.max_value < FLOAT32_MAX)), limits.max_value)  # one pass
    if bad is not None:
        name, largest = bad
        raise UnservableAdapterError(f"{name} reaches {largest:.3g} in magnitude: this server's pool holds "
                                     f"values up to {limits.max_value:.3g} (setting dtype)", name.partition(" ")[0])


def _served_values(adapter: AdapterFile, stored: bool = True):
    """(name, tensor) of the values the pool stores that may be out of its range: with `stored`, each tensor as read
    (without: a float32 pool, which holds every finite float32 value, and a read file's tensors are finite,
    `check_tensors`), and LoRA's B as the pool holds it (times alpha / r, which may overflow even float32)."""
    if stored:
        yield from adapter.tensors.items()
    if adapter.kind == "lora":
        for site, weights in adapter.sites().items():
            yield f"{tensor_key('lora', site, 'B')} x lora_scaling", weights.B * adapter.lora_scaling


def prepare(key: AdapterKey, adapter: AdapterFile, limits: ServingLimits) -> ServedAdapter:
    """Check `adapter` against `limits` and parse what serving it needs."""
    check_servable(adapter, limits)
    embedding = adapter.task.type == "embedding"
    sites = adapter.sites()  # parsed once: this is on the cold-load path
    rank = max((w[0].shape[0] for w in sites.values()), default=0)
    return ServedAdapter(key, adapter.task, rank, sites, adapter.lora_scaling,
                         None if embedding else adapter.head, adapter.nbytes(), adapter.head if embedding else None)


def bare_backbone(name: str, version: str, max_seq_len: int) -> ServedAdapter:
    """The backbone itself as an embedding model: no adapter sites, mean pooling, L2-normalised."""
    task = TaskSpec("embedding", (), "mean", min(max_seq_len, 8192))
    return ServedAdapter(AdapterKey(name, version), task, 0, {}, None, None, 0)
