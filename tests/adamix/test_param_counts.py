"""The paper's #Param, adapters only: any faithful implementation reproduces these exactly."""
import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaModel

from adamix import AdaMixConfig, add_adamix, count_adapter_parameters, merge_adamix


@pytest.mark.parametrize(
    "make, r, before, after",
    [
        (lambda: RobertaModel(RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                            intermediate_size=4096, vocab_size=10)), 16, 1_992_192, 811_392),
        (lambda: BertModel(BertConfig(vocab_size=10)), 48, 2_223_360, 894_528),
    ],
    ids=["roberta-large-r16", "bert-base-r48"],
)
def test_paper_parameter_counts(make, r, before, after):
    with torch.device("meta"):  # shapes only: no memory for the 355M backbone
        model = make()
    add_adamix(model, AdaMixConfig(bottleneck=r, num_experts=4, share_up=True, share_down=False))
    assert count_adapter_parameters(model) == before
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == before  # backbone fully frozen
    merge_adamix(model)
    assert count_adapter_parameters(model) == after


def test_paper_parameter_counts_gpt2_medium_adamix_lora():
    """GPT-2 medium AdaMix-LoRA (E2E scripts: M=8, r=4, q and v on the fused c_attn): per layer 8 A experts
    (2r, d) + one shared B, stored per slice as the reference's `MergedLinear` does ((2d, r), no key rows)."""
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_embd=1024, n_layer=24, n_head=16))  # gpt2-medium's sizes
    add_adamix(model, AdaMixConfig(kind="lora", num_experts=8, lora_r=4, lora_targets=("query", "value")))
    assert count_adapter_parameters(model) == 1_769_472  # 24 * (8 * 8 * 1024 + 2048 * 4)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_769_472
    merge_adamix(model)
    assert count_adapter_parameters(model) == 393_216  # 24 * (8 * 1024 + 2048 * 4): the served adapter
