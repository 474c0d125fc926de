"""The unmerged mixture (`--save-experts`), for ablations: safetensors + JSON metadata, never pickle.

Also single random routes: the merge ablation compares the merged adapter with models that keep one
randomly chosen expert per mixture module.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from adamix import AdaMixConfig, AdaMixTaskModel, BackboneInfo, TaskSpec, add_adamix
from adamix.adapter_file import check_backbone
from adamix.atomic import atomic_write
from adamix.layers import FUSED_SLICES, MixtureAdapter, pack_fused_b
from adamix.model import lora_slices, mixture_modules
from trainer.checkpoint import load_trainable

EXPERTS_FORMAT = "adamix-experts"
EXPERTS_FORMAT_VERSION = 2  # 2: GPT-2's fused LoRA B per slice (as adapter format 4); version 1 is read, converted


def save_experts(path: str | Path, model: AdaMixTaskModel, info: BackboneInfo, provenance: dict) -> None:
    """Every trainable tensor of the unmerged mixture (all M experts) + the task head."""
    config = getattr(model, "adamix_config", None)
    if config is None:
        raise ValueError("--save-experts needs an AdaMix model; full fine-tuning has no experts")
    tensors = {n: p.detach().to("cpu", torch.float32).contiguous() for n, p in model.named_parameters()
               if p.requires_grad}
    meta = {"format": EXPERTS_FORMAT, "format_version": EXPERTS_FORMAT_VERSION, "config": config.to_dict(),
            "backbone": info.to_dict(), "task": model.task.to_dict(), "provenance": provenance}
    atomic_write(path, save(tensors, metadata={EXPERTS_FORMAT: json.dumps(meta, allow_nan=False)}))


def file_kind(path: str | Path) -> str:
    """'adapter' (a merged adapter file) or 'experts' (a --save-experts checkpoint), from the header."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own types for a non-safetensors file
        raise ValueError(f"{path} is not a safetensors file: {exc}") from None
    if EXPERTS_FORMAT in metadata:
        return "experts"
    if "adamix" in metadata:
        return "adapter"
    raise ValueError(f"{path} is neither an AdaMix adapter file nor a --save-experts checkpoint "
                     f"(metadata keys {sorted(metadata)})")


def load_experts(path: str | Path, backbone: nn.Module, info: BackboneInfo) -> tuple[AdaMixTaskModel, dict]:
    """Rebuild the unmerged model on `backbone` (fresh, unadapted); every key and shape is checked."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[EXPERTS_FORMAT])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    version = meta.get("format_version")
    if version not in (1, EXPERTS_FORMAT_VERSION):
        raise ValueError(f"{path}: --save-experts format_version {version!r} is not supported (this reader reads 1 "
                         f"and {EXPERTS_FORMAT_VERSION})")
    check_backbone(BackboneInfo(**meta["backbone"]), info)
    try:
        task = TaskSpec.from_dict(meta.get("task"))  # checked as an adapter file's task section is
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: the --save-experts checkpoint's task section is invalid: {exc}") from None
    model = AdaMixTaskModel(backbone, task)
    config = AdaMixConfig.from_dict(meta["config"])
    add_adamix(model, config)
    if version == 1:
        tensors = _fused_lora_per_slice(tensors, config, info)
    load_trainable(model, tensors, str(path))
    return model.eval(), meta


def _fused_lora_per_slice(tensors: dict[str, torch.Tensor], config: AdaMixConfig,
                          info: BackboneInfo) -> dict[str, torch.Tensor]:
    """A version-1 checkpoint's fused GPT-2 LoRA B experts, dense (3d, n * r), -> per slice (n * d, r). Version 1
    masked B in its forward, so the values dropped off the targets' blocks never reached an output."""
    slices = lora_slices(config, info.model_type)
    if slices is None:
        return tensors
    dense = (FUSED_SLICES * info.hidden_size, len(slices) * config.lora_r)  # other shapes: load_trainable refuses
    return {name: pack_fused_b(t, slices)[0] if ".adamix_lora.B." in name and tuple(t.shape) == dense else t
            for name, t in tensors.items()}


@contextmanager
def single_route(model: nn.Module, generator: torch.Generator) -> Iterator[list[int]]:
    """Within the block, every mixture module keeps one randomly drawn expert per projection; yields the route."""
    saved: list[tuple[nn.Module, str, nn.Module]] = []
    route: list[int] = []
    for module in mixture_modules(model):
        attrs = ("down", "up") if isinstance(module, MixtureAdapter) else ("A", "B")
        for attr in attrs:
            experts = getattr(module, attr)
            if len(experts) == 1:
                continue
            i = int(torch.randint(len(experts), (1,), generator=generator))
            route.append(i)
            saved.append((module, attr, experts))
            setattr(module, attr, type(experts)([experts[i]]))
    try:
        yield route
    finally:
        for module, attr, experts in saved:
            setattr(module, attr, experts)
