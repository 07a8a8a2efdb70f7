import math

import pytest
import torch

from tests.conftest import B, D, H, S, T
from transformer.model.attention import (
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    reference_attention,
)


def explicit_attention(q, k, v, allowed):
    """The five lines of the paper, independent of the code under test."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_reference_attention_equals_explicit_formula():
    q, k, v = torch.randn(B, H, T, 6), torch.randn(B, H, S, 6), torch.randn(B, H, S, 9)
    lengths = torch.tensor([7, 4, 1])
    allowed = (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]
    out, weights = reference_attention(q, k, v, allowed)
    torch.testing.assert_close(out, explicit_attention(q, k, v, allowed), rtol=0, atol=1e-6)
    assert torch.all(weights.masked_select(~allowed.expand_as(weights)) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T))


@pytest.mark.parametrize("d_k,d_v", [(4, 4), (3, 5)])  # d_k != d_model / n_heads too
def test_fast_path_equals_reference_with_padding(d_k, d_v):
    mha = MultiHeadAttention(D, H, d_k, d_v).eval()
    query, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    ids = torch.tensor([[5] * 7, [5] * 4 + [0] * 3, [5] + [0] * 6])
    mask = padding_mask(ids)[:, None, None, :]
    fast, none = mha(query, memory, mask)
    ref, weights = mha(query, memory, mask, need_weights=True)
    assert none is None and weights.shape == (B, H, T, S)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("d_k,d_v", [(4, 4), (3, 5)])
def test_fast_path_equals_reference_causal(d_k, d_v):
    mha = MultiHeadAttention(D, H, d_k, d_v).eval()
    x = torch.randn(B, T, D)
    fast, _ = mha(x, is_causal=True)
    ref, weights = mha(x, is_causal=True, need_weights=True)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    assert torch.all(weights.triu(diagonal=1) == 0)


def test_causal_mask_with_offset():
    m = causal_mask(2, 5)  # the last two of five positions
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())
