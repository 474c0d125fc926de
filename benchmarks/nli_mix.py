"""Entailment training data for an `nli` adapter: RTE train plus the QNLI train part, in RTE's layout.

RTE alone (2,490 pairs) stays at chance on the default backbone (server/demo_adapters/README.md). This script
adds the 4,000-row QNLI train part made by `split_glue.py qnli` as premise = the Wikipedia sentence, hypothesis =
the question (the long text first, as in RTE), and with `--stsb DIR` the clear-cut STS-B train pairs: score >= 4.0
(near paraphrases) as entailment, score <= 1.0 (unrelated) as not_entailment. The dev set is the GLUE RTE dev set,
copied unchanged, so the score is an RTE dev score that no training row came from.

    python benchmarks/nli_mix.py RTE_DIR QNLI_SPLIT_DIR OUT_DIR [--stsb STSB_DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from trainer.data import load_glue


def clean(text: str) -> str:
    return " ".join(text.split())  # no tab or newline may reach the TSV


def pairs(rte: Path, qnli_split: Path, stsb: Path | None) -> list[tuple[str, str, str]]:
    """(premise, hypothesis, label) rows, read and validated by the trainer's GLUE loader."""
    nli = load_glue("rte", rte)
    rows = [(e.text, e.text_pair, nli.labels[e.label]) for e in nli.train]
    rows += [(e.text_pair, e.text, nli.labels[e.label]) for e in load_glue("qnli", qnli_split).train]
    if stsb is not None:
        rows += [(e.text, e.text_pair, nli.labels[e.label <= 1.0]) for e in load_glue("stsb", stsb).train
                 if e.label >= 4.0 or e.label <= 1.0]
    return [(clean(a), clean(b), label) for a, b, label in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rte", type=Path, help="GLUE RTE folder (train.tsv, dev.tsv)")
    p.add_argument("qnli_split", type=Path, help="split_glue.py qnli output (train.tsv)")
    p.add_argument("out", type=Path)
    p.add_argument("--stsb", type=Path, help="GLUE STS-B folder: add its clear-cut train pairs")
    args = p.parse_args()
    rows = pairs(args.rte, args.qnli_split, args.stsb)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["index\tsentence1\tsentence2\tlabel\n"] + [f"{i}\t{a}\t{b}\t{y}\n" for i, (a, b, y) in enumerate(rows)]
    data = "".join(lines).encode()
    (args.out / "train.tsv").write_bytes(data)
    shutil.copyfile(args.rte / "dev.tsv", args.out / "dev.tsv")
    counts = {label: sum(y == label for *_, y in rows) for label in sorted({y for *_, y in rows})}
    print(f"{args.out / 'train.tsv'}: {len(rows)} rows {counts}, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
