"""The learners' model options (norm, activation, scale_embedding, residual): each against an
explicit formula, BatchNorm's statistics untouched by padding, and for every option the decoder's
own equivalences (cached == uncached, batched == one sentence at a time) at the level of logits."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from tests.conftest import D_FF, B, D, S, T, V, tiny_config
from tests.model.test_positions import OPTIONS as POSITION_OPTIONS
from tests.model.test_positions import random_ids, targets
from transformer import ModelConfig, Transformer
from transformer.config import ConfigError
from transformer.model.cache import DecoderCache
from transformer.model.layers import FeedForward, SublayerConnection
from transformer.model.norms import MaskedBatchNorm
from transformer.vocab import EOS_ID, PAD_ID

EPS = 1e-5
OPTIONS = {
    "rms": dict(norm="rms"),
    "batch": dict(norm="batch"),
    "gelu": dict(activation="gelu"),
    "unscaled-embedding": dict(scale_embedding=False),
    "no-residual": dict(residual=False),
    "pre-rms-gelu": dict(norm_position="pre", norm="rms", activation="gelu"),
    "pre-batch-no-residual": dict(norm_position="pre", norm="batch", residual=False),
}


def test_every_option_defaults_to_the_paper() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert defaults["norm"] == "layer" and defaults["activation"] == "relu"
    assert defaults["scale_embedding"] is True and defaults["residual"] is True
    model = Transformer(tiny_config())
    sublayers = [m for m in model.modules() if isinstance(m, SublayerConnection)]
    assert sublayers and all(type(m.norm) is nn.LayerNorm and m.residual for m in sublayers)


def test_bad_values_are_named() -> None:
    with pytest.raises(ConfigError) as error:
        tiny_config(norm="group", activation="swish")
    text = str(error.value)
    assert "norm: expected 'layer' | 'rms' | 'batch'" in text
    assert "activation: expected 'relu' | 'gelu'" in text


def test_rms_norm_is_x_over_its_root_mean_square_times_a_gain() -> None:
    connection = SublayerConnection(D, 0.0, "post", EPS, norm="rms")
    assert not any("bias" in n for n, _ in connection.named_parameters())  # no bias, no mean
    with torch.no_grad():
        connection.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(B, T, D) * 3 + 1
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * connection.norm.weight
    torch.testing.assert_close(connection.norm(x), expected, rtol=0, atol=1e-5)
    centred = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True))
    assert not torch.allclose(connection.norm(x), centred * connection.norm.weight, atol=1e-2)


def test_gelu_feed_forward_is_the_erf_formula() -> None:
    ffn = FeedForward(D, D_FF, "gelu")
    x = torch.randn(B, T, D)
    h = x @ ffn.linear1.weight.T + ffn.linear1.bias
    gelu = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    expected = gelu @ ffn.linear2.weight.T + ffn.linear2.bias
    torch.testing.assert_close(ffn(x), expected, rtol=0, atol=1e-5)
    relu = FeedForward(D, D_FF)
    relu.load_state_dict(ffn.state_dict())
    torch.testing.assert_close(relu(x), h.clamp(min=0) @ ffn.linear2.weight.T + ffn.linear2.bias)


def test_unscaled_embedding_is_the_embedding_itself() -> None:
    ids = torch.randint(4, V, (B, S))
    for scaled, factor in ((True, math.sqrt(D)), (False, 1.0)):
        model = Transformer(tiny_config(scale_embedding=scaled, positional="none")).eval()
        token = model.encoder.embed.token
        torch.testing.assert_close(model.encoder.embed(ids), token.weight[ids] * factor)


@pytest.mark.parametrize("position", ["post", "pre"])
def test_without_residual_the_sublayer_output_is_not_added(position: str) -> None:
    with_residual = SublayerConnection(D, 0.0, position, EPS)
    without = SublayerConnection(D, 0.0, position, EPS, residual=False)
    without.load_state_dict(with_residual.state_dict())
    x = torch.randn(B, T, D)
    sublayer = nn.Linear(D, D)
    norm = with_residual.norm
    if position == "post":
        expected, residual = norm(sublayer(x)), norm(x + sublayer(x))
    else:
        expected, residual = sublayer(norm(x)), x + sublayer(norm(x))
    torch.testing.assert_close(without(x, sublayer), expected)
    torch.testing.assert_close(with_residual(x, sublayer), residual)


# --------------------------------------------------------------------------------- BatchNorm


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, D) and its mask of real tokens (5, 3 and 1 of the T positions)."""
    mask = torch.arange(T)[None] < torch.tensor([5, 3, 1])[:, None]
    return torch.randn(B, T, D) * 2 + 0.5, mask


