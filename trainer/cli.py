"""`adamix train`: labelled data -> a validated merged AdaMix adapter file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adamix.config import LORA_TARGETS
from adamix.losses import EMBEDDING_SCALE
from trainer.data import DataError, add_data_arguments
from trainer.embedding import EMBEDDING_LOSSES
from trainer.methods import METHODS, REGRESSION_CONSISTENCY


def _lora_targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(","))
    if any(t not in LORA_TARGETS for t in targets) or len(set(targets)) != len(targets):
        raise argparse.ArgumentTypeError(f"expected distinct names of {','.join(LORA_TARGETS)}, got {text!r}")
    return targets


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an AdaMix adapter on labelled data and export it",
                              description="Train an AdaMix mixture (or a baseline) on a labelled data set, keep the "
                                          "best dev epoch, merge it and write one adapter file.")
    add_data_arguments(p)
    p.add_argument("--train-limit", type=int, help="train on a fixed random subset of this many rows")
    e = p.add_argument_group("task type")
    e.add_argument("--task-type", choices=("head", "embedding"), default="head",
                   help="head (default): a classification or regression head, as the data says; embedding: a "
                        "sentence-embedding adapter (no head) trained on text pairs, scored by Spearman of cosine")
    e.add_argument("--embedding-loss", choices=EMBEDDING_LOSSES,
                   help="embedding: cosent (default; scored pairs, e.g. STS-B) or mnrl (positive pairs, in-batch "
                        "negatives; with --glue-task stsb the train pairs scored >= 4 of 5)")
    e.add_argument("--embedding-scale", type=float,
                   help=f"embedding: the cosine scale of the loss and of AdaMix's consistency KL (default "
                        f"{EMBEDDING_SCALE:g})")
    e.add_argument("--projection-dim", type=int,
                   help="embedding: add a trained linear projection to this many dimensions (default: none, the "
                        "backbone's own width)")
    m = p.add_argument_group("method")
    m.add_argument("--method", choices=sorted(METHODS), default="adamix", help="default: adamix (M=4, shared up)")
    m.add_argument("--experts", type=int, help="experts M (default 4 for adamix*, 1 for the baselines)")
    m.add_argument("--bottleneck", type=int, default=16, help="adapter bottleneck r (default 16)")
    m.add_argument("--lora-r", type=int, default=4, help="LoRA rank (default 4)")
    m.add_argument("--placement", choices=("ffn", "attention", "both"), default="ffn",
                   help="adapter sites: after the FFN output (default, the paper's), after the attention output, "
                        "or both")
    m.add_argument("--lora-targets", type=_lora_targets, default=("query", "value"),
                   help="LoRA: comma-separated attention projections to adapt, of query,key,value (default "
                        "query,value)")
    m.add_argument("--consistency-weight", type=float, default=1.0, help="lambda of the consistency KL (default 1)")
    m.add_argument("--regression-consistency", choices=REGRESSION_CONSISTENCY, default="none",
                   help="AdaMix on a regression head (STS-B): 'mse' adds lambda * MSE between the two stochastic "
                        "passes' scores (default none: the KL is identically 0 there, so one pass, as the paper)")
    m.add_argument("--pooling", choices=("mean", "cls", "pooler", "last"), default="mean",
                   help="pooled state for the head (default mean: the default MiniLM is a sentence-embedding model)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3; 4e-4 in the paper "
                                                          "for BERT-base)")
    o.add_argument("--epochs", type=int, default=3)
    o.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    o.add_argument("--batch-size", type=int, default=32, help="global batch size (split across ranks)")
    o.add_argument("--max-seq-len", type=int, default=128, help="truncate longer inputs (padding is per batch)")
    o.add_argument("--no-group-by-length", action="store_true",
                   help="plain shuffled batches (default: random batches of similar lengths, less padding)")
    o.add_argument("--warmup-ratio", type=float, default=0.06)
    o.add_argument("--weight-decay", type=float, default=0.1)
    o.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping; 0 disables")
    o.add_argument("--zero-grad-set-to-none", action="store_true",
                   help="zero_grad(set_to_none=True): only the selected experts move each step (the paper's "
                        "behaviour, the default, zero-fills gradients so momentum moves every expert)")
    o.add_argument("--eval-every", type=int, help="also evaluate every N steps (always at each epoch end)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    out = p.add_argument_group("output")
    out.add_argument("--output", type=Path, help="the merged adapter file (.safetensors); the JSONL log and PNG "
                                                  "curves are written next to it")
    out.add_argument("--log", type=Path, help="JSONL log path (default: OUTPUT with .jsonl)")
    out.add_argument("--save-experts", type=Path, help="also save the unmerged mixture (for ablations)")
    out.add_argument("--task-name", help="task name for --registry / --push (default: the GLUE task, +'-embedding' for an "
                          "embedding run, or OUTPUT stem)")
    out.add_argument("--registry", type=Path, help="publish into this server registry directory")
    out.add_argument("--push", metavar="URL", help="upload to a running server (PUT URL/v1/adapters/TASK)")
    out.add_argument("--api-key", help="bearer key for --push")
    out.add_argument("--checkpoint-dir", type=Path, help="resumable checkpoints (default: OUTPUT.ckpt)")
    out.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    out.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir after an interruption")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    try:
        from trainer.export import ExportError
        from trainer.run import train_from_args

        return train_from_args(args)
    except (DataError, ValueError, FileNotFoundError, ExportError) as exc:
        print(f"adamix train: error: {exc}", file=sys.stderr)
        return 2

