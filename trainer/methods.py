"""The training methods (AdaMix, its single-module baselines, full fine-tuning) and their shared loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adamix import AdaMixConfig, AdaMixTaskModel, TaskSpec, add_adamix, consistency_loss, regression_consistency_loss


@dataclass(frozen=True)
class Method:
    kind: str | None  # AdaMixConfig.kind, None for full fine-tuning
    num_experts: int  # default M
    two_pass: bool  # AdaMix: two stochastic passes + consistency


METHODS: dict[str, Method] = {
    "adamix": Method("adapter", 4, True),
    "adapter": Method("adapter", 1, False),
    "lora": Method("lora", 1, False),
    "adamix-lora": Method("lora", 4, True),
    "full": Method(None, 1, False),
}


def adamix_config(method: str, bottleneck: int = 16, num_experts: int | None = None, lora_r: int = 4,
                  consistency_weight: float = 1.0, seed: int = 0, placement: str = "ffn",
                  lora_targets: tuple[str, ...] = ("query", "value")) -> AdaMixConfig | None:
    """The AdaMixConfig a method trains (None for full fine-tuning); share_up as in the paper."""
    spec = METHODS[method]
    if spec.kind is None:
        return None
    experts = spec.num_experts if num_experts is None else num_experts
    if not spec.two_pass and experts != 1:
        raise ValueError(f"--method {method} is the single-module baseline (M=1); use --method "
                         f"{'adamix' if spec.kind == 'adapter' else 'adamix-lora'} for M={experts}")
    return AdaMixConfig(kind=spec.kind, num_experts=experts, bottleneck=bottleneck, lora_r=lora_r,
                        consistency_weight=consistency_weight, seed=seed, placement=placement,
                        lora_targets=tuple(lora_targets))


def build_model(method: str, backbone: nn.Module, task: TaskSpec, config: AdaMixConfig | None,
                seed: int) -> AdaMixTaskModel:
    """Backbone + task head (+ AdaMix modules); only the method's weights are trainable."""
    torch.manual_seed(seed)  # the head init and dropout masks use the global generator
    model = AdaMixTaskModel(backbone, task)
    if config is None:
        for param in model.parameters():
            param.requires_grad_(True)
    else:
        add_adamix(model, config)
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters; biases and LayerNorm weights without weight decay (the reference recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


REGRESSION_CONSISTENCY = ("none", "mse")  # a regression head's consistency term across the two passes


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())  # (B,) scores
    return F.cross_entropy(logits.float(), labels)


def training_loss(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor, two_pass: bool,
                  regression: bool, consistency_weight: float,
                  regression_consistency: str = "none") -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss. AdaMix: `CE(pass 1) + lambda * consistency(pass 1, pass 2)` over two stochastic passes.

    For a one-logit regression head the consistency KL is identically zero (ADAMIX.md), so by default the
    second pass would add no gradient and is skipped there; `regression_consistency="mse"` opts in to the
    MSE between the two passes' scores instead (`adamix train --regression-consistency mse`).
    """
    if regression_consistency not in REGRESSION_CONSISTENCY:
        raise ValueError(f"regression_consistency must be one of {REGRESSION_CONSISTENCY}, got {regression_consistency!r}")
    logits = model(**inputs)  # (B, C): pass 1, one random route and dropout mask
    loss = task_loss(logits, labels, regression)
    parts = {"task_loss": float(loss.detach())}
    if two_pass and (not regression or regression_consistency == "mse"):
        logits2 = model(**inputs)  # (B, C): pass 2, independent route and dropout mask
        cons = regression_consistency_loss(logits, logits2) if regression else consistency_loss(logits, logits2)
        loss = loss + consistency_weight * cons
        parts["consistency"] = float(cons.detach())
    return loss, parts
