"""Quality benchmark: AdaMix vs a single adapter (same r, M=1) vs LoRA vs full fine-tuning, several seeds,
plus the merge ablation (merged vs the average and the best single random route), and the training
step-time ratio AdaMix / single adapter on the same batch.

Every run goes through the real `adamix train` / `adamix eval` commands (in-process); the table is
written into the trainer's section of benchmarks/RESULTS.md. Full configuration (hours on 2 CPU cores):

    python benchmarks/quality.py --tasks rte sst2 cola stsb --seeds 0 1 2
Reduced configuration that fits a shared CPU (state which one ran):

    python benchmarks/quality.py --tasks rte --seeds 0 1 2 --train-limit 1000 --epochs 2 --dev-limit 277
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from adamix.cli import main as adamix  # noqa: E402
from results_md import write_section  # noqa: E402

GLUE_DIRS = {"rte": "RTE", "sst2": "SST-2", "cola": "CoLA", "stsb": "STS-B", "mrpc": "MRPC", "qnli": "QNLI"}
METHOD_LR = {"adamix": 1e-3, "adapter": 1e-3, "lora": 1e-3, "adamix-lora": 1e-3, "full": 5e-5}
MAX_SEQ_LEN = {"rte": 128, "stsb": 128, "mrpc": 128}
DEFAULT_GLUE = str(ROOT.parent / "shared" / "data" / "glue")
START, END = "<!-- trainer:quality:start -->", "<!-- trainer:quality:end -->"


def run_json(argv: list[str]) -> dict:
    """Run an `adamix` command in-process and return the JSON object it printed last."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = adamix(argv)
    if code != 0:
        raise RuntimeError(f"adamix {' '.join(argv)} exited {code}")
    return json.loads(out.getvalue().strip().splitlines()[-1])


def train_one(task: str, method: str, seed: int, args: argparse.Namespace) -> dict:
    data = str(Path(args.glue) / GLUE_DIRS[task])
    run = Path(args.runs) / f"{task}-{method}-s{seed}"
    argv = ["train", "--glue-task", task, "--data", data, "--method", method, "--seed", str(seed),
            "--lr", str(METHOD_LR[method]), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--max-seq-len", str(MAX_SEQ_LEN.get(task, 64)), "--no-progress", "--checkpoint-every", "0"]
    for flag, value in (("--train-limit", args.train_limit), ("--dev-limit", args.dev_limit),
                        ("--max-steps", args.max_steps), ("--eval-every", args.eval_every)):
        if value:
            argv += [flag, str(value)]
    if args.backbone:
        argv += ["--backbone", args.backbone]
    if method == "full":
        argv += ["--log", str(run) + ".jsonl"]
    else:
        argv += ["--output", str(run) + ".safetensors"]
    if method.startswith("adamix"):
        argv += ["--save-experts", str(run) + ".experts.safetensors"]
    print("$ adamix " + " ".join(argv), flush=True)
    start = time.perf_counter()
    result = {"task": task, "method": method, "seed": seed, **run_json(argv),
              "seconds": time.perf_counter() - start}
    if method.startswith("adamix") and args.draws:
        ev = run_json(["eval", str(run) + ".experts.safetensors", "--glue-task", task, "--data", data,
                       "--routing", "random", "--draws", str(args.draws), "--seed", str(seed), "--json"]
                      + (["--dev-limit", str(args.dev_limit)] if args.dev_limit else [])
                      + (["--backbone", args.backbone] if args.backbone else []))
        result["merged"] = ev["score"]
        result["random_routes"] = ev["random_routes"]
    print(json.dumps({k: v for k, v in result.items() if k != "random_routes"}), flush=True)
    return result


def measure_step_time(steps: int, batch_size: int, glue: str = DEFAULT_GLUE) -> dict:
    """Seconds per optimizer step, AdaMix vs single adapter, on the same SST-2-like batch, interleaved."""
    import torch

    from adamix import TaskSpec, load_backbone
    from trainer.data import Collator, load_glue
    from trainer.loop import TrainConfig, train_step
    from trainer.methods import adamix_config, build_model

    data = load_glue("sst2", Path(glue) / "SST-2")
    task = TaskSpec("classification", data.labels, max_seq_len=64)
    models = {}
    for method in ("adamix", "adapter"):
        backbone, tokenizer, _ = load_backbone()
        model = build_model(method, backbone, task, adamix_config(method), 0).train()
        models[method] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3))
    batch = Collator(tokenizer, 64, regression=False)(data.dev[:batch_size])
    times: dict[str, list[float]] = {m: [] for m in models}
    for i in range(steps + 2):
        for method, (model, optimizer) in models.items():
            start = time.perf_counter()
            train_step(model, optimizer, batch, TrainConfig(method=method), regression=False)
            if i >= 2:  # two warm-up steps
                times[method].append(time.perf_counter() - start)
    med = {m: statistics.median(t) for m, t in times.items()}
    return {"batch": list(batch["input_ids"].shape), "steps": steps, "adamix_s": med["adamix"],
            "adapter_s": med["adapter"], "ratio": med["adamix"] / med["adapter"], "threads": torch.get_num_threads()}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    return f"{100 * mean:.1f}" + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")


