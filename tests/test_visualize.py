"""`transformer visualize`: the files it writes, the values it plots, and its errors."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from transformer import Transformer, Translator
from transformer.cli import main
from transformer.visualize import (
    attention_figures,
    positional_encoding_figure,
    positional_encoding_tables,
    readable_token,
)

TEXT = "Ein Hund läuft über die Wiese."
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def paper_sinusoids(n_positions: int, d_model: int) -> np.ndarray:
    """PAPER.md, section 3.5, element by element: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)),
    PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)): interleaved, the pair sharing its exponent."""
    table = np.zeros((n_positions, d_model))
    for pos in range(n_positions):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            table[pos, 2 * i] = math.sin(angle)
            table[pos, 2 * i + 1] = math.cos(angle)
    return table


def test_visualize_writes_one_png_per_kind_per_layer(copy_model_dir, tmp_path, capsys):
    out, text = tmp_path / "viz", "Ein Hund läuft."  # short, and a low resolution: fast
    args = ["visualize", "--model", str(copy_model_dir), "--text", text, "--out", str(out)]
    assert main([*args, "--beam", "2", "--dpi", "60"]) == 0
    layers = (1, 2)  # the copy model has 2 encoder and 2 decoder layers
    expected = {
        *(
            f"{kind}_layer{n}.png"
            for kind in ("encoder_self", "decoder_self", "cross")
            for n in layers
        ),
        "positional_encoding.png",
    }
    assert {p.name for p in out.iterdir()} == expected  # and nothing else (no temporary files)
    for name in expected:
        path = out / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[2] in (3, 4), (name, image.shape)
        assert image.shape[0] > 150 and image.shape[1] > 150, (name, image.shape)

    printed = capsys.readouterr().out.splitlines()
    translation = Translator.from_pretrained(copy_model_dir).translate([text], beam=2)[0]
    assert printed[0] == f"translation: {translation}"
    assert sorted(printed[1:]) == sorted(str(out / name) for name in expected)


def test_attention_panels_are_the_models_weights(copy_model_dir):
    """Each head's panel holds exactly that head's weights, the last panel their mean, and the
    tick labels are the readable tokens of the right axis (cross: target rows, source columns)."""
    result = Translator.from_pretrained(copy_model_dir).translate_nbest([TEXT], attention=True)[0]
    maps = result.attention_maps
    figures = attention_figures(maps, source=TEXT, translation=result.text)
    assert len(figures) == 6
    fig = figures["cross_layer2.png"]
    heads = maps.cross.size(1)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == heads + 1
    for h in range(heads):
        np.testing.assert_allclose(images[h].get_array(), maps.cross[1, h].numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        images[heads].get_array(), maps.cross[1].mean(dim=0).numpy(), rtol=1e-5
    )
    ax = images[0].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        readable_token(t) for t in maps.source_tokens
    ]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        readable_token(t) for t in maps.target_tokens
    ]
    assert result.text in fig.get_suptitle()

    # Decoder self-attention: the future (above the diagonal) is masked out, the rest is shown.
    dec = next(ax.images[0] for ax in figures["decoder_self_layer1.png"].axes if ax.images)
    data = dec.get_array()
    t = maps.decoder_self.size(-1)
    assert np.array_equal(np.ma.getmaskarray(data), np.triu(np.ones((t, t), dtype=bool), k=1))
    np.testing.assert_allclose(np.tril(data.filled(0)), np.tril(maps.decoder_self[0, 0].numpy()))


@pytest.mark.parametrize("d_model", [16, 18])
def test_positional_table_is_the_papers_formula(d_model):
    """The table behind the plot, from a config and from a model (whose table grows past
    max_positions), equals the paper's interleaved formula, and so do the plotted pixels."""
    n = 40
    expected = paper_sinusoids(n, d_model)
    config = tiny_config(d_model=d_model, n_heads=2, max_positions=16)
    for source in (config, Transformer(config)):
        (table,) = positional_encoding_tables(source, n)
        assert not table.learned and table.stack == "encoder and decoder"
        np.testing.assert_allclose(table.values.numpy(), expected, atol=1e-6)
        fig = positional_encoding_figure(source, n)
        heat, lines = fig.axes[0], fig.axes[1]
        np.testing.assert_allclose(heat.images[0].get_array(), expected, atol=1e-6)
        for line in lines.get_lines():
            dim = int(line.get_label().split(":")[0].removeprefix("dim "))
            np.testing.assert_allclose(line.get_ydata(), expected[:, dim], atol=1e-6)
        assert "Sinusoidal" in fig.get_suptitle()


def test_learned_positions_plot_the_learned_tables(learned_positions_model):
    model = learned_positions_model
    tables = positional_encoding_tables(model, 100)  # capped at the model's 6 positions
    assert [t.stack for t in tables] == ["encoder", "decoder"]
    for table, stack in zip(tables, (model.encoder, model.decoder)):
        assert table.learned
        assert torch.equal(table.values, stack.embed.positional.weight.detach())
    fig = positional_encoding_figure(model, 100)
    assert "Learned" in fig.get_suptitle()
    np.testing.assert_array_equal(
        fig.axes[0].images[0].get_array(), model.encoder.embed.positional.weight.detach().numpy()
    )
    with pytest.raises(ValueError, match="learned"):
        positional_encoding_tables(model.config)
    with pytest.raises(ValueError, match="no positional encoding"):
        positional_encoding_tables(tiny_config(positional="none"))
    for kind in ("relative", "rotary", "alibi"):  # positions inside attention: no table to plot
        with pytest.raises(ValueError, match="inside its self-attention"):
            positional_encoding_tables(Transformer(tiny_config(positional=kind)))


def test_readable_tokens(copy_tokenizer):
    assert readable_token("ĠHund") == "▁Hund"
    assert readable_token("Ã¼ber") == "über"
    assert readable_token("Ã") == "\\xc3"  # half of a two-byte character
    assert readable_token("Ċ") == "\\n"
    assert readable_token("</s>") == "</s>"
    ids = copy_tokenizer.encode("A dog runs over the grass.")
    shown = "".join(readable_token(copy_tokenizer.id_to_token(i)) for i in ids)
    assert shown == "A▁dog▁runs▁over▁the▁grass."


def test_empty_text_is_refused(copy_model_dir, tmp_path, capsys):
    out = tmp_path / "viz"
    args = ["visualize", "--model", str(copy_model_dir), "--out", str(out)]
    assert main([*args, "--text", "  "]) == 2
    assert "--text is empty" in capsys.readouterr().err
    assert not out.exists()


def test_missing_model_directory_is_refused(tmp_path, capsys):
    missing, out = tmp_path / "no-such-model", tmp_path / "viz"
    assert main(["visualize", "--model", str(missing), "--text", TEXT, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("transformer visualize: ")
    assert str(missing) in err and "not a directory" in err
    assert not out.exists()


def test_bad_decoding_options_are_named_before_loading(tmp_path, capsys):
    missing, out = tmp_path / "no-such-model", tmp_path / "viz"
    args = ["visualize", "--model", str(missing), "--text", TEXT, "--out", str(out)]
    assert main([*args, "--beam", "2", "--nbest", "3"]) == 2
    err = capsys.readouterr().err
    assert "nbest: must be <= beam (2) for beam search, got 3" in err
    assert "not a directory" not in err and not out.exists()
