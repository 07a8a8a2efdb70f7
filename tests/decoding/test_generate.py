"""The batched, cached decoding loop on a trained tiny model: equivalences of token sequences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.copy_model import copy_batch
from transformer.decoding import DecodeOptions, generate
from transformer.decoding.engine import TorchEngine
from transformer.decoding.generate import ModelState
from transformer.hardware import autocast
from transformer.model import autocast_copy, padding_mask
from transformer.vocab import BOS_ID, PAD_ID


@pytest.fixture(scope="module")
def sources():
    """12 sources of 1..8 tokens (+ EOS), padded, with per-sentence max lengths."""
    src, _, _, lengths = copy_batch(12, torch.Generator().manual_seed(5))
    return src, lengths + 5


def best(out, i: int, j: int = 0) -> list[int]:
    return out.tokens[i, j, : out.lengths[i, j]].tolist()


def test_the_fixture_model_copies(copy_model, sources):
    src, max_len = sources
    out = generate([copy_model], src, max_len, DecodeOptions(method="greedy"))
    copied = sum(best(out, i) == [t for t in src[i].tolist() if t != PAD_ID] for i in range(12))
    assert copied >= 10, f"only {copied} of 12 copied: the fixture model is not trained"


def test_beam_1_equals_greedy_tokens_and_scores(copy_model, sources):
    """Without a length penalty beam 1 is greedy. (With one, beam 1 may go on past greedy's EOS
    when a longer hypothesis could still score better, which greedy never does.)"""
    src, max_len = sources
    settings = dict(length_penalty="none")
    greedy = generate([copy_model], src, max_len, DecodeOptions(method="greedy", **settings))
    beam = generate([copy_model], src, max_len, DecodeOptions(method="beam", beam=1, **settings))
    assert torch.equal(greedy.tokens, beam.tokens)
    assert torch.equal(greedy.lengths, beam.lengths)
    torch.testing.assert_close(greedy.log_prob, beam.log_prob, rtol=0, atol=1e-5)
    torch.testing.assert_close(greedy.score, beam.score, rtol=0, atol=1e-5)


# bf16 autocast (`--precision bf16`) keeps both equivalences: the same tokens, and scores within
# bf16's rounding.
PRECISIONS = pytest.mark.parametrize("precision", ["fp32", "bf16"])
SCORE_ATOL = {"fp32": 1e-4, "bf16": 2e-2}


@pytest.fixture(scope="module")
def long_sources():
    """8 sources of 20..110 tokens (+ EOS), padded to 111, and 6 target tokens at most."""
    src, _, _, lengths = copy_batch(8, torch.Generator().manual_seed(6), lo=20, hi=110)
    return src, torch.full_like(lengths, 6)


@PRECISIONS
@pytest.mark.parametrize("method,beam", [("greedy", 1), ("beam", 4)])
@pytest.mark.parametrize("inputs", ["sources", "long_sources"])
def test_batched_equals_one_sentence_at_a_time(
    copy_model, inputs, method, beam, precision, request
):
    """A sentence decodes to the same hypotheses alone and in a padded batch, short sources and
    long ones whose padding spans many keys; in bf16 with the same scores to the last bit. (In
    float32 the linear maps themselves round one row differently from several, in MKL and in
    oneDNN alike, so the scores may differ in their last bits.) The guarantee end to end: this
    tiny model keeps it even without the key padding, which tests/model/test_attention.py
    pins down (`test_a_row_attends_the_same_bit_for_bit_whatever_the_padding`)."""
    src, max_len = request.getfixturevalue(inputs)
    settings = DecodeOptions(method=method, beam=beam, nbest=beam)
    with autocast("cpu", precision):
        batched = generate([copy_model], src, max_len, settings)
        for i in range(src.size(0)):
            alone = src[i : i + 1, : int(padding_mask(src[i]).sum())]  # no padding at all
            single = generate([copy_model], alone, max_len[i : i + 1], settings)
            for j in range(batched.tokens.size(1)):
                assert best(batched, i, j) == best(single, 0, j), (i, j)
            if precision == "bf16":
                assert torch.equal(batched.log_prob[i], single.log_prob[0]), i
                assert torch.equal(batched.score[i], single.score[0]), i
            else:
                torch.testing.assert_close(
                    batched.score[i], single.score[0], rtol=0, atol=SCORE_ATOL[precision]
                )


@PRECISIONS
@pytest.mark.parametrize("method,beam", [("greedy", 1), ("beam", 4)])
def test_cached_equals_uncached(copy_model, sources, method, beam, precision):
    src, max_len = sources
    with autocast("cpu", precision):
        cached = generate([copy_model], src, max_len, DecodeOptions(method=method, beam=beam))
        uncached = generate(
            [copy_model], src, max_len, DecodeOptions(method=method, beam=beam, use_cache=False)
        )
    assert torch.equal(cached.tokens, uncached.tokens)
    assert cached.score.dtype == torch.float32
    torch.testing.assert_close(cached.score, uncached.score, rtol=0, atol=SCORE_ATOL[precision])


@pytest.mark.parametrize("method,beam", [("greedy", 1), ("beam", 4)])
def test_the_autocast_copy_decodes_exactly_as_autocast(copy_model, sources, method, beam):
    """`autocast_copy`, what the torch engine decodes with in bf16, holds the linear maps (and an
    untied output projection) in bf16 once instead of having autocast cast them at every step:
    the very same tokens and scores, bit for bit, and the original model untouched."""
    src, max_len = sources
    copy = autocast_copy(copy_model, torch.bfloat16)
    settings = DecodeOptions(method=method, beam=beam)
    with autocast("cpu", "bf16"):
        expected = generate([copy_model], src, max_len, settings)
        got = generate([copy], src, max_len, settings)
    assert torch.equal(expected.tokens, got.tokens) and torch.equal(expected.score, got.score)
    linear = {
        f"{name}.{p}" for name, m in copy.named_modules() if isinstance(m, nn.Linear)
        for p in ("weight", "bias")
    }  # fmt: skip
    assert "output_projection.weight" in linear and len(linear) > 20
    for name, p in copy.named_parameters():
        assert p.dtype == (torch.bfloat16 if name in linear else torch.float32), name
    assert copy_model.config.share_embeddings and copy_model.output_projection is None  # still tied
    assert {p.dtype for p in copy_model.parameters()} == {torch.float32}
    engine = TorchEngine([copy_model], precision="bf16")
    assert engine.models[0] is not copy_model
    assert engine.models[0].output_weight.dtype == torch.bfloat16


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_log_probs_are_the_float32_log_softmax_of_the_logits(copy_model, sources, precision):
    """bf16 logits are converted into the reused float32 block and normalised there in place:
    the very values of log_softmax(logits, dtype=float32), at every step."""
    src, _ = sources
    model = autocast_copy(copy_model, torch.bfloat16) if precision == "bf16" else copy_model
    with torch.no_grad(), autocast("cpu", precision):
        state = ModelState(model, src, use_cache=False)
        prefix = torch.full((src.size(0), 1), BOS_ID, dtype=torch.long)
        for _ in range(3):
            got = state.log_probs(prefix)
            logits = model.decode(prefix, state.memory, state.src_mask)[:, -1]
            assert got.dtype == torch.float32
            assert torch.equal(got, torch.log_softmax(logits, dim=-1, dtype=torch.float32))
            prefix = torch.cat([prefix, got.argmax(-1, keepdim=True)], dim=1)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_ensemble_of_one_model_equals_the_model(copy_model, sources, method):
    src, max_len = sources
    settings = DecodeOptions(method=method, seed=3, nbest=2 if method != "greedy" else 1)
    alone = generate([copy_model], src, max_len, settings)
    for models in ([copy_model], [copy_model, copy_model]):
        ensemble = generate(models, src, max_len, settings)
        assert torch.equal(alone.tokens, ensemble.tokens)
        torch.testing.assert_close(alone.score, ensemble.score, rtol=0, atol=1e-6)


def test_encoder_and_cross_attention_run_once(copy_model, sources, monkeypatch):
    """The source is encoded once and each decoder layer projects its cross-attention keys and
    values once (at the first step), however many steps and beam reorderings follow."""
    src, max_len = sources
    calls = {"encode": 0, "kv": 0}
    encode = copy_model.encode

    def counting_encode(*args, **kwargs):
        calls["encode"] += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(copy_model, "encode", counting_encode)
    for layer in copy_model.decoder.layers:
        project_kv = layer.cross_attn.project_kv

        def counting_kv(memory, _inner=project_kv):
            calls["kv"] += 1
            return _inner(memory)

        monkeypatch.setattr(layer.cross_attn, "project_kv", counting_kv)
    out = generate([copy_model], src, max_len, DecodeOptions(beam=4))
    assert out.steps > 3
    assert calls == {"encode": 1, "kv": len(copy_model.decoder.layers)}


def test_sampling_is_reproducible_with_a_seed(copy_model, sources):
    src, max_len = sources
    settings = DecodeOptions(method="sample", temperature=1.5, top_p=0.9, seed=42, nbest=3)
    first = generate([copy_model], src, max_len, settings)
    again = generate([copy_model], src, max_len, settings)
    assert torch.equal(first.tokens, again.tokens)
    assert torch.all(first.score[:, :-1] >= first.score[:, 1:])
