"""The study's ablations (`transformer study questions`): each does exactly what it says, and
nothing when off."""

import dataclasses
import math

import torch

from tests.conftest import B, D, H, S, T, tiny_config
from transformer import ModelConfig, Transformer
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


def paper_sinusoids(n_positions: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model))."""
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    for pos in range(n_positions):
        for two_i in range(0, d_model, 2):
            angle = pos / 10000 ** (two_i / d_model)
            pe[pos, two_i] = math.sin(angle)
            pe[pos, two_i + 1] = math.cos(angle)
    return pe.float()


def test_ablations_default_to_off():
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert defaults["scale_attention"] is True
    assert defaults["shared_query_key"] is False
    assert defaults["positional"] == "sinusoidal"


def test_by_default_every_attention_is_scaled_with_its_own_query_and_key_matrices():
    """Each attention of a default model is softmax(Q K^T / sqrt(d_k)) V, with Q and K from two
    separate matrices W^Q and W^K; the reference tells both ablations apart from it."""
    model = Transformer(tiny_config()).eval()
    query, memory, src_mask = inputs()
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    attentions = {n: m for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)}
    assert len(attentions) == 2 + 2 * 2  # 2 encoder self + 2 x (decoder self, cross)
    for name, mha in attentions.items():
        assert mha.k_proj is not None, name
        assert mha.k_proj.weight is not mha.q_proj.weight, name
        assert not torch.allclose(mha.k_proj.weight, mha.q_proj.weight), name
        if name.startswith("encoder."):  # self-attention over the padded source
            x, key_value, allowed = memory, None, src_mask
        elif name.endswith("cross_attn"):  # target positions over the padded source
            x, key_value, allowed = query, memory, src_mask
        else:  # decoder self-attention, causal
            x, key_value, allowed = query, None, causal
        m = x if key_value is None else key_value
        scale = 1 / math.sqrt(mha.d_k)
        expected = explicit_mha(mha, x, m, allowed, mha.q_proj, mha.k_proj, scale)
        with torch.no_grad():
            fast, _ = mha(x, key_value, allowed)
            ref, _ = mha(x, key_value, allowed, need_weights=True)
        torch.testing.assert_close(fast, expected, rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(ref, expected, rtol=0, atol=1e-5, msg=name)
        unscaled = explicit_mha(mha, x, m, allowed, mha.q_proj, mha.k_proj, 1.0)
        shared = explicit_mha(mha, x, m, allowed, mha.q_proj, mha.q_proj, scale)
        assert not torch.allclose(fast, unscaled, atol=1e-3), name
        assert not torch.allclose(fast, shared, atol=1e-3), name


def test_by_default_positions_are_the_papers_interleaved_sinusoids():
    """sqrt(d_model) * embedding + PE, PE with sine on even and cosine on odd dimensions (not the
    [sin | cos] halves), in the encoder and in the decoder at any offset."""
    model = Transformer(tiny_config()).eval()
    pe = paper_sinusoids(40, D)
    ids = torch.randint(4, 37, (B, S))
    for embed, offset in (
        (model.encoder.embed, 0),
        (model.decoder.embed, 0),
        (model.decoder.embed, 29),
    ):
        with torch.no_grad():
            positions = embed(ids, offset) - embed.token.weight[ids] * math.sqrt(D)
        expected = pe[offset : offset + S].expand(B, S, D)
        torch.testing.assert_close(positions, expected, rtol=0, atol=1e-5)
    halves = torch.cat([pe[:, 0::2], pe[:, 1::2]], dim=1)
    with torch.no_grad():
        positions = model.encoder.embed(ids) - model.encoder.embed.token.weight[ids] * math.sqrt(D)
    assert not torch.allclose(positions[0], halves[:S], atol=1e-3)
