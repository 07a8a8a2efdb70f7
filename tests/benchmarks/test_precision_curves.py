"""benchmarks/precision_curves.py (bf16 against fp32 validation curves, several seeds) in its --tiny
mode on a small Multi30k slice, run in a subprocess as a user runs it: every run trained to its
budget with a curve point every V updates, a table and a plot written, the verdict rule on a
synthetic table, and a second run that reads the finished runs instead of training again."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "precision_curves.py"
UPDATES, VALID_EVERY = 6, 3

pytestmark = pytest.mark.timeout(300)


def run_benchmark(work: Path, data: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(SCRIPT), "--tiny", "--work", str(work), "--data", str(data),
        "--updates", str(UPDATES), "--valid-every", str(VALID_EVERY), "--jobs", "2",
        "--threads", "1",
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def load_module() -> ModuleType:
    """The script imported by path (it is no package), sys.path left as it was."""
    saved = list(sys.path)
    try:
        sys.path.insert(0, str(SCRIPT.parent))
        spec = importlib.util.spec_from_file_location("precision_curves_under_test", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, small_data: Path) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("precision-curves")
    proc = run_benchmark(work, small_data)
    assert proc.returncode == 0, explain(proc)
    return work, json.loads((work / "precision_curves.json").read_text(encoding="utf-8"))


def test_every_run_reaches_its_budget_with_a_curve(tiny) -> None:
    work, result = tiny
    assert [(r["precision"], r["seed"]) for r in result["runs"]] == [
        ("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)
    ]  # fmt: skip
    for run in result["runs"]:
        assert [step for step, _ in run["curve"]] == [3, 6]
        assert all(ppl > 1 for _, ppl in run["curve"])
        assert f"train.precision={run['precision']}" in run["command"]
        assert (work / f"{run['precision']}-seed{run['seed']}" / "metrics.jsonl").is_file()
    # the seeds differ (else "noise" would be 0), the same seed in another precision too
    finals = {(r["precision"], r["seed"]): r["curve"][-1][1] for r in result["runs"]}
    assert finals["fp32", 1] != finals["fp32", 2]
    assert finals["fp32", 1] != finals["bf16", 1]


def test_points_agree_with_the_runs(tiny) -> None:
    _, result = tiny
    assert [p["step"] for p in result["points"]] == [3, 6]
    for point in result["points"]:
        for precision in ("fp32", "bf16"):
            values = [
                dict(map(tuple, r["curve"]))[point["step"]]
                for r in result["runs"]
                if r["precision"] == precision
            ]
            assert point[precision]["mean"] == pytest.approx(sum(values) / len(values))
            assert point[precision]["range"] == pytest.approx(max(values) - min(values))
        assert point["difference"] == pytest.approx(point["bf16"]["mean"] - point["fp32"]["mean"])


def test_table_and_plot_are_written(tiny) -> None:
    work, _ = tiny
    table = (work / "precision_curves.md").read_text(encoding="utf-8")
    assert "| updates | fp32 | bf16 |" in table and "Within noise at" in table
    assert (work / "precision_curves.png").stat().st_size > 5_000


def test_a_second_run_reads_the_finished_runs(tiny, small_data: Path) -> None:
    work, result = tiny
    proc = run_benchmark(work, small_data)
    assert proc.returncode == 0, explain(proc)
    again = json.loads((work / "precision_curves.json").read_text(encoding="utf-8"))
    assert again["runs"] == result["runs"]  # nothing retrained: the same curves
    assert "train.log" not in proc.stdout  # no run was started


def test_the_verdict_rule() -> None:
    module = load_module()
    assert module.verdict(0.5, 0.5, "fp32", "bf16") == "within noise"
    assert module.verdict(-0.49, 0.5, "fp32", "bf16") == "within noise"
    assert module.verdict(0.6, 0.5, "fp32", "bf16") == "fp32 better"  # bf16 higher perplexity
    assert module.verdict(-0.6, 0.5, "fp32", "bf16") == "bf16 better"
    runs = [
        {"precision": "fp32", "seed": 1, "curve": [[10, 20.0], [20, 10.0]]},
        {"precision": "fp32", "seed": 2, "curve": [[10, 22.0], [20, 10.4]]},
        {"precision": "bf16", "seed": 1, "curve": [[10, 21.5], [20, 11.0]]},
        {"precision": "bf16", "seed": 2, "curve": [[10, 21.0], [20, 11.2]]},
    ]
    first, last = module.compare(runs, ["fp32", "bf16"])
    assert first["fp32"] == {"mean": 21.0, "range": 2.0} and first["verdict"] == "within noise"
    assert last["difference"] == pytest.approx(0.9) and last["noise"] == pytest.approx(0.4)
    assert last["verdict"] == "fp32 better"
