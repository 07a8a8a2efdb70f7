"""A CTranslate2 export computes what our PyTorch model computes, and decodes to the same output.

Log-probabilities: CTranslate2 removes the banned tokens (PAD and BOS, always) before its
softmax, ours after, so its hypothesis log-probabilities are ours renormalised over the allowed
tokens (higher by -log(1 - p(PAD) - p(BOS)) per token, see transformer.decoding.ct2_engine).
The tests compute that renormalised value with our model and compare to 1e-4. Teacher-forced
scoring has no banned tokens and agrees with ours directly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import tiny_config
from tests.optional import require
from transformer import Transformer, Translator
from transformer.modeldir import save_model_dir
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID

ctranslate2 = require("ctranslate2")

from transformer.export import export_ctranslate2  # noqa: E402


def renormalised_log_prob(translator: Translator, source: str, tokens: list[int]) -> float:
    """Our model's log P(tokens + EOS | source) with PAD and BOS removed before the softmax."""
    model = translator.models[0]
    src = torch.tensor([[*translator.tokenizer.encode(source), EOS_ID]])
    with torch.no_grad():
        logits = model(src, torch.tensor([[BOS_ID, *tokens]]))[0]  # (|Y|, V)
    logits[:, [PAD_ID, BOS_ID]] = -math.inf
    gold = torch.tensor([*tokens, EOS_ID])
    return logits.log_softmax(-1)[torch.arange(len(gold)), gold].sum().item()


def assert_log_prob_as_renormalised(torch_translator, source: str, hypothesis) -> None:
    expected = renormalised_log_prob(torch_translator, source, hypothesis.tokens)
    assert hypothesis.log_prob == pytest.approx(expected, abs=1e-4), source


def test_greedy_output_equals_torch_on_100_sentences(torch_translator, ct2_translator, sentences):
    ours = torch_translator.translate_nbest(sentences, method="greedy")
    theirs = ct2_translator.translate_nbest(sentences, method="greedy")
    assert len(sentences) == 100
    for a, b in zip(ours, theirs):
        assert b.hypotheses[0].tokens == a.hypotheses[0].tokens, a.source
        assert_log_prob_as_renormalised(torch_translator, a.source, b.hypotheses[0])


def test_beam4_output_equals_torch_on_100_sentences(torch_translator, ct2_translator, sentences):
    """Same best hypothesis (or, on a tie-break, the same score) and, with re-ranking by our
    GNMT formula, scores that satisfy it."""
    ours = torch_translator.translate_nbest(sentences, beam=4)
    theirs = ct2_translator.translate_nbest(sentences, beam=4)
    for a, b in zip(ours, theirs):
        x, y = a.hypotheses[0], b.hypotheses[0]
        if x.tokens != y.tokens:
            assert y.score == pytest.approx(x.score, abs=1e-4), a.source
            continue
        assert_log_prob_as_renormalised(torch_translator, a.source, y)
        lp = ((5 + len(y.tokens) + 1) / 6) ** 0.6  # |Y| counts the EOS
        assert y.score == pytest.approx(y.log_prob / lp, rel=1e-6)


def test_nbest_lists_equal_torch(torch_translator, ct2_translator, sentences):
    """All 4 hypotheses of beam 4, in order: CTranslate2 (patience 1.5) finds the ones our
    search finds, and our re-ranking orders them as ours."""
    short = sentences[:50]
    ours = torch_translator.translate_nbest(short, beam=4, nbest=4)
    theirs = ct2_translator.translate_nbest(short, beam=4, nbest=4)
    for a, b in zip(ours, theirs):
        assert [h.tokens for h in b.hypotheses] == [h.tokens for h in a.hypotheses], a.source
        scores = [h.score for h in b.hypotheses]
        assert scores == sorted(scores, reverse=True)


def _perturbed(model: Transformer) -> Transformer:
    """Random LayerNorm gains/biases and linear biases, so that a misplaced one shows."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # Everything that is not the default at once: a layout bug in any shows.
        dict(
            norm_position="pre",
            positional="learned",
            max_positions=24,
            share_embeddings=False,
            layer_norm_eps=1e-3,
            d_k=12,
            d_v=12,
        ),
        # The study's ablations: unscaled dot products, W^K = W^Q, no positional encoding.
        dict(scale_attention=False, shared_query_key=True, positional="none"),
        # The exportable learners' options: GELU, embeddings without the sqrt(d_model) factor.
        dict(activation="gelu", scale_embedding=False),
    ],
    ids=[
        "post-sinusoidal-shared",
        "pre-learned-separate-eps-headdim",
        "ablations",
        "gelu-unscaled",
    ],
)
def test_random_model_scores_and_greedy_equal_torch(copy_tokenizer, tmp_path, overrides):
    """Teacher-forced log-probabilities of random targets (CTranslate2's score_batch) equal
    ours within 1e-4, and greedy decoding gives the same tokens."""
    v = copy_tokenizer.vocab_size
    config = tiny_config(vocab_size=v, n_decoder_layers=3, **overrides)
    model = _perturbed(Transformer(config))
    model_dir = save_model_dir(tmp_path / "model", model, copy_tokenizer)
    out = export_ctranslate2(model_dir, tmp_path / "ct2", "float32")
    vocab = json.loads((out / "shared_vocabulary.json").read_text(encoding="utf-8"))
    engine = ctranslate2.Translator(str(out), intra_threads=1)

    generator = torch.Generator().manual_seed(2)
    sources = [[*torch.randint(4, v, (n,), generator=generator).tolist(), 2] for n in (3, 9, 14)]
    targets = [torch.randint(4, v, (n,), generator=generator).tolist() for n in (1, 7, 12)]
    results = engine.score_batch(
        [[vocab[i] for i in s] for s in sources], [[vocab[i] for i in t] for t in targets]
    )
    for src, tgt, result in zip(sources, targets, results):
        with torch.no_grad():
            lp = model(torch.tensor([src]), torch.tensor([[1, *tgt]])).log_softmax(-1)[0]
        gold = torch.tensor([*tgt, 2])
        ours = lp[torch.arange(len(gold)), gold]
        torch.testing.assert_close(torch.tensor(result.log_probs), ours, atol=1e-4, rtol=0)

    texts = ["Ein Mann", "Zwei Hunde spielen", "rot", "Eine Frau mit einem Hut"]
    ours = Translator.from_pretrained(model_dir, precision="fp32").translate_nbest(
        texts, method="greedy"
    )
    theirs = Translator.from_pretrained(out, engine="ctranslate2").translate_nbest(
        texts, method="greedy"
    )
    for a, b in zip(ours, theirs):
        assert b.hypotheses[0].tokens == a.hypotheses[0].tokens


def test_int8_export_loads_and_translates_like_float32(
    torch_translator, ct2_int8_dir, ct2_float32_dir, sentences
):
    """int8 weights: a smaller model.bin, and the copy model still copies what it copies in
    float32 (the short sentences, which it is sure about)."""
    assert (ct2_int8_dir / "model.bin").stat().st_size < (
        ct2_float32_dir / "model.bin"
    ).stat().st_size
    int8 = Translator.from_pretrained(ct2_int8_dir, engine="ctranslate2")
    assert int8.engine.translator.compute_type.startswith("int8")
    short = sentences[:50]
    ours = torch_translator.translate(short, method="greedy")
    theirs = int8.translate(short, method="greedy")
    assert sum(a == b for a, b in zip(ours, theirs)) >= 45
