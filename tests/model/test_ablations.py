"""The study's ablations (`transformer study questions`): each does exactly what it says, and
nothing when off."""

import math

import torch

from tests.conftest import B, D, H, S, T, tiny_config
from transformer import Transformer
from transformer.model.attention import MultiHeadAttention, padding_mask


def split_heads(x, d):
    return x.view(x.size(0), x.size(1), H, d).transpose(1, 2)


def explicit_mha(mha, query, memory, allowed, w_q, w_k, scale):
    """softmax(scale * (x W^Q)(m W^K)^T) (m W^V) W^O with the weights given explicitly."""
    q = split_heads(query @ w_q.weight.T + w_q.bias, mha.d_k)
    k = split_heads(memory @ w_k.weight.T + w_k.bias, mha.d_k)
    v = split_heads(memory @ mha.v_proj.weight.T + mha.v_proj.bias, mha.d_v)
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, query.size(1), -1)
    return mha.out_proj(out)


def inputs():
    query, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    ids = torch.tensor([[5] * 7, [5] * 4 + [0] * 3, [5] + [0] * 6])
    return query, memory, padding_mask(ids)[:, None, None, :]


def test_unscaled_attention_drops_the_square_root_on_both_paths():
    mha = MultiHeadAttention(D, H, 4, 4, scale=False).eval()
    query, memory, mask = inputs()
    expected = explicit_mha(mha, query, memory, mask, mha.q_proj, mha.k_proj, scale=1.0)
    fast, _ = mha(query, memory, mask)
    ref, _ = mha(query, memory, mask, need_weights=True)
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-5)
    scaled = explicit_mha(mha, query, memory, mask, mha.q_proj, mha.k_proj, 1 / math.sqrt(4))
    assert not torch.allclose(fast, scaled, atol=1e-3)  # the switch changes something


def test_shared_query_key_uses_the_query_matrix_for_keys():
    mha = MultiHeadAttention(D, H, 4, 4, shared_query_key=True).eval()
    assert mha.k_proj is None and not any("k_proj" in n for n, _ in mha.named_parameters())
    query, memory, mask = inputs()
    for key_value in (None, memory):  # self-attention and attention over another sequence
        m = query if key_value is None else memory
        allowed = mask if key_value is not None else torch.ones(1, 1, T, T, dtype=torch.bool)
        expected = explicit_mha(mha, query, m, allowed, mha.q_proj, mha.q_proj, 0.5)
        fast, _ = mha(query, key_value, allowed)
        ref, _ = mha(query, key_value, allowed, need_weights=True)
        torch.testing.assert_close(fast, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(ref, expected, rtol=0, atol=1e-5)


def test_shared_query_key_saves_one_projection_per_attention():
    base, shared = Transformer(tiny_config()), Transformer(tiny_config(shared_query_key=True))
    n_attention = 2 + 2 * 2  # 2 encoder self + 2 x (decoder self, cross)
    assert base.num_parameters() - shared.num_parameters() == n_attention * (D * D + D)


def test_without_positions_the_encoder_is_permutation_equivariant():
    model = Transformer(tiny_config(positional="none")).eval()
    src = torch.randint(4, 37, (B, S))
    perm = torch.randperm(S)
    with torch.no_grad():
        memory = model.encode(src)
        permuted = model.encode(src[:, perm])
    torch.testing.assert_close(permuted, memory[:, perm], rtol=0, atol=1e-5)
    with_positions = Transformer(tiny_config()).eval()
    with torch.no_grad():
        assert not torch.allclose(
            with_positions.encode(src[:, perm]), with_positions.encode(src)[:, perm], atol=1e-3
        )


def test_ablations_off_by_default_leave_the_paper_model():
    config = tiny_config()
    assert config.scale_attention and not config.shared_query_key
    assert config.positional == "sinusoidal"
    torch.manual_seed(0)
    a = Transformer(config)
    torch.manual_seed(0)
    b = Transformer(tiny_config(scale_attention=True, shared_query_key=False))
    assert list(a.state_dict()) == list(b.state_dict())
    assert any(name.endswith("self_attn.k_proj.weight") for name in a.state_dict())
