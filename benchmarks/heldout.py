"""The shipped demo adapters on held-out text of each one's kind, through a running `adamix serve`.

The sets in benchmarks/heldout/ were written for this project (no corpus's rows, so no licence but the
project's) and are never used to train or to pick a recipe: movie-review snippets (sst2), grammatical /
ungrammatical minimal pairs (cola), question / sentence pairs (qnli), premise / hypothesis pairs (nli) and
scored sentence pairs (stsb).

    python benchmarks/heldout.py                          # starts `adamix serve` on 127.0.0.1 (demo adapters)
    python benchmarks/heldout.py --url http://127.0.0.1:8000 [--api-key KEY]
    python benchmarks/heldout.py --results benchmarks/RESULTS.md   # also writes the table there

A minimal pair counts as right when the acceptable sentence gets the higher P(acceptable) (forced choice,
as BLiMP scores language models); the table also gives the plain accuracy over all its sentences.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port, wait_ready  # noqa: E402
from results_md import write_section  # noqa: E402
from trainer.metrics import pearson, spearman  # noqa: E402

SETS = Path(__file__).resolve().parent / "heldout"
START, END = "<!-- demos:heldout:start -->", "<!-- demos:heldout:end -->"
Post = Callable[[str, list], list[dict]]  # (task, inputs) -> the predictions of POST /v1/{task}/predict


def rows(name: str) -> list[dict[str, str]]:
    with open(SETS / name, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def accuracy(got: list[dict], gold: list[dict[str, str]]) -> dict[str, float]:
    """A classification demo's predictions against the set's `label` column."""
    return {"accuracy": statistics.mean(p["label"] == r["label"] for p, r in zip(got, gold)), "n": len(gold)}


def score_sets(post: Post) -> dict[str, dict[str, float]]:
    """Every demo on its held-out set: {task: {metric: value, "n": rows}}."""
    out: dict[str, dict[str, float]] = {}
    sent = rows("sentiment.tsv")
    out["sst2"] = accuracy(post("sst2", [r["sentence"] for r in sent]), sent)

    pairs = rows("minimal_pairs.tsv")
    good = post("cola", [r["acceptable"] for r in pairs])
    bad = post("cola", [r["unacceptable"] for r in pairs])
    labels = [p["label"] == "acceptable" for p in good] + [p["label"] == "unacceptable" for p in bad]
    out["cola"] = {"pairs right": statistics.mean(g["scores"]["acceptable"] > b["scores"]["acceptable"]
                                                  for g, b in zip(good, bad)),
                   "accuracy": statistics.mean(labels), "n": len(pairs)}

    qa = rows("question_answer.tsv")
    out["qnli"] = accuracy(post("qnli", [{"text": r["question"], "text_pair": r["sentence"]} for r in qa]), qa)

    nli = rows("entailment.tsv")
    out["nli"] = accuracy(post("nli", [{"text": r["premise"], "text_pair": r["hypothesis"]} for r in nli]), nli)

    rel = rows("relatedness.tsv")
    values = [p["value"] for p in post("stsb", [{"text": r["sentence1"], "text_pair": r["sentence2"]} for r in rel])]
    gold = np.array([float(r["score"]) for r in rel])
    out["stsb"] = {"pearson": pearson(np.array(values), gold), "spearman": spearman(np.array(values), gold),
                   "n": len(rel)}
    return out


def http_post(url: str, api_key: str | None) -> Post:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def post(task: str, inputs: list) -> list[dict]:
        r = httpx.post(f"{url.rstrip('/')}/v1/{task}/predict", json={"inputs": inputs}, headers=headers, timeout=120)
        r.raise_for_status()
        return r.json()["predictions"]
    return post


def table(scores: dict[str, dict[str, float]], label: str) -> str:
    lines = [START, "## Demo adapters on held-out text of their kind (`benchmarks/heldout.py`)", "",
             f"Command: `python benchmarks/heldout.py --results benchmarks/RESULTS.md` ({label}). The sets, in "
             "`benchmarks/heldout/`, were written for this project and never used to train or to choose a recipe.",
             "", "| demo | held-out set | rows | score |", "|---|---|---|---|"]
    names = {"sst2": "movie-review snippets", "cola": "minimal pairs (acceptable / unacceptable)",
             "qnli": "question / sentence pairs", "nli": "premise / hypothesis pairs",
             "stsb": "scored sentence pairs (0-5)"}
    for task, s in scores.items():
        cells = ", ".join(f"{k} {v:.3f}" for k, v in s.items() if k != "n")
        lines.append(f"| `{task}` | {names[task]} | {s['n']:.0f} | {cells} |")
    return "\n".join(lines + [END]) + "\n"


def serve_and_score() -> dict[str, dict[str, float]]:
    """Start `adamix serve` (demo adapters, a temporary registry) on 127.0.0.1, score, stop that process."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "adamix.cli", "serve", "--host", "127.0.0.1", "--port",
                                 str(port), "--registry", str(Path(tmp) / "registry")],
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            asyncio.run(wait_ready(port, proc, timeout=180))
            return score_sets(http_post(f"http://127.0.0.1:{port}", None))
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (default: start one with the demo adapters)")
    p.add_argument("--api-key", help="bearer key for --url")
    p.add_argument("--results", type=Path, help="also write the table into this RESULTS.md")
    args = p.parse_args()
    scores = score_sets(http_post(args.url, args.api_key)) if args.url else serve_and_score()
    section = table(scores, f"through {'the server at ' + args.url if args.url else 'a fresh adamix serve'}")
    if args.results:
        write_section(args.results, section, START, END)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
