"""Deterministic splits of a GLUE file into a train part and a held-out part (both keep the original header and
lines byte for byte; rows shuffled with random.Random(0)).

- `qnli`: the GLUE QNLI dev set is the only QNLI split in ../shared/data. Its 5,463 rows -> train.tsv (4,000) and
  dev.tsv (1,463 held out). The QNLI demo adapter trains on train.tsv and is scored on dev.tsv only; the GLUE QNLI
  dev score of such an adapter would be contaminated by its own training rows, so never report one.
- `stsb`: GLUE STS-B train's 5,749 rows -> train.tsv (5,249) and dev.tsv (500 selection rows), so that STS-B dev
  stays a held-out set. `adamix train` keeps the best of its periodic dev evaluations; selecting on STS-B dev would
  make the kept state's dev score optimistic. The embedding comparison (benchmarks/RESULTS.md) selects on the 500
  rows and scores the bare backbone and the adapters on STS-B dev, which neither training nor selection reads.

    python benchmarks/split_glue.py qnli [SRC_DIR] [OUT_DIR]   # default ../shared/data/glue/QNLI runs/qnli-split
    python benchmarks/split_glue.py stsb [SRC_DIR] [OUT_DIR]   # default ../shared/data/glue/STS-B runs/stsb-split
"""
from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

# task -> (GLUE folder, source file, its data rows, rows to train on, train part in file order)
SPLITS = {"qnli": ("QNLI", "dev.tsv", 5463, 4000, False), "stsb": ("STS-B", "train.tsv", 5749, 5249, True)}


def split(task: str, src: Path, out: Path) -> None:
    _, name, expected, train_rows, sort_train = SPLITS[task]
    lines = (src / name).read_bytes().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    rows = [r if r.endswith(b"\n") else r + b"\n" for r in rows]
    if len(rows) != expected:
        raise SystemExit(f"{src / name} has {len(rows)} rows, expected the GLUE {task} {name}'s {expected:,}")
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    train = sorted(order[:train_rows]) if sort_train else order[:train_rows]  # qnli: as its demo was trained
    out.mkdir(parents=True, exist_ok=True)
    for part_name, part in (("train.tsv", train), ("dev.tsv", sorted(order[train_rows:]))):
        data = header + b"".join(rows[i] for i in part)
        (out / part_name).write_bytes(data)
        print(f"{out / part_name}: {len(part)} rows, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SPLITS:
        raise SystemExit(f"usage: split_glue.py {{{','.join(SPLITS)}}} [SRC_DIR] [OUT_DIR]")
    task, here = sys.argv[1], Path(__file__).resolve().parents[1]
    src = Path(sys.argv[2]) if len(sys.argv) > 2 else here.parent / "shared" / "data" / "glue" / SPLITS[task][0]
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else here / "runs" / f"{task}-split"
    split(task, src, out)
