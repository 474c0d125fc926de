"""The AdaMix consistency regularisers: symmetric KL (classification, generation) and the opt-in MSE for regression."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def consistency_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric KL between two stochastic passes: `0.5 * (KL(sg(p_b) || p_a) + KL(sg(p_a) || p_b))`.

    `logits_*`: (B, C) for classification or (B, T, V) for generation; `mask` (B, T) selects the
    target tokens (token-level KL over those positions). Targets are detached, so each pass is pulled
    towards the other; reduction is batchmean over examples (or selected tokens). Zero for a one-logit
    head, whose softmax is identically 1 (the reference code's regression behaviour).
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"consistency_loss needs equal shapes, got {tuple(logits_a.shape)} and {tuple(logits_b.shape)}")
    if mask is not None:
        if mask.shape != logits_a.shape[:-1]:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal logits shape without the last dim "
                             f"{tuple(logits_a.shape[:-1])}")
        keep = mask.bool()
        logits_a, logits_b = logits_a[keep], logits_b[keep]  # (N, V) over the selected tokens
    else:
        logits_a = logits_a.reshape(-1, logits_a.shape[-1])
        logits_b = logits_b.reshape(-1, logits_b.shape[-1])
    if logits_a.shape[0] == 0:
        return logits_a.sum() * 0.0
    log_pa = F.log_softmax(logits_a.float(), dim=-1)
    log_pb = F.log_softmax(logits_b.float(), dim=-1)
    kl_b_a = F.kl_div(log_pa, log_pb.detach(), log_target=True, reduction="batchmean")  # KL(sg(p_b) || p_a)
    kl_a_b = F.kl_div(log_pb, log_pa.detach(), log_target=True, reduction="batchmean")  # KL(sg(p_a) || p_b)
    return 0.5 * (kl_b_a + kl_a_b)


def regression_consistency_loss(out_a: torch.Tensor, out_b: torch.Tensor) -> torch.Tensor:
    """MSE between two stochastic passes of a regression head, symmetric like the KL: `0.5 * (MSE(a, sg(b)) +
    MSE(b, sg(a)))`. The opt-in extension of ADAMIX.md for one-logit heads, whose KL is identically zero.

    `out_*`: (B,) or (B, 1) predicted scores.
    """
    if out_a.shape != out_b.shape:
        raise ValueError(f"regression_consistency_loss needs equal shapes, got {tuple(out_a.shape)} and "
                         f"{tuple(out_b.shape)}")
    a, b = out_a.float().reshape(-1), out_b.float().reshape(-1)
    return 0.5 * (F.mse_loss(a, b.detach()) + F.mse_loss(b, a.detach()))
