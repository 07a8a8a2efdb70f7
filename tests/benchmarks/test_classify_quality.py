"""benchmarks/classify_quality.py (fastText against ours on K folds of AG News) in its --tiny mode
(3 folds of 300 rows, a micro model trained 6 updates per fold, a 2 x 2 fastText grid), run in a
subprocess as a user runs it: the JSON's structure, numbers that agree with each other and with the
folds on disk, the Markdown table, and the cache that makes a second run continue instead of
retrain. The scores themselves are near chance at this size: they are checked for consistency,
never for quality."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.optional import require

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "classify_quality.py"
SYSTEMS = ("fasttext", "ours_best", "ours_average")
FOLDS, ROWS, LABELS = 3, 300, ["World", "Sports", "Business", "Sci/Tech"]
TINY_LRS, TINY_EPOCHS, TINY_UPDATES = {0.25, 1.0}, {5, 10}, 6

pytestmark = pytest.mark.timeout(300)


def run_benchmark(work: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--tiny", "--work", str(work), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.fixture(scope="module")
def tiny(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """The tiny benchmark, run once: its work directory, its JSON result and the process."""
    require("fasttext")  # fasttext-numpy2, the `test` and `bench` extras
    work = tmp_path_factory.mktemp("classify-quality")
    proc = run_benchmark(work)
    assert proc.returncode == 0, explain(proc)
    result = json.loads((work / "classify_quality.json").read_text(encoding="utf-8"))
    return work, result, proc


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9


def test_every_fold_ran_with_every_system(tiny) -> None:
    _, result, _ = tiny
    assert result["benchmark"] == "classify_quality"
    assert result["complete"] is True and result["ours"] == "ours_best"
    assert result["settings"]["folds"] == FOLDS and result["rows"] == ROWS
    assert [f["fold"] for f in result["folds"]] == list(range(FOLDS))
    assert set(result["summary"]) == set(SYSTEMS)
    assert next(iter(result["summary"])) == "ours_best"  # the headline row first
    for fold in result["folds"]:
        assert set(SYSTEMS) <= set(fold)
        assert sum(fold["rows"].values()) == ROWS
    machine = result["machine"]
    assert machine["cpus"] >= 1 and machine["torch"] and machine["fasttext"]


def test_scores_are_fractions_that_agree_with_their_confusion_matrix(tiny) -> None:
    _, result, _ = tiny
    for fold in result["folds"]:
        for system in SYSTEMS:
            test = fold[system]["test"]
            confusion = test["confusion"]
            assert test["labels"] == LABELS
            assert test["count"] == fold["rows"]["test"] == sum(map(sum, confusion))
            correct = sum(confusion[i][i] for i in range(len(LABELS)))
            assert close(test["accuracy"], correct / test["count"]), (fold["fold"], system)
            f1 = []
            for i in range(len(LABELS)):
                gold = sum(confusion[i])
                predicted = sum(row[i] for row in confusion)
                f1.append(2 * confusion[i][i] / (gold + predicted) if gold + predicted else 0.0)
            assert close(test["macro_f1"], statistics.fmean(f1)), (fold["fold"], system)
            assert 0.0 <= test["accuracy"] <= 1.0 and 0.0 <= test["macro_f1"] <= 1.0
            assert 0.0 <= fold[system]["valid_accuracy"] <= 1.0
            assert fold[system]["texts_per_s"] > 0 and fold[system]["infer_seconds"] > 0
            assert fold[system]["train_seconds"] > 0


def test_summary_is_the_mean_and_sample_sd_of_the_folds(tiny) -> None:
    _, result, _ = tiny
    folds = result["folds"]
    for system, summary in result["summary"].items():
        accuracy = [f[system]["test"]["accuracy"] for f in folds]
        f1 = [f[system]["test"]["macro_f1"] for f in folds]
        diff = [a - f["fasttext"]["test"]["accuracy"] for a, f in zip(accuracy, folds)]
        assert summary["folds"] == FOLDS
        assert close(summary["accuracy_mean"], statistics.fmean(accuracy))
        assert close(summary["accuracy_sd"], statistics.stdev(accuracy))
        assert close(summary["macro_f1_mean"], statistics.fmean(f1))
        assert close(summary["macro_f1_sd"], statistics.stdev(f1))
        assert close(summary["accuracy_minus_fasttext_mean"], statistics.fmean(diff))
        speed = statistics.fmean(f[system]["texts_per_s"] for f in folds)
        assert close(summary["texts_per_s_mean"], speed)
    assert result["summary"]["fasttext"]["accuracy_minus_fasttext_mean"] == 0.0
    assert result["summary"]["fasttext"]["texts_per_s_vs_fasttext"] == 1.0


def test_fasttext_took_the_best_grid_point(tiny) -> None:
    _, result, _ = tiny
    for fold in result["folds"]:
        ft = fold["fasttext"]
        grid = ft["grid"]
        assert {(g["lr"], g["epoch"]) for g in grid} == {
            (lr, e) for lr in TINY_LRS for e in TINY_EPOCHS
        }
        best = max(g["valid_accuracy"] for g in grid)
        first_best = next(g for g in grid if g["valid_accuracy"] == best)
        assert (ft["lr"], ft["epoch"]) == (first_best["lr"], first_best["epoch"])
        assert ft["valid_accuracy"] == best
        assert ft["params"]["wordNgrams"] == 2 and ft["params"]["dim"] == 10
        assert ft["params"]["thread"] == 1
        assert ft["train_seconds"] > 0 and ft["grid_seconds"] > 0


def test_our_runs_trained_and_were_averaged(tiny) -> None:
    work, result, _ = tiny
    for fold in result["folds"]:
        run = fold["run"]
        assert run["updates"] == TINY_UPDATES
        assert run["best_step"] in (3, 6)  # validated every 3 updates
        assert fold["ours_average"]["checkpoints"] == [2, 4, 6]  # saved every 2, all averaged
        assert run["model"]["d_model"] == 32
        assert "--run-dir" in run["command"] and "train.max_minutes=1" in run["command"]
        run_dir = work / f"fold{fold['fold']}" / "run"
        assert (run_dir / "best" / "model.safetensors").is_file()
        assert (work / f"fold{fold['fold']}" / "average" / "model.safetensors").is_file()


def test_both_systems_saw_the_same_stratified_folds(tiny) -> None:
    """Test folds partition the rows; fastText's files are the prepared splits, line for line."""
    work, result, _ = tiny
    seen: list[str] = []
    per_class = []
    for fold in result["folds"]:
        k = fold["fold"]
        data = work / f"fold{k}" / "data"
        ft = work / f"fold{k}" / "fasttext"
        for split in ("valid", "test"):
            names = (data / f"{split}.tgt.txt").read_text(encoding="utf-8").splitlines()
            ft_lines = (ft / f"{split}.txt").read_text(encoding="utf-8").splitlines()
            assert [f"__label__{LABELS.index(n)}" for n in names] == [
                line.split(" ", 1)[0] for line in ft_lines
            ]
        train_lines = (ft / "train.txt").read_text(encoding="utf-8").splitlines()
        assert len(train_lines) == fold["rows"]["train"]
        seen += (data / "test.src.txt").read_text(encoding="utf-8").splitlines()
        per_class.append(fold["fasttext"]["test"]["confusion"])
    assert len(seen) == ROWS == len(set(seen))  # every row is in exactly one test fold
    supports = [[sum(row) for row in confusion] for confusion in per_class]
    for c in range(len(LABELS)):  # stratified: a class's counts differ by at most 1 over folds
        counts = [s[c] for s in supports]
        assert max(counts) - min(counts) <= 1, counts


