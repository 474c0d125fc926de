"""Padding-free encoder layers: an encoder layer's linears, LayerNorms and activations see only a batch's real
tokens; self-attention, the one part that mixes tokens within a row, still runs on the padded (B, T) grid.

Inside `with packed(attention_mask):` the encoder's hidden states travel between layers as (1, N, d), the N real
tokens of the (B, T) batch in row-major order. Each layer's self-attention module (with its q/k/v linears) gets
them scattered back onto the grid, zeros at the padded places (masked as keys, so they change no real token's
output), and its output is gathered again. The attention output projection, the feed-forward block, both residual
LayerNorms and the adapter sites on them then cost N tokens instead of B * T. The encoder's output is scattered back
to (B, T, d), so pooling and everything after it see the usual shapes. Mathematically every real token's state is
what the padded forward computes; in floating point they agree to rounding.

Only encoders built as BERT is (`encoder.layer[i].attention.self`: BERT, RoBERTa and their kin) are packed; others
(GPT-2) run padded as before. A batch with almost no padding runs padded too: gathering costs a few passes over
the activations per layer, more than it saves there (`MIN_PADDING`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

# Pack only when at least this fraction of the (B, T) grid is padding. Packing costs a few copies of the hidden
# states per layer; by estimate (not measured), a copy of a token's d values costs under 1% of its layer's GEMMs.
MIN_PADDING = 1 / 32


@dataclass(frozen=True)
class Packing:
    """Where a batch's real tokens sit in its (B, T) grid."""

    index: torch.Tensor  # (N,) long: flat positions in the B * T grid, row-major
    batch: int
    seq: int

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (1, N, d), the real tokens only."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.index).unsqueeze(0)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(1, N, d) -> (B, T, d), zeros at the padded places."""
        d = x.shape[-1]
        return x.new_zeros(self.batch * self.seq, d).index_copy_(0, self.index, x.reshape(-1, d)).view(
            self.batch, self.seq, d)

    def holds(self, x: torch.Tensor) -> bool:
        """Whether `x` is in packed form (1, N, d) rather than on the grid (B, T, d); B >= 2 whenever packing is on."""
        return x.shape[0] == 1 and x.shape[1] == self.index.shape[0]


_current: ContextVar[Packing | None] = ContextVar("adamix_packing", default=None)


def current() -> Packing | None:
    return _current.get()


@contextlib.contextmanager
def packed(attention_mask: torch.Tensor, enabled: bool = True) -> Iterator[Packing | None]:
    """The scope of one forward of `attention_mask`'s (B, T) batch: packed when `enabled` (the backbone has
    `install_packing`'s wrappers) and the batch holds enough padding."""
    b, t = attention_mask.shape
    flat = attention_mask.reshape(-1)
    plan = None
    if enabled and b > 1 and int(flat.sum()) <= (1 - MIN_PADDING) * b * t:
        plan = Packing(flat.nonzero().squeeze(1), b, t)
    token = _current.set(plan)
    try:
        yield plan
    finally:
        _current.reset(token)


class PackedEncoder(nn.Module):
    """Wraps an encoder (its `layer` list): packs the hidden states on the way in, unpacks them on the way out."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.inner = encoder

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        plan = current()
        if plan is None:
            return self.inner(hidden_states, *args, **kwargs)
        out = self.inner(plan.pack(hidden_states), *args, **kwargs)
        out.last_hidden_state = plan.unpack(out.last_hidden_state)
        return out


class GridAttention(nn.Module):
    """Wraps a self-attention module: runs it on the (B, T) grid when the hidden states arrive packed."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.inner = attention

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        plan = current()
        if plan is None or not plan.holds(hidden_states):
            return self.inner(hidden_states, *args, **kwargs)
        out, *rest = self.inner(plan.unpack(hidden_states), *args, **kwargs)
        return (plan.pack(out), *rest)


def install_packing(backbone: nn.Module) -> bool:
    """Wrap `backbone`'s encoder and its layers' self-attention for packed forwards (in place); False, and nothing
    changed, for a backbone not built as BERT is."""
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if getattr(backbone.config, "is_decoder", False) or not isinstance(layers, nn.ModuleList) or not all(
            isinstance(getattr(getattr(layer, "attention", None), "self", None), nn.Module) for layer in layers):
        return False
    for layer in layers:
        layer.attention.self = GridAttention(layer.attention.self)
    backbone.encoder = PackedEncoder(encoder)
    return True
