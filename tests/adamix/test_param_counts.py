"""The paper's #Param, adapters only: any faithful implementation reproduces these exactly."""
import pytest
import torch
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

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
