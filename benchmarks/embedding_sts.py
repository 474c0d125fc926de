"""Embedding quality on a held-out similarity set: the bare backbone against embedding adapters, side by side.

Scores Spearman and Pearson of cosine against the gold scores of GLUE STS-B dev (1,500 pairs) for the bare backbone
(mean-pooled, L2-normalised: what the server answers for `model: all-MiniLM-L6-v2`) and for each adapter file given,
through the same code (`trainer.embedding.pair_cosines`), plus a paired bootstrap over the pairs of each adapter's
Spearman minus the backbone's (95% percentile interval). Each adapter is read and validated as the server reads it.

    python benchmarks/embedding_sts.py [ADAPTER.safetensors ...] [--data ../shared/data/glue/STS-B] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamix import AdaMixTaskModel, TaskSpec, load_backbone, read_adapter_file, task_model_from_adapter  # noqa: E402
from adamix.model import backbone_of  # noqa: E402
from trainer.data import load_glue_dev  # noqa: E402
from trainer.embedding import EmbeddingCollator, pair_cosines  # noqa: E402
from trainer.metrics import pearson, spearman  # noqa: E402


def bootstrap_difference(cos_a: np.ndarray, cos_b: np.ndarray, gold: np.ndarray, draws: int,
                         seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of Spearman(a) - Spearman(b) over pairs resampled with replacement."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(draws):
        idx = rng.integers(0, len(gold), len(gold))
        diffs.append(spearman(cos_a[idx], gold[idx]) - spearman(cos_b[idx], gold[idx]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapters", nargs="*", type=Path, help="embedding adapter files to score next to the backbone")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "glue" / "STS-B",
                   help="GLUE STS-B directory (its dev.tsv is scored)")
    p.add_argument("--backbone", type=Path, help="local backbone directory (default: the embedded MiniLM)")
    p.add_argument("--max-seq-len", type=int, default=128, help="the bare backbone's truncation (default 128)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap draws (0: none)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    dev = load_glue_dev("stsb", args.data).dev
    gold = np.array([e.label for e in dev], dtype=np.float64)
    model, tokenizer, info = load_backbone(args.backbone)
    base = backbone_of(model)
    device = torch.device("cpu")
    rows = []
    bare = AdaMixTaskModel(copy.deepcopy(base), TaskSpec("embedding", max_seq_len=args.max_seq_len)).eval()
    bare_cos = pair_cosines(bare, dev, EmbeddingCollator(tokenizer, args.max_seq_len), args.batch_size, device)
    rows.append({"model": f"{info.name} (bare backbone)", "spearman": spearman(bare_cos, gold),
                 "pearson": pearson(bare_cos, gold)})
    for path in args.adapters:
        adapter = read_adapter_file(path, info)
        if adapter.task.type != "embedding":
            raise SystemExit(f"{path} is a {adapter.task.type} adapter, not an embedding adapter")
        tuned = task_model_from_adapter(copy.deepcopy(base), adapter)
        cos = pair_cosines(tuned, dev, EmbeddingCollator(tokenizer, adapter.task.max_seq_len), args.batch_size,
                           device)
        row = {"model": str(path), "method": adapter.provenance.get("method"),
               "spearman": spearman(cos, gold), "pearson": pearson(cos, gold)}
        row["spearman_minus_bare"] = row["spearman"] - rows[0]["spearman"]
        if args.bootstrap:
            row["spearman_minus_bare_ci95"] = bootstrap_difference(cos, bare_cos, gold, args.bootstrap)
        rows.append(row)
    if args.json:
        print(json.dumps({"dataset": str(args.data / "dev.tsv"), "pairs": len(dev), "rows": rows}))
        return 0
    print(f"{args.data / 'dev.tsv'}, {len(dev)} pairs: Spearman / Pearson of cosine vs gold")
    for row in rows:
        extra = ""
        if "spearman_minus_bare" in row:
            extra = f"  (Spearman - bare {row['spearman_minus_bare']:+.4f}"
            ci = row.get("spearman_minus_bare_ci95")
            extra += f", 95% bootstrap [{ci[0]:+.4f}, {ci[1]:+.4f}])" if ci else ")"
        print(f"{row['model']}: Spearman {row['spearman']:.4f}  Pearson {row['pearson']:.4f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
