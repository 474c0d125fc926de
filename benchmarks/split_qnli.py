"""Split the GLUE QNLI dev set (the only QNLI split in ../shared/data) into a train part and a held-out part.

Deterministic: the 5,463 data rows are shuffled with random.Random(0) and the first 4,000 become train.tsv,
the remaining 1,463 dev.tsv (both keep the original header and lines byte for byte). The QNLI demo adapter
trains on train.tsv and is scored on dev.tsv only; the GLUE QNLI dev score of such an adapter would be
contaminated by its own training rows, so never report one.

    python benchmarks/split_qnli.py [SRC_DIR] [OUT_DIR]   # default ../shared/data/glue/QNLI runs/qnli-split
"""
from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

TRAIN_ROWS = 4000


def split(src: Path, out: Path) -> None:
    lines = (src / "dev.tsv").read_bytes().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    rows = [r if r.endswith(b"\n") else r + b"\n" for r in rows]
    if len(rows) != 5463:
        raise SystemExit(f"{src / 'dev.tsv'} has {len(rows)} rows, expected the GLUE QNLI dev set's 5,463")
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.tsv", order[:TRAIN_ROWS]), ("dev.tsv", sorted(order[TRAIN_ROWS:]))):
        data = header + b"".join(rows[i] for i in part)
        (out / name).write_bytes(data)
        print(f"{out / name}: {len(part)} rows, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "shared" / "data" / "glue" / "QNLI"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else here / "runs" / "qnli-split"
    split(src, out)
