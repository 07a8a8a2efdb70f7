"""What cannot be exported is refused, all reasons at once, before anything is written.

These tests need no CTranslate2: the checks are plain functions of the ModelConfig.
"""

from __future__ import annotations

import pytest

from tests.conftest import tiny_config
from transformer import Transformer
from transformer.export import ExportError, export_ctranslate2, unsupported_options
from transformer.modeldir import save_model_dir


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm_position": "pre", "positional": "learned", "share_embeddings": False},
        {"d_k": 12, "d_v": 12},  # d_k = d_v != d_model / n_heads: CTranslate2's head_dim
        {"layer_norm_eps": 1e-3},
        {"activation": "gelu", "scale_embedding": False},
    ],
)
def test_exportable_configs_have_no_problems(overrides):
    assert unsupported_options(tiny_config(**overrides)) == []


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        ({"norm": "rms"}, "norm=rms"),
        ({"norm": "batch"}, "norm=batch"),
        ({"residual": False}, "residual=false"),
    ],
)
def test_options_ctranslate2_lacks_are_named(overrides, start):
    (problem,) = unsupported_options(tiny_config(**overrides))
    assert problem.startswith(start)


def test_every_unsupported_option_is_listed_with_its_field():
    config = tiny_config(d_k=8, d_v=4, layer_norm_eps=1e-50, n_heads=40000, d_model=40000)
    problems = unsupported_options(config)
    assert len(problems) == 3
    assert problems[0].startswith("d_k=8 != d_v=4")
    assert problems[1].startswith("n_heads=40000")
    assert problems[2].startswith("layer_norm_eps=1e-50")


def test_export_refuses_with_the_full_list_and_writes_nothing(copy_tokenizer, tmp_path):
    config = tiny_config(vocab_size=copy_tokenizer.vocab_size, d_k=8, d_v=4, layer_norm_eps=1e-50)
    model_dir = save_model_dir(tmp_path / "model", Transformer(config), copy_tokenizer)
    out = tmp_path / "exports" / "ct2"
    with pytest.raises(ExportError) as info:
        export_ctranslate2(model_dir, out, quantization="int4")
    message = str(info.value)
    assert "--quantization int4" in message
    assert "d_k=8 != d_v=4" in message and "layer_norm_eps=1e-50" in message
    assert not out.exists()
    assert not (tmp_path / "exports").exists() or not any((tmp_path / "exports").iterdir())


def test_export_never_replaces_the_model_or_an_unrelated_directory(copy_model_dir, tmp_path):
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("precious")
    for out in (copy_model_dir, unrelated):
        with pytest.raises(ExportError, match="--out"):
            export_ctranslate2(copy_model_dir, out)
    assert (unrelated / "keep.txt").read_text() == "precious"
    assert (copy_model_dir / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        ({"positional": "relative"}, "positional=relative"),
        ({"positional": "rotary"}, "positional=rotary"),
        ({"positional": "alibi"}, "positional=alibi"),
        ({"attention": "additive"}, "attention=additive"),
    ],
)
def test_positions_inside_attention_and_additive_attention_are_refused(overrides, start):
    (problem,) = unsupported_options(tiny_config(**overrides))
    assert problem.startswith(f"{start}: ")
    both = unsupported_options(tiny_config(positional="alibi", attention="additive"))
    assert [p.split(":")[0] for p in both] == ["positional=alibi", "attention=additive"]
