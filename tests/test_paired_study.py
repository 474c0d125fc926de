"""The paired study's statistics and report, on hand-made run records (the runs themselves take hours)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import paired_study  # noqa: E402
from stats import paired_difference  # noqa: E402


def test_paired_difference_is_the_mean_with_a_student_t_interval() -> None:
    d = paired_difference([1.0, 2.0, 4.0], [0.0, 0.5, 1.5])  # differences 1.0, 1.5, 2.5
    assert d.value == pytest.approx(5 / 3) and d.pairs == 3
    half = 4.303 * 0.7637626158 / 3 ** 0.5  # t_{0.975,2} * sd / sqrt(n)
    assert (d.low, d.high) == (pytest.approx(5 / 3 - half, abs=1e-6), pytest.approx(5 / 3 + half, abs=1e-6))
    with pytest.raises(ValueError, match="equally many"):
        paired_difference([1.0], [1.0, 2.0])


def _record(records: Path, run: paired_study.Run, curve: list[float], merged: float = 0.0,
            routes: float = 0.0) -> None:
    hist = [{"step": 250 * (i + 1), "dev_accuracy": acc, "dev_loss": 1 - acc} for i, acc in enumerate(curve)]
    result = {"run": run.__dict__, "train": {"score": max(curve), "best_step": 0}, "seconds": 10.0 * len(curve),
              "history": hist}
    if run.variant.startswith("adamix"):
        result["routes"] = {"score": merged, "random_routes": {"mean": routes}}
    records.mkdir(parents=True, exist_ok=True)
    paired_study.record_path(records, run).write_text(json.dumps(result))


def test_a_recorded_run_is_never_trained_again(tmp_path: Path) -> None:
    run = paired_study.Run("sst2", "lora", 3)
    _record(tmp_path / "records", run, [0.8])
    # No GLUE folder and no scratch: training would fail at once, so True means it was skipped.
    assert paired_study.execute(run, tmp_path / "scratch", tmp_path / "records", tmp_path / "no-glue")
    assert not (tmp_path / "scratch").exists()


def test_report_pairs_seeds_at_equal_steps_and_equal_compute(tmp_path: Path) -> None:
    for seed, bonus in ((0, 0.01), (1, 0.03)):
        # AdaMix improves late: at equal compute (steps <= 2000 / 2.2) it is behind the adapter.
        _record(tmp_path, paired_study.Run("sst2", "adamix", seed),
                [0.70, 0.75, 0.78, 0.80, 0.82, 0.84, 0.85, 0.85 + bonus], merged=0.85 + bonus, routes=0.80)
        _record(tmp_path, paired_study.Run("sst2", "adapter", seed), [0.80] * 7 + [0.85])
    section = paired_study.report(tmp_path, 2.2)
    assert "Runs done: **4 of 27**" in section
    assert "| adamix - adapter, equal steps | 2 | +2.00 [" in section  # (1 + 3) / 2 points
    # AdaMix's evaluations up to step 909: best 0.78, against the adapter's 0.85 -> -7 points.
    assert "| adamix - adapter, equal compute (AdaMix evaluations up to step 909) | 2 | -7.00 [" in section
    assert "| merged - mean of 5 single random routes (AdaMix runs) | 2 | +7.00 [" in section
    assert "adamix - lora" not in section  # no LoRA run is done: no unpaired comparison
    assert "| 250 | 70.00 | 80.00 | - |" in section
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nbefore\n")
    paired_study.write_section(results, section, paired_study.START, paired_study.END)
    paired_study.write_section(results, section, paired_study.START, paired_study.END)  # replaced, not appended
    assert results.read_text().count(paired_study.START) == 1 and "before" in results.read_text()


def test_the_trainer_gets_sigint_at_its_default_even_from_a_background_driver(tmp_path: Path, monkeypatch) -> None:
    """A driver under `nohup ... &` inherits SIGINT ignored; its trainer must not, or it never checkpoints."""
    import signal

    script = ("import json, signal, sys; from pathlib import Path\n"
              "Path(sys.argv[1], 'log.jsonl').write_text(json.dumps({'step': 1, 'dev_accuracy': 0.5, 'dev_loss': 1.0}))\n"
              "print(json.dumps({'score': 0.5, 'best_step': 1, "
              "'sigint_default': signal.getsignal(signal.SIGINT) is signal.default_int_handler}))\n")
    monkeypatch.setattr(paired_study, "train_argv",
                        lambda run, out, glue, resume: [sys.executable, "-c", script, str(out)])
    run = paired_study.Run("sst2", "lora", 4)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert paired_study.execute(run, tmp_path / "scratch", tmp_path / "records", tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    record = json.loads(paired_study.record_path(tmp_path / "records", run).read_text())
    assert record["train"]["sigint_default"] is True
    assert record["history"] == [{"step": 1, "dev_accuracy": 0.5, "dev_loss": 1.0}]
