"""Injecting AdaMix mixtures into Hugging Face models, freezing the backbone, and merging."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from adamix.backbone import num_layers_of
from adamix.config import AdaMixConfig
from adamix.layers import ADAPTER_PREFIX, AdapterSite, LoRASite, MixtureAdapter, MixtureLoRA, Router, layer_features


@dataclass(frozen=True)
class ArchitectureSites:
    """Module-name patterns (relative to the backbone) of one architecture's adaptable layers."""

    ffn: str  # the FFN output projection; the adapter follows it (before dropout + residual LayerNorm)
    attention: str  # the attention output projection (Houlsby's first site)
    lora: dict[str, str]  # 'query'/'key'/'value' -> pattern; for fused projections all map to one pattern
    fused_qkv: bool = False  # GPT-2: q, k and v come out of one Conv1D, in three equal slices


_BERT_LIKE = ArchitectureSites(
    ffn=r"encoder\.layer\.\d+\.output\.dense",
    attention=r"encoder\.layer\.\d+\.attention\.output\.dense",
    lora={t: rf"encoder\.layer\.\d+\.attention\.self\.{t}" for t in ("query", "key", "value")},
)
ARCHITECTURES: dict[str, ArchitectureSites] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "distilbert": ArchitectureSites(
        ffn=r"transformer\.layer\.\d+\.ffn\.lin2",
        attention=r"transformer\.layer\.\d+\.attention\.out_lin",
        lora={t: rf"transformer\.layer\.\d+\.attention\.{t[0]}_lin" for t in ("query", "key", "value")},
    ),
    "gpt2": ArchitectureSites(
        ffn=r"h\.\d+\.mlp\.c_proj",
        attention=r"h\.\d+\.attn\.c_proj",
        lora={t: r"h\.\d+\.attn\.c_attn" for t in ("query", "key", "value")},
        fused_qkv=True,
    ),
}
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}


def backbone_of(model: nn.Module) -> nn.Module:
    """The Hugging Face base model inside `model` (the model itself for a bare backbone)."""
    return getattr(model, "base_model", model)


def architecture_of(backbone: nn.Module) -> ArchitectureSites:
    return architecture_for(getattr(getattr(backbone, "config", None), "model_type", None))


def architecture_for(model_type: str | None) -> ArchitectureSites:
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unsupported backbone model_type {model_type!r}; supported: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def _site_patterns(config: AdaMixConfig, arch: ArchitectureSites) -> list[str]:
    if config.kind == "lora":
        return sorted({arch.lora[t] for t in config.lora_targets})
    return {"ffn": [arch.ffn], "attention": [arch.attention], "both": [arch.ffn, arch.attention]}[config.placement]


def add_adamix(model: nn.Module, config: AdaMixConfig) -> nn.Module:
    """Inject AdaMix mixtures into `model` in place, freeze its backbone, and return it.

    Every backbone parameter is frozen (LayerNorms and pooler included); parameters outside the
    backbone (task heads) keep their `requires_grad`. Raises if no module matched.
    """
    backbone = backbone_of(model)
    arch = architecture_of(backbone)
    if any(isinstance(m, (AdapterSite, LoRASite)) for m in backbone.modules()):
        raise ValueError("model already has AdaMix modules; add_adamix must be applied once")
    patterns = [re.compile(p) for p in _site_patterns(config, arch)]
    names = [n for n, _ in backbone.named_modules() if any(p.fullmatch(n) for p in patterns)]
    if not names:
        raise ValueError(f"add_adamix matched no module in {type(backbone).__name__} for kind={config.kind!r}")
    expected = site_names(config, backbone.config.model_type, num_layers_of(backbone.config))
    if sorted(names) != expected:
        raise ValueError(f"add_adamix matched {sorted(names)[:4]}..., expected {expected[:4]}...: "
                         "the backbone's module layout is not the one its model_type declares")
    features = {name: layer_features(backbone.get_submodule(name)) for name in names}  # raises on a non-Linear
    for param in backbone.parameters():  # only once every check passed: a refused call changes nothing
        param.requires_grad_(False)
    router = Router(config.seed)
    init_gen = torch.Generator().manual_seed(config.seed)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name)
        base = getattr(parent, child)
        in_f, out_f = features[name]
        ref = base.weight
        if config.kind == "adapter":
            mix = MixtureAdapter(out_f, config.bottleneck, config.num_experts, config.share_up, config.share_down,
                                 config.init_std, router, init_gen)
            site: nn.Module = AdapterSite(base, mix.to(ref.device, ref.dtype))
        else:
            mix = MixtureLoRA(in_f, out_f, config.lora_r, config.num_experts, config.lora_scaling,
                              config.lora_dropout, config.lora_share_b, router,
                              lora_slices(config, backbone.config.model_type), init_gen)
            site = LoRASite(base, mix.to(ref.device, ref.dtype))
        setattr(parent, child, site)
    model.adamix_config = config
    model.adamix_router = router
    return model


def lora_slices(config: AdaMixConfig, model_type: str) -> tuple[int, ...] | None:
    """For a LoRA config on a fused q|k|v projection (GPT-2 c_attn): the output slice each LoRA target feeds, in
    target order (the order of A's rank-r blocks); None where every target is its own layer, or for adapters."""
    if config.kind != "lora" or not architecture_for(model_type).fused_qkv:
        return None
    return tuple(_QKV_INDEX[t] for t in config.lora_targets)


def site_names(config: AdaMixConfig, model_type: str, num_layers: int) -> list[str]:
    """The module paths (relative to the backbone) that `config` adapts in a backbone of this shape."""
    patterns = _site_patterns(config, architecture_for(model_type))
    templates = [p.replace(r"\d+", "{}").replace("\\.", ".") for p in patterns]
    return sorted(t.format(i) for t in templates for i in range(num_layers))


def mixture_modules(model: nn.Module) -> list[MixtureAdapter | MixtureLoRA]:
    return [m for m in model.modules() if isinstance(m, (MixtureAdapter, MixtureLoRA))]


@torch.no_grad()
def merge_adamix(model: nn.Module) -> nn.Module:
    """Replace every mixture by one plain module holding the uniformly averaged expert weights."""
    sites = [m for m in model.modules() if isinstance(m, (AdapterSite, LoRASite))]
    if not sites:
        raise ValueError("merge_adamix found no AdaMix module; call add_adamix first")
    for site in sites:
        if isinstance(site, AdapterSite):
            site.adamix_adapter = site.adamix_adapter.merged()
        else:
            site.adamix_lora = site.adamix_lora.merged()
    return model


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter's own parameters (head excluded), by name."""
    return {n: p for n, p in model.named_parameters() if ADAPTER_PREFIX in n}


def count_adapter_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in adapter_parameters(model).values())


def is_merged(model: nn.Module) -> bool:
    return all(m.num_experts == 1 for m in mixture_modules(model))
