"""Classification end to end: train (the task-agnostic trainer), average, the Classifier facade,
`transformer classify`, `evaluate` and `visualize` on a classification model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.classification.conftest import classifier_config
from tests.labelled_data import LABELS, labelled_rows
from tests.training.conftest import cli_env, micro_config, run_cli, write_config
from transformer import Classifier, Translator
from transformer.modeldir import ModelDirError, load_task
from transformer.training.config import parse_config
from transformer.training.errors import TrainingError
from transformer.training.trainer import Trainer


def metrics(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_a_tiny_classifier_learns_the_rule(trained_classifier: Path) -> None:
    valid = metrics(trained_classifier, "valid")
    assert [r["step"] for r in valid] == [50, 100, 150]
    assert valid[-1]["accuracy"] == 100.0 and valid[-1]["macro_f1"] == 100.0
    assert valid[0]["texts"] == 91  # the valid fold, every text
    assert load_task(trained_classifier / "best")["labels"] == LABELS


def test_the_facade_classifies_new_texts(trained_classifier: Path) -> None:
    classifier = Classifier.from_pretrained(trained_classifier / "best")
    rows = labelled_rows(60, seed=99)  # texts the model never saw
    predictions = classifier.classify([text for _, text in rows], top_k=3)
    assert [p.label for p in predictions] == [label for label, _ in rows]
    for p in predictions:
        assert [label for label, _ in p.top] != [] and len(p.top) == 3
        assert sorted(label for label, _ in p.top) == LABELS
        assert sum(prob for _, prob in p.top) == pytest.approx(1.0, abs=1e-5)
        assert p.top[0][1] >= p.top[1][1] >= p.top[2][1]
    # batch invariance: one text at a time gives the same probabilities
    texts = [text for _, text in rows[:8]]
    together = classifier.probabilities(texts)
    alone = torch.cat([classifier.probabilities([t]) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_bf16_classifies_as_autocast_over_the_fp32_model(trained_classifier: Path) -> None:
    """In bf16 the facade holds its linear maps in bf16 once (`autocast_copy`): the very
    probabilities of autocast over the fp32 model, bit for bit."""
    fp32 = Classifier.from_pretrained(trained_classifier / "best")
    bf16 = Classifier.from_pretrained(trained_classifier / "best", precision="bf16")
    assert bf16.model is not fp32.model and bf16.model.head.weight.dtype == torch.bfloat16
    texts = [text for _, text in labelled_rows(8, seed=7)]
    fp32.precision = "bf16"  # the fp32 model itself under bf16 autocast
    assert torch.equal(bf16.probabilities(texts), fp32.probabilities(texts))


def test_averaging_a_classifier_run(trained_classifier: Path, tmp_path: Path) -> None:
    run_cli("average", str(trained_classifier), "--last", "2", "--out", str(tmp_path / "avg"))
    assert load_task(tmp_path / "avg") == load_task(trained_classifier / "best")
    classifier = Classifier.from_pretrained(tmp_path / "avg")
    rows = labelled_rows(30, seed=5)
    assert [p.label for p in classifier.classify([t for _, t in rows])] == [y for y, _ in rows]


def test_a_classifier_is_not_a_translator(trained_classifier: Path, copy_model_dir: Path) -> None:
    with pytest.raises(ModelDirError, match="classification model"):
        Translator.from_pretrained(trained_classifier / "best")
    with pytest.raises(ModelDirError, match="not a classification model"):
        Classifier.from_pretrained(copy_model_dir)


def test_the_config_task_must_agree_with_the_data(labelled_data: Path, small_data: Path, tmp_path):
    wrong = parse_config(micro_config(labelled_data, data={"task": "translation"}), "test")
    with pytest.raises(TrainingError, match="prepared with `transformer prepare --classify`"):
        Trainer(wrong, tmp_path / "a")
    wrong = parse_config(micro_config(small_data, data={"task": "classification"}), "test")
    with pytest.raises(TrainingError, match="prepare labelled texts"):
        Trainer(wrong, tmp_path / "b")


def test_classify_keeps_one_line_per_input_line(trained_classifier: Path, tmp_path: Path) -> None:
    rows = labelled_rows(5, seed=7)
    lines = [rows[0][1], "", rows[1][1], "   ", rows[2][1], rows[3][1], "", rows[4][1]]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = str(trained_classifier / "best")
    out = run_cli("classify", "--model", model, "--input", str(src)).stdout.split("\n")
    assert out[-1] == "" and len(out[:-1]) == len(lines)
    expected = iter(label for label, _ in rows)
    for line, text in zip(out, lines):
        if not text.strip():
            assert line == ""
            continue
        label, prob = line.split("\t")
        assert label == next(expected) and 0.5 < float(prob) <= 1.0
    top = run_cli("classify", "--model", model, "--top-k", "3", "--input", str(src)).stdout
    first = top.split("\n")[0].split("\t")
    assert len(first) == 6 and sorted(first[0::2]) == LABELS
    assert sum(float(p) for p in first[1::2]) == pytest.approx(1.0, abs=2e-4)
    # as a pipe: stdin to stdout
    piped = subprocess.run(
        [sys.executable, "-m", "transformer.cli", "classify", "--model", model],
        input=rows[0][1] + "\n", capture_output=True, text=True, env=cli_env(), check=True,
    )  # fmt: skip
    assert piped.stdout.split("\t")[0] == rows[0][0]


def test_classify_refuses_bad_arguments(trained_classifier: Path, copy_model_dir: Path) -> None:
    bad = run_cli(
        "classify", "--model", str(trained_classifier / "best"), "--top-k", "4", check=False
    )
    assert bad.returncode == 2 and "--top-k must be in [1, 3]" in bad.stderr
    bad = run_cli("classify", "--model", str(copy_model_dir), check=False)
    assert bad.returncode == 2 and "not a classification model" in bad.stderr


def test_evaluate_a_classifier(trained_classifier: Path, labelled_data: Path, tmp_path: Path):
    png = tmp_path / "plots" / "confusion.png"
    args = [
        "evaluate", "--model", str(trained_classifier / "best"),
        "--src", str(labelled_data / "test.src.txt"), "--ref", str(labelled_data / "test.tgt.txt"),
        "--confusion", str(png),
    ]  # fmt: skip
    text = run_cli(*args).stdout
    assert "accuracy" in text.lower() and "100.00" in text and "texts/s" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(run_cli(*args, "--json").stdout)
    n = len((labelled_data / "test.tgt.txt").read_text().splitlines())
    assert report["task"] == "classification" and report["count"] == report["texts"] == n
    assert report["accuracy"] == 1.0 and report["confusion_png"] == str(png)
    assert sum(map(sum, report["confusion"])) == n
    assert report["inference_precision"] in ("fp32", "bf16")
    wrong = tmp_path / "labels.txt"
    wrong.write_text("red\nmauve\n" + "none\n" * (n - 2), encoding="utf-8")
    bad = run_cli(*args[:5], "--ref", str(wrong), check=False)
    assert bad.returncode == 2 and f"{wrong}:2: unknown label 'mauve'" in bad.stderr


def test_visualize_a_classifier(trained_classifier: Path, tmp_path: Path) -> None:
    out = run_cli(
        "visualize", "--model", str(trained_classifier / "best"),
        "--text", "the red dog runs", "--out", str(tmp_path / "viz"),
    ).stdout  # fmt: skip
    assert out.startswith("class: red ")
    files = sorted(p.name for p in (tmp_path / "viz").iterdir())
    assert files == [
        "encoder_self_layer1.png",
        "encoder_self_layer2.png",
        "positional_encoding.png",
    ]


def test_a_classification_config_file_trains(labelled_data: Path, tmp_path: Path) -> None:
    """`transformer train` itself (a subprocess) on a classification config; the log says texts/s."""
    config = write_config(
        tmp_path / "c.yaml",
        classifier_config(
            labelled_data, train={"max_updates": 20, "valid_every": 20, "log_every": 10}
        ),
    )
    result = run_cli("train", str(config), "--run-dir", str(tmp_path / "run"))
    assert "texts/s" in result.stderr and "accuracy" in result.stderr


def test_plot_a_classification_run(trained_classifier: Path, tmp_path: Path) -> None:
    out = run_cli("plot", str(trained_classifier), "--out", str(tmp_path)).stdout.split()
    assert sorted(Path(p).name for p in out) == [
        "accuracy.png", "curves.png", "learning_rate.png", "loss.png", "perplexity.png",
    ]  # fmt: skip


def test_init_from_copies_the_encoder_of_a_translation_model(labelled_data: Path, tmp_path):
    """train.init_from: the classifier's encoder starts as a translation model's encoder (the
    idea of CoVe); its head starts fresh."""
    from transformer import ModelConfig, Transformer
    from transformer.data.dataset import load_tokenizer
    from transformer.modeldir import save_model_dir

    tokenizer = load_tokenizer(labelled_data)
    sizes = {"d_model": 32, "n_heads": 2, "d_ff": 64, "n_encoder_layers": 2}
    source = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **sizes))
    save_model_dir(tmp_path / "translator", source, tokenizer)
    config = parse_config(
        classifier_config(labelled_data, train={"init_from": str(tmp_path / "translator")}), "t"
    )
    trainer = Trainer(config, tmp_path / "run")
    copied, kept = trainer.initialised_from
    assert kept == ["head.weight", "head.bias"]
    theirs = source.state_dict()
    for name, tensor in trainer.model.state_dict().items():
        if name.startswith("encoder."):
            assert name in copied and torch.equal(tensor, theirs[name]), name
    fresh = Trainer(parse_config(classifier_config(labelled_data), "t"), tmp_path / "other")
    assert not torch.equal(
        fresh.model.encoder.layers[0].feed_forward.linear1.weight,
        trainer.model.encoder.layers[0].feed_forward.linear1.weight,
    )


def test_init_from_refuses_another_tokenizer(labelled_data, copy_model_dir: Path, tmp_path):
    config = parse_config(
        classifier_config(labelled_data, train={"init_from": str(copy_model_dir)}), "t"
    )
    with pytest.raises(ModelDirError, match="its tokenizer is not the training data's"):
        Trainer(config, tmp_path / "run")
