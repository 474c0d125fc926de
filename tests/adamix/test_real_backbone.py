"""One end-to-end pass on the real default backbone (all-MiniLM-L6-v2): inject, merge, file, serve, PEFT."""
import pytest
import torch

from adamix import (AdaMixConfig, AdaMixTaskModel, TaskSpec, adapter_from_model, add_adamix, export_peft_lora,
                    load_backbone, merge_adamix, read_adapter_file, task_model_from_adapter, write_adapter_file)
from tests.adamix.util import perturb_adapters

peft = pytest.importorskip("peft")


@pytest.mark.slow
def test_minilm_lora_merge_file_and_peft_agree(tmp_path):
    backbone, tokenizer, info = load_backbone()
    task = TaskSpec("classification", ("negative", "positive"), pooling="mean")
    model = add_adamix(AdaMixTaskModel(backbone, task), AdaMixConfig(kind="lora", num_experts=4))
    perturb_adapters(model, scale=0.02)
    batch = tokenizer(["a gripping, funny film", "dull"], padding=True, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.eval()
    with torch.no_grad():
        before = model(**inputs)  # (2, 2), unmerged eval = averaged experts
        merge_adamix(model)
        after = model(**inputs)
        hidden = model.backbone(**inputs).last_hidden_state  # (2, T, 384)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)

    write_adapter_file(tmp_path / "sst2.safetensors", adapter_from_model(model, info, task))
    fresh, _, fresh_info = load_backbone()
    adapter = read_adapter_file(tmp_path / "sst2.safetensors", backbone=fresh_info)
    with torch.no_grad():
        assert torch.equal(task_model_from_adapter(fresh, adapter)(**inputs), after)

    export_peft_lora(adapter, tmp_path / "peft")
    plain, _, _ = load_backbone()
    with torch.no_grad():
        peft_hidden = peft.PeftModel.from_pretrained(plain, tmp_path / "peft").eval()(**inputs).last_hidden_state
    torch.testing.assert_close(peft_hidden, hidden, rtol=0, atol=1e-5)
