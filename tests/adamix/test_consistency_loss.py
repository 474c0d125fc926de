"""consistency_loss: symmetric KL with detached targets, batchmean, token-level masking; its embedding form."""
import math

import pytest
import torch
import torch.nn.functional as F

from adamix import consistency_loss, embedding_consistency_loss, regression_consistency_loss


def _logits(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32) * 2


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def test_value_is_half_the_symmetric_kl_averaged_over_examples():
    a, b = _logits(5, 3, seed=0), _logits(5, 3, seed=1)
    la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
    expected = 0.5 * (_kl(lb, la) + _kl(la, lb)).mean()
    torch.testing.assert_close(consistency_loss(a, b), expected)


def test_symmetric():
    a, b = _logits(4, 6, seed=2), _logits(4, 6, seed=3)
    torch.testing.assert_close(consistency_loss(a, b), consistency_loss(b, a))


@pytest.mark.parametrize("shape", [(4, 2), (3, 5, 7)])
def test_zero_for_equal_logits(shape):
    a = _logits(*shape, seed=4)
    assert consistency_loss(a, a.clone()).item() == 0.0
    assert consistency_loss(a, a + 3.0).abs().item() < 1e-6  # softmax is shift-invariant


def test_zero_for_a_one_logit_head():
    a, b = _logits(6, 1, seed=5).requires_grad_(), _logits(6, 1, seed=6).requires_grad_()
    loss = consistency_loss(a, b)
    assert loss.item() == 0.0
    loss.backward()
    assert not a.grad.any() and not b.grad.any()


def test_gradient_reaches_both_inputs_with_detached_targets():
    a, b = _logits(4, 3, seed=7).requires_grad_(), _logits(4, 3, seed=8).requires_grad_()
    consistency_loss(a, b).backward()
    pa, pb = a.detach().softmax(-1), b.detach().softmax(-1)
    # With sg() on the targets, d/da of 0.5 * KL(sg(pb) || pa) / B is exactly 0.5 * (pa - pb) / B.
    torch.testing.assert_close(a.grad, 0.5 * (pa - pb) / 4)
    torch.testing.assert_close(b.grad, 0.5 * (pb - pa) / 4)


def test_token_level_mask_uses_only_the_selected_positions():
    a, b = _logits(2, 5, 7, seed=9), _logits(2, 5, 7, seed=10)  # (B, T, V)
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]])  # (B, T): 6 target tokens
    expected = consistency_loss(a[mask.bool()], b[mask.bool()])  # (6, V)
    torch.testing.assert_close(consistency_loss(a, b, mask), expected)
    b_noisy = b.clone()
    b_noisy[~mask.bool()] += _logits(4, 7, seed=11)  # change only the unselected positions
    torch.testing.assert_close(consistency_loss(a, b_noisy, mask), expected)
    la, lb = F.log_softmax(a[mask.bool()], -1), F.log_softmax(b[mask.bool()], -1)
    torch.testing.assert_close(expected, 0.5 * (_kl(lb, la) + _kl(la, lb)).sum() / 6)  # mean over tokens


def test_token_level_without_mask_averages_over_all_tokens():
    a, b = _logits(2, 3, 4, seed=12), _logits(2, 3, 4, seed=13)
    torch.testing.assert_close(consistency_loss(a, b), consistency_loss(a.view(6, 4), b.view(6, 4)))


def test_an_empty_mask_gives_a_differentiable_zero():
    a = _logits(2, 3, 4, seed=14).requires_grad_()
    loss = consistency_loss(a, _logits(2, 3, 4, seed=15), torch.zeros(2, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert not a.grad.any()


def test_half_precision_logits_are_computed_in_float32():
    a, b = _logits(4, 3, seed=16), _logits(4, 3, seed=17)
    loss = consistency_loss(a.to(torch.bfloat16), b.to(torch.bfloat16))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, consistency_loss(a, b), rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("a_shape, b_shape, mask_shape, match", [
    ((4, 3), (4, 2), None, "equal shapes"),
    ((4, 3), (3, 3), None, "equal shapes"),
    ((2, 5, 7), (2, 5, 7), (2, 4), r"mask shape \(2, 4\)"),
    ((2, 5, 7), (2, 5, 7), (2, 5, 7), r"mask shape \(2, 5, 7\)"),
])
def test_shape_errors(a_shape, b_shape, mask_shape, match):
    mask = None if mask_shape is None else torch.ones(mask_shape)
    with pytest.raises(ValueError, match=match):
        consistency_loss(torch.zeros(a_shape), torch.zeros(b_shape), mask)


def test_regression_consistency_is_symmetric_mse_with_detached_targets() -> None:
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = torch.tensor([1.5, 2.0, 2.0], requires_grad=True)
    loss = regression_consistency_loss(a, b)
    torch.testing.assert_close(loss, torch.tensor((0.25 + 0.0 + 1.0) / 3))
    loss.backward()
    # d/da of 0.5 * MSE(a, sg(b)) = (a - b) / n: each pass is pulled half-way towards the other.
    torch.testing.assert_close(a.grad, (a - b).detach() / 3)
    torch.testing.assert_close(b.grad, (b - a).detach() / 3)
    torch.testing.assert_close(regression_consistency_loss(a.view(3, 1), b.view(3, 1)), loss.detach())
    with pytest.raises(ValueError, match="equal shapes"):
        regression_consistency_loss(a, b[:2])


def test_embedding_consistency_is_the_symmetric_kl_of_in_batch_similarities() -> None:
    a1, b1 = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0]]), dim=-1), F.normalize(torch.eye(2), dim=-1)
    a2, b2 = F.normalize(torch.tensor([[1.0, -0.3], [0.5, 1.0]]), dim=-1), b1

    def kl(p: list[float], q: list[float]) -> float:  # KL(p || q)
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    def rows(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
        return torch.softmax(2.0 * a @ b.T, dim=-1).tolist()

    p, q = rows(a1, b1), rows(a2, b2)
    expected = 0.5 * sum(kl(q[i], p[i]) + kl(p[i], q[i]) for i in range(2)) / 2  # batchmean over the 2 texts
    assert float(embedding_consistency_loss(a1, b1, a2, b2, scale=2.0)) == pytest.approx(expected, rel=1e-5)
    assert float(embedding_consistency_loss(a1, b1, a1, b1)) == 0.0  # identical passes agree
    assert float(embedding_consistency_loss(a1[:1], b1[:1], a2[:1], b2[:1])) == 0.0  # one candidate: nothing to rank
    with pytest.raises(ValueError, match="four equal"):
        embedding_consistency_loss(a1, b1, a2[:1], b2)
