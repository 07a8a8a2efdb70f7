"""Several processes (torchrun, gloo on CPU) take every decision together: time-based saves,
train.max_minutes, signals. One process is made slower than the other on purpose, so that their
clocks disagree at every decision; the run must still finish, and its time-based checkpoints must
resume exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import cli_env, micro_config, write_config
from transformer.training.checkpoint import list_checkpoints

pytestmark = pytest.mark.timeout(400)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

# `transformer train`, with the process of rank 1 sleeping after each of its updates: its clock
# runs ahead of rank 0's, and rank 0 (which alone writes checkpoints) lags behind it after saves.
SLOW_RANK = """
import os, sys, time
from pathlib import Path
from transformer.training import trainer

Path(__file__).with_name("rank" + os.environ["RANK"] + ".pid").write_text(str(os.getpid()))

real_step = trainer.Trainer.train_step

def slow_step(self, group):
    stats = real_step(self, group)
    if int(os.environ["RANK"]) == 1:
        time.sleep({delay})
    return stats

trainer.Trainer.train_step = slow_step
from transformer.cli import main
sys.exit(main())
"""

# The same, and each process writes down the learning rate of every update it makes.
RECORD_RATES = SLOW_RANK.replace(
    "    return stats\n",
    "    with Path(__file__).with_name('rates' + os.environ['RANK']).open('a') as f:\n"
    "        f.write(repr(self.optimizer.param_groups[0]['lr']) + '\\n')\n"
    "    return stats\n",
)


def _train_rows(run_dir: Path) -> list[tuple[int, float, float, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["nll_loss"], r["lr"]) for r in rows if r["kind"] == "train"]


def _torchrun(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [*TORCHRUN, *args], env=cli_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise AssertionError(
            f"the 2-process run did not finish in {timeout:.0f} s (the processes disagree on a "
            f"collective decision and wait for each other):\n{(err or '')[-3000:]}"
        ) from None


def test_unequal_processes_agree_on_time_based_saves_and_max_minutes_and_resume_exactly(
    small_data: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        micro_config(
            small_data,
            train={
                "max_updates": 100_000,
                "max_minutes": 0.1,  # 6 s of training
                "save_every": 0,
                "save_every_minutes": 0.004,  # 0.24 s: a checkpoint every few updates
                "keep_last": 10_000,
            },
        ),
    )
    script = tmp_path / "slow_rank.py"
    script.write_text(SLOW_RANK.format(delay=0.03), encoding="utf-8")
    run = tmp_path / "run"
    result = _torchrun([str(script), "train", str(config), "--run-dir", str(run)], timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    assert "reached train.max_minutes = 0.1" in result.stderr

    steps = [s for s, _ in list_checkpoints(run)]
    final = steps[-1]
    assert len(steps) >= 5, f"too few time-based saves to test anything: {steps}"
    assert [s for s, *_ in _train_rows(run)] == list(range(1, final + 1))

    # Resume from a time-based checkpoint in the middle (the later ones removed) to the same end.
    middle = steps[len(steps) // 2]
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for step, path in list_checkpoints(resumed):
        if step > middle:
            shutil.rmtree(path)
    result = _torchrun(
        [
            "-m", "transformer.cli", "train", str(config), "--run-dir", str(resumed),
            "--set", "train.max_minutes=0", "--set", f"train.max_updates={final}",
            "--set", "train.save_every_minutes=0",
        ],
        timeout=150,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {resumed / 'checkpoints' / f'step_{middle:08d}'} " in result.stderr
    assert _train_rows(resumed) == _train_rows(run)  # every logged loss, bit for bit
    name = f"step_{final:08d}/model.safetensors"
    a = load_file(str(run / "checkpoints" / name))
    b = load_file(str(resumed / "checkpoints" / name))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_to_one_process_stops_both_at_the_same_update_with_a_checkpoint(
    small_data: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        micro_config(small_data, train={"max_updates": 100_000, "save_every": 0}),
    )
    script = tmp_path / "slow_rank.py"
    script.write_text(SLOW_RANK.format(delay=0.01), encoding="utf-8")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*TORCHRUN, str(script), "train", str(config), "--run-dir", str(run)],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_train_rows(run) if (run / "metrics.jsonl").is_file() else []) < 5:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no training progress in 120 s"
            time.sleep(0.05)
        rank1 = int((tmp_path / "rank1.pid").read_text())
        os.kill(rank1, signal.SIGTERM)  # rank 1 alone is told to stop
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "re-run the same command to resume" in stderr
    last = max(s for s, _ in list_checkpoints(run))
    assert f"at update {last} " in stderr
    assert _train_rows(run)[-1][0] == last


def test_a_cooldown_in_minutes_gives_processes_with_unequal_clocks_the_same_rate(
    small_data: Path, tmp_path: Path
) -> None:
    """The rate of a time cooldown follows the processes' mean clock: both take the same rate at
    every update (their own clocks would give different ones, and different weights), and it
    falls towards 0 by the end of train.max_minutes."""
    config = write_config(
        tmp_path / "c.yaml",
        micro_config(
            small_data,
            optim={"cooldown_minutes": 0.1},  # over the whole run
            train={"max_updates": 100_000, "max_minutes": 0.1, "save_every": 0},
        ),
    )
    script = tmp_path / "record_rates.py"
    script.write_text(RECORD_RATES.format(delay=0.03), encoding="utf-8")
    result = _torchrun([str(script), "train", str(config), "--run-dir", str(tmp_path / "run")], 150)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = ((tmp_path / f"rates{r}").read_text().split() for r in (0, 1))
    assert rank0 == rank1  # bit for bit
    rates = [float(r) for r in rank0]
    assert len(rates) >= 5
    assert rates[-1] < 0.25 * max(rates)


def test_close_distributed_leaves_the_group_and_does_nothing_without_one(tmp_path: Path) -> None:
    import torch.distributed as dist

    from transformer.training.distributed import close_distributed

    assert not close_distributed()  # no group: nothing to do
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        assert close_distributed()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
