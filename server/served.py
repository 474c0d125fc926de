"""A served adapter: one (task, version) prepared once, when the host cache loads it, never per request."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from adamix import AdapterFile, TaskSpec
from adamix.adapter_file import AdapterWeights, LoRAWeights
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


@dataclass(frozen=True, eq=False)
class ServedAdapter:
    """A validated adapter version with everything serving needs, parsed once."""

    key: AdapterKey
    task: TaskSpec
    rank: int  # the largest bottleneck / LoRA rank over its sites
    sites: dict[str, AdapterWeights | LoRAWeights]  # adapted layer -> merged weights
    lora_scaling: float | None  # alpha / r for LoRA sites
    head: tuple[torch.Tensor, torch.Tensor]  # (C, d) weight, (C,) bias
    nbytes: int

    @property
    def num_outputs(self) -> int:
        return self.task.num_outputs


def check_servable(adapter: AdapterFile, limits: ServingLimits) -> None:
    """Refuse a valid adapter this server cannot serve, saying which limit it exceeds."""
    task = adapter.task
    if task.type == "generation":
        raise UnservableAdapterError("generation adapters are not served by /predict", "task.type")
    if task.num_outputs > limits.max_labels:
        raise UnservableAdapterError(f"task has {task.num_outputs} labels, this server serves at most "
                                     f"{limits.max_labels} (setting max_labels)", "task.labels")
    if adapter.rank > limits.max_rank:
        raise UnservableAdapterError(f"adapter rank {adapter.rank} exceeds this server's max_adapter_rank "
                                     f"{limits.max_rank}", "config")
    if task.pooling == "pooler" and not limits.has_pooler:
        raise UnservableAdapterError("task pools with the backbone's pooler, and this backbone has none",
                                     "task.pooling")


def prepare(key: AdapterKey, adapter: AdapterFile, limits: ServingLimits) -> ServedAdapter:
    """Check `adapter` against `limits` and parse what serving it needs."""
    check_servable(adapter, limits)
    return ServedAdapter(key, adapter.task, adapter.rank, adapter.sites(), adapter.lora_scaling, adapter.head,
                         adapter.nbytes())
