"""The one training loop every method shares: AdamW, warm-up + linear decay, periodic dev evaluation,
best-state tracking, checkpoints for `--resume`, and data parallelism."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from adamix.atomic import atomic_write
from adamix.losses import EMBEDDING_SCALE

from trainer.checkpoint import TrainState, load_checkpoint, save_checkpoint, trainable_state
from trainer.data import Collator, Dataset, train_batches
from trainer.distributed import DistContext, all_reduce_gradients, assert_same_across_ranks, shard
from trainer.embedding import EmbeddingCollator, embedding_training_loss
from trainer.evaluate import collator_for, evaluate_dev
from trainer.methods import METHODS, param_groups, training_loss


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (defaults: ADAMIX.md's recipe, lr tuned for the small default backbone)."""

    method: str = "adamix"
    lr: float = 1e-3
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 32
    group_by_length: bool = True  # batches of similar lengths (less padding); see data.train_batches
    eval_batch_size: int = 128
    max_seq_len: int = 128
    eval_every: int | None = None  # also evaluate every N steps (always at each epoch end and the last step)
    warmup_ratio: float = 0.06
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    set_to_none: bool = False  # zero_grad(set_to_none=False) reproduces the paper (momentum moves every expert)
    consistency_weight: float = 1.0
    regression_consistency: str = "none"  # "mse": AdaMix on a regression head adds MSE between the two passes
    embedding_loss: str | None = None  # embedding tasks: "cosent" (scored pairs) or "mnrl" (in-batch negatives)
    embedding_scale: float = EMBEDDING_SCALE  # embedding tasks: the cosine scale of the objective and consistency KL
    seed: int = 0
    checkpoint_dir: Path | None = None
    checkpoint_every: int | None = None  # steps; a checkpoint is also written on Ctrl-C
    resume: bool = False
    progress: bool = True
    log_path: Path | None = None  # JSONL, one line per evaluation

    def signature(self, num_train: int) -> dict:
        """Settings that must match for `--resume` to continue the same run."""
        keys = ("method", "lr", "epochs", "max_steps", "batch_size", "group_by_length", "max_seq_len", "warmup_ratio",
                "weight_decay", "max_grad_norm", "set_to_none", "consistency_weight", "seed")
        return {**{k: getattr(self, k) for k in keys}, **self.objective_options(), "num_train": num_train}

    def objective_options(self) -> dict:
        """The objective's options away from their defaults (the resume signature and the provenance record them)."""
        out = {"regression_consistency": self.regression_consistency} if self.regression_consistency != "none" else {}
        if self.embedding_loss is not None:
            out.update(embedding_loss=self.embedding_loss, embedding_scale=self.embedding_scale)
        return out


@dataclass
class TrainResult:
    best_score: float
    best_step: int
    best_metrics: dict[str, float]
    steps: int
    history: list[dict] = field(default_factory=list)


def lr_at(step: int, total: int, warmup_ratio: float, base_lr: float) -> float:
    """Linear warm-up over ceil(ratio * total) steps, then linear decay to 0 at `total`."""
    warmup = math.ceil(total * warmup_ratio)
    if step < warmup:
        return base_lr * step / max(1, warmup)
    return base_lr * max(0.0, (total - step) / max(1, total - warmup))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], cfg: TrainConfig,
               regression: bool, ctx: DistContext = DistContext()) -> dict[str, float]:
    """One optimizer step of `cfg.method` on `batch`; returns the loss parts. An embedding task (`cfg.embedding_loss`
    set) takes an EmbeddingCollator batch: 2B rows of single texts, B scores."""
    inputs = {k: v.to(ctx.device) for k, v in batch.items() if k != "labels"}
    labels = batch["labels"].to(ctx.device)  # (B,)
    optimizer.zero_grad(set_to_none=cfg.set_to_none)
    two_pass = METHODS[cfg.method].two_pass
    if cfg.embedding_loss is not None:
        loss, parts = embedding_training_loss(model, inputs, labels, two_pass, cfg.embedding_loss, cfg.embedding_scale,
                                              cfg.consistency_weight)
    else:
        loss, parts = training_loss(model, inputs, labels, two_pass, regression, cfg.consistency_weight,
                                    cfg.regression_consistency)
    loss.backward()
    all_reduce_gradients(model, ctx)
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.max_grad_norm)
    optimizer.step()
    return {"loss": float(loss.detach()), **parts}


