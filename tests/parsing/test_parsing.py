"""Parsing as translation, end to end: a treebank prepared, a tiny parser trained on a synthetic
grammar, and every command (translate, evaluate, visualize, export, serve) treating the model
directory as the parser it records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.optional import require
from tests.parsing.conftest import write_treebank
from tests.parsing.grammar import sample_trees
from transformer.cli import main
from transformer.data import read_manifest
from transformer.data.errors import DataError
from transformer.data.treebank import prepare_treebank, split_name
from transformer.data.trees import PARSING_DECODING, parse_tree, sentence
from transformer.modeldir import TASK_FILE, ModelDirError, load_task
from transformer.translator import Translator

# ------------------------------------------------------------------------------------ prepare


def test_a_treebank_becomes_sentence_tree_pairs_and_the_manifest_records_the_task(
    parsing_data: Path, treebank: dict[str, Path]
) -> None:
    manifest = read_manifest(parsing_data)
    assert manifest["task"] == {
        "name": "parsing",
        "words": True,
        "function_tags": False,
        "decoding": PARSING_DECODING,
    }
    assert set(manifest["splits"]) == {"train", "valid", "test"}
    assert manifest["splits"]["test"]["inputs"]["trees"]["path"] == str(treebank["test"])
    gold = sample_trees(60, seed=3)
    assert (parsing_data / "test.trees.txt").read_text().splitlines() == gold
    sources = (parsing_data / "test.src.txt").read_text().splitlines()
    targets = (parsing_data / "test.tgt.txt").read_text().splitlines()
    assert sources[0] == sentence(parse_tree(gold[0]))
    assert all("XX" not in t and "-SBJ" not in t and "(ROOT" not in t for t in targets)
    assert targets[0].split()[-2:] == [".", ")"]


def test_split_names_drop_the_treebank_suffixes() -> None:
    assert split_name("gum/test.trees.gz") == "test"
    assert split_name("test2.trees") == "test2"
    assert split_name("wsj_23.mrg") == "wsj_23"


def test_a_bad_tree_is_refused_with_its_file_and_line_and_nothing_is_written(
    tmp_path: Path, treebank: dict[str, Path]
) -> None:
    bad = write_treebank(tmp_path / "dev.trees.gz", [*sample_trees(3, seed=5), "(S (NP (NN x)"])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"dev\.trees\.gz:4: .*never closed"):
        prepare_treebank(train=treebank["train"], valid=bad, out=out, vocab_size=300)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]


def test_the_prepare_command_takes_treebanks_and_refuses_languages_with_them(
    tmp_path: Path, treebank: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["prepare", "--train", str(treebank["train"]), "--valid", str(treebank["dev"])]
    common += ["--vocab-size", "300", "--quiet"]
    assert main([*common, "--trees", "--src", "en", "--out", str(tmp_path / "a")]) == 2
    assert "--src and --tgt are not used with --trees" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "b")]) == 2
    assert "--src LANG and --tgt LANG" in capsys.readouterr().err
    out = tmp_path / "c"
    assert main([*common, "--trees", "--placeholders", "--out", str(out)]) == 0
    task = read_manifest(out)["task"]
    assert task["words"] is False and task["name"] == "parsing"
    assert "the" not in (out / "valid.tgt.txt").read_text().split()


# ------------------------------------------------------------------------------------ the parser


def test_every_model_directory_of_a_parsing_run_records_the_task(parser_dir: Path) -> None:
    run = parser_dir.parent
    task = load_task(parser_dir)
    assert task is not None and task["name"] == "parsing"
    assert task["decoding"] == PARSING_DECODING
    for checkpoint in (run / "checkpoints").iterdir():
        assert json.loads((checkpoint / TASK_FILE).read_text()) == task
    assert (run / "best" / TASK_FILE).is_file() or not (run / "best").exists()


def test_a_tiny_parser_learns_the_grammar_and_evaluate_reports_bracket_f1(
    parser_dir: Path, treebank: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--model", str(parser_dir), "--ref", str(treebank["test"]), "--json"]
    assert main([*argv, "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "parsing"
    assert report["decoding"]["beam"] == 21 and report["decoding"]["alpha"] == 0.3
    assert report["decoding"]["max_len_b"] == 300
    assert report["sentences"] == 60
    # 88.5 F1 when written (and 94 with other float rounding in training: a tiny model's result
    # moves by a few points with the trajectory); a right-branching tree gets 15.6
    assert report["f1"] >= 80.0, report
    assert report["exact_match"] >= 60.0, report
    assert report["well_formed"] >= 60.0, report
    # The baseline is far below: right-branching trees get some spans but few labels.
    assert report["right_branching"]["f1"] < 50.0 < report["right_branching"]["unlabeled_f1"]
    assert report["unlabeled_f1"] >= report["f1"]
    # "precision" is the brackets'; the decoding's has its own name.
    assert isinstance(report["precision"], float) and report["inference_precision"] in (
        "fp32",
        "bf16",
    )
    assert main([*argv[:-1], "--threads", "1"]) == 0
    assert f"precision {report['precision']:.2f}, recall" in capsys.readouterr().out


def test_explicit_options_replace_the_parsers_defaults(
    parser_dir: Path, treebank: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--model", str(parser_dir), "--ref", str(treebank["test"]), "--json"]
    assert main([*argv, "--greedy", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decoding"]["method"] == "greedy"
    assert report["decoding"]["max_len_b"] == 300  # the others stay the model's
    assert main([*argv, "--beam", "4", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["decoding"]["beam"] == 4


def test_translate_prints_one_well_formed_tree_per_line_over_the_input_words(
    parser_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ["Kim sees the big dog .", "", "a cat slept in the park ."]
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in lines))
    assert main(["translate", "--model", str(parser_dir), "--input", str(source)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1] == ""
    for line, tree in zip(lines, out):
        if line:
            parsed = parse_tree(tree)
            assert parsed.label == "ROOT" and parsed.leaves() == line.split()
    assert out[0] == (
        "(ROOT (S (NP (XX Kim)) (VP (XX sees) (NP (XX the) (XX big) (XX dog))) (XX .)))"
    )


def test_the_translator_keeps_the_model_output_beside_the_tree(parser_dir: Path) -> None:
    parser = Translator.from_pretrained(parser_dir)
    assert parser.task_name == "parsing"
    assert parser.options().beam == 21
    (result,) = parser.translate_nbest(["Lee ran ."], nbest=2)
    best = result.hypotheses[0]
    assert best.sequence is not None and best.sequence.startswith("(S")
    assert parse_tree(best.text).leaves() == ["Lee", "ran", "."]
    assert len(result.hypotheses) == 2


def test_visualize_draws_the_attention_of_a_parser(
    parser_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "maps"
    argv = ["visualize", "--model", str(parser_dir), "--text", "Kim sees the dog .", "--out"]
    assert main([*argv, str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(ROOT (S" in printed
    assert any(p.suffix == ".png" for p in out.iterdir())


def test_an_exported_parser_stays_a_parser_under_ctranslate2(
    parser_dir: Path, treebank: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require("ctranslate2")
    out = tmp_path / "ct2"
    argv = ["export", "--model", str(parser_dir), "--out", str(out), "--quantization", "float32"]
    assert main(argv) == 0
    assert load_task(out) == load_task(parser_dir)
    capsys.readouterr()
    argv = ["evaluate", "--engine", "ctranslate2", "--model", str(out), "--json", "--threads", "1"]
    assert main([*argv, "--ref", str(treebank["test"])]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "parsing" and report["decoding"]["beam"] == 21
    argv = ["evaluate", "--model", str(parser_dir), "--json", "--threads", "1"]
    assert main([*argv, "--ref", str(treebank["test"])]) == 0
    ours = json.loads(capsys.readouterr().out)
    # CTranslate2's beam search stops by its own rule (see decoding/ct2_engine.py), so a tree may
    # differ now and then; the same F1 when written
    assert abs(report["f1"] - ours["f1"]) <= 2.0, (report, ours)


def test_a_parser_and_a_translator_do_not_make_an_ensemble(
    parser_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "translator"
    shutil.copytree(parser_dir, other)
    (other / TASK_FILE).unlink()
    with pytest.raises(ModelDirError, match="task"):
        Translator.from_pretrained([parser_dir, other])
    (other / TASK_FILE).write_text('{"name": "parsing", "decoding": {"beam": 0}}')
    with pytest.raises(ModelDirError, match=r"task\.json: invalid decoding defaults(.|\n)*beam"):
        Translator.from_pretrained(other)
