"""`transformer export`, and `--engine ctranslate2` through `translate` and `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import tiny_config
from tests.optional import require
from transformer import Transformer, Translator
from transformer.cli import main
from transformer.modeldir import save_model_dir

require("ctranslate2")

SRC = ["Ein Mann", "", "Kinder", "rot", "ein Ball", "Frau"]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_export_writes_an_engine_directory_and_replaces_an_earlier_one(
    copy_model_dir, tmp_path, capsys
):
    out = tmp_path / "ct2"
    for quantization in ("int8", "float32"):  # the second run replaces the first
        args = ["--model", str(copy_model_dir), "--out", str(out)]
        assert main(["export", *args, "--quantization", quantization]) == 0
        assert f"translate --engine ctranslate2 --model {out}" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "export.json",
        "model.bin",
        "shared_vocabulary.json",
        "tokenizer.json",
        "transformer_config.json",
    ]
    meta = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert meta["quantization"] == "float32" and meta["positions"] == 1024
    assert (out / "transformer_config.json").read_bytes() == (
        copy_model_dir / "config.json"
    ).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["ct2"]  # no temporary left behind


def test_export_refuses_unsupported_models_listing_every_problem(copy_tokenizer, tmp_path, capsys):
    config = tiny_config(vocab_size=copy_tokenizer.vocab_size, d_k=8, d_v=4, layer_norm_eps=1e-50)
    model_dir = save_model_dir(tmp_path / "model", Transformer(config), copy_tokenizer)
    code = main(["export", "--model", str(model_dir), "--out", str(tmp_path / "ct2")])
    assert code == 2
    err = capsys.readouterr().err
    assert "(2 problem(s))" in err and "d_k=8 != d_v=4" in err and "layer_norm_eps" in err
    assert not (tmp_path / "ct2").exists()


def test_translate_and_evaluate_with_engine_ctranslate2(ct2_float32_dir, tmp_path, capsys):
    src = write(tmp_path / "in.txt", SRC)
    out = tmp_path / "out.txt"
    engine = ["--engine", "ctranslate2", "--model", str(ct2_float32_dir)]
    assert main(["translate", *engine, "--input", str(src), "--output", str(out)]) == 0
    got = out.read_text(encoding="utf-8").splitlines()
    expected = Translator.from_pretrained(ct2_float32_dir, engine="ctranslate2").translate(SRC)
    assert got == expected and got[1] == ""

    ref = write(tmp_path / "ref.txt", ["Ein Mann", "", "Kinder spielen", "rot", "Ball", "Frau"])
    hyp = tmp_path / "hyp.txt"
    args = [*engine, "--src", str(src), "--ref", str(ref), "--output", str(hyp)]
    assert main(["evaluate", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["engine"] == "ctranslate2" and report["target_tokens"] > 0
    assert report["inference_precision"] is None  # the type of its export
    assert hyp.read_text(encoding="utf-8").splitlines() == expected


def test_engine_ctranslate2_on_a_model_directory_says_to_export(copy_model_dir, tmp_path, capsys):
    src = write(tmp_path / "in.txt", SRC)
    args = ["--engine", "ctranslate2", "--model", str(copy_model_dir), "--input", str(src)]
    assert main(["translate", *args]) == 2
    err = capsys.readouterr().err
    assert "no model.bin" in err and "transformer export --model" in err
