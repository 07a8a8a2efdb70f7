"""The Translator facade: text in, text out, with the copy model of conftest.py."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from transformer import Translator
from transformer.config import ConfigError
from transformer.data import SubwordTokenizer
from transformer.modeldir import ModelDirError

WORDS = ["Hund", "Ein Mann", "rot", "Frau", "Kinder", "ein Ball", "blau", "Auto"]


@pytest.fixture(scope="module")
def translator(copy_model_dir) -> Translator:
    return Translator.from_pretrained(copy_model_dir, device="cpu", precision="fp32")


def test_the_copy_model_translates_text_into_itself(translator):
    """Short texts (<= 8 subwords, what the model was trained to copy) come back unchanged:
    the facade appends EOS, starts from BOS and detokenizes correctly."""
    short = [w for w in WORDS if len(translator.tokenizer.encode(w)) <= 8]
    out = translator.translate(short)
    assert sum(o == w for o, w in zip(out, short)) >= len(short) - 1, out


def test_results_come_back_in_input_order_and_equal_one_at_a_time(translator):
    texts = ["Ein Mann", "", "Kinder", "   ", "rot", "ein Ball und ein Hund", "Frau"]
    for method in ("greedy", "beam"):
        together = translator.translate(texts, method=method, max_tokens=8)  # several batches
        alone = [translator.translate([t], method=method)[0] for t in texts]
        assert together == alone
        assert together[1] == "" and together[3] == ""


def test_nbest_scores_and_attention(translator):
    (result,) = translator.translate_nbest(["Ein Mann"], nbest=3, attention=True)
    hyps = result.hypotheses
    assert len(hyps) == 3
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    for h in hyps:
        lp = ((5 + len(h.tokens) + 1) / 6) ** 0.6  # |Y| counts the EOS
        assert h.score == pytest.approx(h.log_prob / lp, rel=1e-5)
        assert h.text == translator.tokenizer.decode(h.tokens)
    n_src = len(translator.tokenizer.encode("Ein Mann")) + 1
    n_tgt = len(hyps[0].tokens) + 1
    assert result.attention.shape == (2, 4, n_tgt, n_src)
    torch.testing.assert_close(result.attention.sum(-1), torch.ones(2, 4, n_tgt))
    assert len(result.source_tokens) == n_src and result.source_tokens[-1] == "</s>"
    assert len(result.target_tokens) == n_tgt and result.target_tokens[-1] == "</s>"


def test_attention_in_bf16(copy_model_dir):
    """In bf16 the engine's models hold their linear maps in bf16; the attention pass runs in
    the engine's precision too, and gives fp32's maps to bf16's rounding."""
    texts = ["Ein Mann", "Zwei junge Leute spielen im Park Fußball"]
    fp32 = Translator.from_pretrained(copy_model_dir).translate_nbest(texts, attention=True)
    bf16 = Translator.from_pretrained(copy_model_dir, precision="bf16")
    compared = 0
    for a, b in zip(fp32, bf16.translate_nbest(texts, attention=True)):
        if a.hypotheses[0].tokens == b.hypotheses[0].tokens:
            torch.testing.assert_close(a.attention, b.attention, atol=0.05, rtol=0)
            compared += 1
    assert compared > 0  # bf16 kept at least one of fp32's translations


def test_attention_maps_of_every_kind(translator):
    texts = ["Ein Mann", "Zwei junge Leute spielen im Park Fußball"]
    batched = translator.translate_nbest(texts, attention=True)
    for text, result in zip(texts, batched):
        maps = result.attention_maps
        n_src = len(translator.tokenizer.encode(text)) + 1
        n_tgt = len(result.hypotheses[0].tokens) + 1
        assert maps.encoder_self.shape == (2, 4, n_src, n_src)
        assert maps.decoder_self.shape == (2, 4, n_tgt, n_tgt)
        assert maps.cross.shape == (2, 4, n_tgt, n_src)
        assert (
            maps.decoder_tokens[0] == "<s>" and maps.decoder_tokens[1:] == maps.target_tokens[:-1]
        )
        for weights in (maps.encoder_self, maps.decoder_self, maps.cross):
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        # causal: a decoder position never attends to a later one
        assert torch.triu(maps.decoder_self, diagonal=1).abs().max() == 0
        # padding in the batch changes nothing: equal to translating the sentence alone
        (alone,) = translator.translate_nbest([text], attention=True)
        for kind in ("encoder_self", "decoder_self", "cross"):
            torch.testing.assert_close(getattr(maps, kind), getattr(alone.attention_maps, kind))


