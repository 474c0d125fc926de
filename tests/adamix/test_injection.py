"""add_adamix: which modules it wraps, what it freezes, what it refuses, and how it initialises experts."""
import math

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel

from adamix import AdaMixConfig, AdaMixTaskModel, TaskSpec, adapter_parameters, add_adamix
from adamix.layers import AdapterSite, LoRASite, MixtureAdapter, MixtureLoRA
from adamix.model import mixture_modules, site_names
from tests.adamix.util import ARCHS, CASES, adamix_backbone, hidden, make_inputs, perturb_adapters
from tests.conftest import tiny_backbone


@pytest.mark.parametrize("model_type, kwargs", CASES)
def test_wraps_exactly_the_declared_sites(model_type, kwargs):
    backbone = tiny_backbone(model_type)
    config = AdaMixConfig(**kwargs)
    originals = dict(backbone.named_modules())
    add_adamix(backbone, config)
    site_type = AdapterSite if config.kind == "adapter" else LoRASite
    sites = {n: m for n, m in backbone.named_modules() if isinstance(m, (AdapterSite, LoRASite))}
    assert sorted(sites) == site_names(config, model_type, 2)
    per_layer = {"ffn": 1, "attention": 1, "both": 2}[config.placement] if config.kind == "adapter" else \
        (1 if model_type == "gpt2" else len(config.lora_targets))  # GPT-2: one fused c_attn per layer
    assert len(sites) == 2 * per_layer
    for name, site in sites.items():
        assert isinstance(site, site_type)
        assert site.base_layer is originals[name]  # wraps (composition), never copies the frozen layer


SITES_OF_LAYER_0 = [  # where the paper puts each module, written out (not derived from the library's patterns)
    ("bert", {"placement": "ffn"}, ["encoder.layer.0.output.dense"]),
    ("bert", {"placement": "attention"}, ["encoder.layer.0.attention.output.dense"]),
    ("roberta", {"placement": "both"}, ["encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense"]),
    ("distilbert", {"placement": "ffn"}, ["transformer.layer.0.ffn.lin2"]),
    ("distilbert", {"placement": "attention"}, ["transformer.layer.0.attention.out_lin"]),
    ("gpt2", {"placement": "ffn"}, ["h.0.mlp.c_proj"]),
    ("gpt2", {"placement": "attention"}, ["h.0.attn.c_proj"]),
    ("bert", {"kind": "lora"}, ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"]),
    ("distilbert", {"kind": "lora"}, ["transformer.layer.0.attention.q_lin", "transformer.layer.0.attention.v_lin"]),
    ("gpt2", {"kind": "lora"}, ["h.0.attn.c_attn"]),
]


@pytest.mark.parametrize("model_type, kwargs, expected", SITES_OF_LAYER_0,
                         ids=[f"{m}-{'-'.join(map(str, k.values()))}" for m, k, _ in SITES_OF_LAYER_0])
def test_sites_are_the_papers(model_type, kwargs, expected):
    model = adamix_backbone(model_type, **kwargs)
    sites = sorted(n for n, m in model.named_modules() if isinstance(m, (AdapterSite, LoRASite)))
    assert [s for s in sites if ".0." in s or s.startswith("h.0.")] == expected


@pytest.mark.parametrize("targets, slices", [(("query", "value"), (0, 2)), (("key",), (1,)),
                                             (("value", "query", "key"), (0, 1, 2))])
def test_gpt2_fused_lora_is_one_plain_lora_per_target_slice(targets, slices):
    d, r = 32, 4
    model = adamix_backbone("gpt2", kind="lora", lora_targets=targets, lora_r=r, num_experts=1)
    perturb_adapters(model)
    lora = mixture_modules(model)[0].eval()
    a, b = lora.A[0], lora.B[0]  # stored per slice: A_t in rows t*r.., B_t (d, r) in rows t*d..
    assert a.shape == (len(targets) * r, d) and b.shape == (len(targets) * d, r)
    x = torch.randn(5, d)  # (B, d)
    update = lora(x).view(5, 3, d)  # (B, q|k|v, d)
    for i in range(3):
        if i not in slices:
            assert not update[:, i].any()
            continue
        t = targets.index(("query", "key", "value")[i])  # the block of the target that feeds slice i
        a_t, b_t = a[t * r:(t + 1) * r], b[t * d:(t + 1) * d]  # (r, d), (d, r)
        torch.testing.assert_close(update[:, i], lora.scaling * x @ a_t.T @ b_t.T, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_bfloat16_backbone(kind):
    model = add_adamix(tiny_backbone("bert").to(torch.bfloat16), AdaMixConfig(kind=kind))
    assert all(p.dtype == torch.bfloat16 for p in adapter_parameters(model).values())
    assert hidden(model.eval(), make_inputs()).dtype == torch.bfloat16


@pytest.mark.parametrize("model_type, kwargs", CASES)
def test_freezes_every_backbone_parameter(model_type, kwargs):
    model = adamix_backbone(model_type, **kwargs)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_parameters(model))
    assert all(n.rpartition(".adamix_")[0] for n in trainable)  # every adapter param sits under an adamix_ module
    assert any("LayerNorm" in n or "layer_norm" in n or n.startswith("h.0.ln") for n, p in model.named_parameters()
               if not p.requires_grad)


def test_sequence_classification_head_stays_trainable_and_pooler_frozen():
    model = BertForSequenceClassification(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=37, num_labels=3))
    add_adamix(model, AdaMixConfig(bottleneck=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert not {n for n in trainable if n.startswith("bert.") and ".adamix_" not in n}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"bert.pooler.dense.weight", "bert.encoder.layer.0.output.LayerNorm.weight",
            "bert.embeddings.LayerNorm.bias"} <= frozen


def test_task_model_head_stays_trainable_and_a_frozen_head_stays_frozen():
    model = AdaMixTaskModel(tiny_backbone("bert"), TaskSpec("classification", ("a", "b")))
    add_adamix(model, AdaMixConfig(kind="lora"))
    assert model.head.weight.requires_grad and model.head.bias.requires_grad
    frozen_head = AdaMixTaskModel(tiny_backbone("bert"), TaskSpec("regression"))
    frozen_head.head.requires_grad_(False)
    add_adamix(frozen_head, AdaMixConfig())
    assert not frozen_head.head.weight.requires_grad


def test_gpt2_lm_head_tied_to_embeddings_is_frozen():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    add_adamix(model, AdaMixConfig(kind="lora"))
    assert not model.lm_head.weight.requires_grad
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adapter_parameters(model))