def _batches(data: Dataset, cfg: TrainConfig, epoch: int, ctx: DistContext) -> list[list[int]]:
    batches = train_batches(data.train, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
    return [b for b in batches if len(b) >= ctx.world_size]  # every rank gets at least one example


def train(model: nn.Module, data: Dataset, tokenizer, cfg: TrainConfig, ctx: DistContext = DistContext(),
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train `model` on `data.train`, evaluating on `data.dev`; leaves the model holding its best state."""
    if not data.train:
        raise ValueError("no training examples")
    model.to(ctx.device).train()
    regression = data.regression
    if (data.task_type == "embedding") != (cfg.embedding_loss is not None):
        raise ValueError(f"TrainConfig.embedding_loss is set exactly for embedding tasks; got "
                         f"{cfg.embedding_loss!r} for a {data.task_type} data set")
    collate = collator_for(data, tokenizer, cfg.max_seq_len)
    steps_per_epoch = len(_batches(data, cfg, 0, ctx))
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    router = getattr(model, "adamix_router", None)
    state, best = TrainState(), None
    signature = cfg.signature(len(data.train))
    if cfg.resume:
        if cfg.checkpoint_dir is None:
            raise ValueError("resuming needs the checkpoint directory")
        state, best, router_state = load_checkpoint(cfg.checkpoint_dir, model, optimizer, signature)
        if router is not None and router_state is not None:
            router.set_state(router_state)

    def checkpoint() -> None:
        if cfg.checkpoint_dir is not None and ctx.is_main:
            save_checkpoint(cfg.checkpoint_dir, model, optimizer, state, best,
                            router.get_state() if router is not None else None, signature)

    bar = tqdm(total=total, initial=state.global_step, disable=not (cfg.progress and ctx.is_main),
               desc=f"train {cfg.method}", dynamic_ncols=True)
    try:
        while state.global_step < total:
            batches = _batches(data, cfg, state.epoch, ctx)
            for batch_idx in batches[state.batch_in_epoch:]:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(state.global_step, total, cfg.warmup_ratio, cfg.lr)
                batch = collate([data.train[i] for i in shard(batch_idx, ctx)])
                parts = train_step(model, optimizer, batch, cfg, regression, ctx)
                if not math.isfinite(parts["loss"]):
                    raise ValueError(f"the training loss became {parts['loss']} at step {state.global_step + 1}; "
                                     f"lower --lr (now {cfg.lr})")
                if router is not None:
                    assert_same_across_ranks(router.get_state(), "the router's generator state", ctx)
                state.global_step += 1
                state.batch_in_epoch += 1
                state.loss_sum += parts["loss"]
                state.loss_count += 1
                epoch_end = state.batch_in_epoch == len(batches)
                if epoch_end:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                periodic = bool(cfg.eval_every) and state.global_step % cfg.eval_every == 0
                if epoch_end or periodic or state.global_step == total:
                    best = _evaluate(model, data, collate, cfg, ctx, state, best, steps_per_epoch, total, bar)
                if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
                    checkpoint()
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.4f}", **{data.metric: _fmt(state.best_score)})
                if on_step is not None:
                    on_step(state.global_step)
                if epoch_end or state.global_step >= total:
                    break
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        bar.close()
    if best is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in best.items():
                params[name].copy_(value)
    record = next(r for r in state.history if r["step"] == state.best_step)
    best_metrics = {m: record[f"dev_{m}"] for m in data.metrics}
    return TrainResult(state.best_score, state.best_step, best_metrics, state.global_step, state.history)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _evaluate(model: nn.Module, data: Dataset, collate: Collator | EmbeddingCollator, cfg: TrainConfig,
              ctx: DistContext, state: TrainState, best: dict | None, steps_per_epoch: int, total: int,
              bar: tqdm) -> dict | None:
    """Score the dev set, log it, and return the (possibly new) best trainable state."""
    scores = evaluate_dev(model, data, collate, cfg.eval_batch_size, ctx.device, cfg.embedding_scale)
    score = scores[data.metric]
    improved = state.best_score is None or score > state.best_score
    record = {"step": state.global_step, "epoch": round(state.global_step / steps_per_epoch, 4),
              "lr": lr_at(state.global_step - 1, total, cfg.warmup_ratio, cfg.lr),
              "train_loss": state.loss_sum / max(1, state.loss_count),
              **{f"dev_{k}": v for k, v in scores.items()}, "best": improved, "time": time.time()}
    state.history.append(record)
    state.loss_sum, state.loss_count = 0.0, 0
    if improved:
        state.best_score, state.best_step = score, state.global_step
        best = trainable_state(model)
    if ctx.is_main:
        bar.write(f"step {state.global_step}: dev {data.metric} {score:.4f} (best {state.best_score:.4f} "
                  f"at step {state.best_step}), train loss {record['train_loss']:.4f}")
        if cfg.log_path is not None:
            write_log(cfg.log_path, state.history)
    return best


def write_log(path: Path, history: list[dict]) -> None:
    """The JSONL log: one line per evaluation (rewritten whole, so a resumed run has no duplicate lines)."""
    atomic_write(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in history).encode())

