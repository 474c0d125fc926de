"""Embedding tasks (`adamix train --task-type embedding`): text-pair data, the CoSENT and in-batch-negatives
objectives, AdaMix's two passes for embeddings, and Spearman / Pearson of cosine on scored dev pairs.

The model is the task model of an `embedding` TaskSpec: pooled state (mean by default), the optional projection,
then L2 normalisation, so a dot product of two outputs is their cosine. Both texts of a pair are encoded alone
(never as one `[SEP]`-joined input) in one forward of 2B rows: rows 0..B-1 are the first texts, B..2B-1 the second.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adamix import embedding_consistency_loss
from adamix.losses import EMBEDDING_SCALE
from adamix.task import MAX_EMBEDDING_DIM
from trainer.data import (DataError, Dataset, Example, apply_limits, eval_batches, load_files, load_glue,
                          load_glue_dev, read_table)
from trainer.metrics import compute_metrics

EMBEDDING_LOSSES = ("cosent", "mnrl")  # scored pairs / positive pairs with in-batch negatives
EMBEDDING_METRICS = ("spearman", "pearson")  # of cosine against the gold scores; the first picks the best state
MNRL_MIN_SCORE = 4.0  # --glue-task stsb with mnrl: train pairs scored >= 4 of 5 are the positives


def cosent_loss(cos: torch.Tensor, scores: torch.Tensor, scale: float = EMBEDDING_SCALE) -> torch.Tensor:
    """CoSENT: `log(1 + sum over (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i)))`.

    `cos` (B,) cosines of the pairs, `scores` (B,) their gold similarity. Only the order of the scores matters: every
    pair ranked above another by gold should have the larger cosine. 0-dimensional; log(1) = 0 without such (i, j).
    """
    diff = scale * (cos[None, :] - cos[:, None])  # (B, B): [i, j] = scale * (cos_j - cos_i)
    above = scores[:, None] > scores[None, :]  # (B, B): pair i is more similar than pair j
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff[above]]), dim=0)


def in_batch_negatives_loss(texts: torch.Tensor, pairs: torch.Tensor, scale: float = EMBEDDING_SCALE) -> torch.Tensor:
    """Multiple-negatives ranking (InfoNCE): text i must pick its own pair i among the batch's B second texts.

    `texts`, `pairs` (B, p) unit vectors: `CE(scale * texts @ pairs.T, arange(B))`, mean over the batch.
    """
    logits = scale * texts.float() @ pairs.float().T  # (B, B): scaled cosines, the diagonal is the positive
    return F.cross_entropy(logits, torch.arange(len(texts), device=texts.device))


def pair_embeddings(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(texts (B, p), pairs (B, p)) unit embeddings from one forward over an EmbeddingCollator batch of 2B rows."""
    out = model(**inputs)  # (2B, p)
    half = out.shape[0] // 2
    return out[:half], out[half:]


