"""The real embedded MiniLM backbone served end to end, equal to the adapters applied offline."""
from __future__ import annotations

import copy

import pytest
import torch
from fastapi.testclient import TestClient

from adamix import load_backbone, read_adapter_file, task_model_from_adapter
from server.app import create_app
from adamix.registry import AdapterRegistry
from server.settings import DEMO_ADAPTERS_DIR, Settings
from tests.server.helpers import adapter_bytes, make_adapter, wait_ready

pytestmark = pytest.mark.slow
TEXTS = ["a gripping, funny and humane film", "the plot is thin and the acting is worse"]


def test_minilm_serves_mixed_tasks_exactly(tmp_path):
    model, tokenizer, info = load_backbone()
    adapters = {"sst2": make_adapter(model, info, r=16, seed=1, std=0.05),
                "lora": make_adapter(model, info, kind="lora", r=4, seed=2, std=0.02, labels=("a", "b", "c"))}
    registry = AdapterRegistry(tmp_path / "registry", info)
    for task, adapter in adapters.items():
        registry.publish(task, adapter_bytes(adapter))
    settings = Settings(registry=tmp_path / "registry", demo_adapters=None)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=120)
        for task, adapter in adapters.items():
            r = client.post(f"/v1/{task}/predict", json={"inputs": TEXTS})
            assert r.status_code == 200, r.text
            offline = task_model_from_adapter(copy.deepcopy(model), adapter)
            for text, got in zip(TEXTS, r.json()["predictions"]):
                with torch.no_grad():
                    probs = torch.softmax(offline(**tokenizer(text, return_tensors="pt"))[0], -1)
                assert list(got["scores"].values()) == pytest.approx(probs.tolist(), abs=1e-5)
        # the bare backbone, under its own name: a drop-in sentence-embedding server
        texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply."]
        r = client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": texts})
        assert r.status_code == 200, r.text
        vectors = torch.tensor([d["embedding"] for d in r.json()["data"]])  # (3, 384)
        assert vectors.shape == (3, 384) and torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
        similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
        assert similar > 0.4 > unrelated, (similar, unrelated)


def test_shipped_demo_adapters_install_and_serve_like_offline(tmp_path):
    demos = sorted(DEMO_ADAPTERS_DIR.glob("*.safetensors"))
    if not demos:
        pytest.skip(f"no demo adapters in {DEMO_ADAPTERS_DIR} yet")
    model, tokenizer, info = load_backbone()
    with TestClient(create_app(Settings(registry=tmp_path / "registry"))) as client:
        wait_ready(client, timeout=120)
        installed = {t["task"] for t in client.get("/v1/adapters").json()["tasks"]}
        for path in demos:
            adapter = read_adapter_file(path)
            if adapter.backbone.fingerprint != info.fingerprint:
                assert path.stem not in installed
                continue
            assert path.stem in installed
            pair = adapter.task.pair
            inputs = [{"text": t, "text_pair": "a film was shown"} if pair else t for t in TEXTS]
            r = client.post(f"/v1/{path.stem}/predict", json={"inputs": inputs})
            assert r.status_code == 200, r.text
            offline = task_model_from_adapter(copy.deepcopy(model), adapter)
            for text, got in zip(TEXTS, r.json()["predictions"]):
                args = (text, "a film was shown") if pair else (text,)
                enc = tokenizer(*args, truncation=True, max_length=adapter.task.max_seq_len, return_tensors="pt")
                with torch.no_grad():
                    logits = offline(**enc)[0]
                if adapter.task.regression:
                    assert got["value"] == pytest.approx(float(logits[0]), abs=1e-4)
                else:
                    probs = torch.softmax(logits, -1).tolist()
                    assert list(got["scores"].values()) == pytest.approx(probs, abs=1e-5)
