"""The demo adapters shipped in server/demo_adapters/: valid for the default backbone, small, never MRPC."""
from __future__ import annotations

from pathlib import Path

import pytest

from adamix import load_backbone, read_adapter_file

DEMO = Path(__file__).resolve().parents[2] / "server" / "demo_adapters"
EXPECTED = {"sst2": ("glue/sst2", "accuracy", 0.85), "stsb": ("glue/stsb", "pearson", 0.80),
            "rte": ("glue/rte", "accuracy", 0.0), "cola": ("glue/cola", "matthews", 0.0)}


@pytest.mark.slow
def test_shipped_demo_adapters_are_valid_and_meet_their_targets() -> None:
    files = sorted(DEMO.glob("*.safetensors"))
    if not files:
        pytest.skip("no demo adapters shipped yet (benchmarks/train_demo_adapters.sh writes them)")
    assert {f.stem for f in files} == set(EXPECTED)
    _, _, info = load_backbone()
    for path in files:
        adapter = read_adapter_file(path, info)  # every key, shape, finite value, and the backbone fingerprint
        dataset, metric, target = EXPECTED[path.stem]
        prov = adapter.provenance
        assert "mrpc" not in prov["dataset"].lower()  # MRPC is non-commercial: never shipped
        assert (prov["dataset"], prov["metric"]) == (dataset, metric)
        assert prov["score"] >= target, path.name
        assert adapter.config.num_experts == 4 and prov["method"] == "adamix"
        assert path.stat().st_size < 1 << 20