def test_empty_input_gives_empty_nbest(translator):
    (result,) = translator.translate_nbest([""], nbest=2)
    assert [h.text for h in result.hypotheses] == ["", ""]
    assert translator.translate([]) == []


def test_unknown_or_invalid_options_are_named(translator):
    with pytest.raises(ConfigError, match="beam_size: unknown option"):
        translator.translate(["a"], beam_size=4)
    with pytest.raises(ConfigError, match="nbest: must be <= beam"):
        translator.translate(["a"], beam=2, nbest=3)
    with pytest.raises(ConfigError, match="method"):
        translator.translate(["a"], method="viterbi")


def test_a_broken_model_directory_is_refused_with_a_clear_message(copy_model_dir, tmp_path):
    missing = tmp_path / "missing"
    shutil.copytree(copy_model_dir, missing)
    (missing / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match=r"missing tokenizer\.json"):
        Translator.from_pretrained(missing)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(copy_model_dir, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelDirError, match=r"model\.safetensors: cannot load the weights"):
        Translator.from_pretrained(corrupt)

    other = tmp_path / "other-vocab"
    shutil.copytree(copy_model_dir, other)
    text = tmp_path / "t.txt"
    text.write_text("ein Hund und eine Katze\n" * 50, encoding="utf-8")
    SubwordTokenizer.train([text], 270).save(other / "tokenizer.json")
    with pytest.raises(ModelDirError, match="does not belong to this model"):
        Translator.from_pretrained(other)


def test_ensemble_of_one_directory_twice_equals_one(copy_model_dir, translator):
    ensemble = Translator.from_pretrained([copy_model_dir, copy_model_dir])
    texts = ["Ein Mann", "Kinder", "rot"]
    assert ensemble.translate(texts) == translator.translate(texts)


def test_an_ensemble_needs_one_tokenizer(copy_model_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(copy_model_dir, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["normalizer"] = {"type": "NFKC"}  # same vocabulary size, another tokenizer
    (other / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    with pytest.raises(ModelDirError, match="an ensemble needs models trained with the same"):
        Translator.from_pretrained([copy_model_dir, other])


def test_learned_positions_truncate_long_inputs_with_a_warning(
    learned_positions_model, copy_tokenizer
):
    translator = Translator([learned_positions_model], copy_tokenizer)
    long_text = "Zwei junge Männer spielen Fußball auf einer Wiese"
    with pytest.warns(UserWarning, match="input 1: longer than the model's 6 positions"):
        translator.translate(["rot", long_text])
    results = translator.translate_nbest(["rot", long_text], max_len_b=50)
    assert [r.truncated for r in results] == [False, True]
    for r in results:
        assert len(r.hypotheses[0].tokens) <= 5  # BOS + 5 tokens = the 6 positions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        translator.translate(["rot"])  # a short input: no warning


def test_bf16_decoding_gives_the_fp32_translations(copy_model_dir, translator):
    """`precision="bf16"` decodes under bf16 autocast: on a model with decisive choices the same
    texts, in order, batched or not; scores within bf16's rounding (8 significant bits) of fp32's."""
    fast = Translator.from_pretrained(copy_model_dir, precision="bf16")
    assert fast.precision == "bf16" and translator.precision == "fp32"
    texts = ["Ein Mann", "", "Kinder", "rot", "ein Ball", "Frau"]
    for method in ("greedy", "beam"):
        together = fast.translate(texts, method=method, max_tokens=8)
        assert together == [fast.translate([t], method=method)[0] for t in texts]
        assert together == translator.translate(texts, method=method)
    (exact,) = translator.translate_nbest(["Ein Mann"], nbest=2)
    (rounded,) = fast.translate_nbest(["Ein Mann"], nbest=2)
    for a, b in zip(exact.hypotheses, rounded.hypotheses, strict=True):
        assert a.text == b.text and b.score == pytest.approx(a.score, rel=2e-2, abs=1e-2)


def test_an_unknown_precision_is_refused(copy_model_dir):
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        Translator.from_pretrained(copy_model_dir, precision="fp16")
    with pytest.raises(ConfigError, match="torch engine"):
        Translator.from_pretrained(copy_model_dir, engine="ctranslate2", precision="bf16")