def render(results: list[dict], tasks: list[str], methods: list[str], command: str, step: dict | None,
           backbone: str | None = None) -> str:
    lines = [START, "## Trainer: AdaMix vs baselines (`benchmarks/quality.py`)", "",
             f"Command: `{command}`", "",
             "Dev-set score × 100 (mean ± std over seeds; best evaluation of each run kept; metric per task: "
             f"accuracy, Matthews corr. for CoLA, Pearson for STS-B). Backbone: {backbone or 'all-MiniLM-L6-v2'}, "
             "mean pooling.", "",
             "| method | " + " | ".join(tasks) + " | avg |", "|---" * (len(tasks) + 2) + "|"]
    for method in methods:
        cells, means = [], []
        for task in tasks:
            scores = [r["score"] for r in results if r["task"] == task and r["method"] == method]
            cells.append(_mean_std(scores))
            if scores:
                means.append(statistics.mean(scores))
        avg = f"{100 * statistics.mean(means):.1f}" if len(means) == len(tasks) else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {avg} |")
    merge = [r for r in results if "random_routes" in r]
    if merge:
        lines += ["", "Merge ablation (AdaMix runs; single random route = one expert drawn per layer for the "
                      "whole dev set):", "", "| task | seed | merged | avg random route | best random route | "
                                             "worst random route |", "|---|---|---|---|---|---|"]
        for r in merge:
            rr = r["random_routes"]
            lines.append(f"| {r['task']} | {r['seed']} | {100 * r['merged']:.1f} | {100 * rr['mean']:.1f} | "
                         f"{100 * rr['best']:.1f} | {100 * rr['worst']:.1f} |")
    if step:
        lines += ["", f"Training step time on one batch {step['batch']} (median of {step['steps']} steps, "
                      f"{step['threads']} threads): AdaMix {step['adamix_s']:.3f} s, single adapter "
                      f"{step['adapter_s']:.3f} s, ratio **{step['ratio']:.2f}x**."]
    return "\n".join(lines + [END]) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["rte", "sst2", "cola", "stsb"], choices=sorted(GLUE_DIRS))
    p.add_argument("--methods", nargs="+", default=["adamix", "adapter", "lora", "full"], choices=sorted(METHOD_LR))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--dev-limit", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--draws", type=int, default=5, help="single random routes per AdaMix run (0: skip)")
    p.add_argument("--step-time", type=int, default=10, help="steps to time per method (0: skip)")
    p.add_argument("--lr", nargs="+", default=[], metavar="METHOD=LR",
                   help=f"override a method's learning rate (defaults {METHOD_LR})")
    p.add_argument("--glue", default=DEFAULT_GLUE)
    p.add_argument("--backbone", help="local model directory (default: the embedded MiniLM)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    p.add_argument("--json-out", type=Path, help="also write every run's result here")
    p.add_argument("--from-json", type=Path, nargs="+",
                   help="train nothing: render the table from --json-out files of earlier (e.g. parallel) runs")
    p.add_argument("--command", help="with --from-json: the command line(s) to quote in the table")
    args = p.parse_args()
    for item in args.lr:
        method, _, value = item.partition("=")
        if method not in METHOD_LR or not value:
            p.error(f"--lr takes METHOD=LR with METHOD in {sorted(METHOD_LR)}, got {item!r}")
        METHOD_LR[method] = float(value)
    if args.from_json:
        results = [r for path in args.from_json for r in json.loads(path.read_text())]
        step = next((r["step_time"] for r in results if "step_time" in r), None)
        results = [r for r in results if "step_time" not in r]
        tasks = [t for t in args.tasks if any(r["task"] == t for r in results)]
        section = render(results, tasks, args.methods, args.command or "see --json-out files", step)
        write_section(args.results, section, START, END)
        print(section)
        return 0
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    step = measure_step_time(args.step_time, args.batch_size, args.glue) if args.step_time else None
    if step:
        print(json.dumps({"step_time": step}), flush=True)
    results = []
    for task in args.tasks:
        for seed in args.seeds:
            for method in args.methods:
                results.append(train_one(task, method, seed, args))
                if args.json_out:
                    args.json_out.write_text(json.dumps(results + ([{"step_time": step}] if step else []), indent=1))
                write_section(args.results, render(results, args.tasks, args.methods, command, step, args.backbone),
                              START, END)
    print(render(results, args.tasks, args.methods, command, step, args.backbone))
    return 0


if __name__ == "__main__":
    sys.exit(main())