def embedding_training_loss(model: nn.Module, inputs: dict[str, torch.Tensor], scores: torch.Tensor, two_pass: bool,
                            objective: str, scale: float,
                            consistency_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss: the objective on pass 1, plus for AdaMix `lambda * embedding_consistency_loss(pass 1, 2)`."""
    if objective not in EMBEDDING_LOSSES:
        raise ValueError(f"embedding loss must be one of {EMBEDDING_LOSSES}, got {objective!r}")
    texts, pairs = pair_embeddings(model, inputs)  # pass 1: one random route and dropout mask
    if objective == "cosent":
        loss = cosent_loss((texts * pairs).sum(-1).float(), scores, scale)  # (B,) cosines of unit vectors
    else:
        loss = in_batch_negatives_loss(texts, pairs, scale)
    parts = {"task_loss": float(loss.detach())}
    if two_pass:
        texts2, pairs2 = pair_embeddings(model, inputs)  # pass 2: independent route and dropout mask
        cons = embedding_consistency_loss(texts, pairs, texts2, pairs2, scale)
        loss = loss + consistency_weight * cons
        parts["consistency"] = float(cons.detach())
    return loss, parts


class EmbeddingCollator:
    """Tokenise each text of a batch of pairs on its own: 2B rows (first texts, then second texts), padded per batch."""

    regression = True  # the labels are float scores

    def __init__(self, tokenizer, max_seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        texts = [e.text for e in examples] + [e.text_pair or "" for e in examples]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_seq_len, padding=True, return_tensors="pt")
        batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}  # (2B, T)
        batch["labels"] = torch.tensor([float(e.label) for e in examples], dtype=torch.float32)  # (B,)
        return batch


@torch.no_grad()
def pair_cosines(model: nn.Module, examples: Sequence[Example], collate: EmbeddingCollator, batch_size: int,
                 device: torch.device) -> np.ndarray:
    """Cosine of each pair's two embeddings, in the examples' order. Eval mode: a mixture uses its merged weights."""
    was_training = model.training
    model.eval()
    cos = np.zeros(len(examples), dtype=np.float64)
    for idx, batch_examples in eval_batches(examples, batch_size):
        batch = {k: v.to(device) for k, v in collate(batch_examples).items()}
        batch.pop("labels")
        texts, pairs = pair_embeddings(model, batch)
        cos[idx] = (texts * pairs).sum(-1).float().cpu().numpy()  # (B,)
    model.train(was_training)
    return cos


def evaluate_embeddings(model: nn.Module, examples: Sequence[Example], collate: EmbeddingCollator,
                        metrics: Sequence[str], batch_size: int, device: torch.device,
                        scale: float = EMBEDDING_SCALE) -> dict[str, float]:
    """`{spearman, pearson: of cosine vs gold, "loss": the CoSENT loss of the whole dev set}`."""
    if len(examples) < 2:
        raise ValueError(f"an embedding dev set needs at least 2 scored pairs for a correlation, got {len(examples)}")
    cos = pair_cosines(model, examples, collate, batch_size, device)
    gold = np.array([float(e.label) for e in examples])
    loss = float(cosent_loss(torch.from_numpy(cos), torch.from_numpy(gold), scale))
    return {**compute_metrics(tuple(metrics), cos, gold), "loss": loss}


# ---------------------------------------------------------------- data and arguments

def _as_embedding(name: str, train: list[Example], dev: list[Example], metric: str | None) -> Dataset:
    metric = metric or EMBEDDING_METRICS[0]
    return Dataset(name, "embedding", (), metric, tuple(dict.fromkeys((metric, *EMBEDDING_METRICS))), train, dev)


def load_embedding_dataset(args: argparse.Namespace, need_train: bool = True) -> Dataset:
    """Text pairs: scored dev pairs always; train pairs scored (cosent) or positives (mnrl). GLUE: only STS-B."""
    objective = getattr(args, "embedding_loss", None) or "cosent"
    if args.glue_task:
        if args.glue_task != "stsb":
            raise DataError(f"--task-type embedding trains on scored sentence pairs: --glue-task stsb, not "
                            f"{args.glue_task!r} (or give --train-file / --dev-file with --text-pair-column)")
        if args.data is None:
            raise DataError("--glue-task needs --data DIR (the task's directory with train.tsv and dev.tsv)")
        glue = load_glue("stsb", args.data) if need_train else load_glue_dev("stsb", args.data)
        train = [e for e in glue.train if objective == "cosent" or e.label >= MNRL_MIN_SCORE]
        data = _as_embedding(glue.name, train, glue.dev, args.metric)
    else:
        if args.dev_file is None or (need_train and args.train_file is None):
            raise DataError("give --glue-task stsb with --data DIR, or --train-file and --dev-file")
        if not args.text_pair_column:
            raise DataError("--task-type embedding trains on text pairs: give --text-pair-column (the second text)")
        columns = (args.text_column, args.label_column, args.text_pair_column)

        def scored(path) -> list[Example]:
            return load_files(path, path, columns[0], columns[1], columns[2], regression=True).train

        train: list[Example] = []
        if need_train and objective == "mnrl":  # positives only: the train file needs no score column
            rows = read_table(args.train_file, (args.text_column, args.text_pair_column, None))
            train = [Example(t, p, 1.0) for t, p, _ in rows if t and p]
            if not train:
                raise DataError(f"{args.train_file} has no row with both texts non-empty")
        elif need_train:
            train = scored(args.train_file)
        data = _as_embedding(Path(args.train_file or args.dev_file).name, train, scored(args.dev_file), args.metric)
    if any(not e.text_pair for e in data.dev):
        raise DataError("every dev pair needs both texts; an embedding dev set is scored sentence pairs")
    return apply_limits(data, args)


def check_embedding_arguments(args: argparse.Namespace) -> None:
    """Refuse option combinations that mean nothing for the chosen task type, before any data or model is read."""
    embedding = args.task_type == "embedding"
    if not embedding:
        given = [flag for flag, value in (("--embedding-loss", args.embedding_loss),
                                          ("--projection-dim", args.projection_dim),
                                          ("--embedding-scale", args.embedding_scale)) if value is not None]
        if given:
            raise ValueError(f"{given[0]} applies to --task-type embedding only")
        return
    if args.regression or args.labels:
        raise ValueError(f"--task-type embedding has no head: drop {'--regression' if args.regression else '--labels'}"
                         " (dev pairs are always scored by similarity)")
    if args.metric is not None and args.metric not in EMBEDDING_METRICS:
        raise ValueError(f"--task-type embedding is scored by {' or '.join(EMBEDDING_METRICS)} of cosine, "
                         f"not --metric {args.metric}")
    if args.regression_consistency != "none":
        raise ValueError("--regression-consistency is for regression heads; an embedding task's AdaMix consistency "
                         "is the KL between the two passes' in-batch similarities (always on for adamix*)")
    if args.embedding_scale is not None and not args.embedding_scale > 0:
        raise ValueError(f"--embedding-scale must be positive, got {args.embedding_scale}")
    if args.projection_dim is not None and not 1 <= args.projection_dim <= MAX_EMBEDDING_DIM:
        raise ValueError(f"--projection-dim must be in [1, {MAX_EMBEDDING_DIM}], got {args.projection_dim}")
