"""The ctranslate2 engine behind the Translator: option mapping, length limits, refusals."""

from __future__ import annotations

import pytest
import torch

from tests.optional import require
from transformer import Translator
from transformer.config import ConfigError
from transformer.decoding.options import DecodeOptions
from transformer.export import export_ctranslate2
from transformer.modeldir import ModelDirError, save_model_dir
from transformer.vocab import BOS_ID, EOS_ID

require("ctranslate2")


def same_best_tokens(a, b) -> bool:
    return [r.hypotheses[0].tokens for r in a] == [r.hypotheses[0].tokens for r in b]


def test_per_sentence_length_limits_as_torch(torch_translator, ct2_translator, sentences):
    """max_len = 0.5 x source cuts most copies short, at a different length per sentence of a
    batch: CTranslate2 decodes a batch at its largest limit, re-decodes the sentences that went
    past their own, and ends limit-stopped hypotheses with EOS as ours does (greedy: exactly)."""
    short = sentences[:50]
    for method in ("greedy", "beam"):
        options = dict(method=method, max_len_a=0.5, max_len_b=0)
        ours = torch_translator.translate_nbest(short, **options)
        theirs = ct2_translator.translate_nbest(short, **options)
        assert same_best_tokens(ours, theirs), method
        for text, result in zip(short, theirs):
            limit = len(ct2_translator.tokenizer.encode(text)) // 2
            assert len(result.hypotheses[0].tokens) <= max(limit, 1)
    # A hypothesis stopped by the limit gets the real log-probability of its forced EOS.
    ours = torch_translator.translate_nbest(short, method="greedy", max_len_a=0, max_len_b=2)
    theirs = ct2_translator.translate_nbest(short, method="greedy", max_len_a=0, max_len_b=2)
    assert same_best_tokens(ours, theirs)
    for a, b in zip(ours, theirs):
        assert b.hypotheses[0].log_prob == pytest.approx(a.hypotheses[0].log_prob, abs=1e-3)


def test_min_len_and_no_repeat_ngram_as_torch(torch_translator, ct2_translator):
    texts = ["rot rot rot", "Ein Hund und ein Hund", "Mann", "blau blau"]
    for options in (dict(no_repeat_ngram=1), dict(no_repeat_ngram=2), dict(min_len=5)):
        ours = torch_translator.translate_nbest(texts, method="greedy", **options)
        theirs = ct2_translator.translate_nbest(texts, method="greedy", **options)
        assert same_best_tokens(ours, theirs), options
    for result in ct2_translator.translate_nbest(texts, method="greedy", no_repeat_ngram=1):
        tokens = result.hypotheses[0].tokens
        assert len(set(tokens)) == len(tokens)
    for result in ct2_translator.translate_nbest(texts, method="greedy", min_len=5):
        assert len(result.hypotheses[0].tokens) >= 5


def test_scores_use_our_length_penalties(ct2_translator):
    (gnmt,) = ct2_translator.translate_nbest(["Ein Mann"], nbest=3, alpha=0.6)
    (power,) = ct2_translator.translate_nbest(["Ein Mann"], nbest=3, length_penalty="power")
    for h in gnmt.hypotheses:
        assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens) + 1) / 6) ** 0.6)
    for h in power.hypotheses:
        assert h.score == pytest.approx(h.log_prob / (len(h.tokens) + 1) ** 0.6)


def test_sampling_gives_nbest_model_scored_samples_reproducibly(ct2_translator, torch_translator):
    options = dict(method="sample", nbest=5, temperature=2.0, seed=7)
    (first,) = ct2_translator.translate_nbest(["Ein Mann"], **options)
    (again,) = ct2_translator.translate_nbest(["Ein Mann"], **options)
    assert [h.tokens for h in first.hypotheses] == [h.tokens for h in again.hypotheses]
    assert len(first.hypotheses) == 5
    assert len({tuple(h.tokens) for h in first.hypotheses}) > 1  # temperature 2: they differ
    # Their log-probabilities are the model's (untempered), as in the torch engine.
    model = torch_translator.models[0]
    src = torch.tensor([[*torch_translator.tokenizer.encode("Ein Mann"), EOS_ID]])
    for h in first.hypotheses:
        with torch.no_grad():
            lp = model(src, torch.tensor([[BOS_ID, *h.tokens]]))[0].log_softmax(-1)
        gold = torch.tensor([*h.tokens, EOS_ID])
        expected = lp[torch.arange(len(gold)), gold].sum().item()
        assert h.log_prob == pytest.approx(expected, abs=1e-3)