def test_refuses_a_model_where_nothing_matched_and_changes_nothing():
    model = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=0, num_attention_heads=2))
    with pytest.raises(ValueError, match="matched no module in BertModel"):
        add_adamix(model, AdaMixConfig())
    assert all(p.requires_grad for p in model.parameters())  # a refused call leaves the model as it was
    assert not hasattr(model, "adamix_config")


def test_refuses_a_layout_that_differs_from_its_model_type():
    model = tiny_backbone("bert")
    del model.encoder.layer[1].output.dense  # layer 1 lost its FFN output projection
    with pytest.raises(ValueError, match="module layout"):
        add_adamix(model, AdaMixConfig())
    assert all(p.requires_grad for p in model.parameters())


def test_refuses_a_site_that_is_not_linear_before_changing_anything():
    model = tiny_backbone("bert")
    model.encoder.layer[1].output.dense = nn.Identity()
    with pytest.raises(TypeError, match="cannot adapt a Identity"):
        add_adamix(model, AdaMixConfig())
    assert not any(isinstance(m, AdapterSite) for m in model.modules())  # layer 0 was not half-injected
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("model", [nn.Linear(4, 4), BertConfig()], ids=["no-config", "not-a-model"])
def test_refuses_an_unsupported_model(model):
    with pytest.raises(ValueError, match="unsupported backbone model_type"):
        add_adamix(model, AdaMixConfig())


