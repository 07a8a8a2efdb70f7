"""Label smoothing against torch's own implementation; the schedule against the paper's formula."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import B, D, S, T, V, tiny_config
from transformer import hardware
from transformer.data.batching import collate
from transformer.model import Transformer
from transformer.training import loss as loss_module
from transformer.training.loss import projected_smoothed_loss
from transformer.training.objective import sequence_loss
from transformer.training.schedule import cooldown_factor, noam_learning_rate
from transformer.vocab import PAD_ID


def _inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """hidden (B, T, D), weight (V, D) and targets (B, T) with padding."""
    hidden = torch.randn(B, T, D, dtype=dtype)
    weight = torch.randn(V, D, dtype=dtype)
    target = torch.randint(4, V, (B, T))
    target[0, 3:] = PAD_ID  # padded positions must not count
    target[2, 1:] = PAD_ID
    return hidden, weight, target


def _reference(hidden, weight, target, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's own label-smoothed cross-entropy of the logits, in float64."""
    logits = F.linear(hidden.double(), weight.double()).view(-1, V)
    flat = target.view(-1)
    loss = F.cross_entropy(
        logits, flat, label_smoothing=epsilon, ignore_index=PAD_ID, reduction="sum"
    )
    return loss, F.cross_entropy(logits, flat, ignore_index=PAD_ID, reduction="sum")


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_loss_equals_torch_cross_entropy_with_label_smoothing(epsilon: float) -> None:
    hidden, weight, target = _inputs()
    loss, nll = projected_smoothed_loss(hidden, weight, target, epsilon)
    expected, expected_nll = _reference(hidden, weight, target, epsilon)
    assert loss.dtype == nll.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(nll.double(), expected_nll, rtol=1e-5, atol=1e-4)
    assert int((target != PAD_ID).sum()) == 15 - 2 - 4  # the sums cover the non-padding tokens


def test_loss_ignores_the_positions_of_padding() -> None:
    hidden, weight, target = _inputs()
    changed = hidden.clone()
    changed[0, 3:] = 1e4  # garbage where the target is padding
    assert torch.equal(
        torch.stack(projected_smoothed_loss(hidden, weight, target, 0.1)),
        torch.stack(projected_smoothed_loss(changed, weight, target, 0.1)),
    )


