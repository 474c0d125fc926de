"""Scoring a model on a dev set with the task's metrics."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from trainer.data import Collator, Dataset, Example, eval_batches
from trainer.embedding import EmbeddingCollator, evaluate_embeddings
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


def collator_for(data: Dataset, tokenizer, max_seq_len: int) -> Collator | EmbeddingCollator:
    """The batches `data` is trained and scored on: an embedding task's 2B single-text rows, else the head's."""
    if data.task_type == "embedding":
        return EmbeddingCollator(tokenizer, max_seq_len)
    return Collator(tokenizer, max_seq_len, data.regression)


def evaluate_dev(model: nn.Module, data: Dataset, collate: Collator | EmbeddingCollator, batch_size: int,
                 device: torch.device, embedding_scale: float) -> dict[str, float]:
    """`data.dev`'s scores (training's best-state choice and `adamix eval` alike): an embedding task's
    correlations of cosine with the dev CoSENT loss at `embedding_scale`, else the head's metrics and task loss."""
    if data.task_type == "embedding":
        return evaluate_embeddings(model, data.dev, collate, data.metrics, batch_size, device, embedding_scale)
    return evaluate(model, data.dev, collate, data.metrics, batch_size, device)
