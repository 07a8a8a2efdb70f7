"""Positions inside attention (relative, rotary, ALiBi) and additive attention: each against an
explicit formula, and for every option the model's own equivalences (cached == uncached, batched
== one sentence at a time, the weights of the written-out path), bf16 autocast, and positions that
matter without any absolute embedding."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import B, D, H, S, T, V, tiny_config
from transformer import ModelConfig, Transformer
from transformer.config import ConfigError
from transformer.model import attention as attention_module
from transformer.model.attention import (
    MultiHeadAttention,
    additive_scores,
    padding_mask,
    written_out_attention,
)
from transformer.model.cache import DecoderCache
from transformer.model.layers import AttentionRecord
from transformer.model.positions import (
    AlibiPositions,
    RelativePositions,
    RotaryPositions,
    alibi_slopes,
)
from transformer.vocab import BOS_ID, PAD_ID

OPTIONS = {
    "relative": dict(positional="relative", relative_clip=2),  # clipped within S and T
    "rotary": dict(positional="rotary"),
    "alibi": dict(positional="alibi"),
    "additive": dict(attention="additive"),
    "additive-relative-pre": dict(attention="additive", positional="relative", norm_position="pre"),
    "rotary-shared-qk": dict(positional="rotary", shared_query_key=True),
    "alibi-6-heads": dict(positional="alibi", n_heads=6, d_k=4, d_v=4),
}
IN_ATTENTION = ("relative", "rotary", "alibi")


def random_ids(length: int) -> torch.Tensor:
    """(B, length) ids of 5, 3 and 1 real tokens then padding."""
    ids = torch.randint(4, V, (B, length))
    lengths = torch.tensor([min(5, length), 3, 1])
    return ids.masked_fill(torch.arange(length)[None] >= lengths[:, None], PAD_ID)


def targets() -> torch.Tensor:
    tgt = torch.randint(4, V, (B, T))
    tgt[:, 0] = BOS_ID
    return tgt


def model_of(overrides: dict) -> Transformer:
    torch.manual_seed(1)
    return Transformer(tiny_config(**overrides)).eval()


# ------------------------------------------------------------------------------ configuration


def test_defaults_are_the_paper() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert defaults["positional"] == "sinusoidal" and defaults["attention"] == "dot"
    assert defaults["relative_clip"] == 16
    model = Transformer(tiny_config())
    attentions = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert attentions and all(m.positions is None and m.score_vector is None for m in attentions)
    assert all(m.plain for m in attentions)
    assert not any("positions." in n or "score_vector" in n for n in model.state_dict())


def test_the_paper_and_rotary_take_the_fused_kernel_and_nothing_else(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("written out")

    monkeypatch.setattr(attention_module, "written_out_attention", refuse)
    monkeypatch.setattr(attention_module, "reference_attention", refuse)
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(
        attention_module.F,
        "scaled_dot_product_attention",
        lambda *a, **k: calls.append(k.get("attn_mask")) or fused(*a, **k),
    )
    src, tgt = random_ids(S), targets()
    for overrides in ({}, {"positional": "rotary"}, {"positional": "alibi"}):
        calls.clear()
        model_of(overrides)(src, tgt)  # with gradients (few queries in inference: written out)
        assert len(calls) == 2 + 2 * 2  # every attention of the model, fused
        alibi = overrides.get("positional") == "alibi"
        float_masks = [m is not None and m.is_floating_point() for m in calls]
        assert float_masks == [alibi] * 2 + [alibi, False] * 2  # ALiBi's bias: self-attention


def test_bad_values_are_refused_with_the_field_named() -> None:
    with pytest.raises(ConfigError) as error:
        tiny_config(positional="rotary", d_k=3, d_v=4)
    assert "d_k: positional: rotary rotates pairs of dimensions, so d_k must be even, got 3" in str(
        error.value
    )
    with pytest.raises(ConfigError, match=r"d_k: .* got 3 \(d_model 12 / n_heads 4\)"):
        tiny_config(positional="rotary", d_model=12)
    tiny_config(positional="sinusoidal", d_model=12)  # an odd d_k is fine without rotary
    with pytest.raises(ConfigError) as error:
        tiny_config(relative_clip=0, attention="bahdanau", positional="rope")
    text = str(error.value)
    assert "relative_clip: must be >= 1, got 0" in text
    assert "attention: expected 'dot' | 'additive'" in text
    assert "positional: expected 'sinusoidal' | 'learned' | 'none' | 'relative'" in text
    with pytest.raises(ConfigError, match=r"scale_attention: false .* attention: additive"):
        tiny_config(attention="additive", scale_attention=False)


# ------------------------------------------------------------------------------------- rotary


def test_rotary_rotates_each_pair_by_position_times_its_frequency() -> None:
    d = 4
    x = torch.randn(1, 1, 3, d)
    offset = 2  # positions 2, 3, 4
    out = RotaryPositions(d).rotate(x, offset)
    expected = torch.empty_like(x)
    for t in range(3):
        pos = offset + t
        for i in range(d // 2):
            angle = pos * 10000 ** (-2 * i / d)
            a, b = x[0, 0, t, 2 * i].item(), x[0, 0, t, 2 * i + 1].item()
            expected[0, 0, t, 2 * i] = a * math.cos(angle) - b * math.sin(angle)
            expected[0, 0, t, 2 * i + 1] = a * math.sin(angle) + b * math.cos(angle)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # a rotation
    # position 0 is not rotated at all
    torch.testing.assert_close(RotaryPositions(d).rotate(x[:, :, :1]), x[:, :, :1])


def test_rotary_dot_products_depend_only_on_the_distance() -> None:
    rope = RotaryPositions(8)
    q, k = torch.randn(8), torch.randn(8)

    def score(m: int, n: int) -> float:
        q_m = rope.rotate(q.view(1, 1, 1, 8), m)
        k_n = rope.rotate(k.view(1, 1, 1, 8), n)
        return (q_m * k_n).sum().item()

    for distance in (-3, 0, 2, 7):
        scores = [score(m, m + distance) for m in (3, 4, 9, 40, 300)]
        assert max(scores) - min(scores) < 1e-4, (distance, scores)
    assert abs(score(0, 2) - score(0, 3)) > 1e-3  # and the distance does matter


def test_rotary_self_attention_rotates_queries_and_keys_of_its_projections() -> None:
    rope = RotaryPositions(4)
    mha = MultiHeadAttention(D, H, 4, 4, positions=rope).eval()
    x = torch.randn(B, T, D)
    q, k, v = mha.project_qkv(x, offset=3)
    heads = lambda y: y.view(B, T, H, 4).transpose(1, 2)  # noqa: E731
    torch.testing.assert_close(q, rope.rotate(heads(mha.q_proj(x)), 3))
    torch.testing.assert_close(k, rope.rotate(heads(mha.k_proj(x)), 3))
    torch.testing.assert_close(v, heads(mha.v_proj(x)))  # values are not rotated
    with pytest.raises(ValueError, match="self-attention"):
        mha(x, torch.randn(B, S, D))


# -------------------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_are_the_papers() -> None:
    assert alibi_slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(4) == [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    # not a power of two: the 4 slopes of H = 4, then every other one of H = 8
    assert alibi_slopes(6) == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]


def test_alibi_bias_of_three_tokens() -> None:
    alibi = AlibiPositions(2)  # slopes 2^-4, 2^-8
    bias = alibi.bias(0, 3, 3)
    distance = torch.tensor([[0.0, 1, 2], [1, 0, 1], [2, 1, 0]])
    expected = torch.stack([-distance / 16, -distance / 256])
    torch.testing.assert_close(bias, expected, rtol=0, atol=0)
    assert torch.equal(bias, bias.transpose(-2, -1))  # the encoder: symmetric, -m |i - j|
    # the decoder's causal keys j <= i: -m (i - j); its third query alone over the cache
    causal = torch.ones(3, 3, dtype=torch.bool).tril()
    i, j = torch.arange(3)[:, None], torch.arange(3)[None, :]
    torch.testing.assert_close(bias[0][causal], (-(i - j) / 16).expand(3, 3)[causal].float())
    torch.testing.assert_close(alibi.bias(2, 1, 3), expected[:, 2:])


@pytest.mark.parametrize("is_causal", [False, True])
def test_alibi_attention_adds_the_bias_to_the_scaled_logits(is_causal: bool) -> None:
    mha = MultiHeadAttention(D, H, 4, 4, positions=AlibiPositions(H)).eval()
    x = torch.randn(B, S, D)
    allowed = padding_mask(random_ids(S))[:, None, None, :]
    q, k, v = mha.project_qkv(x)
    slopes = torch.tensor(alibi_slopes(H))[:, None, None]
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    scores = q @ k.transpose(-2, -1) / 2 - slopes * (i - j).abs()
    expected_allowed = allowed & (j <= i) if is_causal else allowed
    weights = scores.masked_fill(~expected_allowed, float("-inf")).softmax(-1)
    expected = mha.out_proj((weights @ v).transpose(1, 2).reshape(B, S, -1))
    fused, _ = mha.attend(q, k, v, allowed, is_causal)
    ref, got = mha.attend(q, k, v, allowed, is_causal, need_weights=True)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, weights, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------- relative


def test_relative_logits_and_values_of_three_tokens_with_clip_one() -> None:
    torch.manual_seed(0)
    rel = RelativePositions(2, 3, clip=1)  # rows for distances -1, 0, +1
    q, k, v = torch.randn(1, 1, 3, 2), torch.randn(1, 1, 3, 2), torch.randn(1, 1, 3, 3)
    a_k, a_v = rel.key_table.detach(), rel.value_table.detach()
    scale = 1 / math.sqrt(2)
    e = torch.empty(3, 3)
    for i in range(3):
        for j in range(3):
            row = max(-1, min(1, j - i)) + 1  # j - i = +-2 is clipped to +-1
            e[i, j] = (q[0, 0, i] @ (k[0, 0, j] + a_k[row])) * scale
    alpha = e.softmax(-1)
    z = torch.zeros(3, 3)
    for i in range(3):
        for j in range(3):
            row = max(-1, min(1, j - i)) + 1
            z[i] += alpha[i, j] * (v[0, 0, j] + a_v[row])
    with torch.no_grad():
        out, weights = written_out_attention(q, k, v, positions=rel)
    torch.testing.assert_close(weights[0, 0], alpha, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0, 0], z, rtol=0, atol=1e-6)
    assert rel.indices(0, 3, 3, torch.device("cpu")).tolist() == [[1, 2, 2], [0, 1, 2], [0, 0, 1]]
    # the last query alone (offset 2) over the three keys: the last row
    with torch.no_grad():
        last, _ = written_out_attention(q[:, :, 2:], k, v, positions=rel, offset=2)
    torch.testing.assert_close(last[0, 0, 0], z[2], rtol=0, atol=1e-6)
    # without the tables' terms, something else
    plain, _ = written_out_attention(q, k, v)
    assert not torch.allclose(plain[0, 0], z, atol=1e-3)


# ----------------------------------------------------------------------------------- additive


def test_additive_scores_are_w_tanh_q_plus_k_with_masking() -> None:
    mha = MultiHeadAttention(D, H, 4, 4, scoring="additive").eval()
    assert mha.score_vector.shape == (H, 4)
    query, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    allowed = padding_mask(random_ids(S))[:, None, None, :]
    q, (k, v) = mha.project_q(query), mha.project_kv(memory)
    w = mha.score_vector.detach()
    scores = torch.empty(B, H, T, S)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                for j in range(S):
                    scores[b, h, i, j] = w[h] @ torch.tanh(q[b, h, i] + k[b, h, j])
    torch.testing.assert_close(additive_scores(q, k, mha.score_vector), scores, atol=1e-6, rtol=0)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    expected = mha.out_proj((weights @ v).transpose(1, 2).reshape(B, T, -1))
    with torch.no_grad():
        out, got = mha(query, memory, allowed, need_weights=True)
        fast, none = mha(query, memory, allowed)
    assert none is None
    torch.testing.assert_close(got, weights, rtol=0, atol=1e-6)
    assert torch.all(got.masked_select(~allowed.expand_as(got)) == 0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-5)
    # not scaled by 1/sqrt(d_k)
    halved = scores.masked_fill(~allowed, float("-inf")) / 2
    assert not torch.allclose(got, halved.softmax(-1), atol=1e-3)


def test_additive_attention_is_in_every_attention() -> None:
    model = Transformer(tiny_config(attention="additive"))
    names = [n for n, _ in model.named_parameters() if n.endswith("score_vector")]
    assert len(names) == 2 + 2 * 2  # encoder self, decoder self and cross in every layer
    assert all(
        m.score_vector is not None for m in model.modules() if isinstance(m, MultiHeadAttention)
    )


# --------------------------------------------------------------------------------- the model


POSITIONED = {k: v for k, v in OPTIONS.items() if v.get("positional") in IN_ATTENTION}


@pytest.mark.parametrize("overrides", POSITIONED.values(), ids=POSITIONED.keys())
def test_positions_in_attention_only_and_they_matter(overrides: dict) -> None:
    kind = overrides["positional"]
    model = model_of(overrides)
    assert model.encoder.embed.positional is None and model.decoder.embed.positional is None
    assert not any("embed.positional" in n for n in model.state_dict())
    for layer in model.decoder.layers:
        assert layer.self_attn.positions.kind == kind and layer.cross_attn.positions is None
    assert all(layer.self_attn.positions.kind == kind for layer in model.encoder.layers)
    # the embeddings alone carry no position: the same token at two places embeds the same
    embedded = model.encoder.embed(torch.full((1, S), 7))
    torch.testing.assert_close(embedded[0, 0], embedded[0, -1])
    src = torch.randint(4, V, (B, S))
    perm = torch.randperm(S)
    with torch.no_grad():
        memory, permuted = model.encode(src), model.encode(src[:, perm])
    assert not torch.allclose(permuted, memory[:, perm], atol=1e-3)  # not equivariant
    # The decoder: with one layer and no positions, the last output sees its prefix as a set.
    tgt = targets()
    swapped = tgt[:, [0, 1, 3, 2, 4]]  # keys at distances 1 and 2 from the last query
    for positions in ({"positional": "none"}, overrides):
        one_layer = model_of({**positions, "n_decoder_layers": 1})
        with torch.no_grad():
            last, last_swapped = one_layer(src, tgt)[:, -1], one_layer(src, swapped)[:, -1]
        assert torch.allclose(last_swapped, last, atol=1e-5) == (positions["positional"] == "none")
    if overrides.get("relative_clip") == 2:  # distances 3 and 2 are one clipped distance
        far = tgt[:, [0, 2, 1, 3, 4]]
        with torch.no_grad():
            torch.testing.assert_close(one_layer(src, far)[:, -1], one_layer(src, tgt)[:, -1])


@pytest.mark.parametrize("overrides", OPTIONS.values(), ids=OPTIONS.keys())
def test_runs_under_bf16_autocast(overrides: dict) -> None:
    model = model_of(overrides)
    src, tgt = random_ids(S), targets()
    with torch.no_grad():
        exact = model(src, tgt)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inference = model(src, tgt)  # the fused kernel where the option allows it
            memory = model.encode(src)
            cache = DecoderCache()
            for t in range(T):
                model.decode(tgt[:, t : t + 1], memory, src != PAD_ID, cache)
    torch.testing.assert_close(inference.float(), exact, rtol=0, atol=0.08)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(src, tgt).float().logsumexp(-1).mean()  # written out: bf16 training
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if "relative" in overrides.values():
        assert model.encoder.layers[0].self_attn.positions.key_table.grad.abs().sum() > 0
        assert model.decoder.layers[0].self_attn.positions.value_table.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides", OPTIONS.values(), ids=OPTIONS.keys())
def test_attention_weights_sum_to_one_over_the_allowed_keys(overrides: dict) -> None:
    model = model_of(overrides)
    src, tgt = random_ids(S), targets()
    with torch.no_grad():
        record = model.attention_weights(src, tgt)
    src_mask = padding_mask(src)
    heads = model.config.n_heads
    source_keys = src_mask[:, None, None, :].expand(B, heads, -1, -1)
    causal = torch.ones(T, T, dtype=torch.bool).tril().expand(B, heads, T, T)
    for weights, allowed in [
        *((w, source_keys.expand(B, heads, S, S)) for w in record.encoder_self),
        *((w, causal) for w in record.decoder_self),
        *((w, source_keys.expand(B, heads, T, S)) for w in record.cross),
    ]:
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert torch.all(weights[~allowed] == 0)
        assert torch.all(weights[allowed] > 0)
    assert len(record.encoder_self) == 2 and len(record.decoder_self) == len(record.cross) == 2


@pytest.mark.parametrize("overrides", OPTIONS.values(), ids=OPTIONS.keys())
def test_the_written_out_path_equals_the_fast_one(overrides: dict) -> None:
    """Recording the weights (written out) changes nothing in the logits."""
    model = model_of(overrides)
    src, tgt = random_ids(S), targets()
    with torch.no_grad():
        src_mask = padding_mask(src)
        memory = model.encode(src, src_mask)
        fast = model.decode(tgt, memory, src_mask)
        record = AttentionRecord()
        written = model.decode(tgt, model.encode(src, src_mask, record), src_mask, record=record)
    torch.testing.assert_close(written, fast, rtol=0, atol=1e-5)