@pytest.mark.parametrize("rows", [4, 512])  # blocks of rows: several, or one
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_gradients_equal_torch_cross_entropy_with_label_smoothing(
    epsilon: float, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both gradients (the decoder's output and the output matrix) equal autograd's through
    F.linear and F.cross_entropy, for an upstream gradient other than 1; padding gets none."""
    monkeypatch.setattr(loss_module, "ROWS", rows)
    hidden, weight, target = (t.requires_grad_() if t.is_floating_point() else t for t in _inputs())
    loss, nll = projected_smoothed_loss(hidden, weight, target, epsilon)
    assert not nll.requires_grad
    grads = torch.autograd.grad(2.5 * loss, (hidden, weight))
    expected, _ = _reference(hidden, weight, target, epsilon)
    expected_grads = torch.autograd.grad(2.5 * expected, (hidden, weight))
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.all(grads[0][0, 3:] == 0) and torch.all(grads[0][2, 1:] == 0)


def test_without_a_gradient_the_loss_is_the_same() -> None:
    hidden, weight, target = _inputs()
    with torch.no_grad():
        frozen = projected_smoothed_loss(hidden, weight, target, 0.1)
    trained = projected_smoothed_loss(hidden.requires_grad_(), weight, target, 0.1)
    assert torch.equal(torch.stack(frozen), torch.stack(trained).detach())


def test_blocks_are_small_on_a_cpu_and_large_on_a_gpu() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loss_module.block_rows(cpu, 10**5, 8000) == loss_module.ROWS
    assert loss_module.block_rows(cuda, 10**5, 8000) == 2**27 // 8000  # 16,777 rows
    assert loss_module.block_rows(cuda, 10**5, 10**6) == loss_module.ROWS  # at least ROWS ...
    assert loss_module.block_rows(cuda, 12500, 8000) == 12500  # ... at most the logits' rows
    assert loss_module.block_rows(cpu, 0, 8000) == 1  # no rows: one empty block


@pytest.mark.parametrize("rows", [2, 512])  # the kept float32 block grows when blocks do
def test_under_bf16_autocast_the_logits_are_bf16_and_the_loss_float32(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As F.linear under autocast: the logits are bf16 products (then normalised in float32),
    and the gradients come back in the inputs' float32, close to the float32 ones."""
    monkeypatch.setattr(loss_module, "ROWS", rows)
    hidden, weight, target = (t.requires_grad_() if t.is_floating_point() else t for t in _inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, nll = projected_smoothed_loss(hidden, weight, target, 0.1)
        logits = F.linear(hidden, weight)
    assert loss.dtype == nll.dtype == torch.float32 and logits.dtype == torch.bfloat16
    expected = F.cross_entropy(
        logits.float().view(-1, V),
        target.view(-1),
        label_smoothing=0.1,
        ignore_index=PAD_ID,
        reduction="sum",
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)  # the same bf16 logits
    grads = torch.autograd.grad(loss, (hidden, weight))
    expected_grads = torch.autograd.grad(
        _reference(hidden, weight, target, 0.1)[0], (hidden, weight)
    )
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == torch.float32
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=0.03 * scale)


def test_in_a_onednn_context_the_products_run_in_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside `OneDNNLinear` (fp32 training on AMD CPUs) `current_linear` gives oneDNN's map: one
    product per block and the two of the gradients, with F.linear's results."""
    monkeypatch.setattr(loss_module, "ROWS", 4)
    calls: list[int] = []
    real = hardware.onednn_linear
    monkeypatch.setattr(hardware, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    hidden, weight, target = (t.requires_grad_() if t.is_floating_point() else t for t in _inputs())
    assert hardware.current_linear() is F.linear
    with hardware.OneDNNLinear(train=True):
        linear = hardware.current_linear()
        loss, _ = projected_smoothed_loss(hidden, weight, target, 0.1, linear=linear)
    assert hardware.current_linear() is F.linear
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert len(calls) == -(-B * T // 4) + 2
    expected = projected_smoothed_loss(hidden, weight, target, 0.1)[0]
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, torch.autograd.grad(expected, (hidden, weight)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("share", [True, False])
def test_a_models_sequence_loss_equals_the_loss_of_its_logits(share: bool) -> None:
    """`sequence_loss` (the decoder's output, projected inside the loss) gives the loss and every
    parameter's gradient that F.cross_entropy gives on the model's logits, with the output
    matrix tied to the embeddings or not."""
    model = Transformer(tiny_config(share_embeddings=share, dropout=0.0))
    src = torch.randint(4, V, (B, S))
    tgt = torch.randint(4, V, (B, T + 1))
    tgt[1, 3:] = PAD_ID
    batch = collate([(s.numpy(), t.numpy()) for s, t in zip(src, tgt, strict=True)])
    loss, _ = sequence_loss(model, batch, 0.1, contextlib.nullcontext)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits = model(batch.src, batch.tgt_in)
    expected = F.cross_entropy(
        logits.view(-1, V),
        batch.tgt_out.view(-1),
        label_smoothing=0.1,
        reduction="sum",
        ignore_index=PAD_ID,
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


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
    base = (3 * torch.randn(n, v)).to(dtype)  # the logits, projected by the identity
    identity = torch.eye(v, dtype=dtype)
    target = torch.randint(1, v, (n,))
    target[::7] = PAD_ID
    results = []
    for device in ("cpu", "cuda"):
        hidden = base.to(device).requires_grad_()
        weight = identity.to(device).requires_grad_()
        loss, nll = projected_smoothed_loss(hidden, weight, target.to(device), 0.1)
        (grad,) = torch.autograd.grad(loss, hidden)
        results.append([loss.cpu(), nll.cpu(), grad.float().cpu()])
    (loss, nll, grad), (cuda_loss, cuda_nll, cuda_grad) = results
    torch.testing.assert_close(cuda_loss, loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(cuda_nll, nll, rtol=1e-5, atol=0)
    torch.testing.assert_close(cuda_grad, grad, rtol=1e-2, atol=1e-5)
