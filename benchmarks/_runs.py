"""Training runs of the benchmarks: `transformer train` in a process of its own, resumed when
re-started, and what its metrics.jsonl says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformer.training.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]


def train_command(config: Path, run_dir: Path, overrides: Sequence[str]) -> list[str]:
    """`transformer train` in a process of its own (`python -m transformer.cli train`)."""
    sets = [x for o in overrides for x in ("--set", o)]
    return [sys.executable, "-m", "transformer.cli", "train", str(config), "--run-dir",
            str(run_dir), *sets]  # fmt: skip


def run_finished(run_dir: Path, config) -> bool:
    """Whether the run's newest checkpoint has reached one of its limits (a run stopped by a
    signal has not)."""
    found = latest_checkpoint(run_dir, warn=lambda message: None)
    if found is None:
        return False
    _, state = found
    t = config.train
    return (
        state["step"] >= t.max_updates
        or bool(t.max_epochs and state["epoch"] >= t.max_epochs)
        or bool(t.max_minutes and state["train_seconds"] >= t.max_minutes * 60)
        or bool(t.patience and state["bad_validations"] >= t.patience)
    )


def run_child(command: list[str], env: dict[str, str], log: Path | None = None) -> int:
    """Run `command` with its output on our stderr (or appended to `log`); on an interruption of
    ours, let the trainer save a checkpoint and stop (it takes SIGINT as a request to stop)
    before giving up."""
    out = open(log, "a", encoding="utf-8") if log else sys.stderr  # noqa: SIM115
    try:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
        try:
            return process.wait()
        except BaseException:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            raise
    finally:
        if log:
            out.close()


def threads_env(threads: int | None) -> dict[str, str]:
    """Our environment, with `threads` intra-op threads for a child process when given."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of RUN_DIR/metrics.jsonl (none before the run has logged)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def rel(parts: Sequence[str]) -> list[str]:
    """Paths under the repository written relative to it (commands read as one would type them)."""
    root = str(REPO) + os.sep
    return [p.replace(root, "") if isinstance(p, str) else p for p in parts]
