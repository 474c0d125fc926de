"""Scoring a model on a dev set with the task's metrics."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from trainer.data import Collator, Example, eval_batches
from trainer.methods import task_loss
from trainer.metrics import compute_metrics


@torch.no_grad()
def predict(model: nn.Module, examples: Sequence[Example], collate: Collator, batch_size: int,
            device: torch.device) -> tuple[np.ndarray, float]:
    """(predictions in the examples' order, mean task loss). Runs in eval mode: a mixture uses its merged weights."""
    was_training = model.training
    model.eval()
    preds = np.zeros(len(examples), dtype=np.float64 if collate.regression else np.int64)
    loss_sum = 0.0
    for idx, batch_examples in eval_batches(examples, batch_size):
        batch = {k: v.to(device) for k, v in collate(batch_examples).items()}
        labels = batch.pop("labels")  # (B,)
        logits = model(**batch)  # (B, C)
        loss_sum += float(task_loss(logits, labels, collate.regression)) * len(idx)
        out = logits.squeeze(-1) if collate.regression else logits.argmax(-1)  # (B,)
        preds[idx] = out.float().cpu().numpy() if collate.regression else out.cpu().numpy()
    model.train(was_training)
    return preds, loss_sum / max(1, len(examples))


def evaluate(model: nn.Module, examples: Sequence[Example], collate: Collator, metrics: Sequence[str],
             batch_size: int, device: torch.device) -> dict[str, float]:
    """`{metric: value, ..., "loss": mean task loss}` on `examples`."""
    if not examples:
        raise ValueError("cannot evaluate on an empty dev set")
    preds, loss = predict(model, examples, collate, batch_size, device)
    labels = np.array([e.label for e in examples])
    return {**compute_metrics(tuple(metrics), preds, labels), "loss": loss}