def test_options_ctranslate2_cannot_honour_are_refused(ct2_translator, ct2_float32_dir):
    with pytest.raises(ConfigError, match="attention"):
        ct2_translator.translate_nbest(["Ein Mann"], attention=True)
    with pytest.raises(ConfigError, match="use_cache"):
        ct2_translator.translate(["Ein Mann"], use_cache=False)
    with pytest.raises(ConfigError, match="ensembles need engine torch"):
        Translator.from_pretrained([ct2_float32_dir, ct2_float32_dir], engine="ctranslate2")
    with pytest.raises(ConfigError, match="engine: must be one of torch, ctranslate2"):
        Translator.from_pretrained(ct2_float32_dir, engine="onnx")


def test_a_directory_that_was_not_exported_says_to_run_export(copy_model_dir, tmp_path):
    with pytest.raises(ModelDirError, match=r"no model\.bin \(a PyTorch model directory\)") as info:
        Translator.from_pretrained(copy_model_dir, engine="ctranslate2")
    assert f"transformer export --model {copy_model_dir} --format ctranslate2" in str(info.value)
    with pytest.raises(ModelDirError, match="not a directory"):
        Translator.from_pretrained(tmp_path / "nothing", engine="ctranslate2")


def test_threads_follow_torch(ct2_float32_dir):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        translator = Translator.from_pretrained(ct2_float32_dir, engine="ctranslate2")
        assert translator.engine.threads == 1
    finally:
        torch.set_num_threads(threads)


def test_cpu_threads_are_single_threaded_workers_over_sub_batches(ct2_float32_dir, sentences):
    """On CPU, `threads` workers of one thread each decode sub-batches in parallel (the
    engine's module doc), and that changes no output: one sub-batch per sentence or one worker
    gives the same hypotheses and scores."""
    from transformer.decoding import ct2_engine

    engine, tokenizer = ct2_engine.load_ctranslate2_dir(ct2_float32_dir, threads=2)
    assert engine.translator.num_translators == 2
    assert engine._options(DecodeOptions())["max_batch_size"] == ct2_engine.CPU_SUB_BATCH
    texts = sentences
    options = dict(method="beam", beam=4, nbest=2)
    split = Translator.from_engine(engine, tokenizer).translate_nbest(texts, **options)
    one, _ = ct2_engine.load_ctranslate2_dir(ct2_float32_dir, threads=1)
    assert one.translator.num_translators == 1
    whole = Translator.from_engine(one, tokenizer).translate_nbest(
        texts, max_sentences=1, **options
    )
    for a, b in zip(split, whole):
        assert [h.tokens for h in a.hypotheses] == [h.tokens for h in b.hypotheses]
        for ha, hb in zip(a.hypotheses, b.hypotheses):
            assert ha.score == pytest.approx(hb.score, abs=1e-4)


def test_position_limit_truncates_as_torch(learned_positions_model, copy_tokenizer, tmp_path):
    """An exported model's position table (here 6 learned positions) is its length limit: long
    inputs are cut and flagged, outputs capped, exactly as the torch engine does."""
    model_dir = save_model_dir(tmp_path / "learned", learned_positions_model, copy_tokenizer)
    out = export_ctranslate2(model_dir, tmp_path / "ct2", "float32")
    texts = ["Zwei junge Männer spielen Fußball", "rot"]
    ours = Translator.from_pretrained(model_dir, precision="fp32").translate_nbest(
        texts, method="greedy"
    )
    ct2 = Translator.from_pretrained(out, engine="ctranslate2")
    assert ct2.max_positions == 6
    theirs = ct2.translate_nbest(texts, method="greedy")
    assert [r.truncated for r in theirs] == [True, False]
    assert same_best_tokens(ours, theirs)
    assert all(len(r.hypotheses[0].tokens) <= 5 for r in theirs)
