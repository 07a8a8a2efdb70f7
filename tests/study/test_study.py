"""`transformer study`: the derived rows have the intended sizes; every row trains and is reported;
finished rows are kept on a re-run; a failing row is reported and the others go on; seeds are
trained where the verdict needs them and aggregated; learning curves are recorded; the verdict
rule gives each of its outcomes."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import micro_config, write_config
from transformer import Transformer
from transformer.cli import main
from transformer.io import atomic_write_json
from transformer.study import rows as study_rows_module
from transformer.study import runner
from transformer.study.report import markdown_table, results_csv, verdict, verdicts
from transformer.study.rows import (
    BASE_ROW,
    EXPECTATIONS,
    Row,
    question_rows,
    study_rows,
    table3_rows,
)
from transformer.study.runner import Budget, RowOutcome, SeedRun, curve_every, needs_more_seeds
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


def test_table3_rows_expect_what_the_papers_perplexities_show():
    rows, _ = table3_rows(load_config(REPO / "configs" / "multi30k.yaml"))
    expect = {r.key: r.expect for r in rows}
    # 5.29, 5.00, 4.91, 5.01 against the base's 4.92; label smoothing 0 *lowers* perplexity (4.67)
    assert [expect[k] for k in ("A1", "A2", "A3", "A4")] == [
        "base better",
        "base better",
        "similar",
        "base better",
    ]
    assert [expect[k] for k in ("B1", "B2", "C1", "C4", "C5", "C7")] == [
        "base better", "base better", "base better", "base better", "row better", "row better",
    ]  # fmt: skip
    assert [expect[k] for k in ("D1", "D2", "D3", "D4", "E1")] == [
        "base better", "similar", "row better", "base better", "similar",
    ]  # fmt: skip


QUESTION_CHANGES = {
    "Q1": {"scale_attention": False},
    "Q2": {"shared_query_key": True},
    "Q3": {"norm_position": "pre"},
    "Q4": {"label_smoothing": 0.0},
    "Q5": {"positional": "none"},
    "Q6": {"n_heads": 1, "d_k": 256, "d_v": 256},
    "Q7": {"attention": "additive"},
    "Q8": {"d_k": 256, "d_v": 256},
    "Q9": {"scale_embedding": False},
    "Q10": {"positional": "learned"},
    "Q11": {"positional": "relative"},
    "Q12": {"positional": "rotary"},
    "Q13": {"positional": "alibi"},
    "Q14": {"residual": False},
    "Q15": {"n_encoder_layers": 6, "n_decoder_layers": 6},
    "Q16": {"n_encoder_layers": 6, "n_decoder_layers": 6, "residual": False},
    "Q17": {"norm": "batch"},
    "Q18": {"norm": "rms"},
    "Q19": {"activation": "gelu"},
    "Q20": {"d_ff": 64},
}


def test_question_rows_reverse_one_decision_each():
    base = load_config(REPO / "configs" / "multi30k.yaml")  # d_model 256, h 4, N 3
    rows, notes = question_rows(base)
    changed = {r.key: {**r.model, **r.optim} for r in rows}
    assert changed == QUESTION_CHANGES
    expect = {r.key: r.expect for r in rows}
    assert expect["Q4"] == "row better"  # Table 3 (D): no smoothing, lower perplexity
    assert [expect[k] for k in ("Q10", "Q18", "Q19")] == ["similar"] * 3
    assert [expect[k] for k in ("Q14", "Q15", "Q16")] == [
        "base better",
        "row better",
        "base better",
    ]
    assert all(r.question and r.description and r.expect in EXPECTATIONS for r in rows)
    # Padding has no honest row: it is measured on the base row instead (the padding probe).
    assert any(n.startswith("padding") and "no row" in n for n in notes)
    assert not any("left out" in n for n in notes)
    # One head of d_model costs what h heads of d_model / h cost; h = 4 heads of d_model widen
    # W^Q, W^K, W^V (with biases) and W^O of the 9 attentions from d to 4d columns (rows of W^O).
    d = 256
    by_key = {r.key: r for r in rows}
    assert parameters(by_key["Q6"].apply(base)) == parameters(base)
    assert parameters(by_key["Q8"].apply(base)) - parameters(base) == 9 * 3 * d * (3 * (d + 1) + d)
    with pytest.raises(ValueError, match="unknown Q21"):
        study_rows("questions", base, ["Q21"])
    assert [r.key for r in study_rows("table3", base, ["b", "E"])[0]] == ["base", "B1", "B2", "E1"]
    assert [r.key for r in study_rows("questions", base, ["base"])[0]] == ["base"]
    assert [r.key for r in study_rows("questions", base, ["q7", "Q20"])[0]] == ["base", "Q7", "Q20"]


@pytest.mark.parametrize("config", ["study-multi30k.yaml", "multi30k.yaml"])
def test_every_question_row_is_distinct_and_valid_with_the_shipped_configs(config):
    base = load_config(REPO / "configs" / config)
    rows, notes = question_rows(base)
    assert [r.key for r in rows] == [f"Q{i}" for i in range(1, 21)]
    signatures = {study_rows_module._signature(r.apply(base)) for r in rows}
    assert len(signatures) == len(rows) and study_rows_module._signature(base) not in signatures
    for r in rows:  # a valid model of the changed options (ModelConfig checks them)
        config_of_row = r.apply(base).model_config(1000)
        for name, value in r.model.items():
            assert getattr(config_of_row, name) == value
    assert len(notes) == 1  # the padding note only: nothing left out


def test_question_rows_that_repeat_the_base_or_cannot_exist_are_left_out():
    overrides = ["model.n_heads=1", "model.attention=additive", "model.positional=learned"]
    base = load_config(REPO / "configs" / "multi30k.yaml", overrides)
    rows, notes = question_rows(base)
    keys = {r.key for r in rows}
    assert not keys & {"Q1", "Q6", "Q8", "Q7", "Q10"}
    assert any(n.startswith("Q1") and "invalid" in n for n in notes)  # additive has no scale
    assert all(any(n.startswith(k + " ") and "identical" in n for n in notes) for k in ("Q6", "Q8"))


def test_every_question_row_trains_a_step_with_a_micro_model(small_data):
    """Every row builds, and a forward and backward pass gives a finite loss and gradients (the
    end-to-end test trains a few of them for real)."""
    from transformer.data.batching import collate
    from transformer.data.dataset import load_split
    from transformer.training.config import parse_config
    from transformer.training.objective import sequence_loss

    base = parse_config(micro_config(small_data), where="micro")
    data = load_split(small_data, "valid")
    batch = collate([data[i] for i in range(4)])
    rows, _ = question_rows(base)
    assert len(rows) == 20
    for r in rows:
        torch.manual_seed(0)
        model = Transformer(r.apply(base).model_config(400))
        loss, _ = sequence_loss(model, batch, 0.1, contextlib.nullcontext)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads), r.key


def test_the_verdict_rule_gives_each_outcome():
    base = [10.0, 10.4]  # mean 10.2, range 0.4
    table = [
        # (row's perplexities over seeds, expectation, verdict)
        ([11.0], "base better", "reproduced"),  # d = +0.8 beyond the base's range
        ([9.0], "base better", "contradicted"),  # the row is better
        ([10.5], "base better", "within noise"),  # |d| = 0.3 <= 0.4
        ([9.5, 9.6], "row better", "reproduced"),  # d = -0.65
        ([10.8, 11.0], "row better", "contradicted"),
        ([9.0, 10.6], "row better", "within noise"),  # d = -0.4 but the row's range is 1.6
        ([10.1], "similar", "reproduced"),
        ([10.1, 10.3, 10.5], "similar", "reproduced"),
        ([11.0], "similar", "contradicted"),
        ([8.0], "similar", "contradicted"),
        ([], "base better", ""),  # no result, no verdict
    ]
    assert [verdict(ppl, base, expect) for ppl, expect, _ in table] == [v for *_, v in table]
    # One base seed measures no noise, whatever the row.
    assert {verdict(ppl, base[:1], expect) for ppl, expect, _ in table[:-1]} == {
        "noise not measured"
    }
    assert verdict([11.0], [], "base better") == "noise not measured"


def fake_result(config, key: str, ppl: float, bleu: float | None = 20.0, curve=None):
    """A result.json as `train_row` writes it, with made-up numbers."""
    return {
        "key": key,
        "group": "",
        "description": "",
        "seed": config.train.seed,
        "updates": 8,
        "epochs": 1,
        "train_minutes": 0.1,
        "parameters": 1000,
        "valid_loss": 2.0,
        "valid_ppl": ppl,
        "valid_bleu": bleu,
        "tokens_per_s": 1.0,
        "curve": curve if curve is not None else [[4, ppl * 2], [8, ppl]],
        "model": config.model_config(400).to_dict(),
        "config": config.to_dict(),
    }


def synthetic_outcomes(ppl: dict[str, list[float]], expect: dict[str, str]):
    base = load_config(REPO / "configs" / "multi30k.yaml")
    rows = [BASE_ROW] + [Row(k, "Q", f"row {k}", {"d_ff": 512}, expect=expect[k]) for k in expect]
    outcomes = []
    for row in rows:
        runs = []
        for i, value in enumerate(ppl[row.key], start=1):
            config = runner.row_config(row, base, Budget(updates=8), i, 2)
            runs.append(SeedRun(i, i, fake_result(config, row.key, value)))
        outcomes.append(RowOutcome(row, runs))
    return outcomes


def test_the_report_shows_spreads_expectations_and_verdicts():
    ppl = {"base": [10.0, 10.2, 10.4], "Q1": [12.0], "Q2": [10.3, 10.1, 10.2], "Q3": [7.0, 7.2]}
    expect = {"Q1": "base better", "Q2": "similar", "Q3": "base better"}
    outcomes = synthetic_outcomes(ppl, expect)
    assert verdicts(outcomes) == {
        "base": "",
        "Q1": "reproduced",
        "Q2": "reproduced",
        "Q3": "contradicted",
    }
    markdown = markdown_table("questions", outcomes, Budget(updates=8), [], "")
    lines = {line.split(" | ")[0]: line for line in markdown.splitlines() if line.startswith("| ")}
    assert "| seeds | expected | verdict |" in lines["| row"]
    assert "| 10.20 ± 0.20 [10.00–10.40] |" in lines["| base"]  # mean ± std [min–max]
    assert "Training time: 0.01 hours over 9 run(s) (" in markdown  # 0.1 minute each
    assert lines["| Q1"].endswith("| 12.00 | 20.0 | 0.00 | 1 | base better | reproduced |")
    assert "| 7.10 [7.00–7.20] |" in lines["| Q3"] and lines["| Q3"].endswith("| contradicted |")
    table = {r["key"]: r for r in csv.DictReader(results_csv(outcomes).splitlines())}
    assert [table[k]["seeds"] for k in ("base", "Q1", "Q2", "Q3")] == ["3", "1", "3", "2"]
    assert (table["base"]["valid_ppl_min"], table["base"]["valid_ppl_max"]) == ("10", "10.4")
    assert float(table["base"]["valid_ppl_std"]) == pytest.approx(0.2)
    assert table["Q3"]["valid_ppl_std"] == "" and table["Q1"]["valid_ppl_min"] == ""
    assert table["Q3"]["verdict"] == "contradicted" and table["Q3"]["expect"] == "base better"
    # The mean learning curve: seeds averaged update by update.
    assert outcomes[0].curve() == [(4, pytest.approx(20.4)), (8, pytest.approx(10.2))]
    one = synthetic_outcomes({"base": [10.0], "Q1": [12.0]}, {"Q1": "base better"})
    assert "noise not measured" in markdown_table("table3", one, Budget(updates=8), [], "")


def test_the_table3_report_sets_the_papers_perplexity_beside_each_row():
    outcomes = synthetic_outcomes({"base": [10.0], "A1": [12.0]}, {"A1": "base better"})
    markdown = markdown_table("table3", outcomes, Budget(updates=8), [], "")
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert lines[0].endswith("| verdict | paper PPL |")
    assert lines[1].endswith("| 4.92 |") and lines[2].endswith("| 5.29 |")  # base, A1 (h = 1)
    assert "paper PPL" not in markdown_table("questions", outcomes, Budget(updates=8), [], "")


def test_curve_points_are_evenly_spaced_over_an_update_budget():
    assert curve_every(Budget(updates=8), 4) == 2  # 2, 4, 6, 8
    assert curve_every(Budget(updates=300), 8) == 38  # 38, ..., 266 and the end: 8 points
    assert curve_every(Budget(updates=2), 8) == 1  # fewer updates than points: every update
    assert curve_every(Budget(updates=300), 0) == 0
    assert curve_every(Budget(minutes=5), 8) == 0  # the trainer validates by updates only


def test_which_rows_get_more_seeds():
    base = [10.0, 10.2, 10.4]  # mean 10.2, range 0.4: rows within 0.8 of 10.2
    assert needs_more_seeds(11.0, base) and needs_more_seeds(9.4, base)
    assert not needs_more_seeds(11.1, base) and not needs_more_seeds(9.3, base)
    assert not needs_more_seeds(10.2, base[:1])  # one base seed: no range to compare with


def test_seeds_are_trained_where_the_verdict_needs_them(tmp_path, monkeypatch):
    """The base with every seed, the others with the first, and all seeds only for a row close
    to the base (here with made-up results instead of training)."""
    base = load_config(REPO / "configs" / "multi30k.yaml")
    ppl = {("base", 1): 10.0, ("base", 2): 10.2, ("base", 3): 10.4,
           ("A", 1): 10.9, ("A", 2): 11.0, ("A", 3): 11.1, ("B", 1): 15.0}  # fmt: skip
    trained: list[tuple[str, int]] = []

    def fake_train_row(row, config, row_dir, log):
        index = config.train.seed - 6  # the first seed is 7
        trained.append((row.key, index))
        result = fake_result(config, row.key, ppl[row.key, index])
        row_dir.mkdir(parents=True)
        atomic_write_json(row_dir / runner.RESULT, result)
        return result

    monkeypatch.setattr(runner, "train_row", fake_train_row)
    rows = [BASE_ROW, Row("A", "Q", "close to the base"), Row("B", "Q", "far from it")]
    outcomes = runner.run_rows(rows, base, tmp_path, Budget(updates=8), 7, seeds=3)
    assert sorted(trained) == [("A", 1), ("A", 2), ("A", 3), ("B", 1), ("base", 1), ("base", 2),
                               ("base", 3)]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == [
        "A", "A-s2", "A-s3", "B", "base", "base-s2", "base-s3",
    ]  # fmt: skip
    assert [[r.seed for r in o.runs] for o in outcomes] == [[7, 8, 9], [7, 8, 9], [7]]
    assert outcomes[1].ppl.mean == pytest.approx(11.0) and outcomes[1].ppl.range == pytest.approx(
        0.2
    )
    assert verdicts(outcomes) == {"base": "", "A": "reproduced", "B": "reproduced"}

    # Run again: every seed is kept; with --seeds-all the far row gets its other seeds too.
    trained.clear()
    outcomes = runner.run_rows(rows, base, tmp_path, Budget(updates=8), 7, seeds=3)
    assert trained == [] and all(o.skipped for o in outcomes)
    ppl.update({("B", 2): 15.1, ("B", 3): 15.2})
    runner.run_rows(rows, base, tmp_path, Budget(updates=8), 7, seeds=3, seeds_all=True)
    assert sorted(trained) == [("B", 2), ("B", 3)]
    outcomes = runner.run_rows(rows, base, tmp_path, Budget(updates=8), 7, seeds=3)
    assert [len(o.runs) for o in outcomes] == [3, 3, 3]  # seeds trained earlier still count


def test_rows_finished_in_another_study_with_the_same_recipe_are_reused(tmp_path, monkeypatch):
    """Table 3's D3 (eps_ls = 0) and the questions' Q4 are one model, and both studies have the
    base: with --reuse the second study trains neither again, at any seed."""
    base = load_config(REPO / "configs" / "multi30k.yaml")
    trained: list[tuple[str, int]] = []

    def fake_train_row(row, config, row_dir, log):
        trained.append((row.key, config.train.seed))
        result = fake_result(config, row.key, 10.0 + config.train.seed)
        row_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(row_dir / runner.RESULT, result)
        return result

    monkeypatch.setattr(runner, "train_row", fake_train_row)
    budget = Budget(updates=8)
    smoothing = {"label_smoothing": 0.0}
    t3 = [BASE_ROW, Row("D3", "D", "eps_ls=0.0", optim=smoothing)]
    runner.run_rows(t3, base, tmp_path / "t3", budget, 1, seeds=2, seeds_all=True)
    assert len(trained) == 4
    trained.clear()
    logged: list[str] = []
    questions = [
        BASE_ROW,
        Row("Q4", "Q", "no label smoothing", optim=smoothing),
        Row("Q19", "Q", "GELU", {"activation": "gelu"}),
    ]
    outcomes = runner.run_rows(
        questions, base, tmp_path / "q", budget, 1, log=logged.append, seeds=2, seeds_all=True,
        reuse=[tmp_path / "t3"],
    )  # fmt: skip
    assert sorted(trained) == [("Q19", 1), ("Q19", 2)]
    assert [[r.skipped for r in o.runs] for o in outcomes] == [[True, True], [True, True],
                                                               [False, False]]  # fmt: skip
    q4 = json.loads((tmp_path / "q" / "rows" / "Q4-s2" / "result.json").read_text())
    assert q4["key"] == "Q4" and q4["valid_ppl"] == 12.0
    assert q4["reused_from"] == str(tmp_path / "t3" / "rows" / "D3-s2")
    assert any("[Q4] finished earlier, kept from" in line for line in logged)
    # Another seed is another recipe: nothing to reuse.
    trained.clear()
    runner.run_rows(questions[:2], base, tmp_path / "q3", budget, 3, reuse=[tmp_path / "t3"])
    assert sorted(trained) == [("Q4", 3), ("base", 3)]


def test_the_questions_report_has_a_section_and_a_plot_per_question(tmp_path):
    from transformer.study.report import by_question_markdown, question_groups, write_report
    from transformer.study.rows import QUESTIONS

    ppl = {"base": [10.0, 10.4], "Q1": [12.0, 12.5], "Q2": [10.2], "Q3": [9.0]}
    expect = {"Q1": "base better", "Q2": "similar", "Q3": "base better"}
    outcomes = synthetic_outcomes(ppl, expect)
    asked = {"Q1": QUESTIONS["scale"], "Q2": QUESTIONS["residual"], "Q3": QUESTIONS["residual"]}
    for o in outcomes[1:]:
        object.__setattr__(o.row, "question", asked[o.row.key])
    groups = question_groups(outcomes)
    assert [(name, [o.row.key for o in rows]) for name, _, rows in groups] == [
        ("scale", ["base", "Q1"]),
        ("residual", ["base", "Q2", "Q3"]),
    ]
    markdown = by_question_markdown(outcomes, Budget(updates=8))
    assert "## Why divide by sqrt(d_k)?" in markdown and "## Why residual connections?" in markdown
    assert "| base | the paper's choice | 10.20 [10.00–10.40] |" in markdown
    assert "| Q3 | row Q3 | 9.00 | 20.0 |" in markdown and markdown.endswith("contradicted |\n"
        "\n![why residual connections?](by_question/residual.png)\n")  # fmt: skip
    paths = write_report(tmp_path, "questions", outcomes, Budget(updates=8), [])
    assert {p.name for p in paths} >= {"by_question.md", "scale.png", "residual.png"}
    assert (tmp_path / "by_question" / "scale.png").read_bytes()[:4] == b"\x89PNG"
    # The mean curve with its spread over seeds, update by update.
    u, s = outcomes[1].curve_spread()[0]
    assert (u, s.mean, s.min, s.max) == (4, pytest.approx(24.5), 24.0, 25.0)
    (tmp_path / "t3").mkdir()
    write_report(tmp_path / "t3", "table3", outcomes, Budget(updates=8), [])
    assert not (tmp_path / "t3" / "by_question.md").exists()  # Table 3 has no questions


def test_a_row_finished_before_learning_curves_is_still_recognised(tmp_path):
    """Validation settings do not change what a row learns: a result.json written with one
    validation at the end (valid_every 0, BLEU by the trainer) is kept; another seed is not."""
    base = load_config(REPO / "configs" / "multi30k.yaml")
    config = runner.row_config(BASE_ROW, base, Budget(updates=8), 1, curve_points=8)
    older = config.replace("train", valid_every=0, valid_bleu=True)
    row_dir = tmp_path / "base"
    row_dir.mkdir()
    result = fake_result(older, "base", 10.0)
    del result["curve"]
    atomic_write_json(row_dir / runner.RESULT, result)
    assert runner.finished_result(row_dir, config) == result
    assert runner.finished_result(row_dir, config.replace("train", seed=2)) is None
    outcome = RowOutcome(BASE_ROW, [SeedRun(1, 1, result, skipped=True)])
    assert outcome.curve() == [(8, 10.0)]  # the final point only
    newer = fake_result(config.replace("train", seed=2), "base", 12.0)  # [[4, 24.0], [8, 12.0]]
    outcome.runs.append(SeedRun(2, 2, newer))
    assert outcome.curve() == [(4, 24.0), (8, 12.0)]  # the seeds with a curve make it
    assert outcome.ppl.mean == pytest.approx(11.0)  # all seeds make the result


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


@pytest.mark.parametrize("option", [["--seeds", "0"], ["--curve-points", "-1"], ["--jobs", "-1"]])
def test_bad_counts_are_refused(option, tmp_path, capsys):
    config = REPO / "configs" / "study-multi30k.yaml"
    args = ["study", "questions", "--config", str(config), "--budget", "2", "--out", str(tmp_path)]
    assert main([*args, *option]) == 2
    assert f"{option[0]} must be >= " in capsys.readouterr().err
    assert not (tmp_path / "rows").exists()


def test_reuse_of_a_directory_that_is_no_study_is_refused(tmp_path, capsys):
    config = REPO / "configs" / "study-multi30k.yaml"
    args = ["study", "questions", "--config", str(config), "--budget", "2", "--out", str(tmp_path)]
    assert main([*args, "--reuse", str(tmp_path / "nowhere")]) == 2
    assert (
        "--reuse " + str(tmp_path / "nowhere") + ": not a study's output" in capsys.readouterr().err
    )


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
        assert len(expected) == (16 if study == "table3" else 21)  # A2 is A1 (h=1); C1, C2 too
        for r in table:
            assert r["status"] == "trained" and r["updates"] == "2" and r["seeds"] == "1"
            assert float(r["valid_ppl"]) > 1 and r["valid_bleu"] != ""
            assert r["verdict"] == ("" if r["key"] == "base" else "noise not measured")
            result = json.loads((out / "rows" / r["key"] / "result.json").read_text())
            assert int(r["parameters"]) == result["parameters"]
            # 8 curve points asked of 2 updates: one validation per update, the last the final
            assert [u for u, _ in result["curve"]] == [1, 2]
            assert result["curve"][-1][1] == pytest.approx(result["valid_ppl"])
            model_config = load_config(config).model_config(400)
            if r["key"] == "base":
                assert result["parameters"] == Transformer(model_config).num_parameters()
        markdown = (out / "results.md").read_text(encoding="utf-8")
        assert "| row | N | d_model | d_ff | h | d_k | d_v | P_drop | ε_ls |" in markdown
        assert markdown.count("\n| ") == len(expected) + 1  # header + one line per row
        for name in ("results.png", "curves.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if study == "questions":  # a plot per question (padding's from the padding probe)
            assert len(list((out / "by_question").glob("*.png"))) == 14
            assert (out / "by_question.md").read_text(encoding="utf-8").count("\n## ") == 14

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


def test_report_only_trains_nothing_and_shows_what_is_finished(small_data, tmp_path, monkeypatch):
    config = study_config(tmp_path, small_data)
    out = tmp_path / "out"
    args = ["study", "table3", "--config", str(config), "--budget", "2", "--out", str(out)]
    assert main([*args, "--rows", "E"]) == 0  # base and E1 finished, B not yet

    def no_training(*args, **kwargs):
        raise AssertionError("--report-only trained a row")

    monkeypatch.setattr(runner, "train_row", no_training)
    assert main([*args, "--rows", "B,E", "--report-only"]) == 0
    table = {r["key"]: r for r in read_csv(out / "results.csv")}
    assert [table[k]["status"] for k in ("base", "B1", "B2", "E1")] == [
        "kept", "not trained", "not trained", "kept",
    ]  # fmt: skip
    assert "| not trained | not trained |" in (out / "results.md").read_text(encoding="utf-8")
    assert not (out / "rows" / "B1").exists()


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


def test_seeds_and_learning_curves_of_real_rows(small_data, tmp_path, monkeypatch):
    config = study_config(tmp_path, small_data)
    out = tmp_path / "out"
    args = ["study", "table3", "--config", str(config), "--out", str(out), "--rows", "E"]
    args += ["--budget", "4", "--curve-points", "2", "--seeds", "2", "--seeds-all"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "rows").iterdir()) == ["E1", "E1-s2", "base", "base-s2"]
    table = {r["key"]: r for r in read_csv(out / "results.csv")}
    for key in ("base", "E1"):
        results = [
            json.loads((out / "rows" / name / "result.json").read_text())
            for name in (key, f"{key}-s2")
        ]
        assert [r["seed"] for r in results] == [1, 2]
        assert [[u for u, _ in r["curve"]] for r in results] == [[2, 4], [2, 4]]
        ppl = [r["valid_ppl"] for r in results]
        assert ppl[0] != ppl[1]  # another seed, another model
        assert table[key]["seeds"] == "2"
        assert float(table[key]["valid_ppl"]) == pytest.approx(sum(ppl) / 2, rel=1e-5)
        assert float(table[key]["valid_ppl_min"]) == pytest.approx(min(ppl), rel=1e-5)
        assert float(table[key]["valid_ppl_max"]) == pytest.approx(max(ppl), rel=1e-5)
    assert table["E1"]["verdict"] in ("reproduced", "contradicted")  # E1 is expected "similar"
    assert "seeds 1, 2" in (out / "results.md").read_text(encoding="utf-8")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(runner, "train_row", no_training)
    assert main(args) == 0
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["kept", "kept"]


def test_a_worker_whose_study_process_died_stops_its_row(monkeypatch):
    """The watchdog of a pool worker: while the parent lives, nothing; once the worker is
    orphaned, SIGTERM to itself (the trainer checkpoints and stops), then exit."""
    import os
    import signal

    parents = iter([100, 100, 1])  # alive, alive, then orphaned (re-parented)
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "getppid", lambda: next(parents))
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(os, "_exit", lambda code: sent.append((-1, code)))
    monkeypatch.setattr(runner, "ORPHANED", runner.threading.Event())
    runner.watch_parent(100, interval=0.0, grace=0.0)
    assert sent == [(os.getpid(), signal.SIGTERM), (-1, 1)]
    # A row the pool had queued before the study died is not started.
    task = runner._Task(BASE_ROW, 1, 1, None, Path("unused"))
    with pytest.raises(runner.RowInterrupted):
        runner._run_one(task)
