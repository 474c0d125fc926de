"""Split GLUE STS-B train into a train part and a selection part, so that STS-B dev stays a held-out set.

`adamix train` keeps the best of its periodic dev evaluations; had it selected on STS-B dev, the dev score of the
kept state would be optimistic by selection. The embedding comparison (benchmarks/RESULTS.md) therefore selects on
500 rows of STS-B train that it does not train on and scores the bare backbone and the adapters on STS-B dev, which
neither training nor selection ever reads. Deterministic: the 5,749 data rows are shuffled with random.Random(0);
the first 5,249 become train.tsv, the other 500 dev.tsv (both keep the original header and lines byte for byte).

    python benchmarks/split_stsb.py [SRC_DIR] [OUT_DIR]   # default ../shared/data/glue/STS-B runs/stsb-split
"""
from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

TRAIN_ROWS = 5249


def split(src: Path, out: Path) -> None:
    lines = (src / "train.tsv").read_bytes().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    rows = [r if r.endswith(b"\n") else r + b"\n" for r in rows]
    if len(rows) != 5749:
        raise SystemExit(f"{src / 'train.tsv'} has {len(rows)} rows, expected the GLUE STS-B train set's 5,749")
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.tsv", sorted(order[:TRAIN_ROWS])), ("dev.tsv", sorted(order[TRAIN_ROWS:]))):
        data = header + b"".join(rows[i] for i in part)
        (out / name).write_bytes(data)
        print(f"{out / name}: {len(part)} rows, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "shared" / "data" / "glue" / "STS-B"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else here / "runs" / "stsb-split"
    split(src, out)
