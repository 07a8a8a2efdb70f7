"""`train.compile: true` (torch.compile, inductor on the CPU) really trains: the losses of eager
training within float rounding, checkpoints with the plain module's names (no `_orig_mod.`), and
a compiled run that resumes without compile. (The first compilation takes about a minute on 2
cores; inductor caches it in its temporary directory.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.training.conftest import run_config
from transformer.training.checkpoint import list_checkpoints
from transformer.training.trainer import Trainer

pytestmark = pytest.mark.timeout(600)

UPDATES = 4


def trained(data: Path, run_dir: Path, compile: bool, updates: int = UPDATES) -> Trainer:
    config = run_config(
        data,
        model={"dropout": 0.0},  # compiled dropout draws other random numbers than eager's
        train={"compile": compile, "max_updates": updates, "save_every": 2},
    )
    trainer = Trainer(config, run_dir, log=lambda message: None)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def runs(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Trainer]:
    root = tmp_path_factory.mktemp("compile")
    return trained(small_data, root / "eager", False), trained(small_data, root / "compiled", True)


def losses(trainer: Trainer) -> list[float]:
    rows = (trainer.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["loss"] for r in map(json.loads, rows) if r["kind"] == "train"]


def test_compiled_training_gives_the_eager_losses(runs) -> None:
    """Same initial weights and batches: the first update's loss agrees to float rounding, and the
    later ones closely. (Weights are not compared: Adam with eps 1e-9 turns rounding-level
    differences of near-zero gradients into whole steps of the learning rate.)"""
    eager, compiled = runs
    assert compiled.net is not compiled.model  # really wrapped by torch.compile
    assert compiled.step == eager.step == UPDATES
    a, b = losses(eager), losses(compiled)
    assert len(a) == len(b) == UPDATES
    assert b[0] == pytest.approx(a[0], rel=1e-4)  # inductor fuses, so sums round otherwise
    assert b == pytest.approx(a, rel=1e-3)
    assert a[-1] < a[0]  # and it trained


def test_checkpoints_hold_the_plain_names(runs) -> None:
    names = [
        set(load_file(list_checkpoints(trainer.run_dir)[-1][1] / "model.safetensors"))
        for trainer in runs
    ]
    assert names[0] == names[1]
    assert not any("_orig_mod" in n for n in names[1])


def test_a_compiled_run_resumes_eagerly(runs, small_data: Path) -> None:
    _, compiled = runs
    resumed = trained(small_data, compiled.run_dir, compile=False, updates=UPDATES + 2)
    assert resumed.step == UPDATES + 2
