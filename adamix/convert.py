"""Between models and adapter files: extract the merged adapter of a trained model, or rebuild the served model."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from adamix.adapter_file import (HEAD_BIAS, HEAD_KEYS, HEAD_WEIGHT, AdapterFile, AdapterFileError, check_tensors,
                                 tensor_key)
from adamix.backbone import BackboneInfo
from adamix.model import add_adamix, backbone_of, is_merged
from adamix.task import AdaMixTaskModel, TaskSpec

# Model parameter names (under `adamix_adapter.` / `adamix_lora.` of a merged site) -> tensor parts.
_PARAM_PARTS = {"adamix_adapter": ("adapter", {"down.0.weight": "down.weight", "down.0.bias": "down.bias",
                                               "up.0.weight": "up.weight", "up.0.bias": "up.bias"}),
                "adamix_lora": ("lora", {"A.0": "A", "B.0": "B"})}


def _canonical_key(name: str) -> str | None:
    """Model parameter name (relative to the backbone, merged) -> file key; None if not an adapter param."""
    for marker, (kind, parts) in _PARAM_PARTS.items():
        site, found, rest = name.partition(f".{marker}.")
        if found:
            return tensor_key(kind, site.removesuffix(".base_layer"), parts[rest])
    return None


def adapter_from_model(model: AdaMixTaskModel | nn.Module, backbone: BackboneInfo, task: TaskSpec,
                       provenance: dict | None = None) -> AdapterFile:
    """Extract the served adapter (merged mixture + head) from a model built by `add_adamix`."""
    config = getattr(model, "adamix_config", None)
    if config is None:
        raise ValueError("model has no AdaMix modules; build it with add_adamix")
    if not is_merged(model):
        raise ValueError("the adapter file holds the merged adapter; call merge_adamix(model) first")
    tensors = {}
    for name, param in backbone_of(model).named_parameters():
        key = _canonical_key(name)
        if key is not None:
            tensors[key] = param.detach().to("cpu", torch.float32).contiguous().clone()
    head = getattr(model, "head", None)
    if task.num_outputs:
        if head is None:
            raise ValueError(f"a {task.type} adapter needs the model's task head; the model has none")
        tensors[HEAD_WEIGHT] = head.weight.detach().to("cpu", torch.float32).contiguous().clone()
        tensors[HEAD_BIAS] = head.bias.detach().to("cpu", torch.float32).contiguous().clone()
    adapter = AdapterFile(config, backbone, task, tensors, dict(provenance or {}))
    check_tensors(adapter)
    return adapter


def task_model_from_adapter(backbone: nn.Module, adapter: AdapterFile) -> AdaMixTaskModel:
    """Build the served model offline: `backbone` (fresh, unadapted) + the adapter's merged modules + head."""
    model = AdaMixTaskModel(backbone, adapter.task)
    add_adamix(model, dataclasses.replace(adapter.config, num_experts=1))
    base = backbone_of(model)
    params = {name: _canonical_key(name) for name, _ in base.named_parameters()}
    params = {name: key for name, key in params.items() if key is not None}
    adapter_keys = set(adapter.tensors) - set(HEAD_KEYS)
    if set(params.values()) != adapter_keys:
        raise AdapterFileError(f"adapter keys do not fit the backbone: extra "
                               f"{sorted(adapter_keys - set(params.values()))[:3]}, missing "
                               f"{sorted(set(params.values()) - adapter_keys)[:3]}", "tensors")
    with torch.no_grad():
        for name, key in params.items():
            base.get_parameter(name).copy_(adapter.tensors[key])
        if adapter.head is not None:  # an embedding task without a projection has no head
            head_weight, head_bias = adapter.head
            model.head.weight.copy_(head_weight)
            model.head.bias.copy_(head_bias)
    return model.eval()
