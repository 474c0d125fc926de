"""A task model: frozen backbone (+ AdaMix modules) -> pooling -> linear task head (or, for an embedding
task, an optional linear projection, then L2 normalisation)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from adamix.backbone import hidden_size_of

TaskType = Literal["classification", "pair_classification", "regression", "pair_regression", "embedding",
                   "generation"]
Pooling = Literal["mean", "cls", "pooler", "last"]
TASK_TYPES = ("classification", "pair_classification", "regression", "pair_regression", "embedding", "generation")
MAX_LABEL_CHARS = 128
MAX_EMBEDDING_DIM = 8192
POOLINGS = ("mean", "cls", "pooler", "last")
TASK_KEYS = frozenset(("type", "labels", "pooling", "max_seq_len"))  # a task section's keys besides embedding_dim


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its type, label names (one per head row), pooling, max sequence length and, for an
    embedding task with a projection, the projection's output size."""

    type: TaskType
    labels: tuple[str, ...] = ()
    pooling: Pooling = "mean"
    max_seq_len: int = 128
    embedding_dim: int | None = None  # embedding tasks: the projection's rows; None = no projection (size d)

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise ValueError(f"TaskSpec.type must be one of {TASK_TYPES}, got {self.type!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"TaskSpec.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        labels = tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if self.type in ("classification", "pair_classification"):
            if len(labels) < 2 or len(set(labels)) != len(labels) or not all(map(_is_label, labels)):
                raise ValueError(f"TaskSpec.labels must be >= 2 distinct strings of 1-{MAX_LABEL_CHARS} printable "
                                 f"characters for {self.type}, got {_shown(labels)}")
        elif labels:
            raise ValueError(f"TaskSpec.labels must be empty for {self.type}, got {labels!r}")
        if not isinstance(self.max_seq_len, int) or isinstance(self.max_seq_len, bool) \
                or not 1 <= self.max_seq_len <= 8192:
            raise ValueError(f"TaskSpec.max_seq_len must be an integer in [1, 8192], got {self.max_seq_len!r}")
        dim = self.embedding_dim
        if dim is not None and (self.type != "embedding" or not isinstance(dim, int) or isinstance(dim, bool)
                                or not 1 <= dim <= MAX_EMBEDDING_DIM):
            raise ValueError(f"TaskSpec.embedding_dim must be None, or for an embedding task an integer in "
                             f"[1, {MAX_EMBEDDING_DIM}], got {ascii(dim)[:40]} for a {self.type} task")

    @property
    def num_outputs(self) -> int:
        """Head rows: one per label, 1 for regression, the projection's rows for embedding (0 without one),
        0 (no head) for generation."""
        if self.type == "embedding":
            return self.embedding_dim or 0
        return 1 if self.regression else 0 if self.type == "generation" else len(self.labels)

    @property
    def regression(self) -> bool:
        return self.type in ("regression", "pair_regression")

    @property
    def pair(self) -> bool:
        """Inputs are (text, text_pair) pairs."""
        return self.type in ("pair_classification", "pair_regression")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: object) -> TaskSpec:
        """The inverse of `to_dict` for a task section read from JSON, checked (a ValueError says what is wrong).
        `embedding_dim` may be absent (sections written before embedding tasks); no other key is allowed."""
        if not isinstance(data, dict) or not TASK_KEYS <= set(data) <= {*TASK_KEYS, "embedding_dim"}:
            got = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"a task section holds the keys {sorted(TASK_KEYS)} and optionally embedding_dim, "
                             f"got {ascii(got)[:200]}")
        if not isinstance(data["labels"], list):
            raise ValueError(f"task labels must be a list, got {type(data['labels']).__name__}")
        return cls(data["type"], tuple(data["labels"]), data["pooling"], data["max_seq_len"], data.get("embedding_dim"))


def _is_label(x: object) -> bool:
    """1-MAX_LABEL_CHARS printable characters (no control characters, no lone surrogates)."""
    return isinstance(x, str) and 0 < len(x) <= MAX_LABEL_CHARS and x.isprintable()


def _shown(labels: tuple) -> str:
    """The labels as an error message may show them: escaped, and at most a few of them."""
    return ascii(labels[:8])[:300] + (" ..." if len(labels) > 8 else "")


def embedding_of(pooled: torch.Tensor, projection: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """(B, d) pooled states -> (B, p) unit-length embeddings, through the (p, d) weight, (p,) bias projection if any."""
    out = pooled if projection is None else F.linear(pooled, *projection)  # (B, p)
    return F.normalize(out, p=2.0, dim=-1)  # (B, p): L2 norm 1 (a zero vector stays zero)


def pool_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str,
                pooler_output: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, d) token states -> (B, d) per the task's pooling (token pooling; nothing to do with adapter pools)."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): 1 on real tokens, 0 on padding
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, d): mean over the real tokens
    if pooling == "cls":
        return hidden[:, 0]  # (B, d): the first token ([CLS] / <s>)
    if pooling == "last":
        last = attention_mask.sum(1).long().clamp_min(1) - 1  # (B,) index of the last real token (right padding)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, d)
    if pooling == "pooler":
        if pooler_output is None:
            raise ValueError("pooling 'pooler' needs a backbone with a pooler (BERT)")
        return pooler_output
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


class AdaMixTaskModel(nn.Module):
    """Backbone -> pooled state -> dropout -> `head` (Linear d -> num_outputs). Logits are (B, C).

    An embedding task: pooled state -> `head` (the projection, Linear d -> embedding_dim, or none) -> L2
    normalisation; no dropout. Embeddings are (B, p)."""

    def __init__(self, backbone: nn.Module, task: TaskSpec, head_dropout: float = 0.1) -> None:
        super().__init__()
        if task.type == "generation":
            raise ValueError("generation tasks use the backbone's LM head, not AdaMixTaskModel")
        self.backbone = backbone
        self.task = task
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden_size_of(backbone.config), task.num_outputs) if task.num_outputs else None
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @property
    def base_model(self) -> nn.Module:
        return self.backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = pool_states(out.last_hidden_state, attention_mask, self.task.pooling,
                      getattr(out, "pooler_output", None))  # (B, d)
        if self.task.type == "embedding":
            return embedding_of(pooled, None if self.head is None else (self.head.weight, self.head.bias))  # (B, p)
        return self.head(self.dropout(pooled))  # (B, C)
