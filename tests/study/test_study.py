"""`transformer study`: the derived rows have the intended sizes; every row trains and is reported;
finished rows are kept on a re-run; a failing row is reported and the others go on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import micro_config, write_config
from transformer import Transformer
from transformer.cli import main
from transformer.study import rows as study_rows_module
from transformer.study import runner
from transformer.study.rows import question_rows, study_rows, table3_rows
from transformer.study.runner import Budget
from transformer.training.config import load_config

REPO = Path(__file__).resolve().parents[2]


def parameters(config, vocab: int = 1000) -> int:
    with torch.device("meta"):
        return Transformer(config.model_config(vocab)).num_parameters()


def test_table3_rows_scale_with_the_base_config():
    base = load_config(REPO / "configs" / "multi30k.yaml")  # d_model 256, h 4, N 3, d_ff 1024
    rows, notes = table3_rows(base)
    by_key = {r.key: r for r in rows}
    assert notes == []
    sizes = {k: study_rows_module.base_sizes(r.apply(base)) for k, r in by_key.items()}
    assert [(sizes[k].n_heads, sizes[k].d_k, sizes[k].d_v) for k in ("A1", "A2", "A3", "A4")] == [
        (1, 256, 256),
        (2, 128, 128),
        (8, 32, 32),
        (16, 16, 16),
    ]
    assert [(sizes[k].d_k, sizes[k].d_v) for k in ("B1", "B2")] == [(16, 64), (32, 64)]
    assert [sizes[k].n_encoder_layers for k in ("C1", "C2", "C3")] == [1, 2, 4]
    assert [sizes[k].n_decoder_layers for k in ("C1", "C2", "C3")] == [1, 2, 4]
    assert [(sizes[k].d_model, sizes[k].d_k) for k in ("C4", "C5")] == [(128, 32), (512, 128)]
    assert [sizes[k].d_ff for k in ("C6", "C7")] == [512, 2048]
    assert [sizes[k].dropout for k in ("D1", "D2")] == [0.0, 0.2]
    assert [by_key[k].apply(base).optim.label_smoothing for k in ("D3", "D4")] == [0.0, 0.2]
    assert sizes["E1"].positional == "learned"

    # Parameter counts follow: row B1 shrinks W^Q and W^K of all 9 attentions (3 + 2 x 3) from
    # h*d_k = 256 to 64 columns, and row C1 keeps one of the three layers per stack.
    d, full, small = 256, 4 * 64, 4 * 16
    assert parameters(base) - parameters(by_key["B1"].apply(base)) == 9 * 2 * (d + 1) * (
        full - small
    )
    per_layer = (parameters(base) - parameters(by_key["C1"].apply(base))) / 2
    assert per_layer == (parameters(base) - parameters(by_key["C2"].apply(base)))


def test_rows_that_cannot_exist_or_repeat_the_base_are_left_out_with_a_reason():
    base = load_config(REPO / "configs" / "multi30k.yaml", ["model.n_heads=2"])
    rows, notes = table3_rows(base)
    keys = [r.key for r in rows]
    assert "A2" not in keys  # h/2 = 1 is row A1 already
    assert any(n.startswith("A2") and "identical" in n for n in notes)
    overrides = ["model.d_model=250", "model.n_heads=5", "model.d_k=20", "model.d_v=20"]
    rows, notes = table3_rows(load_config(REPO / "configs" / "multi30k.yaml", overrides))
    keys = [r.key for r in rows]
    assert "A2" not in keys and "A4" not in keys  # 2.5 heads; 20 heads do not divide 250
    assert "A3" in keys and "B1" in keys  # 10 heads of 25; d_k 20 / 4 = 5
    assert any(n.startswith("A2") and "not possible" in n for n in notes)


def test_question_rows_reverse_one_decision_each():
    base = load_config(REPO / "configs" / "multi30k.yaml")
    rows, _ = question_rows(base)
    changed = {r.key: {**r.model, **r.optim} for r in rows}
    assert changed == {
        "Q1": {"scale_attention": False},
        "Q2": {"shared_query_key": True},
        "Q3": {"norm_position": "pre"},
        "Q4": {"label_smoothing": 0.0},
        "Q5": {"positional": "none"},
    }
    with pytest.raises(ValueError, match="unknown Q9"):
        study_rows("questions", base, ["Q9"])
    assert [r.key for r in study_rows("table3", base, ["b", "E"])[0]] == ["base", "B1", "B2", "E1"]
    assert [r.key for r in study_rows("questions", base, ["base"])[0]] == ["base"]


@pytest.mark.parametrize(
    "text,expected",
    [("300", Budget(updates=300)), ("12u", Budget(updates=12)), ("20m", Budget(minutes=20.0)),
     ("1.5min", Budget(minutes=1.5))],
)  # fmt: skip
def test_budget_is_updates_or_minutes(text, expected):
    assert Budget.parse(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "ten", "5h", "0m"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(ValueError, match="--budget"):
        Budget.parse(text)


def study_config(tmp_path: Path, data: Path) -> Path:
    config = micro_config(data, train={"progress": False, "log_every": 1})
    return write_config(tmp_path / "base.yaml", config)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_every_row_of_both_studies_runs_and_is_reported(small_data, tmp_path, monkeypatch):
    config = study_config(tmp_path, small_data)
    for study in ("table3", "questions"):
        out = tmp_path / study
        code = main(["study", study, "--config", str(config), "--budget", "2", "--out", str(out)])
        assert code == 0
        expected = [r.key for r in study_rows(study, load_config(config))[0]]
        table = read_csv(out / "results.csv")
        assert [r["key"] for r in table] == expected
        assert len(expected) == (16 if study == "table3" else 6)  # A2 is A1 (h=1); C1, C2 too
        for r in table:
            assert r["status"] == "trained" and r["updates"] == "2"
            assert float(r["valid_ppl"]) > 1 and r["valid_bleu"] != ""
            result = json.loads((out / "rows" / r["key"] / "result.json").read_text())
            assert int(r["parameters"]) == result["parameters"]
            model_config = load_config(config).model_config(400)
            if r["key"] == "base":
                assert result["parameters"] == Transformer(model_config).num_parameters()
        markdown = (out / "results.md").read_text(encoding="utf-8")
        assert "| row | N | d_model | d_ff | h | d_k | d_v | P_drop | ε_ls |" in markdown
        assert markdown.count("\n| ") == len(expected) + 1  # header + one line per row
        assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A re-run trains nothing: every row is kept.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(runner, "train_row", no_training)
    out = tmp_path / "questions"
    assert (
        main(["study", "questions", "--config", str(config), "--budget", "2", "--out", str(out)])
        == 0
    )
    assert {r["status"] for r in read_csv(out / "results.csv")} == {"kept"}


def test_a_failing_row_is_reported_and_the_others_go_on(small_data, tmp_path, monkeypatch, capsys):
    config = study_config(tmp_path, small_data)
    out = tmp_path / "out"
    real = runner.train_row

    def fail_b1(row, *args, **kwargs):
        if row.key == "B1":
            raise RuntimeError("simulated failure")
        return real(row, *args, **kwargs)

    monkeypatch.setattr(runner, "train_row", fail_b1)
    args = ["study", "table3", "--config", str(config), "--budget", "2", "--out", str(out)]
    assert main([*args, "--rows", "B"]) == 1
    assert "B1: RuntimeError: simulated failure" in capsys.readouterr().err
    table = {r["key"]: r for r in read_csv(out / "results.csv")}
    assert table["B1"]["status"] == "failed" and table["B2"]["status"] == "trained"
    assert "simulated failure" in (out / "rows" / "B1" / "error.txt").read_text()
    assert "failed" in (out / "results.md").read_text()

    monkeypatch.setattr(runner, "train_row", real)  # the re-run retries only the failed row
    assert main([*args, "--rows", "B"]) == 0
    table = {r["key"]: r for r in read_csv(out / "results.csv")}
    assert [table[k]["status"] for k in ("base", "B1", "B2")] == ["kept", "trained", "kept"]
    assert not (out / "rows" / "B1" / "error.txt").exists()


def test_rows_run_in_parallel_worker_processes(small_data, tmp_path):
    config = study_config(tmp_path, small_data)
    out = tmp_path / "out"
    args = ["study", "table3", "--config", str(config), "--budget", "2", "--out", str(out)]
    assert main([*args, "--rows", "E", "--jobs", "2"]) == 0
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["trained", "trained"]


def test_a_row_dir_trained_with_another_recipe_is_refused(small_data, tmp_path):
    config = study_config(tmp_path, small_data)
    out = tmp_path / "out"
    args = ["study", "table3", "--config", str(config), "--out", str(out), "--rows", "E"]
    assert main([*args, "--budget", "2"]) == 0
    assert main([*args, "--budget", "2", "--seed", "7"]) == 1  # a different seed: a new recipe
    assert "another config" in (out / "rows" / "base" / "error.txt").read_text()


def test_a_larger_budget_continues_every_row(small_data, tmp_path, capsys):
    config = study_config(tmp_path, small_data)
    out = tmp_path / "out"
    args = ["study", "table3", "--config", str(config), "--out", str(out), "--rows", "E"]
    assert main([*args, "--budget", "2"]) == 0
    capsys.readouterr()
    assert main([*args, "--budget", "4"]) == 0
    err = capsys.readouterr().err
    assert "[base] resuming from" in err and "[E1] resuming from" in err
    assert [r["updates"] for r in read_csv(out / "results.csv")] == ["4", "4"]
