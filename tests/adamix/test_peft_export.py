"""export_peft_lora: a merged AdaMix-LoRA adapter loads in peft and gives the same backbone outputs."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from adamix import (AdaMixConfig, AdaMixTaskModel, TaskSpec, adapter_from_model, add_adamix, backbone_info,
                    export_peft_lora, merge_adamix)
from tests.adamix.util import ARCHS, hidden, make_inputs, perturb_adapters
from tests.conftest import tiny_backbone

peft = pytest.importorskip("peft")


def _merged_lora(model: torch.nn.Module, backbone: torch.nn.Module, task: TaskSpec, **config_kwargs):
    """Inject AdaMix-LoRA into `model`, give experts and B distinct values, merge; return the adapter file."""
    info = backbone_info(backbone, "tiny")
    add_adamix(model, AdaMixConfig(kind="lora", num_experts=4, **config_kwargs))
    perturb_adapters(model, scale=0.1)
    merge_adamix(model.eval())
    return adapter_from_model(model, info, task)


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("targets", [("query", "value"), ("query", "key", "value"), ("value", "query")],
                         ids=["qv", "qkv", "vq"])
def test_peft_loads_the_export_and_matches_the_backbone_outputs(tmp_path, model_type, targets):
    task = TaskSpec("classification", ("a", "b"), pooling="last" if model_type == "gpt2" else "mean")
    model = AdaMixTaskModel(tiny_backbone(model_type), task)
    adapter = _merged_lora(model, model.backbone, task, lora_targets=targets, lora_r=4, lora_alpha=16.0)
    export_peft_lora(adapter, tmp_path, module_prefix="")  # peft wraps the bare backbone
    inputs = make_inputs()
    with torch.no_grad():
        ours = hidden(model.backbone, inputs)
        peft_model = peft.PeftModel.from_pretrained(tiny_backbone(model_type), tmp_path).eval()
        theirs = hidden(peft_model, inputs)
        plain = hidden(tiny_backbone(model_type), inputs)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert not torch.allclose(theirs, plain, rtol=0, atol=1e-3)  # the LoRA update is really there


def test_gpt2_lm_export_loads_into_the_causal_lm_by_default(tmp_path):
    config = GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    fresh = GPT2LMHeadModel(config)
    fresh.load_state_dict(model.state_dict())
    task = TaskSpec("generation", pooling="last")
    adapter = _merged_lora(model, model.transformer, task, lora_r=2)
    export_peft_lora(adapter, tmp_path, base_model_name_or_path="gpt2")  # default prefix: "transformer."
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["task_type"] == "CAUSAL_LM" and saved["base_model_name_or_path"] == "gpt2"
    inputs = make_inputs()
    with torch.no_grad():
        peft_model = peft.PeftModel.from_pretrained(fresh, tmp_path).eval()
        torch.testing.assert_close(peft_model(**inputs).logits, model(**inputs).logits, rtol=0, atol=1e-5)


def test_encoder_export_loads_under_a_task_model_prefix(tmp_path):
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    fresh = BertForSequenceClassification(config).eval()
    fresh.load_state_dict(model.state_dict())
    task = TaskSpec("classification", ("a", "b"), pooling="pooler")
    adamix_model = AdaMixTaskModel(model.bert, task)
    adapter = _merged_lora(adamix_model, model.bert, task)
    export_peft_lora(adapter, tmp_path, module_prefix="bert.")
    inputs = make_inputs()
    with torch.no_grad():
        expected = model(**inputs).logits  # its `bert` carries the merged LoRA
        peft_model = peft.PeftModel.from_pretrained(fresh, tmp_path).eval()
        torch.testing.assert_close(peft_model(**inputs).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type, targets, rank, alpha, modules, fan_in_fan_out", [
    ("bert", ("query", "value"), 4, 32.0, ["query", "value"], False),
    ("roberta", ("query", "key", "value"), 4, 32.0, ["key", "query", "value"], False),
    ("distilbert", ("query", "value"), 4, 32.0, ["q_lin", "v_lin"], False),
    ("gpt2", ("query", "value"), 8, 64.0, ["c_attn"], True),  # fused: rank 2r, alpha doubled, same alpha / r
    ("gpt2", ("query", "key", "value"), 12, 96.0, ["c_attn"], True),
    ("gpt2", ("value", "query"), 8, 64.0, ["c_attn"], True),
])
def test_config_and_weight_names(tmp_path, model_type, targets, rank, alpha, modules, fan_in_fan_out):
    task = TaskSpec("regression")
    model = AdaMixTaskModel(tiny_backbone(model_type), task)
    adapter = _merged_lora(model, model.backbone, task, lora_targets=targets, lora_r=4, lora_alpha=32.0)
    export_peft_lora(adapter, tmp_path, module_prefix="")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", rank, alpha)
    assert config["lora_alpha"] / config["r"] == adapter.config.lora_scaling
    assert (config["target_modules"], config["fan_in_fan_out"]) == (modules, fan_in_fan_out)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    lora_keys = {k for k in adapter.tensors if k.startswith("lora.")}
    assert len(weights) == len(lora_keys) and not any("head" in k for k in weights)
    for key in lora_keys:
        site, _, part = key.removeprefix("lora.").rpartition(".")
        exported, ours = weights[f"base_model.model.{site}.lora_{part}.weight"], adapter.tensors[key]
        if part == "B" and fan_in_fan_out:  # GPT-2 c_attn: our per-slice B (n * d, r) as PEFT's dense (3d, n * r)
            d, r = 32, 4
            assert ours.shape == (len(targets) * d, r) and exported.shape == (3 * d, len(targets) * r)
            for t, target in enumerate(targets):  # target t's block sits at its slice's rows, its own columns
                i = ("query", "key", "value").index(target)
                assert torch.equal(exported[i * d:(i + 1) * d, t * r:(t + 1) * r], ours[t * d:(t + 1) * d])
                exported[i * d:(i + 1) * d, t * r:(t + 1) * r] = 0
            assert not exported.any()  # zero everywhere else
        else:
            assert torch.equal(exported, ours)


def test_an_adapter_kind_file_is_refused(tmp_path):
    task = TaskSpec("regression")
    model = add_adamix(AdaMixTaskModel(tiny_backbone("bert"), task), AdaMixConfig(kind="adapter", bottleneck=4))
    adapter = adapter_from_model(merge_adamix(model), backbone_info(model.backbone, "tiny"), task)
    with pytest.raises(ValueError, match="only kind 'lora' adapters can be exported as PEFT LoRA, got kind 'adapter'"):
        export_peft_lora(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_prefix_without_a_trailing_dot_is_refused(tmp_path):
    task = TaskSpec("regression")
    model = AdaMixTaskModel(tiny_backbone("bert"), task)
    adapter = _merged_lora(model, model.backbone, task)
    with pytest.raises(ValueError, match="module_prefix must be empty or end with '.'"):
        export_peft_lora(adapter, tmp_path, module_prefix="bert")
