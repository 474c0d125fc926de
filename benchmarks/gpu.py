"""The accelerator benchmark (issue 14); `benchmarks/gpu.sh` runs it on a lent H100/H200 in under 8 minutes.

    python benchmarks/gpu.py [--reps 100] [--dtype float16]      on a CUDA device
    python benchmarks/gpu.py --dry-run                           tiny random BERT on the CPU, seconds (CI runs it)

Prints, with the engine in `--dtype` (the server's default on CUDA: float16):
A. float16 and bfloat16 pools against float32: the largest probability difference and the share of labels that
   agree, over one mixed batch of 64 tasks
1/2. engine (merged adapter, one task; and 64 tasks mixed) against the bare backbone, at batch 64 and 256
3. against peft's `adapter_names` mixed batch (same 64 merged LoRA adapters)
4. cold load p99 (disk -> resident in the device pool)
6. tokenisation rows/s by tokenizer workers, against the forward's rows/s
Ratios are paired rounds (`serving.paired`, `stats.paired_ratio`) of wall time, each call ending in a copy of
its results to the host (so the device has finished).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adamix import allocator, default_backbone_path  # noqa: E402
from serving import TASKS, Bench, synthetic_adapter  # noqa: E402
from tokenizer_rate import tokenizer_rows_per_s  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def tiny_backbone(root: Path) -> Path:
    """A random-init 2-layer BERT (d=32) with MiniLM's tokenizer, saved as a model directory (for --dry-run)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=128)).save_pretrained(root)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (default_backbone_path() / name).is_file():
            shutil.copy(default_backbone_path() / name, root / name)
    return root


def agreement(reference: Bench, other: Bench) -> str:
    """Max |p - p_float32| over every class of a 64-task mixed batch, and the share of equal labels."""
    outputs = []
    for bench in (reference, other):
        served = [bench.serve(f"a{i}", synthetic_adapter(bench.info, ("adapter", "lora")[i % 2], 16, 300 + i,
                                                         labels=("a", "b", "c"))) for i in range(TASKS)]
        outputs.append(bench.run(bench.rows([served[i % TASKS] for i in range(bench.n)], bench.batch)))
    want, got = outputs
    worst = max(abs(g["scores"][k] - w["scores"][k]) for g, w in zip(got, want) for k in w["scores"])
    same = sum(g["label"] == w["label"] for g, w in zip(got, want)) / len(want)
    return f"max |p - p_float32| {worst:.4f}, labels agree {100 * same:.1f}% ({len(want)} rows, {TASKS} tasks)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny random BERT on the CPU, few rounds")
    parser.add_argument("--reps", type=int, default=100, help="paired rounds per comparison")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="the engine's dtype (default: float16, the server's on CUDA; float32 with --dry-run)")
    parser.add_argument("--tokenizer-workers", type=int, nargs="+", default=None,
                        help="worker counts for section 6 (default 0, 1, 4, 8, 16 up to the cores)")
    args = parser.parse_args()
    allocator.tune()  # as `adamix serve` does
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="adamix-gpu-"))
    try:
        if args.dry_run:
            device, backbone, reps, cold, tok_rows = "cpu", tiny_backbone(tmp / "tiny"), 2, 20, 400
        else:
            if not torch.cuda.is_available():
                sys.exit("no CUDA device (use --dry-run on a CPU)")
            device, backbone, reps, cold, tok_rows = "cuda", None, args.reps, 200, 8000
            print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
        args.dtype = args.dtype or ("float32" if args.dry_run else "float16")
        dtype = DTYPES[args.dtype]
        cores = os.cpu_count() or 1
        workers = args.tokenizer_workers or [n for n in (0, 1, 2, 4, 8, 16) if n <= cores]

        reference = Bench(reps, backbone, device, torch.float32)
        for half in ("float16", "bfloat16"):
            print(f"A. {half} pool vs float32: {agreement(reference, Bench(reps, backbone, device, DTYPES[half]))}",
                  flush=True)
        del reference
        for rows in (64, 256):
            print(f"-- batch {rows}, {args.dtype}", flush=True)
            Bench(reps, backbone, device, dtype, rows).forward_overhead_and_mixing()
        bench = Bench(reps, backbone, device, dtype)
        bench.versus_peft()
        bench.cold_load(cold)
        tokenizer_rows_per_s(bench, workers, rows=tok_rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
