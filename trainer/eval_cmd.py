"""`adamix eval`: score an adapter file (or a `--save-experts` mixture, merged or by single random routes)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from trainer.data import DataError, Dataset, add_data_arguments, load_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="score an adapter file on a dev set",
                              description="Print the dev metric of an adapter file, or of a --save-experts "
                                          "mixture merged (default) or along single random routes.")
    p.add_argument("adapter", type=Path, help="adapter file, or a --save-experts checkpoint")
    add_data_arguments(p)
    p.add_argument("--routing", choices=("merged", "random"), default="merged",
                   help="random: evaluate N single random routes of a --save-experts checkpoint (and the merge)")
    p.add_argument("--draws", type=int, default=5, help="random routes to draw (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random routes")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from adamix import AdapterFileError

    try:
        result = evaluate_file(args)
    except (DataError, AdapterFileError, ValueError, FileNotFoundError) as exc:
        print(f"adamix eval: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        line = f"{result['dataset']} dev {result['metric']}: {result['score']:.4f}"
        others = {k: v for k, v in result["metrics"].items() if k != result["metric"]}
        print(line + "".join(f"  {k}: {v:.4f}" for k, v in others.items()) + f"  (n={result['examples']})")
        if "random_routes" in result:
            rr = result["random_routes"]
            print(f"single random routes ({len(rr['scores'])}): mean {rr['mean']:.4f}  best {rr['best']:.4f}  "
                  f"worst {rr['worst']:.4f}  (merged {result['score']:.4f})")
    return 0


def _check_labels(data: Dataset, task) -> None:
    if (data.regression and task.regression) or task.type == "embedding":
        return
    if tuple(data.labels) != tuple(task.labels):
        raise DataError(f"the adapter's labels {list(task.labels)} differ from the data's {list(data.labels)}; "
                        "evaluate it on the task it was trained for")


def evaluate_file(args: argparse.Namespace) -> dict:
    from adamix import load_backbone, read_adapter_file, task_model_from_adapter
    from adamix.losses import EMBEDDING_SCALE
    from adamix.model import backbone_of
    from trainer.embedding import load_embedding_dataset
    from trainer.evaluate import collator_for, evaluate_dev
    from trainer.experts import file_kind, load_experts, single_route

    if not args.adapter.is_file():
        raise FileNotFoundError(f"no adapter file at {args.adapter}")
    kind = file_kind(args.adapter)
    if args.routing == "random" and kind != "experts":
        raise ValueError("--routing random needs a --save-experts checkpoint (a merged adapter has one route)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone, tokenizer, info = load_backbone(args.backbone)
    backbone = backbone_of(backbone)
    if kind == "adapter":
        adapter = read_adapter_file(args.adapter, info)
        model, task, prov = task_model_from_adapter(backbone, adapter), adapter.task, adapter.provenance
    else:
        model, meta = load_experts(args.adapter, backbone, info)
        task, prov = model.task, meta["provenance"]
    embedding = task.type == "embedding"
    data = load_embedding_dataset(args, need_train=False) if embedding else load_dataset(args, need_train=False)
    _check_labels(data, task)
    model.to(device).eval()
    collate = collator_for(data, tokenizer, task.max_seq_len)
    scale = prov.get("embedding_scale")  # embedding: the dev CoSENT loss at the training scale (default if unrecorded)
    recorded = isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0
    scale = float(scale) if recorded else EMBEDDING_SCALE

    def score(m) -> dict[str, float]:
        return evaluate_dev(m, data, collate, args.batch_size, device, scale)
    scores = score(model)
    result = {"adapter": str(args.adapter), "dataset": data.name, "metric": data.metric,
              "score": scores[data.metric], "metrics": {k: scores[k] for k in data.metrics},
              "examples": len(data.dev), "kind": kind, "provenance": prov}
    if args.routing == "random":
        gen = torch.Generator().manual_seed(args.seed)
        draws = []
        for _ in range(args.draws):
            with single_route(model, gen) as route:
                draws.append({"route": route, "score": score(model)[data.metric]})
        values = np.array([d["score"] for d in draws])
        result["random_routes"] = {"scores": values.tolist(), "routes": [d["route"] for d in draws],
                                   "mean": float(values.mean()), "std": float(values.std()),
                                   "best": float(values.max()), "worst": float(values.min())}
    return result
