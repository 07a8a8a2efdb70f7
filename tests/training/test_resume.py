"""Real processes: SIGKILL mid-run then resume is bitwise equal to an uninterrupted run;
SIGTERM saves a checkpoint and exits cleanly; 2-process DDP equals 1 process with 2x the batch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import cli_env, micro_config, train_command, write_config
from transformer.training.checkpoint import list_checkpoints

pytestmark = pytest.mark.timeout(300)


def _train_rows(run_dir: Path) -> list[tuple[int, float, float, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["nll_loss"], r["lr"]) for r in rows if r["kind"] == "train"]


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        if any(s >= step for s, _ in list_checkpoints(run_dir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before update {step}: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint of update {step} after 200 s")


# Each task the trainer knows: (data fixture, extra config sections).
TASKS = {
    "translation": ("small_data", {}),
    "classification": ("labelled_data", {"data": {"task": "classification"}}),
}


def task_config(request: pytest.FixtureRequest, task: str, **sections: dict) -> dict:
    """The micro config of `task` on its data, with `sections` merged in."""
    fixture, extra = TASKS[task]
    data = request.getfixturevalue(fixture)
    merged = {k: {**extra.get(k, {}), **sections.get(k, {})} for k in {*extra, *sections}}
    return micro_config(data, **merged)


@pytest.mark.parametrize("task", TASKS)
def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(
    task: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    updates = 300
    config = write_config(
        tmp_path / "c.yaml",
        task_config(request, task, train={"max_updates": updates, "save_every": 10}),
    )
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(train_command(config, straight), env=cli_env(), check=True, capture_output=True)

    proc = subprocess.Popen(
        train_command(config, killed), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    _wait_for_checkpoint(proc, killed, 30)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_at_kill = [s for s, _ in list_checkpoints(killed)]
    assert max(steps_at_kill) < updates, "killed after the end: nothing was tested"

    resumed = subprocess.run(
        train_command(config, killed), env=cli_env(), check=True, capture_output=True, text=True
    )
    assert "resuming from" in resumed.stderr
    assert not list((killed / "checkpoints").glob(".*"))  # no half-written checkpoint left over

    assert _train_rows(killed) == _train_rows(straight)  # every logged loss, bit for bit
    final = f"step_{updates:08d}"
    a = load_file(str(straight / "checkpoints" / final / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / final / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(small_data: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        micro_config(small_data, train={"max_updates": 100_000, "save_every": 10}),
    )
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        train_command(config, run_dir), env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_checkpoint(proc, run_dir, 10)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by SIGTERM" in stderr and "re-run the same command to resume" in stderr
    last_step = max(s for s, _ in list_checkpoints(run_dir))
    assert f"at update {last_step} " in stderr  # the checkpoint is of the update it stopped at


@pytest.mark.parametrize(
    ("task", "model"),
    [*((task, {}) for task in TASKS), ("translation", {"share_embeddings": False})],
    ids=[*TASKS, "translation-untied"],  # an output matrix that DDP's forward never uses
)
def test_two_process_ddp_equals_one_process_with_the_doubled_batch(
    task: str, model: dict, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    common = {"model": {"dropout": 0.0, **model}, "train": {"max_updates": 4, "save_every": 0}}
    one = write_config(
        tmp_path / "one.yaml", task_config(request, task, optim={"update_freq": 2}, **common)
    )
    two = write_config(tmp_path / "two.yaml", task_config(request, task, **common))
    subprocess.run(
        train_command(one, tmp_path / "one"), env=cli_env(), check=True, capture_output=True
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*torchrun, "-m", "transformer.cli", "train", str(two), "--run-dir", str(tmp_path / "two")],
        env=cli_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    final = "checkpoints/step_00000004/model.safetensors"
    a = load_file(str(tmp_path / "one" / final))
    b = load_file(str(tmp_path / "two" / final))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    # rank 0 alone writes: one metrics file, one line per update
    assert [s for s, *_ in _train_rows(tmp_path / "two")] == [1, 2, 3, 4]
