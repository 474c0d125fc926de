"""Mixture layers: bottleneck-adapter and LoRA mixtures, and the sites that wrap a frozen base layer.

Every adapter parameter lives under a module attribute starting with `adamix_`, so "the trainable
adapter state" is the substring filter `ADAPTER_PREFIX in name`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_PREFIX = "adamix_"


class Router:
    """Stochastic routing: one expert index per draw, from an explicit seedable generator.

    One router is shared by all mixture modules of a model, so a fixed seed reproduces every route and
    ranks of a data-parallel job that call the modules in the same order draw identical routes.
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, num_experts: int) -> int:
        if num_experts == 1:
            return 0
        return int(torch.randint(num_experts, (1,), generator=self.generator).item())

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def _mean_linear(layers: nn.ModuleList) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Uniform weight average ("model soup") of a list of nn.Linear experts."""
    if len(layers) == 1:
        return layers[0].weight, layers[0].bias
    weight = torch.stack([layer.weight for layer in layers]).mean(0)  # (M, out, in) -> (out, in)
    bias = None if layers[0].bias is None else torch.stack([layer.bias for layer in layers]).mean(0)  # (out,)
    return weight, bias


class MixtureAdapter(nn.Module):
    """`h -> up(gelu(down(h)))` with M down experts and M (or one shared) up experts.

    Training: each forward call routes the whole batch through one randomly drawn expert per
    projection (independent draws). Eval: the experts' weights are averaged (the merged adapter).
    """

    def __init__(self, hidden: int, bottleneck: int, num_experts: int, share_up: bool, share_down: bool,
                 init_std: float, router: Router | None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.router = router
        self.down = nn.ModuleList(nn.Linear(hidden, bottleneck) for _ in range(1 if share_down else num_experts))
        self.up = nn.ModuleList(nn.Linear(bottleneck, hidden) for _ in range(1 if share_up else num_experts))
        for layer in [*self.down, *self.up]:  # every expert independently N(0, std), zero bias
            nn.init.normal_(layer.weight, std=init_std, generator=generator)
            nn.init.zeros_(layer.bias)

    @property
    def num_experts(self) -> int:
        return max(len(self.down), len(self.up))

    def _route(self, layers: nn.ModuleList) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.training and len(layers) > 1:  # training: the whole batch through one random expert
            if self.router is None:
                raise RuntimeError("MixtureAdapter has several experts but no router; build it with add_adamix")
            layer = layers[self.router.draw(len(layers))]
            return layer.weight, layer.bias
        return _mean_linear(layers)  # eval: the merged (weight-averaged) expert, never an output average

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        down_w, down_b = self._route(self.down)  # (r, d), (r,)
        up_w, up_b = self._route(self.up)  # (d, r), (d,): with share_up one copy, never routed
        z = F.gelu(F.linear(h, down_w, down_b))  # (B, T, r), exact erf GELU
        return F.linear(z, up_w, up_b)  # (B, T, d)

    @torch.no_grad()
    def merged(self) -> MixtureAdapter:
        """A one-expert adapter holding the averaged weights."""
        down_w, down_b = _mean_linear(self.down)
        up_w, up_b = _mean_linear(self.up)
        plain = MixtureAdapter(down_w.shape[1], down_w.shape[0], 1, True, True, 0.02, None)
        for layer, weight, bias in ((plain.down[0], down_w, down_b), (plain.up[0], up_w, up_b)):
            layer.weight = nn.Parameter(weight.detach().clone())
            layer.bias = nn.Parameter(bias.detach().clone())
        return plain.train(self.training)  # a fresh module starts in train mode; keep the mixture's mode


FUSED_SLICES = 3  # a fused q|k|v projection (GPT-2 c_attn): its output is three equal slices, q then k then v


class MixtureLoRA(nn.Module):
    """`x -> scaling * B(A(dropout(x)))` with M A (down) experts and a shared (or mixed) B, zero-init.

    `slices`, for a fused q|k|v projection: the output slice (0 q, 1 k, 2 v) that each target's LoRA feeds, in
    target order. Each target t has its own rank-r pair, stored packed: A (n * r, in) holds the A_t one after
    another, B (n * out / 3, r) the B_t (out / 3, r); slices without a target get no update and store nothing
    (the reference's `MergedLinear` layout). Without `slices`: A (r, in), B (out, r), one plain LoRA.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, num_experts: int, scaling: float,
                 dropout: float, share_b: bool, router: Router | None, slices: tuple[int, ...] | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if slices is not None and (out_features % FUSED_SLICES or not slices
                                   or len(set(slices)) != len(slices) or not set(slices) <= set(range(FUSED_SLICES))):
            raise ValueError(f"fused LoRA slices must be distinct indices < {FUSED_SLICES} of an output divisible by "
                             f"{FUSED_SLICES}, got slices {slices} for {out_features} outputs")
        self.router = router
        self.scaling = scaling
        self.rank = rank  # r of each target's pair
        self.in_features, self.out_features = in_features, out_features
        self.slices = slices
        n = 1 if slices is None else len(slices)
        b_rows = out_features if slices is None else n * (out_features // FUSED_SLICES)
        self.dropout = nn.Dropout(dropout)
        a_init = torch.empty(n * rank, in_features)
        nn.init.kaiming_uniform_(a_init, a=math.sqrt(5), generator=generator)
        # A experts start as identical copies of one init (unlike the adapter variant); B starts at zero.
        self.A = nn.ParameterList(nn.Parameter(a_init.clone()) for _ in range(num_experts))
        self.B = nn.ParameterList(nn.Parameter(torch.zeros(b_rows, rank))
                                  for _ in range(1 if share_b else num_experts))

    @property
    def num_experts(self) -> int:
        return max(len(self.A), len(self.B))

    def _route(self, params: nn.ParameterList) -> torch.Tensor:
        if self.training and len(params) > 1:  # training: one random expert for the whole batch
            if self.router is None:
                raise RuntimeError("MixtureLoRA has several experts but no router; build it with add_adamix")
            return params[self.router.draw(len(params))]
        return params[0] if len(params) == 1 else torch.stack(list(params)).mean(0)  # (M, ...) -> averaged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._route(self.A)  # (n * r, in)
        b = self._route(self.B)  # (out, r), or fused (n * s, r) with s = out / 3
        if self.slices is None:
            return (self.dropout(x) @ a.T @ b.T) * self.scaling  # (B, T, in) @ (in, r) @ (r, out) -> (B, T, out)
        return fused_lora_delta(self.dropout(x) @ a.T, b, self.slices, self.rank) * self.scaling  # (B, T, out)

    @torch.no_grad()
    def merged(self) -> MixtureLoRA:
        """A one-expert LoRA holding the averaged A and B."""
        a = torch.stack(list(self.A)).mean(0)  # (M, n * r, in) -> (n * r, in)
        b = torch.stack(list(self.B)).mean(0)  # (M_b, rows, r) -> (rows, r)
        plain = MixtureLoRA(self.in_features, self.out_features, self.rank, 1, self.scaling, self.dropout.p, True,
                            None, self.slices)
        plain.A[0] = nn.Parameter(a.detach().clone())
        plain.B[0] = nn.Parameter(b.detach().clone())
        return plain.train(self.training)  # keep eval mode (LoRA dropout off) across merging


def fused_lora_delta(z: torch.Tensor, b: torch.Tensor, slices: tuple[int, ...], rank: int) -> torch.Tensor:
    """Fused q|k|v LoRA update from `z = x @ A.T` (..., n * r) and packed B (n * s, r): (..., 3 * s), zero
    on the slices without a target. Each target's r columns of `z` meet only its own B_t."""
    n, s = len(slices), b.shape[0] // len(slices)
    per_target = torch.einsum("...nr,nsr->...ns", z.unflatten(-1, (n, rank)), b.view(n, s, rank))  # (..., n, s)
    if n == FUSED_SLICES and slices == tuple(range(FUSED_SLICES)):
        return per_target.flatten(-2)  # q, k and v all adapted, in order: nothing to place
    out = per_target.new_zeros(*per_target.shape[:-2], FUSED_SLICES, s)  # (..., 3, s)
    out[..., list(slices), :] = per_target
    return out.flatten(-2)  # (..., 3 * s)


def dense_fused_b(b: torch.Tensor, slices: tuple[int, ...]) -> torch.Tensor:
    """Packed fused B (n * s, r) -> the equivalent dense (3 * s, n * r) B of one rank-(n * r) LoRA: block t of
    A's rows feeds only slice slices[t]; zero elsewhere (PEFT's layout, and the server pool's)."""
    n, r = len(slices), b.shape[1]
    s = b.shape[0] // n
    dense = b.new_zeros(FUSED_SLICES * s, n * r)  # (3s, nr)
    for i, t in enumerate(slices):
        dense[t * s:(t + 1) * s, i * r:(i + 1) * r] = b[i * s:(i + 1) * s]
    return dense


def pack_fused_b(dense: torch.Tensor, slices: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """The inverse of `dense_fused_b`: (packed (n * s, r), whether `dense` is zero outside its blocks)."""
    n = len(slices)
    s, r = dense.shape[0] // FUSED_SLICES, dense.shape[1] // n
    packed = torch.cat([dense[t * s:(t + 1) * s, i * r:(i + 1) * r] for i, t in enumerate(slices)])  # (ns, r)
    return packed, torch.equal(dense_fused_b(packed, slices), dense)


class AdapterSite(nn.Module):
    """Wraps a frozen base layer: `h = base(x); return h + adapter(h)`."""

    def __init__(self, base_layer: nn.Module, adapter: MixtureAdapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adamix_adapter = adapter

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)  # (B, T, d): the FFN (or attention) output projection
        return h + self.adamix_adapter(h)  # residual inside the site; dropout + LayerNorm follow in the backbone


class LoRASite(nn.Module):
    """Wraps a frozen linear (or GPT-2 Conv1D) layer: `base(x) + lora(x)`."""

    def __init__(self, base_layer: nn.Module, lora: MixtureLoRA) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adamix_lora = lora

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base_layer(x, *args, **kwargs) + self.adamix_lora(x)


def layer_features(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D (weight stored (in, out))."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if type(layer).__name__ == "Conv1D":
        return layer.weight.shape[0], layer.weight.shape[1]
    raise TypeError(f"cannot adapt a {type(layer).__name__}: expected nn.Linear or Conv1D")
