"""Label smoothing against torch's own implementation; the schedule against the paper's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import B, T, V
from transformer.training import loss as loss_module
from transformer.training.loss import label_smoothed_nll_loss
from transformer.training.schedule import cooldown_factor, noam_learning_rate
from transformer.vocab import PAD_ID


def _logits_and_targets() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(B, T, V, dtype=torch.float64) * 3
    target = torch.randint(4, V, (B, T))
    target[0, 3:] = PAD_ID  # padded positions must not count
    target[2, 1:] = PAD_ID
    return logits, target


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_loss_equals_torch_cross_entropy_with_label_smoothing(epsilon: float) -> None:
    logits, target = _logits_and_targets()
    loss, nll = label_smoothed_nll_loss(logits, target, epsilon)
    n = int((target != PAD_ID).sum())
    flat = logits.view(-1, V)
    expected = F.cross_entropy(
        flat.float(), target.view(-1), label_smoothing=epsilon, ignore_index=PAD_ID, reduction="sum"
    )
    expected_nll = F.cross_entropy(
        flat.float(), target.view(-1), ignore_index=PAD_ID, reduction="sum"
    )
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(nll, expected_nll, rtol=1e-6, atol=1e-5)
    assert n == 15 - 2 - 4  # the sums cover exactly the non-padding tokens


def test_loss_ignores_the_logits_of_padding_positions() -> None:
    logits, target = _logits_and_targets()
    changed = logits.clone()
    changed[0, 3:] = 1e4  # garbage where the target is padding
    assert torch.equal(
        torch.stack(label_smoothed_nll_loss(logits, target, 0.1)),
        torch.stack(label_smoothed_nll_loss(changed, target, 0.1)),
    )


def test_bf16_logits_give_a_float32_loss() -> None:
    logits, target = _logits_and_targets()
    loss, _ = label_smoothed_nll_loss(logits.bfloat16(), target, 0.1)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("rows", [4, 256])  # blocks of rows: several, or one
@pytest.mark.parametrize("computed", [True, False], ids=["model-output", "leaf"])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_gradient_equals_torch_cross_entropy_with_label_smoothing(
    epsilon: float, computed: bool, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loss_module, "ROWS", rows)
    base, target = _logits_and_targets()
    leaf = base.clone().requires_grad_()
    logits = leaf * 1.0 if computed else leaf  # a model output is overwritten by the backward
    loss, _ = label_smoothed_nll_loss(logits, target, epsilon)
    (grad,) = torch.autograd.grad(2.5 * loss, leaf)
    reference = base.clone().requires_grad_()
    expected = F.cross_entropy(
        reference.view(-1, V),
        target.view(-1),
        label_smoothing=epsilon,
        ignore_index=PAD_ID,
        reduction="sum",
    )
    (expected_grad,) = torch.autograd.grad(2.5 * expected, reference)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)  # float32 inside
    assert torch.all(grad[0, 3:] == 0) and torch.all(grad[2, 1:] == 0)  # padding: no gradient
    if not computed:
        assert torch.equal(leaf.detach(), base)  # a leaf is never written over


def test_blocks_are_small_on_a_cpu_and_large_on_a_gpu() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loss_module.block_rows(cpu, 10**5, 8000) == loss_module.ROWS
    assert loss_module.block_rows(cuda, 10**5, 8000) == 2**27 // 8000  # 16,777 rows
    assert loss_module.block_rows(cuda, 10**5, 10**6) == loss_module.ROWS  # at least ROWS ...
    assert loss_module.block_rows(cuda, 12500, 8000) == 12500  # ... at most the logits' rows
    assert loss_module.block_rows(cpu, 0, 8000) == 1  # no rows: one empty block


@pytest.mark.parametrize("rows", [2, 256])  # the kept float32 block grows when blocks do
def test_bf16_gradient_is_the_float32_one_rounded(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loss_module, "ROWS", rows)
    base, target = _logits_and_targets()
    leaf = base.bfloat16().requires_grad_()
    loss, _ = label_smoothed_nll_loss(leaf * 1.0, target, 0.1)
    (grad,) = torch.autograd.grad(loss, leaf)
    reference = base.bfloat16().float().requires_grad_()
    expected = F.cross_entropy(
        reference.view(-1, V),
        target.view(-1),
        label_smoothing=0.1,
        ignore_index=PAD_ID,
        reduction="sum",
    )
    (expected_grad,) = torch.autograd.grad(expected, reference)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), expected_grad, rtol=1e-2, atol=4e-3)


def test_a_second_backward_through_overwritten_logits_is_refused() -> None:
    base, target = _logits_and_targets()
    leaf = base.clone().requires_grad_()
    loss, _ = label_smoothed_nll_loss(leaf * 1.0, target, 0.1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_schedule_equals_the_paper_formula() -> None:
    d, warmup = 512, 4000
    assert noam_learning_rate(1, d, warmup) == pytest.approx(512**-0.5 * 1 * 4000**-1.5, rel=1e-12)
    assert noam_learning_rate(warmup, d, warmup) == pytest.approx(512**-0.5 * 4000**-0.5, rel=1e-12)
    assert noam_learning_rate(10 * warmup, d, warmup) == pytest.approx(
        512**-0.5 * 40000**-0.5, rel=1e-12
    )
    assert noam_learning_rate(warmup, d, warmup, factor=2.0) == pytest.approx(
        2 * 512**-0.5 * 4000**-0.5, rel=1e-12
    )
    # the peak is at the end of warmup
    peak = noam_learning_rate(warmup, d, warmup)
    assert noam_learning_rate(warmup - 1, d, warmup) < peak
    assert noam_learning_rate(warmup + 1, d, warmup) < peak


def test_schedule_counts_updates_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        noam_learning_rate(0, 512, 4000)


def test_the_cooldown_lowers_the_rate_linearly_over_the_last_updates() -> None:
    # 10 updates, a cooldown over the last 4: what is left at update s is 11 - s (s included).
    assert [cooldown_factor(11 - s, 4) for s in range(1, 11)] == [1] * 6 + [1, 0.75, 0.5, 0.25]
    assert [cooldown_factor(11 - s, 0) for s in (1, 10)] == [1.0, 1.0]  # off
    assert cooldown_factor(0, 4) == 0.0  # past the budget (never trained)
    # In minutes: 60 of them, a cooldown over the last 20.
    assert [cooldown_factor(60 - m, 20) for m in (0, 40, 50, 59.5, 61)] == [1, 1, 0.5, 0.025, 0]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_loss_on_cuda_in_large_blocks_matches_the_cpu_in_small_ones(dtype) -> None:
    """More rows than one GPU block (so several blocks there) and than one CPU block."""
    torch.manual_seed(0)
    v, n = 5000, 2**27 // 5000 + 300
    base = (3 * torch.randn(n, v)).to(dtype)
    target = torch.randint(1, v, (n,))
    target[::7] = PAD_ID
    results = []
    for device in ("cpu", "cuda"):
        leaf = base.to(device).requires_grad_()
        loss, nll = label_smoothed_nll_loss(leaf * 1.0, target.to(device), 0.1)
        (grad,) = torch.autograd.grad(loss, leaf)
        results.append([loss.cpu(), nll.cpu(), grad.float().cpu()])
    (loss, nll, grad), (cuda_loss, cuda_nll, cuda_grad) = results
    torch.testing.assert_close(cuda_loss, loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(cuda_nll, nll, rtol=1e-5, atol=0)
    torch.testing.assert_close(cuda_grad, grad, rtol=1e-2, atol=1e-5)
