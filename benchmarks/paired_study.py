"""The paired test of "AdaMix beats the single adapter of equal served size" (issue 12), resumable over sittings.

Design (fixed here so every sitting runs the same study):
- SST-2: a fixed 16k-row training subset (the same rows for every seed), 2,000 steps at batch 32 (4 epochs),
  dev accuracy and loss every 250 steps, best kept; AdaMix (M=4, r=16, shared up) vs the single adapter (r=16)
  vs LoRA on q and v with r=8 (12,288 served weights per layer against the adapter's 12,688: equal served size);
  seeds 0-4 at lr 1e-3, and seed 0 again at lr 3e-3. A seed fixes the data order for every method.
- STS-B: the full training set, 5 epochs, Pearson every 90 steps; AdaMix, AdaMix with the MSE consistency
  option (`--regression-consistency mse`) and the single adapter; seeds 0-2.
- Every AdaMix run also scores 5 single random routes of its unmerged mixture (merged vs random routes).

Each run is a real `adamix train` subprocess with checkpoints every 250 steps in `--runs` (scratch); a run
interrupted (Ctrl-C, SIGTERM, a reboot) continues with `--resume` on the next call. Two drivers may run side
by side: each run is locked while one trains it. A finished run's record (its summary, every evaluation, its
random routes, its seconds) goes to `--records`, benchmarks/paired-study/NAME.json, which is committed: the
study outlives the machine it ran on, and a run with a record is never trained again. Then `--report` writes
the paired table into benchmarks/RESULTS.md from the records alone.

    OMP_NUM_THREADS=1 python benchmarks/paired_study.py            # train what is not done yet
    python benchmarks/paired_study.py --list                       # what is done, running, left
    python benchmarks/paired_study.py --report                     # paired differences -> RESULTS.md
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adamix.atomic import atomic_write  # noqa: E402
from results_md import write_section  # noqa: E402
from stats import paired_difference  # noqa: E402

DEFAULT_GLUE = ROOT.parent / "shared" / "data" / "glue"
RECORDS = ROOT / "benchmarks" / "paired-study"
START, END = "<!-- trainer:paired-study:start -->", "<!-- trainer:paired-study:end -->"
VARIANTS = {  # name -> adamix train arguments
    "adamix": ["--method", "adamix", "--bottleneck", "16"],
    "adamix-mse": ["--method", "adamix", "--bottleneck", "16", "--regression-consistency", "mse"],
    "adapter": ["--method", "adapter", "--bottleneck", "16"],
    "lora": ["--method", "lora", "--lora-r", "8"],
}
TASKS = {  # task -> (GLUE folder, schedule arguments, evaluation interval)
    "sst2": ("SST-2", ["--train-limit", "16000", "--max-steps", "2000", "--max-seq-len", "64"], 250),
    "stsb": ("STS-B", ["--epochs", "5", "--max-seq-len", "128"], 90),
}


@dataclass(frozen=True)
class Run:
    task: str
    variant: str
    seed: int
    lr: float = 1e-3

    @property
    def name(self) -> str:
        return f"{self.task}-{self.variant}-s{self.seed}" + ("" if self.lr == 1e-3 else f"-lr{self.lr:g}")


def plan() -> list[Run]:
    """Seed-major and task-interleaved, so a partial study already has complete pairs of both tasks."""
    runs: list[Run] = []
    for seed in range(5):
        runs += [Run("sst2", v, seed) for v in ("adamix", "adapter", "lora")]
        if seed < 3:
            runs += [Run("stsb", v, seed) for v in ("adamix", "adamix-mse", "adapter")]
    return runs + [Run("sst2", v, 0, 3e-3) for v in ("adamix", "adapter", "lora")]


def train_argv(run: Run, out: Path, glue: Path, resume: bool) -> list[str]:
    folder, schedule, every = TASKS[run.task]
    argv = [sys.executable, "-m", "adamix.cli", "train", "--glue-task", run.task, "--data", str(glue / folder),
            *VARIANTS[run.variant], *schedule, "--seed", str(run.seed), "--lr", str(run.lr), "--batch-size", "32",
            "--eval-every", str(every), "--no-progress", "--output", str(out / "adapter.safetensors"),
            "--log", str(out / "log.jsonl"), "--checkpoint-dir", str(out / "ckpt"), "--checkpoint-every", "250"]
    if run.variant.startswith("adamix"):
        argv += ["--save-experts", str(out / "experts.safetensors")]
    return argv + (["--resume"] if resume else [])


def _last_json(text: str) -> dict:
    lines = [line for line in text.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"no JSON summary in the output:\n{text[-2000:]}")
    return json.loads(lines[-1])


class Interrupted(Exception):
    pass


def record_path(records: Path, run: Run) -> Path:
    return records / f"{run.name}.json"


def execute(run: Run, runs_dir: Path, records: Path, glue: Path) -> bool:
    """Train (or resume) one run, score its random routes and write its record; False when another driver holds it."""
    if record_path(records, run).is_file():
        return True
    out = runs_dir / run.name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:  # held while this driver trains the run
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if not record_path(records, run).is_file():  # else the other driver finished it meanwhile
            _train(run, out, records, glue)
    return True


def _train(run: Run, out: Path, records: Path, glue: Path) -> None:
    resume = (out / "ckpt").is_dir() and any((out / "ckpt").iterdir())
    argv = train_argv(run, out, glue, resume)
    print(f"[{time.strftime('%H:%M:%S')}] {run.name}: " + " ".join(argv[2:]), flush=True)
    spent = json.loads((out / "seconds.json").read_text())["seconds"] if (out / "seconds.json").is_file() else 0.0
    start = time.perf_counter()
    # SIGINT at its default in the trainer: a driver started in the background (`nohup ... &`) inherits it
    # ignored, and a trainer that ignores it never checkpoints when the driver forwards an interruption.
    with open(out / "train.err", "a") as err:
        child = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

        def forward(signum, _frame):  # the trainer checkpoints on SIGINT; then this driver stops
            child.send_signal(signal.SIGINT)
            raise Interrupted(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            stdout, _ = child.communicate()
        except Interrupted:
            child.wait(timeout=300)
            raise
        finally:
            (out / "seconds.json").write_text(json.dumps({"seconds": spent + time.perf_counter() - start}))
            for s, handler in old.items():
                signal.signal(s, handler)
    if child.returncode != 0:
        raise RuntimeError(f"{run.name}: adamix train exited {child.returncode}; see {out / 'train.err'}")
    result = {"run": run.__dict__, "train": _last_json(stdout),
              "seconds": json.loads((out / "seconds.json").read_text())["seconds"],
              "history": [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]}
    if run.variant.startswith("adamix"):
        routes = subprocess.run([sys.executable, "-m", "adamix.cli", "eval", str(out / "experts.safetensors"),
                                 "--glue-task", run.task, "--data", str(glue / TASKS[run.task][0]), "--routing",
                                 "random", "--draws", "5", "--seed", str(run.seed), "--json"],
                                cwd=ROOT, capture_output=True, text=True, check=True)
        result["routes"] = _last_json(routes.stdout)
    records.mkdir(parents=True, exist_ok=True)
    atomic_write(record_path(records, run), (json.dumps(result, indent=1) + "\n").encode())
    print(f"[{time.strftime('%H:%M:%S')}] {run.name}: done, best {result['train']['score']:.4f} at step "
          f"{result['train']['best_step']} ({result['seconds'] / 60:.1f} min)", flush=True)


def _cell(d) -> str:
    """A paired difference in points with its interval (none from a single pair)."""
    if d.pairs == 1:
        return f"{d.value:+.2f} (one pair: no interval yet)"
    return f"{d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"


def best_until(hist: list[dict], metric: str, max_step: float) -> tuple[float, float]:
    """(best dev metric, lowest dev loss) over the evaluations at steps <= max_step."""
    rows = [r for r in hist if r["step"] <= max_step]
    return max(r[f"dev_{metric}"] for r in rows), min(r["dev_loss"] for r in rows)


def report(records: Path, compute_ratio: float) -> str:
    done = {r.name: r for r in plan() if record_path(records, r).is_file()}
    results = {r.name: json.loads(record_path(records, r).read_text()) for r in done.values()}
    lines = [START, "## Trainer: the paired study, AdaMix vs single modules of equal served size "
                    "(`benchmarks/paired_study.py`)", "",
             "Commands: `OMP_NUM_THREADS=1 python benchmarks/paired_study.py` (repeat after an interruption; it "
             f"resumes), then `python benchmarks/paired_study.py --report`. Runs done: **{len(done)} of "
             f"{len(plan())}**. Design: see the script's docstring. Paired differences are means over seeds with "
             "a Student-t 95% interval; a difference is shown only for seeds where both runs are done."
             + ("" if len(done) == len(plan()) else " **The study is not finished: until its pairs are done these "
                "rows are partial and settle nothing about the claim.**"), ""]
    for task, metric, variants, pairs, steps in (
            ("sst2", "accuracy", ("adamix", "adapter", "lora"), [("adamix", "adapter"), ("adamix", "lora")], 2000),
            ("stsb", "pearson", ("adamix", "adamix-mse", "adapter"),
             [("adamix", "adapter"), ("adamix-mse", "adapter"), ("adamix-mse", "adamix")], None)):
        seeds = sorted({r.seed for r in done.values() if r.task == task and r.lr == 1e-3})
        if not seeds:
            continue
        lines += [f"### {task} (dev {metric}, lr 1e-3)", "", "| seed | " + " | ".join(
            f"{v} best {metric} / lowest loss" for v in variants) + " |", "|---" * (len(variants) + 1) + "|"]
        table: dict[tuple[str, int], dict] = {}
        for seed in seeds:
            cells = []
            for v in variants:
                run = Run(task, v, seed)
                if run.name in done:
                    hist = results[run.name]["history"]
                    last = max(r["step"] for r in hist)
                    table[v, seed] = {"hist": hist, "last": last, "best": best_until(hist, metric, last)}
                    cells.append(f"{100 * table[v, seed]['best'][0]:.2f} / {table[v, seed]['best'][1]:.4f}")
                else:
                    cells.append("-")
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        lines += ["", "| comparison | pairs | mean difference (points) [95% CI] |", "|---|---|---|"]
        for a, b in pairs:
            both = [s for s in seeds if (a, s) in table and (b, s) in table]
            if both:
                d = paired_difference([100 * table[a, s]["best"][0] for s in both],
                                      [100 * table[b, s]["best"][0] for s in both])
                lines.append(f"| {a} - {b}, equal steps | {d.pairs} | {_cell(d)} |")
                if a.startswith("adamix") and b in ("adapter", "lora"):
                    budget = {s: table[b, s]["last"] / compute_ratio for s in both}
                    d = paired_difference([100 * best_until(table[a, s]["hist"], metric, budget[s])[0] for s in both],
                                          [100 * table[b, s]["best"][0] for s in both])
                    lines.append(f"| {a} - {b}, equal compute (AdaMix evaluations up to step "
                                 f"{min(budget.values()):.0f}) | {d.pairs} | {_cell(d)} |")
        merged = [results[Run(task, v, s).name] for v in variants if v.startswith("adamix") for s in seeds
                  if Run(task, v, s).name in done]
        if merged:
            d = paired_difference([100 * r["routes"]["score"] for r in merged],
                                  [100 * r["routes"]["random_routes"]["mean"] for r in merged])
            lines.append(f"| merged - mean of 5 single random routes (AdaMix runs) | {d.pairs} | {_cell(d)} |")
        if steps:
            every = TASKS[task][2]
            lines += ["", f"Mean dev {metric} by step (over the seeds each variant has):", "",
                      "| step | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
            for step in range(every, steps + 1, every):
                row = []
                for v in variants:
                    vals = [r[f"dev_{metric}"] for s in seeds if (v, s) in table for r in table[v, s]["hist"]
                            if r["step"] == step]
                    row.append(f"{100 * statistics.mean(vals):.2f}" if vals else "-")
                lines.append(f"| {step} | " + " | ".join(row) + " |")
        secs = {v: [results[Run(task, v, s).name]["seconds"] / table[v, s]["last"] for s in seeds if (v, s) in table]
                for v in variants}
        lines += ["", "Wall seconds per step, median over runs (machine shared, so indicative only): " + ", ".join(
            f"{v} {statistics.median(t):.2f}" for v, t in secs.items() if t) + ".", ""]
    checks = [r for r in done.values() if r.lr != 1e-3]
    if checks:
        lines += ["### sst2 at lr 3e-3, seed 0 (best dev accuracy; the same seed at 1e-3 beside it)", "",
                  "| variant | lr 3e-3 | lr 1e-3 |", "|---|---|---|"]
        for run in checks:
            base = Run(run.task, run.variant, run.seed)
            other = f"{100 * results[base.name]['train']['score']:.2f}" if base.name in done else "-"
            lines.append(f"| {run.variant} | {100 * results[run.name]['train']['score']:.2f} | {other} |")
        lines.append("")
    lines.append(f"Equal compute uses an AdaMix step = {compute_ratio}x a single module's step (the interleaved "
                 "step-time measurement of `benchmarks/quality.py`).")
    return "\n".join(lines + [END]) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "paired-study", help="scratch: checkpoints, logs")
    p.add_argument("--records", type=Path, default=RECORDS, help="finished runs' records (committed)")
    p.add_argument("--glue", type=Path, default=DEFAULT_GLUE)
    p.add_argument("--only", nargs="+", metavar="NAME", help="train only these runs (names as --list prints)")
    p.add_argument("--list", action="store_true", help="print each run's state and exit")
    p.add_argument("--report", action="store_true", help="write the paired table into --results and exit")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    p.add_argument("--compute-ratio", type=float, default=2.2, help="AdaMix step cost / single module's (2.2)")
    args = p.parse_args()
    runs = plan()
    if args.only:
        unknown = set(args.only) - {r.name for r in runs}
        if unknown:
            p.error(f"unknown runs {sorted(unknown)}; see --list")
        runs = [r for r in runs if r.name in args.only]
    if args.list:
        for run in runs:
            log = args.runs / run.name / "log.jsonl"
            last = log.read_text().splitlines()[-1:] if log.is_file() else []
            state = ("done" if record_path(args.records, run).is_file()
                     else f"at step {json.loads(last[0])['step']}" if last else "left")
            print(f"{run.name:32s} {state}")
        return 0
    if args.report:
        section = report(args.records, args.compute_ratio)
        write_section(args.results, section, START, END)
        print(section)
        return 0
    if not args.glue.is_dir():
        p.error(f"--glue {args.glue}: no such directory")
    try:
        for run in runs:
            if not execute(run, args.runs, args.records, args.glue):
                print(f"{run.name}: another driver is training it; skipped", flush=True)
    except Interrupted:
        print("interrupted: the current run checkpointed; run the same command again to resume", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
