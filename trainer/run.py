"""`adamix train` end to end: data, backbone, method, the loop, then every requested output."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from adamix import TaskSpec, load_backbone
from adamix.adapter_file import adapter_to_bytes, write_adapter_file
from adamix.losses import EMBEDDING_SCALE
from adamix.model import backbone_of
from trainer.data import Dataset, load_dataset
from trainer.distributed import DistContext, setup, teardown
from trainer.embedding import check_embedding_arguments, load_embedding_dataset
from trainer.experts import save_experts
from trainer.export import merged_adapter, plot_curves, publish, push
from trainer.loop import TrainConfig, TrainResult, train
from trainer.methods import adamix_config, build_model


def _paths(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """(JSONL log, checkpoint dir) defaults next to --output."""
    if args.method == "full" and args.output is not None:
        raise ValueError("--method full trains every backbone weight: it has no adapter file to write; "
                         "drop --output and give --log for its scores")
    if args.method != "full" and args.output is None:
        raise ValueError("--output PATH.safetensors is required (the merged adapter file)")
    if args.output is not None and args.output.suffix != ".safetensors":
        raise ValueError(f"--output must end in .safetensors, got {args.output}")
    log = args.log or (args.output.with_suffix(".jsonl") if args.output else None)
    ckpt = args.checkpoint_dir or (args.output.with_name(args.output.stem + ".ckpt") if args.output else None)
    if args.resume and ckpt is None:
        raise ValueError("--resume needs --checkpoint-dir (or --output, whose .ckpt directory is the default)")
    return log, ckpt


def train_from_args(args: argparse.Namespace) -> int:
    log_path, ckpt_dir = _paths(args)
    if (args.registry or args.push or args.save_experts) and args.method == "full":
        raise ValueError("--registry / --push / --save-experts need adapters; --method full has none")
    if args.push and not args.api_key:
        raise ValueError("--push needs --api-key (an admin key of the server); nothing was trained")
    check_embedding_arguments(args)
    embedding = args.task_type == "embedding"
    data = load_embedding_dataset(args) if embedding else load_dataset(args)
    ctx = setup(args.device)
    try:
        backbone, tokenizer, info = load_backbone(args.backbone)
        backbone = backbone_of(backbone)
        task = TaskSpec(type=data.task_type, labels=data.labels, pooling=args.pooling, max_seq_len=args.max_seq_len,
                        embedding_dim=args.projection_dim)
        config = adamix_config(args.method, args.bottleneck, args.experts, args.lora_r, args.consistency_weight,
                               args.seed, args.placement, args.lora_targets)
        model = build_model(args.method, backbone, task, config, args.seed)
        cfg = TrainConfig(method=args.method, lr=args.lr, epochs=args.epochs, max_steps=args.max_steps,
                          batch_size=args.batch_size, group_by_length=not args.no_group_by_length,
                          max_seq_len=args.max_seq_len, eval_every=args.eval_every,
                          warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
                          max_grad_norm=args.max_grad_norm or None, set_to_none=args.zero_grad_set_to_none,
                          consistency_weight=args.consistency_weight,
                          regression_consistency=args.regression_consistency,
                          embedding_loss=(args.embedding_loss or "cosent") if embedding else None,
                          embedding_scale=args.embedding_scale or EMBEDDING_SCALE, seed=args.seed,
                          checkpoint_dir=ckpt_dir, checkpoint_every=args.checkpoint_every, resume=args.resume,
                          progress=not args.no_progress, log_path=log_path)
        result = train(model, data, tokenizer, cfg, ctx)
        if ctx.is_main:
            _outputs(args, model, info, data, result, cfg, ctx)
    finally:
        teardown(ctx)
    return 0


def publish_name(args: argparse.Namespace) -> str:
    """--task-name, else the GLUE task (`stsb-embedding` for an embedding run: never the stsb regressor's name),
    else the output file's stem."""
    if args.task_name:
        return args.task_name
    if args.glue_task:
        return args.glue_task + ("-embedding" if args.task_type == "embedding" else "")
    return args.output.stem


def provenance(data: Dataset, result: TrainResult, cfg: TrainConfig, ctx: DistContext) -> dict:
    """What the adapter file records about how it was made."""
    return {"dataset": data.name, "metric": data.metric, "score": result.best_score, "metrics": result.best_metrics,
            "method": cfg.method, "steps": result.steps, "best_step": result.best_step, "seed": cfg.seed,
            **cfg.objective_options(),
            "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "train_examples": len(data.train),
            "dev_examples": len(data.dev), "world_size": ctx.world_size, "trainer": "adamix train"}


def _outputs(args: argparse.Namespace, model, info, data: Dataset, result: TrainResult, cfg: TrainConfig,
             ctx: DistContext) -> None:
    """Plot, save experts, merge, write, publish and push (main rank only); print a JSON summary."""
    prov = provenance(data, result, cfg, ctx)
    if cfg.log_path is not None and result.history:
        plot_curves(result.history, data.metric, cfg.log_path.with_suffix(".png"))
    summary = {"metric": data.metric, "score": result.best_score, "best_step": result.best_step,
               "steps": result.steps, "metrics": result.best_metrics}
    if args.save_experts:
        save_experts(args.save_experts, model, info, prov)
        summary["experts"] = str(args.save_experts)
    if args.method != "full":
        adapter = merged_adapter(model, info, prov)
        sha = write_adapter_file(args.output, adapter)
        summary.update(output=str(args.output), sha256=sha, bytes=args.output.stat().st_size)
        task_name = publish_name(args)
        if args.registry or args.push:
            data_bytes = adapter_to_bytes(adapter)
            if args.registry:
                summary["registry"] = publish(args.registry, info, task_name, data_bytes)
            if args.push:
                summary["push"] = push(args.push, args.api_key, task_name, data_bytes)
    print(json.dumps(summary, default=str))

