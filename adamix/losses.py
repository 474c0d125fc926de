"""The AdaMix consistency regularisers: symmetric KL (classification, generation; embeddings over in-batch
similarities) and the opt-in MSE for regression."""
from __future__ import annotations

import torch
import torch.nn.functional as F

EMBEDDING_SCALE = 20.0  # the default cosine scale of an embedding objective and of its consistency KL


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


def embedding_consistency_loss(texts_a: torch.Tensor, pairs_a: torch.Tensor, texts_b: torch.Tensor,
                               pairs_b: torch.Tensor, scale: float = EMBEDDING_SCALE) -> torch.Tensor:
    """AdaMix's consistency for an embedding objective: the symmetric KL above between two stochastic passes'
    in-batch similarity distributions.

    `texts_*`, `pairs_*`: (B, p) unit-length embeddings of a batch's first and second texts from pass a and
    pass b. Row i of `scale * texts @ pairs.T` (B, B) is text i's distribution over the batch's second texts
    (the quantity in-batch-negatives training sharpens), so the two passes are asked to agree on how every text
    ranks every candidate, not only on its own pair. A batch of one pair has a single candidate: the term is 0.
    """
    if not texts_a.shape == pairs_a.shape == texts_b.shape == pairs_b.shape or texts_a.dim() != 2:
        raise ValueError(f"embedding_consistency_loss needs four equal (B, p) shapes, got {tuple(texts_a.shape)}, "
                         f"{tuple(pairs_a.shape)}, {tuple(texts_b.shape)}, {tuple(pairs_b.shape)}")
    sim_a = scale * texts_a.float() @ pairs_a.float().T  # (B, B): scaled cosines of pass a
    sim_b = scale * texts_b.float() @ pairs_b.float().T  # (B, B): scaled cosines of pass b
    return consistency_loss(sim_a, sim_b)
