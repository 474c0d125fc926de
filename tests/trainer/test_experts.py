"""--save-experts checkpoints: GPT-2's fused LoRA per slice since version 2; version-1 files still load."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from adamix import AdaMixConfig, AdaMixTaskModel, TaskSpec, add_adamix, backbone_info
from tests.adamix.util import make_inputs, perturb_adapters
from tests.conftest import tiny_backbone
from trainer.experts import EXPERTS_FORMAT, load_experts, save_experts

TARGETS = ("value", "query")  # block 0 of A feeds the value slice, block 1 the query slice
D, R = 32, 4


def _mixture(tmp_path):
    """(path of a saved GPT-2 AdaMix-LoRA checkpoint with 3 distinct B experts, the eval-mode model it holds)."""
    task = TaskSpec("classification", ("a", "b"), pooling="last")
    model = add_adamix(AdaMixTaskModel(tiny_backbone("gpt2"), task),
                       AdaMixConfig(kind="lora", num_experts=3, lora_share_b=False, lora_r=R, lora_targets=TARGETS))
    perturb_adapters(model, scale=0.1)
    path = tmp_path / "experts.safetensors"
    save_experts(path, model, backbone_info(model.backbone, "tiny-gpt2"), {"dataset": "synthetic"})
    return path, model.eval()


def _rewrite(path, version: int, dense_b: bool) -> None:
    """The checkpoint as a version-`version` writer wrote it; dense_b: B experts as version 1 held them, one dense
    (3d, n * r) matrix each, with noise off the targets' blocks (version 1's forward masked it away)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[EXPERTS_FORMAT])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, b in list(tensors.items()):
        if dense_b and ".adamix_lora.B." in name:
            dense = torch.randn(3 * D, len(TARGETS) * R)  # off-block noise, then each target's block
            for t, slot in enumerate(("query", "key", "value").index(x) for x in TARGETS):
                dense[slot * D:(slot + 1) * D, t * R:(t + 1) * R] = b[t * D:(t + 1) * D]
            tensors[name] = dense
    meta["format_version"] = version
    path.write_bytes(save(tensors, metadata={EXPERTS_FORMAT: json.dumps(meta)}))


@pytest.mark.parametrize("version", [2, 1])
def test_gpt2_fused_lora_experts_load_and_give_the_saved_models_outputs(tmp_path, version):
    path, model = _mixture(tmp_path)
    if version == 1:
        _rewrite(path, 1, dense_b=True)
    fresh = tiny_backbone("gpt2")
    loaded, meta = load_experts(path, fresh, backbone_info(fresh, "tiny-gpt2"))
    b = [p for n, p in loaded.named_parameters() if ".adamix_lora.B." in n]
    assert len(b) == 2 * 3 and all(p.shape == (len(TARGETS) * D, R) for p in b)  # 2 layers x 3 experts, per slice
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs), model(**inputs), rtol=0, atol=1e-5)


def test_an_unknown_experts_version_is_refused(tmp_path):
    path, _ = _mixture(tmp_path)
    _rewrite(path, 3, dense_b=False)
    fresh = tiny_backbone("gpt2")
    with pytest.raises(ValueError, match="format_version 3 is not supported"):
        load_experts(path, fresh, backbone_info(fresh, "tiny-gpt2"))


@pytest.mark.parametrize("task, message", [
    ({"type": "classification", "labels": "ab", "pooling": "last", "max_seq_len": 128}, "labels must be a list"),
    ({"type": "classification", "labels": ["a", "b"], "max_seq_len": 128}, "task section holds the keys"),
    ({"type": "classification", "labels": ["a", "b"], "pooling": "last", "max_seq_len": 128, "prompt": "hi"},
     "task section holds the keys"),
    ({"type": "ranking", "labels": [], "pooling": "last", "max_seq_len": 128}, "TaskSpec.type"),
    ({"type": "classification", "labels": ["a", "a"], "pooling": "last", "max_seq_len": 128}, "distinct"),
    (["classification"], "task section holds the keys"),
], ids=["labels-a-string", "pooling-missing", "extra-key", "unknown-type", "labels-duplicate", "not-an-object"])
def test_an_invalid_task_section_is_refused_by_name(tmp_path, task, message):
    path, _ = _mixture(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[EXPERTS_FORMAT])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["task"] = task
    path.write_bytes(save(tensors, metadata={EXPERTS_FORMAT: json.dumps(meta)}))
    fresh = tiny_backbone("gpt2")
    with pytest.raises(ValueError, match=f"checkpoint's task section is invalid: .*{message}"):
        load_experts(path, fresh, backbone_info(fresh, "tiny-gpt2"))


def test_embedding_experts_with_a_projection_load_and_give_the_saved_models_outputs(tmp_path):
    task = TaskSpec("embedding", (), embedding_dim=8)
    model = add_adamix(AdaMixTaskModel(tiny_backbone("bert"), task), AdaMixConfig(num_experts=3, bottleneck=4))
    perturb_adapters(model, scale=0.1)
    path = tmp_path / "experts.safetensors"
    save_experts(path, model, backbone_info(model.backbone, "tiny-bert"), {"dataset": "synthetic"})
    fresh = tiny_backbone("bert")
    loaded, _ = load_experts(path, fresh, backbone_info(fresh, "tiny-bert"))
    assert loaded.task == task
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs), model.eval()(**inputs), rtol=0, atol=1e-5)