@pytest.mark.parametrize("second", [AdaMixConfig(), AdaMixConfig(kind="lora")], ids=["adapter", "lora"])
def test_refuses_to_be_applied_twice(second):
    model = adamix_backbone("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="applied once"):
        add_adamix(model, second)
    assert set(dict(model.named_parameters())) == set(before)


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("share_up, share_down", [(True, False), (False, False), (False, True), (True, True)])
def test_adapter_experts_are_independent_normal_with_zero_bias(model_type, share_up, share_down):
    model = adamix_backbone(model_type, num_experts=4, bottleneck=16, placement="both", init_std=0.02,
                            share_up=share_up, share_down=share_down)
    mixtures = mixture_modules(model)
    weights = []
    for mix in mixtures:
        assert (len(mix.down), len(mix.up)) == (1 if share_down else 4, 1 if share_up else 4)
        experts = [layer.weight for layer in [*mix.down, *mix.up]]
        for i in range(len(experts)):
            for j in range(i + 1, len(experts)):
                if experts[i].shape == experts[j].shape:
                    assert not torch.equal(experts[i], experts[j])  # experts do NOT start identical
        assert all(not layer.bias.any() for layer in [*mix.down, *mix.up])
        weights += [w.flatten() for w in experts]
    flat = torch.cat(weights)  # thousands of samples: std within 5% of 0.02, mean near 0
    assert abs(flat.std().item() - 0.02) < 0.001
    assert abs(flat.mean().item()) < 0.001
    assert not torch.equal(mixtures[0].down[0].weight, mixtures[1].down[0].weight)  # sites differ too


def test_adapter_init_std_is_the_configured_one():
    model = adamix_backbone("bert", init_std=0.1, bottleneck=16)
    flat = torch.cat([p.flatten() for n, p in adapter_parameters(model).items() if n.endswith("weight")])
    assert abs(flat.std().item() - 0.1) < 0.005


@pytest.mark.parametrize("model_type", ARCHS)
def test_lora_a_experts_are_identical_kaiming_copies_and_b_is_zero(model_type):
    model = adamix_backbone(model_type, kind="lora", num_experts=4, lora_r=4)
    mixtures = mixture_modules(model)
    assert mixtures and all(isinstance(m, MixtureLoRA) for m in mixtures)
    for mix in mixtures:
        assert len(mix.A) == 4 and len(mix.B) == 1  # B shared
        assert all(torch.equal(a, mix.A[0]) for a in mix.A)
        assert not mix.B[0].any()
        fan_in = mix.A[0].shape[1]
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) as nn.Linear: U(-1/sqrt(in), 1/sqrt(in))
        assert mix.A[0].abs().max() <= bound
        assert mix.A[0].abs().max() > 0.5 * bound
    assert not torch.equal(mixtures[0].A[0], mixtures[1].A[0])


def test_lora_b_experts_when_not_shared():
    model = adamix_backbone("bert", kind="lora", num_experts=3, lora_share_b=False)
    for mix in mixture_modules(model):
        assert len(mix.B) == 3 and not any(b.any() for b in mix.B)


@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_init_is_reproducible_from_the_seed(kind):
    params = [adapter_parameters(adamix_backbone("bert", kind=kind, seed=s)) for s in (5, 5, 6)]
    assert all(torch.equal(params[0][n], params[1][n]) for n in params[0])
    assert not all(torch.equal(params[0][n], params[2][n]) for n in params[0] if params[0][n].any())


@pytest.mark.parametrize("model_type", ARCHS)
def test_fresh_lora_leaves_outputs_unchanged_and_fresh_adapter_changes_them(model_type):
    inputs = make_inputs()
    reference = hidden(tiny_backbone(model_type), inputs)
    lora = adamix_backbone(model_type, kind="lora").eval()
    assert torch.equal(hidden(lora, inputs), reference)  # B = 0: the LoRA update starts at exactly zero
    adapter = adamix_backbone(model_type).eval()
    assert not torch.allclose(hidden(adapter, inputs), reference, rtol=0, atol=1e-6)


def test_adapters_follow_the_backbones_dtype():
    backbone = tiny_backbone("bert").double()
    add_adamix(backbone, AdaMixConfig(kind="adapter"))
    assert all(p.dtype == torch.float64 for p in adapter_parameters(backbone).values())
    assert all(isinstance(m, MixtureAdapter) for m in mixture_modules(backbone))
