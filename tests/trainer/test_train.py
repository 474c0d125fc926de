"""The training loop on a tiny random BERT: AdaMix's two passes, zero_grad semantics, resume, every method."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adamix import TaskSpec, consistency_loss, load_backbone, regression_consistency_loss
from trainer.checkpoint import trainable_state
from trainer.data import Collator, Dataset, Example
from trainer.loop import TrainConfig, lr_at, train, train_step
from trainer.methods import METHODS, adamix_config, build_model

TASK = TaskSpec("pair_classification", ("entailment", "not_entailment"), max_seq_len=32)
WORDS = "the cat dog sat ran on a mat big small red blue house tree car road".split()


def toy_data(n_train: int = 24, n_dev: int = 8) -> Dataset:
    """Pairs whose label is whether the two sentences share their first word (learnable, deterministic)."""
    gen = torch.Generator().manual_seed(0)

    def example(i: int) -> Example:
        idx = torch.randint(len(WORDS), (8,), generator=gen).tolist()
        a, b = [WORDS[j] for j in idx[:4]], [WORDS[j] for j in idx[4:]]
        if i % 2 == 0:
            b[0] = a[0]
        return Example(" ".join(a), " ".join(b), int(a[0] != b[0]))

    return Dataset("toy", "pair_classification", TASK.labels, "accuracy", ("accuracy",),
                   [example(i) for i in range(n_train)], [example(i) for i in range(n_dev)])


def make_model(tiny_bert_dir: Path, method: str = "adamix", seed: int = 0):
    backbone, tokenizer, _ = load_backbone(tiny_bert_dir)
    return build_model(method, backbone, TASK, adamix_config(method, bottleneck=8, seed=seed), seed), tokenizer


def one_batch(tokenizer) -> dict[str, torch.Tensor]:
    return Collator(tokenizer, 32, regression=False)(toy_data().train[:6])


def test_adamix_step_is_two_stochastic_passes_ce_plus_consistency(tiny_bert_dir: Path) -> None:
    model, tokenizer = make_model(tiny_bert_dir)
    batch = one_batch(tokenizer)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    router = model.adamix_router
    rng, route = torch.get_rng_state(), router.get_state()
    # Reproduce the step's loss by hand from the same RNG states: CE on pass 1 + lambda * KL(pass 1, pass 2).
    model.train()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits1, logits2 = model(**inputs), model(**inputs)
        expected = F.cross_entropy(logits1, batch["labels"]) + consistency_loss(logits1, logits2)
    assert not torch.allclose(logits1, logits2)  # independent routes and dropout masks
    calls.clear()
    torch.set_rng_state(rng)
    router.set_state(route)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    parts = train_step(model, optimizer, batch, TrainConfig(method="adamix"), regression=False)
    assert len(calls) == 2
    assert parts["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert parts["consistency"] > 0

    single, tokenizer = make_model(tiny_bert_dir, "adapter")
    calls.clear()
    single.register_forward_hook(lambda *_: calls.append(1))
    optimizer = torch.optim.AdamW([p for p in single.parameters() if p.requires_grad], lr=1e-3)
    parts = train_step(single, optimizer, batch, TrainConfig(method="adapter"), regression=False)
    assert len(calls) == 1 and "consistency" not in parts


@pytest.mark.parametrize("mode", ["none", "mse"])
def test_regression_adamix_consistency_is_one_pass_or_opt_in_mse(tiny_bert_dir: Path, mode: str) -> None:
    """STS-B-like head: the KL is identically 0, so the default runs one pass; `mse` adds MSE between two passes."""
    backbone, tokenizer = load_backbone(tiny_bert_dir)[:2]
    task = TaskSpec("pair_regression", (), max_seq_len=32)
    model = build_model("adamix", backbone, task, adamix_config("adamix", bottleneck=8), 0).train()
    examples = [Example(e.text, e.text_pair, float(e.label) * 5.0) for e in toy_data().train[:6]]
    batch = Collator(tokenizer, 32, regression=True)(examples)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    rng, route = torch.get_rng_state(), model.adamix_router.get_state()
    with torch.no_grad():
        out1, out2 = model(**inputs), model(**inputs)  # (B, 1) each
    task_part = F.mse_loss(out1.squeeze(-1), batch["labels"].float())
    torch.set_rng_state(rng)
    model.adamix_router.set_state(route)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    parts = train_step(model, optimizer, batch, TrainConfig(method="adamix", consistency_weight=2.0,
                                                            regression_consistency=mode), regression=True)
    if mode == "none":
        assert len(calls) == 1 and "consistency" not in parts
        assert parts["loss"] == pytest.approx(float(task_part), rel=1e-5)
    else:
        assert len(calls) == 2 and parts["consistency"] > 0
        cons = regression_consistency_loss(out1, out2)
        torch.testing.assert_close(cons, F.mse_loss(out1, out2))  # the symmetric form's value is the plain MSE
        assert parts["loss"] == pytest.approx(float(task_part + 2.0 * cons), rel=1e-5)
    with pytest.raises(ValueError, match="regression_consistency must be one of"):
        train_step(model, optimizer, batch, TrainConfig(method="adamix", regression_consistency="kl"), regression=True)


def _expert_weights(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ".down." in n and n.endswith("weight")}


@pytest.mark.parametrize("set_to_none", [False, True])
def test_zero_grad_semantics_for_unselected_experts(tiny_bert_dir: Path, set_to_none: bool) -> None:
    """Paper default (zero-filled grads): AdamW momentum keeps moving experts not drawn this step.
    set_to_none=True: an expert not drawn this step (grad None) does not move at all."""
    model, tokenizer = make_model(tiny_bert_dir)
    batch = one_batch(tokenizer)
    cfg = TrainConfig(method="adamix", set_to_none=set_to_none)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    experts = _expert_weights(model)
    seen = set()
    idle_moved, idle_still = 0, 0
    for _ in range(8):
        before = {n: p.detach().clone() for n, p in experts.items()}
        train_step(model, optimizer, batch, cfg, regression=False)
        for name, param in experts.items():
            drawn = param.grad is not None and bool(param.grad.abs().sum() > 0)
            if not drawn and name in seen:  # idle this step, trained before: has AdamW moments
                moved = not torch.equal(before[name], param.detach())
                idle_moved += moved
                idle_still += not moved
                if set_to_none:
                    assert param.grad is None
            if drawn:
                seen.add(name)
    assert idle_moved + idle_still > 0  # the situation occurred
    if set_to_none:
        assert idle_moved == 0
    else:
        assert idle_still == 0


def test_resume_reproduces_the_uninterrupted_run(tiny_bert_dir: Path, tmp_path: Path) -> None:
    data = toy_data()
    base = dict(method="adamix", lr=5e-3, epochs=2, batch_size=8, eval_every=2, progress=False)

    model, tokenizer = make_model(tiny_bert_dir)
    full = train(model, data, tokenizer, TrainConfig(**base))
    full_state = trainable_state(model)

    def interrupt(step: int) -> None:
        if step == 4:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    model, tokenizer = make_model(tiny_bert_dir)
    with pytest.raises(KeyboardInterrupt):
        train(model, data, tokenizer, TrainConfig(**base, checkpoint_dir=ckpt), on_step=interrupt)
    model, tokenizer = make_model(tiny_bert_dir)
    resumed = train(model, data, tokenizer, TrainConfig(**base, checkpoint_dir=ckpt, resume=True))
    assert resumed.steps == full.steps == 6
    assert [r["dev_accuracy"] for r in resumed.history] == [r["dev_accuracy"] for r in full.history]
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in full.history])
    for name, value in trainable_state(model).items():
        torch.testing.assert_close(value, full_state[name], rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="different run"):
        model, tokenizer = make_model(tiny_bert_dir)
        train(model, data, tokenizer, TrainConfig(**{**base, "lr": 1e-3}, checkpoint_dir=ckpt, resume=True))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_only_its_weights(tiny_bert_dir: Path, method: str) -> None:
    model, tokenizer = make_model(tiny_bert_dir, method)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "adamix_" not in n and "head" not in n}
    result = train(model, toy_data(16, 4), tokenizer, TrainConfig(method=method, lr=1e-2, max_steps=2,
                                                                  batch_size=8, progress=False))
    assert result.steps == 2 and 0.0 <= result.best_score <= 1.0
    moved = [n for n, p in model.named_parameters() if n in frozen and not torch.equal(frozen[n], p.detach())]
    if method == "full":
        assert any("encoder.layer.0" in n for n in moved)
    else:
        assert moved == []  # the backbone stayed frozen


def test_learning_rate_schedule() -> None:
    # 100 steps, warm-up ceil(6) steps from 0, then linear decay to 0
    assert lr_at(0, 100, 0.06, 1.0) == 0.0
    assert lr_at(3, 100, 0.06, 1.0) == pytest.approx(0.5)
    assert lr_at(6, 100, 0.06, 1.0) == pytest.approx(1.0)
    assert lr_at(53, 100, 0.06, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 0.06, 1.0) == 0.0


def test_single_module_baselines_refuse_several_experts() -> None:
    with pytest.raises(ValueError, match="use --method adamix for M=4"):
        adamix_config("adapter", num_experts=4)
    assert adamix_config("adamix").num_experts == 4 and adamix_config("adamix").share_up
    assert adamix_config("full") is None


def test_load_trainable_refuses_missing_extra_and_misshapen_tensors() -> None:
    from trainer.checkpoint import load_trainable

    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # frozen: not part of the trainable state
    good = {"weight": torch.ones(2, 3)}
    load_trainable(model, good, "ckpt")
    assert torch.equal(model.weight, good["weight"]) and trainable_state(model).keys() == {"weight"}
    with pytest.raises(ValueError, match=r"ckpt: tensors do not match .* missing \['weight'\], extra \['bias'\]"):
        load_trainable(model, {"bias": torch.ones(2)}, "ckpt")
    with pytest.raises(ValueError, match=r"ckpt: weight has shape \(3, 2\), the model expects \(2, 3\)"):
        load_trainable(model, {"weight": torch.ones(3, 2)}, "ckpt")
