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


class MixtureLoRA(nn.Module):
    """`x -> scaling * B(A(dropout(x)))` with M A (down) experts and a shared (or mixed) B, zero-init.

    `out_mask` (out, k), for fused projections: LoRA only on some output slices (GPT-2 c_attn q and v).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, num_experts: int, scaling: float,
                 dropout: float, share_b: bool, router: Router | None, out_mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.router = router
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout)
        a_init = torch.empty(rank, in_features)
        nn.init.kaiming_uniform_(a_init, a=math.sqrt(5), generator=generator)
        # A experts start as identical copies of one init (unlike the adapter variant); B starts at zero.
        self.A = nn.ParameterList(nn.Parameter(a_init.clone()) for _ in range(num_experts))
        self.B = nn.ParameterList(nn.Parameter(torch.zeros(out_features, rank))
                                  for _ in range(1 if share_b else num_experts))
        self.register_buffer("out_mask", out_mask, persistent=False)

    @property
    def num_experts(self) -> int:
        return max(len(self.A), len(self.B))

    def _route(self, params: nn.ParameterList) -> torch.Tensor:
        if self.training and len(params) > 1:  # training: one random expert for the whole batch
            if self.router is None:
                raise RuntimeError("MixtureLoRA has several experts but no router; build it with add_adamix")
            return params[self.router.draw(len(params))]
        return params[0] if len(params) == 1 else torch.stack(list(params)).mean(0)  # (M, ...) -> averaged

    def effective_b(self, b: torch.Tensor) -> torch.Tensor:
        """(out, k) B with the fused-projection mask applied: each target's columns feed only its slice."""
        return b if self.out_mask is None else b * self.out_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._route(self.A)  # (k, in)
        b = self.effective_b(self._route(self.B))  # (out, k)
        return (self.dropout(x) @ a.T @ b.T) * self.scaling  # (B, T, in) @ (in, k) @ (k, out) -> (B, T, out)

    @torch.no_grad()
    def merged(self) -> MixtureLoRA:
        """A one-expert LoRA holding the averaged A and B (B already masked)."""
        a = torch.stack(list(self.A)).mean(0)  # (M, k, in) -> (k, in)
        b = self.effective_b(torch.stack(list(self.B)).mean(0))  # (M_b, out, k) -> (out, k)
        plain = MixtureLoRA(a.shape[1], b.shape[0], a.shape[0], 1, self.scaling, self.dropout.p, True, None,
                            self.out_mask)
        plain.A[0] = nn.Parameter(a.detach().clone())
        plain.B[0] = nn.Parameter(b.detach().clone())
        return plain.train(self.training)  # keep eval mode (LoRA dropout off) across merging


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