def test_batch_norm_uses_the_real_tokens_statistics() -> None:
    norm = MaskedBatchNorm(D, EPS).train()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x, mask = padded_batch()
    real = x[mask]  # (9, D)
    mean, var = real.mean(0), real.var(0, unbiased=False)
    expected = (x - mean) / torch.sqrt(var + EPS) * norm.weight + norm.bias
    out = norm(x, mask)
    torch.testing.assert_close(out[mask], expected[mask], rtol=0, atol=1e-5)
    # running statistics: momentum 0.1 from (0, 1), the variance unbiased (as nn.BatchNorm1d)
    torch.testing.assert_close(norm.running_mean, 0.1 * mean)
    torch.testing.assert_close(norm.running_var, 0.9 + 0.1 * real.var(0, unbiased=True))
    reference = nn.BatchNorm1d(D, eps=EPS).train()  # PyTorch's, over the real tokens alone
    reference.weight.data.copy_(norm.weight)
    reference.bias.data.copy_(norm.bias)
    torch.testing.assert_close(out[mask], reference(real), rtol=0, atol=1e-5)
    torch.testing.assert_close(norm.running_var, reference.running_var)
    # inference: the running statistics, whatever the batch
    norm.eval()
    inferred = (x - norm.running_mean) / torch.sqrt(norm.running_var + EPS)
    torch.testing.assert_close(norm(x, None), inferred * norm.weight + norm.bias)


def test_batch_norm_statistics_ignore_extra_padding() -> None:
    x, mask = padded_batch()
    widened = torch.cat([x, torch.randn(B, 4, D) * 100], dim=1)  # 4 more padded positions
    wide_mask = torch.cat([mask, torch.zeros(B, 4, dtype=torch.bool)], dim=1)
    a, b = MaskedBatchNorm(D).train(), MaskedBatchNorm(D).train()
    torch.testing.assert_close(b(widened, wide_mask)[:, :T][mask], a(x, mask)[mask])
    torch.testing.assert_close(b.running_mean, a.running_mean)
    torch.testing.assert_close(b.running_var, a.running_var)
    # and a statistic over every position (padding included) would not
    c = MaskedBatchNorm(D).train()
    c(widened, None)
    assert not torch.allclose(c.running_mean, a.running_mean, atol=1e-2)


def test_a_batch_norm_model_trains_the_same_with_more_padding() -> None:
    """Whole model in training mode: logits and BatchNorm statistics at real positions do not
    depend on how much padding the batch carries (source and target)."""
    torch.manual_seed(3)
    model = Transformer(tiny_config(norm="batch")).train()
    twin = Transformer(tiny_config(norm="batch")).train()
    twin.load_state_dict(model.state_dict())
    src, tgt = random_ids(S), random_ids(T)
    logits = model(src, tgt)
    pad = lambda ids: torch.cat([ids, torch.full((B, 3), PAD_ID)], dim=1)  # noqa: E731
    wide = twin(pad(src), pad(tgt))[:, :T]
    real = tgt != PAD_ID
    torch.testing.assert_close(wide[real], logits[real], rtol=0, atol=1e-4)
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers(), strict=True):
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=name)


# ------------------------------------------------------------------- decoding equivalences


def trained_a_little(overrides: dict) -> Transformer:
    """A model of `overrides` after a few updates, so that BatchNorm's running statistics are not
    their (0, 1) start; then in inference mode."""
    torch.manual_seed(1)
    model = Transformer(tiny_config(**overrides))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        src, tgt = random_ids(S), targets()
        logits = model(src, tgt)
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V), tgt[:, 1:].reshape(-1), ignore_index=PAD_ID
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# Every option of the model, these and those of test_positions.py: the decoder's equivalences.
EQUIVALENCE = {**OPTIONS, **POSITION_OPTIONS}


@pytest.mark.parametrize("overrides", EQUIVALENCE.values(), ids=EQUIVALENCE.keys())
def test_cached_step_by_step_equals_the_whole_prefix(overrides: dict) -> None:
    model = trained_a_little(overrides)
    src, tgt = random_ids(S), targets()
    src[:, -1] = EOS_ID
    with torch.no_grad():
        memory = model.encode(src)
        src_mask = src != PAD_ID
        whole = model.decode(tgt, memory, src_mask)
        cache = DecoderCache()
        steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in range(T)]
        cache = DecoderCache()  # several new positions at once, then one at a time
        chunks = [model.decode(tgt[:, :2], memory, src_mask, cache)]
        chunks += [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in range(2, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, rtol=0, atol=1e-4)


@pytest.mark.parametrize("overrides", EQUIVALENCE.values(), ids=EQUIVALENCE.keys())
def test_batched_equals_one_sentence_at_a_time(overrides: dict) -> None:
    model = trained_a_little(overrides)
    src, tgt = random_ids(S), targets()
    with torch.no_grad():
        batched = model(src, tgt)
        for i in range(B):
            alone = src[i : i + 1, : int((src[i] != PAD_ID).sum())]
            torch.testing.assert_close(
                model(alone, tgt[i : i + 1])[0], batched[i], rtol=0, atol=1e-4, msg=str(i)
            )