def test_markdown_table_names_every_system_and_fold(tiny) -> None:
    work, result, proc = tiny
    table = (work / "classify_quality.md").read_text(encoding="utf-8")
    assert table in proc.stdout  # printed too
    for summary in result["summary"].values():
        assert f"| {summary['name']}" in table
    ours = result["summary"]["ours_best"]
    assert f"{100 * ours['accuracy_mean']:.2f} ± {100 * ours['accuracy_sd']:.2f}" in table
    for fold in result["folds"]:
        rows = fold["rows"]
        assert f"| {fold['fold']} | {rows['train']} / {rows['valid']} / {rows['test']} |" in table
    assert "Machine:" in table and "transformer prepare --classify" in table


def test_a_second_run_uses_the_cache_and_another_setting_is_refused(tiny) -> None:
    work, result, _ = tiny
    checkpoints = sorted((work / "fold0" / "run").rglob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    again = run_benchmark(work)
    assert again.returncode == 0, explain(again)
    for k in range(FOLDS):
        assert f"fold {k}: fastText cached" in again.stderr
        assert f"fold {k}: ours cached" in again.stderr
    assert "transformer.cli train" not in again.stderr  # no trainer was started
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    second = json.loads((work / "classify_quality.json").read_text(encoding="utf-8"))
    assert second["folds"] == result["folds"] and second["summary"] == result["summary"]

    other = run_benchmark(work, "--folds", "4")
    assert other.returncode != 0
    assert "other settings" in other.stderr and "folds" in other.stderr
