"""The padding probe of the questions study: with the key padding mask a sentence's
log-probability in a padded batch equals its value alone; without the mask it moves, the more
the more padding; the results are kept and reported with a plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.training.conftest import micro_config, write_config
from transformer import Transformer
from transformer.cli import main
from transformer.config import ModelConfig
from transformer.data.batching import collate
from transformer.data.dataset import load_split
from transformer.study.padding import padding_probe, sentence_nll
from transformer.study.report import padding_markdown, padding_png


def model(vocab: int = 400) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=vocab, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2,
        n_decoder_layers=2, dropout=0.0,
    )  # fmt: skip
    return Transformer(config).eval()


def test_sentence_nll_is_the_summed_cross_entropy_of_each_sentence(small_data: Path):
    pairs = [load_split(small_data, "valid")[i] for i in range(3)]
    m = model()
    batch = collate(pairs)
    got = sentence_nll(m, batch)
    for i, pair in enumerate(pairs):  # one at a time, by the written-out formula
        one = collate([pair])
        logits = m(one.src, one.tgt_in)[0].float()
        expected = -logits.log_softmax(-1).gather(1, one.tgt_out[0, :, None]).sum()
        assert got[i].item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_mask_makes_a_batched_sentence_equal_to_itself_alone(small_data: Path):
    result = padding_probe(model(), load_split(small_data, "valid"), batch_size=8)
    rows = {(r["batches"].split(",")[0], r["masked"]): r for r in result["rows"]}
    alone = rows["one sentence at a time", None]
    assert result["sentences"] == 40 and alone["padding"] == 0.0
    for arrangement in ("by length", "random order"):
        masked, unmasked = rows[arrangement, True], rows[arrangement, False]
        assert masked["max_change"] < 1e-3 and masked["changed"] == 0.0
        assert masked["ppl"] == pytest.approx(alone["ppl"], rel=1e-5)
        assert masked["padding"] == unmasked["padding"] > 0
    assert rows["random order", True]["padding"] > rows["by length", True]["padding"]
    moved = rows["random order", False]
    assert moved["changed"] > 0.5 and moved["max_change"] > 0.1
    assert moved["ppl"] != pytest.approx(alone["ppl"], rel=1e-3)
    # Only sentences with padding in their row move; the longest of each batch has none.
    points = result["scatter"]["unmasked"]
    assert all(abs(c) < 1e-5 for p, c in points if p == 0)
    assert all(abs(c) < 1e-5 for _, c in result["scatter"]["masked"])
    lines = padding_markdown(result, "by_question/padding.png")
    assert any(line.startswith("| random order, 8 per batch | **no** |") for line in lines)
    assert padding_png(result)[:4] == b"\x89PNG"
    assert math.isfinite(alone["ppl"])


@pytest.mark.slow
def test_the_questions_study_measures_padding_on_its_base_row(small_data, tmp_path, capsys):
    config = write_config(
        tmp_path / "base.yaml", micro_config(small_data, train={"progress": False})
    )
    out = tmp_path / "q"
    args = ["study", "questions", "--config", str(config), "--budget", "2", "--out", str(out)]
    assert main([*args, "--rows", "Q1"]) == 0
    markdown = (out / "by_question.md").read_text(encoding="utf-8")
    assert "## How is padding masked?" in markdown and "| one sentence at a time |" in markdown
    assert (out / "by_question" / "padding.png").read_bytes()[:4] == b"\x89PNG"
    kept = (out / "padding.json").stat().st_mtime_ns
    assert main([*args, "--rows", "Q1"]) == 0  # nothing new trained: the probe is kept
    assert (out / "padding.json").stat().st_mtime_ns == kept
