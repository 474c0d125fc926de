"""benchmarks/gpu.sh, the prepared accelerator benchmark, works end to end: its --dry-run (a tiny random BERT on
the CPU) prints every figure the GPU run records."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_dry_run_prints_every_figure():
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for half in ("float16", "bfloat16"):  # agreement with float32, within the test suite's bfloat16 tolerance
        worst, agree = re.search(rf"A\. {half} pool vs float32: max \|p - p_float32\| ([0-9.]+), labels agree "
                                 r"([0-9.]+)%", out).groups()
        assert float(worst) <= 0.03 and float(agree) >= 90
    for rows in (64, 256):
        assert f"1. bare backbone forward, {rows} rows" in out
    assert len(re.findall(r"2\. throughput 64 tasks / 1 task \(cpu\): [0-9.]+x \[95% CI [0-9.]+, [0-9.]+\] "
                          r"\(2 pairs\)", out)) == 2  # at batch 64 and at 256
    assert re.search(r"3\. throughput ours / peft adapter_names one batch \(cpu\): [0-9.]+x \[95% CI", out)
    assert re.search(r"4\. cold load disk -> resident, adapter r=16, wall ms \(p50 / p99 / max; 20 loads\)", out)
    assert re.search(r"6\. engine forward, 64-row batches \(rows/s, wall\): \d+", out)
    for workers in (0, 1, 2):
        assert re.search(rf"6\. tokenisation, tokenizer_workers={workers}, .*: \d+ \([0-9.]+x\)", out)
