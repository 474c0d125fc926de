"""Export a merged AdaMix-LoRA adapter as a PEFT LoRA adapter directory.

A merged AdaMix-LoRA adapter is a plain LoRA adapter, so `peft.PeftModel.from_pretrained(model, directory)`
can serve it. This module writes the two files PEFT reads (`adapter_config.json`,
`adapter_model.safetensors`) by hand: peft is not a runtime dependency of `adamix`.

GPT-2's fused `c_attn` (a Conv1D, `fan_in_fan_out=True` in PEFT) holds q, k and v in three output
slices; our file stores its LoRA per slice, one rank-r pair per target (A (n * r, d), B (n * d, r)).
PEFT has no per-slice LoRA, so the export writes the same update as one plain rank `k = n * r` LoRA:
A as stored, B expanded to PEFT's dense (3d, k), zero off each target's block. PEFT's scaling is
`lora_alpha / k`, so we write `lora_alpha = alpha * k / r` to keep the update `(alpha / r) * B A` unchanged.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from adamix.adapter_file import AdapterFile
from adamix.model import ARCHITECTURES

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
# Where `load_backbone` puts the backbone inside the model it returns (the model PEFT will wrap):
# encoders load as the bare AutoModel, GPT-2 as GPT2LMHeadModel (backbone under `transformer`).
DEFAULT_MODULE_PREFIX = {"gpt2": "transformer."}


def export_peft_lora(adapter: AdapterFile, directory: str | os.PathLike,
                     base_model_name_or_path: str | None = None, *, module_prefix: str | None = None) -> Path:
    """Write `adapter` (kind "lora") as a PEFT LoRA adapter directory; return the directory.

    `module_prefix`: the backbone's module path inside the model PEFT will wrap, with a trailing dot
    (e.g. "bert." for BertForSequenceClassification, "" for a bare BertModel). Default: the model
    `adamix.load_backbone` returns ("" for encoders, "transformer." for GPT-2). The task head is not
    exported (PEFT has no slot for it); generation adapters have none.
    """
    if adapter.kind != "lora":
        raise ValueError(f"only kind 'lora' adapters can be exported as PEFT LoRA, got kind {adapter.kind!r} "
                         "(a bottleneck adapter has no PEFT LoRA equivalent)")
    model_type = adapter.backbone.model_type
    prefix = DEFAULT_MODULE_PREFIX.get(model_type, "") if module_prefix is None else module_prefix
    if prefix and not prefix.endswith("."):
        raise ValueError(f"module_prefix must be empty or end with '.', got {prefix!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, rank = _peft_weights(adapter, prefix)
    save_file(weights, str(directory / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    config = _peft_config(adapter, rank, base_model_name_or_path)
    (directory / PEFT_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def _peft_weights(adapter: AdapterFile, prefix: str) -> tuple[dict[str, torch.Tensor], int]:
    """Our `lora.P.A` (k, in) / `lora.P.B` -> PEFT's `base_model.model.P.lora_A/B.weight` (k, in) / (out, k), and k."""
    weights: dict[str, torch.Tensor] = {}
    ranks = set()
    for site, lora in adapter.sites().items():  # the task head has no PEFT equivalent
        # nn.Linear layout in PEFT for both Linear and Conv1D bases: lora_A (k, in), lora_B (out, k).
        for name, tensor in (("lora_A", lora.A), ("lora_B", lora.dense_b())):
            peft_key = f"base_model.model.{prefix}{site}.{name}.weight"
            weights[peft_key] = tensor.detach().to("cpu", torch.float32).contiguous()
        ranks.add(lora.A.shape[0])
    if len(ranks) != 1:
        raise ValueError(f"a PEFT LoRA adapter needs one rank across sites, the adapter has ranks {sorted(ranks)}")
    return weights, ranks.pop()


def _peft_config(adapter: AdapterFile, rank: int, base_model_name_or_path: str | None) -> dict:
    config = adapter.config
    arch = ARCHITECTURES[adapter.backbone.model_type]
    # The last module-name component of each target's pattern: 'query', 'q_lin', 'c_attn', ...
    targets = sorted({arch.lora[t].rpartition(r"\.")[2] for t in config.lora_targets})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if adapter.task.type == "generation" else None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": config.lora_scaling * rank,  # PEFT scales by lora_alpha / r: keep alpha / r_ours
        "lora_dropout": config.lora_dropout,
        "target_modules": targets,
        "fan_in_fan_out": arch.fused_qkv,  # GPT-2 Conv1D stores its weight (in, out)
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
