"""Stochastic routing in training, weight averaging in eval, and merge_adamix."""
import copy

import pytest
import torch
import torch.nn.functional as F

from adamix import (AdaMixConfig, AdaMixTaskModel, Router, TaskSpec, adapter_parameters, add_adamix,
                    consistency_loss, count_adapter_parameters, merge_adamix)
from adamix.layers import MixtureAdapter, MixtureLoRA
from adamix.model import is_merged, mixture_modules
from tests.adamix.util import ARCHS, CASES, adamix_backbone, hidden, make_inputs, perturb_adapters, \
    train_without_dropout
from tests.conftest import tiny_backbone


class RecordingRouter(Router):
    """A Router that also records every draw (the real routing, observed)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.draws: list[int] = []

    def draw(self, num_experts: int) -> int:
        index = super().draw(num_experts)
        self.draws.append(index)
        return index


# ---------------------------------------------------------------- merging

@pytest.mark.parametrize("model_type, kwargs", CASES)
def test_eval_outputs_agree_before_and_after_merge(model_type, kwargs):
    model = adamix_backbone(model_type, **kwargs)
    perturb_adapters(model)  # experts differ, LoRA B non-zero
    inputs = make_inputs()
    model.eval()
    before = hidden(model, inputs)
    merge_adamix(model)
    assert is_merged(model)
    torch.testing.assert_close(hidden(model, inputs), before, rtol=0, atol=1e-5)
    assert not torch.allclose(before, hidden(tiny_backbone(model_type), inputs), rtol=0, atol=1e-4)


@pytest.mark.parametrize("model_type, kwargs", CASES)
def test_merged_model_has_the_plain_adapters_parameters_all_trainable(model_type, kwargs):
    model = merge_adamix(adamix_backbone(model_type, num_experts=4, **kwargs))
    plain = adamix_backbone(model_type, num_experts=1, **kwargs)
    assert count_adapter_parameters(model) == count_adapter_parameters(plain)
    assert {n: p.shape for n, p in adapter_parameters(model).items()} == \
        {n: p.shape for n, p in adapter_parameters(plain).items()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adapter_parameters(model))


@pytest.mark.parametrize("share_up, share_down", [(True, False), (False, False), (False, True)])
def test_merge_is_the_uniform_weight_average(share_up, share_down):
    model = adamix_backbone("bert", num_experts=3, share_up=share_up, share_down=share_down)
    perturb_adapters(model)
    mixtures = [copy.deepcopy(m) for m in mixture_modules(model)]
    merge_adamix(model)
    for mix, merged in zip(mixtures, mixture_modules(model)):
        for experts, plain in ((mix.down, merged.down[0]), (mix.up, merged.up[0])):
            torch.testing.assert_close(plain.weight, torch.stack([e.weight for e in experts]).mean(0))
            torch.testing.assert_close(plain.bias, torch.stack([e.bias for e in experts]).mean(0))


def test_gpt2_fused_lora_merge_averages_a_and_b_per_slice():
    model = adamix_backbone("gpt2", kind="lora", num_experts=3, lora_share_b=False)
    perturb_adapters(model)
    mix = copy.deepcopy(mixture_modules(model)[0])
    merge_adamix(model)
    merged = mixture_modules(model)[0]
    d, r = 32, 4
    assert merged.A[0].shape == (2 * r, d) and merged.B[0].shape == (2 * d, r)  # q and v only: no key rows stored
    torch.testing.assert_close(merged.A[0], torch.stack(list(mix.A)).mean(0))
    torch.testing.assert_close(merged.B[0], torch.stack(list(mix.B)).mean(0))


@pytest.mark.parametrize("kind", ["adapter", "lora"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_merge_keeps_the_modules_mode(kind, mode):
    model = adamix_backbone("bert", kind=kind)
    model.train(mode == "train")
    merge_adamix(model)
    assert all(m.training == (mode == "train") for mix in mixture_modules(model) for m in mix.modules())


def test_merge_refuses_a_model_without_adamix():
    with pytest.raises(ValueError, match="no AdaMix module"):
        merge_adamix(tiny_backbone("bert"))


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_merge_after_real_training_steps(model_type, kind):
    """A few AdamW steps of the AdaMix objective (two routed passes + consistency), then merge."""
    task = TaskSpec("classification", ("a", "b"), pooling="last" if model_type == "gpt2" else "mean")
    model = add_adamix(AdaMixTaskModel(tiny_backbone(model_type), task, head_dropout=0.0),
                       AdaMixConfig(kind=kind, bottleneck=8))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    inputs, labels = make_inputs(batch=4), torch.tensor([0, 1, 1, 0])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    for _ in range(4):
        logits1, logits2 = model(**inputs), model(**inputs)  # (B, C) twice, independent routes
        loss = F.cross_entropy(logits1, labels) + consistency_loss(logits1, logits2)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)  # backbone untouched
    if kind == "lora":
        assert all(mix.B[0].any() for mix in mixture_modules(model))
    model.eval()
    before = model(**inputs)
    merge_adamix(model)
    torch.testing.assert_close(model(**inputs), before, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- routing

@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_train_mode_routes_differently_across_calls(model_type, kind):
    model = adamix_backbone(model_type, kind=kind, num_experts=4)
    perturb_adapters(model)
    train_without_dropout(model)
    inputs = make_inputs()
    with torch.no_grad():
        outputs = [hidden(model, inputs) for _ in range(6)]
    assert any(not torch.allclose(outputs[0], o, rtol=0, atol=1e-6) for o in outputs[1:])


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_single_expert_has_no_routing(model_type, kind):
    """The control for the test above: with M = 1 and dropout off, train and eval outputs are identical."""
    model = adamix_backbone(model_type, kind=kind, num_experts=1, lora_dropout=0.0)
    perturb_adapters(model)
    inputs = make_inputs()
    with torch.no_grad():
        eval_out = hidden(model.eval(), inputs)
        train_outs = [hidden(train_without_dropout(model), inputs) for _ in range(3)]
    assert all(torch.equal(o, eval_out) for o in train_outs)


@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_a_fixed_seed_reproduces_the_routes(kind):
    inputs = make_inputs()

    def run(seed: int) -> list[torch.Tensor]:
        model = adamix_backbone("bert", kind=kind, seed=seed)
        perturb_adapters(model, seed=3)  # the same adapter weights for every seed
        train_without_dropout(model)
        with torch.no_grad():
            return [hidden(model, inputs) for _ in range(5)]

    first, again, other = run(11), run(11), run(12)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_router_state_restore_reproduces_the_routes():
    model = adamix_backbone("distilbert", num_experts=4, placement="both")
    perturb_adapters(model)
    train_without_dropout(model)
    inputs = make_inputs()
    with torch.no_grad():
        hidden(model, inputs)
        state = model.adamix_router.get_state()
        first = [hidden(model, inputs) for _ in range(4)]
        model.adamix_router.set_state(state)
        again = [hidden(model, inputs) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_routing_never_touches_the_global_rng():
    model = train_without_dropout(adamix_backbone("bert", num_experts=4))
    state = torch.get_rng_state()
    with torch.no_grad():
        hidden(model, make_inputs())
    assert torch.equal(torch.get_rng_state(), state)


def test_one_expert_processes_the_whole_batch():
    router = RecordingRouter(seed=0)
    mix = MixtureAdapter(8, 4, num_experts=4, share_up=True, share_down=False, init_std=0.5, router=router).train()
    h = torch.randn(5, 3, 8)  # (B, T, d)
    for _ in range(8):
        out = mix(h)
        j = router.draws[-1]
        down = mix.down[j]
        expected = mix.up[0](F.gelu(down(h)))  # every row through the same drawn expert
        torch.testing.assert_close(out, expected)
    assert len(router.draws) == 8  # one draw per call (the shared up-projection draws nothing)


def test_lora_train_mode_uses_the_drawn_a_expert():
    router = RecordingRouter(seed=1)
    mix = MixtureLoRA(8, 6, rank=2, num_experts=3, scaling=2.0, dropout=0.0, share_b=True, router=router).train()
    with torch.no_grad():
        for a in mix.A:
            a.normal_()
        mix.B[0].normal_()
    x = torch.randn(4, 8)  # (B, in)
    for _ in range(6):
        out = mix(x)
        torch.testing.assert_close(out, 2.0 * x @ mix.A[router.draws[-1]].T @ mix.B[0].T)


def test_draws_are_uniform_and_independent_across_modules():
    model = adamix_backbone("bert", num_experts=4, placement="both")  # 4 mixtures, one draw each per call
    router = RecordingRouter(seed=0)
    for mix in mixture_modules(model):
        mix.router = router
    train_without_dropout(model)
    inputs = make_inputs(batch=2, length=4)
    with torch.no_grad():
        for _ in range(60):
            hidden(model, inputs)
    per_module = torch.tensor(router.draws).view(60, 4)  # (calls, modules)
    counts = torch.bincount(per_module.flatten(), minlength=4)
    assert counts.min() > 30  # 240 draws, 60 expected per expert
    assert not all(torch.equal(per_module[:, 0], per_module[:, i]) for i in range(1, 4))


def test_a_mixture_without_router_refuses_to_train():
    mix = MixtureAdapter(8, 4, num_experts=2, share_up=True, share_down=False, init_std=0.02, router=None).train()
    with pytest.raises(RuntimeError, match="no router"):
        mix(torch.randn(2, 8))


# ---------------------------------------------------------------- num_experts = 1: the plain baselines

@pytest.mark.parametrize("model_type", ARCHS)
def test_single_expert_adapter_has_the_plain_adapter_parameter_count(model_type):
    d, r, layers = 32, 8, 2
    model = adamix_backbone(model_type, num_experts=1, bottleneck=r, placement="both")
    assert count_adapter_parameters(model) == 2 * layers * (d * r + r + r * d + d)


@pytest.mark.parametrize("model_type", ARCHS)
def test_single_expert_lora_has_the_plain_lora_parameter_count(model_type):
    d, r, layers = 32, 4, 2
    model = adamix_backbone(model_type, kind="lora", num_experts=1, lora_r=r)
    # query and value: A (r, d) and B (d, r) each; GPT-2's fused c_attn stores the same per slice (A (2r, d),
    # B (2d, r)), nothing for the key slice
    assert count_adapter_parameters(model) == layers * 2 * (r * d + d * r)


def test_mixture_counts_follow_sharing():
    d, r, m, layers = 32, 8, 4, 2
    counts = {(up, down): count_adapter_parameters(adamix_backbone("bert", num_experts=m, bottleneck=r,
                                                                   share_up=up, share_down=down))
              for up, down in [(True, False), (False, False), (True, True)]}
    assert counts[(True, False)] == layers * (m * (d * r + r) + (r * d + d))
    assert counts[(False, False)] == layers * m * (d * r + r + r * d + d)
    assert counts[(True, True)] == layers * (d * r + r + r * d + d)


def test_only_the_drawn_expert_gets_a_gradient():
    router = RecordingRouter(seed=3)
    mix = MixtureAdapter(8, 4, num_experts=4, share_up=True, share_down=False, init_std=0.5, router=router).train()
    mix(torch.randn(2, 3, 8)).square().sum().backward()
    (j,) = router.draws
    for i, expert in enumerate(mix.down):
        assert (expert.weight.grad is not None and expert.weight.grad.any()) == (i == j)
    assert mix.up[0].weight.grad.any()  # the shared up-projection learns on every step


def test_eval_mode_draws_nothing():
    router = RecordingRouter(seed=0)
    model = adamix_backbone("bert", num_experts=4, placement="both").eval()
    for mix in mixture_modules(model):
        mix.router = router
    with torch.no_grad():
        hidden(model, make_inputs())
    assert router.draws == []
