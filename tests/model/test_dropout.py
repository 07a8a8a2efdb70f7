"""Dropout: the keep probability, the 1 / (1 - p) scaling, its gradient, eval mode, seeding."""

import math

import pytest
import torch

from transformer.model.dropout import Dropout, keep_mask


def test_the_mask_keeps_one_minus_p_in_every_lane_of_the_draws():
    torch.manual_seed(0)
    n, p = 4_000_000, 0.1
    keep = keep_mask((n,), p, torch.device("cpu"))
    expected = 1 - round(p * 2**16) / 2**16  # 0.9000061
    sigma = math.sqrt(expected * (1 - expected) / n)  # 1.5e-4
    assert keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - expected) < 5 * sigma
    # Each 64-bit draw serves four elements: every one of the four 16-bit lanes is unbiased too.
    lanes = keep.view(-1, 4).float().mean(dim=0)
    assert (lanes - expected).abs().max().item() < 5 * 2 * sigma
    # Neighbours are independent: P(both kept) = P(keep)^2.
    pairs = (keep[:-1] & keep[1:]).float().mean().item()
    assert abs(pairs - expected**2) < 5 * sigma * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_output_and_gradient_follow_the_formula(dtype):
    torch.manual_seed(1)
    p = 0.25
    x = torch.randn(7, 5, 33, dtype=dtype, requires_grad=True)
    out = Dropout(p).train()(x)
    kept = out != 0  # x has no zeros, so the zeros of `out` are the dropped elements
    scale = 1 / (1 - p)
    expected = torch.where(kept, x.detach() * scale, torch.zeros((), dtype=dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn_like(x)
    out.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(kept, grad * scale, 0 * grad), rtol=0, atol=0)
    assert 0.6 < kept.float().mean().item() < 0.9  # about 1 - p = 0.75 of 1,155 elements


def test_eval_mode_p_zero_and_p_one():
    x = torch.randn(4, 6)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)


def test_the_same_seed_draws_the_same_mask():
    x = torch.ones(3, 1000)
    torch.manual_seed(7)
    a = Dropout(0.1).train()(x)
    torch.manual_seed(7)
    b = Dropout(0.1).train()(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, Dropout(0.1).train()(x))  # the generator moved on


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_mask_in_a_float_dtype_is_the_bool_mask_of_the_same_draws(dtype):
    torch.manual_seed(5)
    keep = keep_mask((3, 1001), 0.3, torch.device("cpu"))
    torch.manual_seed(5)
    ones = keep_mask((3, 1001), 0.3, torch.device("cpu"), dtype)
    assert ones.dtype == dtype and ones.shape == (3, 1001)
    assert torch.equal(ones, keep.to(dtype))


def test_a_mask_keeps_everything_below_the_resolution_and_nothing_at_one():
    cpu = torch.device("cpu")
    assert keep_mask((5, 7), 2**-18, cpu).all()
    assert not keep_mask((5, 7), 1.0, cpu).any()
    assert torch.equal(keep_mask((4,), 0.0, cpu, torch.float32), torch.ones(4))
