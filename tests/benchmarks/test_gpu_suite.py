"""benchmarks/gpu_suite.py, the one command for every GPU measurement, run on this CPU at its tiny
sizes (--tiny: configs/tiny.yaml on a Multi30k slice, a few updates, a dozen sentences, CPU
float32/int8 CTranslate2 compute types) in a subprocess, as it is run on a GPU machine."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.optional import require

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
STEPS = ("gpu_tests", "train_speed", "train_compile", "model", "decode_speed", "engine_speed")

pytestmark = pytest.mark.timeout(600)


def run_suite(out: Path, *args: str, timeout: float = 480) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SUITE), "--device", "cpu", "--threads", "1", "--out", str(out)]
    return subprocess.run(
        [*command, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def load_suite_module() -> ModuleType:
    """benchmarks/gpu_suite.py imported by path (it is no package), sys.path left as it was."""
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("gpu_suite_under_test", SUITE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole suite, every step, tiny, on the CPU: its --out folder."""
    require("ctranslate2")  # the engine_speed step's CTranslate2 decoders
    out = tmp_path_factory.mktemp("gpu-suite")
    proc = run_suite(out, "--tiny")
    assert proc.returncode == 0, explain(proc)
    return out


def step(out: Path, name: str) -> dict:
    path = out / f"{name}.json"
    assert path.is_file(), f"{name}: no {path.name} written"
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_step_ran_and_wrote_its_json(tiny_run: Path) -> None:
    for name in STEPS:
        record = step(tiny_run, name)
        assert record["step"] == name
        assert record["status"] == "ok", (name, record.get("reason"), record.get("traceback"))
        assert record["seconds"] > 0
        assert record["summary"]
    suite = json.loads((tiny_run / "suite.json").read_text(encoding="utf-8"))
    assert suite["mode"] == "tiny" and suite["device"] == "cpu"
    assert [suite["steps"][name]["status"] for name in STEPS] == ["ok"] * len(STEPS)


def test_summary_table_names_every_step(tiny_run: Path) -> None:
    summary = (tiny_run / "summary.md").read_text(encoding="utf-8")
    for name in STEPS:
        assert f"| {name} | ok |" in summary, summary


def test_gpu_tests_are_counted(tiny_run: Path) -> None:
    r = step(tiny_run, "gpu_tests")["result"]
    assert r["failed"] == 0 and r["errors"] == 0 and r["not_collected"] == []
    assert r["passed"] + r["skipped"] >= 1  # tests/model/test_transformer.py has one
    assert r["deselected"] > 100  # every other test of the project


def test_train_speed_mfu_and_projected_base_run(tiny_run: Path) -> None:
    r = step(tiny_run, "train_speed")["result"]
    tokens_per_s = r["tokens_per_s"]
    assert tokens_per_s > 0
    assert r["tokens_per_s"] == pytest.approx(r["target_tokens"] / r["seconds"])
    projected = r["projected_base_run"]["seconds"]
    assert projected > 0
    assert projected == pytest.approx(100_000 * 25_000 / tokens_per_s, rel=1e-12)
    assert r["projected_base_run"]["hours"] == pytest.approx(projected / 3600)
    assert 0 < r["mfu"] <= 1
    assert 0 < r["mfu_vs_measured_matmul"] <= 1
    # On a CPU the peak is the measured matmul, so the two MFUs are one.
    assert r["peak_flops_per_s"] == r["matmul_peak_flops_per_s"]
    assert r["config"] == "configs/tiny.yaml" and r["precision"] == "bf16"
    assert r["updates"] == 4 and r["target_tokens_per_update"] > 0


def test_train_compile_is_compared_with_eager(tiny_run: Path) -> None:
    r = step(tiny_run, "train_compile")["result"]
    eager = step(tiny_run, "train_speed")["result"]
    assert "train.compile=true" in r["overrides"] and "train.compile=true" not in eager["overrides"]
    assert r["compiled_graphs"] >= 1 and eager["compiled_graphs"] == 0
    assert r["warmup"] == 2 and r["updates"] == eager["updates"] and r["warmup_seconds"] > 0
    assert r["eager_tokens_per_s"] == eager["tokens_per_s"]
    assert r["speedup_over_eager"] == pytest.approx(r["tokens_per_s"] / eager["tokens_per_s"])
    assert 0 < r["mfu"] <= 1


def test_decode_and_engine_rows(tiny_run: Path) -> None:
    model = step(tiny_run, "model")["result"]
    assert model["trained"] and model["updates"] == 20

    decode = step(tiny_run, "decode_speed")["result"]
    decoders = {(r["method"], r["decoder"]) for r in decode["rows"]}
    for method in ("greedy", "beam 4"):
        assert {(method, "ours"), (method, "ours, no cache")} <= decoders
    assert all(r["tokens_per_s"] > 0 for r in decode["rows"])
    # the uncached decoder decodes exactly what the cached one does (Marian, present where
    # transformers is installed, has random weights: its tokens are not compared)
    assert all(r["same_tokens_as_ours"] for r in decode["rows"] if r["decoder"] == "ours, no cache")

    engine = step(tiny_run, "engine_speed")["result"]
    assert engine["errors"] == {} and engine["skipped"] == {}
    got = {(r["method"], r["decoder"]): r for r in engine["rows"]}
    for method in ("greedy", "beam 4"):
        for decoder in ("torch fp32", "torch bf16", "ct2 float32", "ct2 int8"):
            assert (method, decoder) in got, sorted(got)
            assert got[method, decoder]["tokens_per_s"] > 0
    assert got["greedy", "ct2 int8"]["compute_type"].startswith("int8")
    assert got["greedy", "ct2 float32"]["compute_type"] == "float32"


def test_a_failing_step_fails_the_run(tmp_path: Path) -> None:
    proc = run_suite(tmp_path, "--tiny", "--model", str(tmp_path / "missing"), "--steps",
                     "model,decode_speed", timeout=120)  # fmt: skip
    assert proc.returncode == 1, explain(proc)
    assert step(tmp_path, "model")["status"] == "failed"
    decode = step(tmp_path, "decode_speed")
    assert decode["status"] == "skipped" and decode["reason"].startswith("no model")
    assert step(tmp_path, "gpu_tests")["reason"] == "not in --steps"
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| model | failed |" in summary and "| decode_speed | skipped |" in summary


def test_a_used_up_budget_skips_the_steps_not_started(tmp_path: Path) -> None:
    proc = run_suite(tmp_path, "--tiny", "--minutes", "0", timeout=120)
    assert proc.returncode == 0, explain(proc)
    for name in STEPS:
        record = step(tmp_path, name)
        assert record["status"] == "skipped" and "budget" in record["reason"], record


def test_bf16_dense_peaks_by_device_name() -> None:
    suite = load_suite_module()
    assert suite.datasheet_peak("NVIDIA H200")[0] == 989e12
    assert suite.datasheet_peak("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert suite.datasheet_peak("NVIDIA H100 PCIe")[0] == 756e12
    assert suite.datasheet_peak("NVIDIA GeForce RTX 4090") is None
    assert [d["name"] for d in suite.engine_decoders(suite.torch.device("cuda"))] == [
        "torch fp32",
        "torch bf16",
        "ct2 float16",
        "ct2 int8_float16",
    ]
