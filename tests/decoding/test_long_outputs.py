"""Outputs far longer than the KV cache's first allocation (16 positions, then grown by copying):
decoding with the cache equals decoding without it, token for token and score for score.

The model is untrained (tiny, random weights) and `min_len` forbids EOS before 60 tokens, so every
hypothesis is 60 to |source| + 62 tokens long (66 to 85 here); the sources have different
lengths, so the batch is padded.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_config
from transformer import Transformer, Translator
from transformer.model import padding_mask
from transformer.model.cache import LayerCache

SOURCES = [
    "Ein Mann",
    "Zwei Hunde spielen im Schnee.",
    "Kinder",
    "Eine Frau mit einem roten Hut.",
]
MIN_LEN = 60
INITIAL_SLOTS = 16  # LayerCache's first allocation


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread: on 2 busy shared cores, two threads make these small steps several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def translator(copy_tokenizer) -> Translator:
    torch.manual_seed(1)
    model = Transformer(tiny_config(vocab_size=copy_tokenizer.vocab_size)).eval()
    return Translator([model], copy_tokenizer, precision="fp32")


class Recorder:
    """What the decoder's KV cache and the encoder saw during one translate call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model: Transformer) -> None:
        self.cached_positions: list[int] = []  # positions held after each append
        self.padded_batches = 0
        append_self, encode = LayerCache.append_self, model.encode

        def recording_append(cache, k, v):
            keys, values = append_self(cache, k, v)
            self.cached_positions.append(keys.size(2))
            return keys, values

        def recording_encode(src_ids, *args, **kwargs):
            self.padded_batches += int(not padding_mask(src_ids).all())
            return encode(src_ids, *args, **kwargs)

        monkeypatch.setattr(LayerCache, "append_self", recording_append)
        monkeypatch.setattr(model, "encode", recording_encode)


def translate(translator, monkeypatch, **options):
    with monkeypatch.context() as patch:
        recorder = Recorder(patch, translator.models[0])
        results = translator.translate_nbest(
            SOURCES, min_len=MIN_LEN, max_len_a=1.0, max_len_b=62, **options
        )
    return results, recorder


@pytest.mark.parametrize(
    "options",
    [dict(method="greedy"), dict(method="beam", beam=4, nbest=4)],
    ids=["greedy", "beam4"],
)
def test_long_outputs_cached_equal_uncached(translator, monkeypatch, options):
    cached, with_cache = translate(translator, monkeypatch, **options)
    uncached, without_cache = translate(translator, monkeypatch, use_cache=False, **options)

    # the test decodes what it claims: one padded batch, long outputs, a cache that grew
    assert with_cache.padded_batches == 1 and without_cache.padded_batches == 1
    assert max(with_cache.cached_positions) > MIN_LEN > 2 * INITIAL_SLOTS  # grown twice at least
    assert without_cache.cached_positions == []  # use_cache=False never touches a cache
    lengths = [len(h.tokens) for r in cached for h in r.hypotheses]
    assert len(lengths) == len(SOURCES) * options.get("nbest", 1)
    assert min(lengths) >= MIN_LEN, lengths
    assert len(set(lengths)) > 1, "per-sentence limits: outputs of different lengths expected"

    for i, (a, b) in enumerate(zip(cached, uncached)):
        assert [h.tokens for h in a.hypotheses] == [h.tokens for h in b.hypotheses], i
        for h, g in zip(a.hypotheses, b.hypotheses):
            assert h.score == pytest.approx(g.score, abs=1e-4), i
            assert h.log_prob == pytest.approx(g.log_prob, abs=1e-3), i
