"""Train and evaluate the rows of a study, each in its own run directory, skipping finished ones.

OUT/rows/KEY/ is an ordinary run directory (`transformer train` could resume it) plus
`result.json` once the row is finished: validation perplexity and BLEU of the final weights (beam 4,
alpha 0.6, no checkpoint averaging, as in the paper's Table 3), updates, minutes and parameters.
A row whose result.json records the same config is skipped when the study is run again; an
interrupted row resumes from its last checkpoint, so a crash loses at most part of one row. A row
that fails is reported (OUT/rows/KEY/error.txt) and the others go on.

Rows run one after another in this process, or with `jobs > 1` in a pool of worker processes,
each pinned to one GPU (or sharing the CPU cores).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer.io import atomic_write_json, atomic_write_text
from transformer.study.rows import Row
from transformer.training.config import RunConfig

ROWS = "rows"
RESULT = "result.json"
ERROR = "error.txt"


@dataclass(frozen=True)
class Budget:
    """The same training budget for every row: optimizer updates, or minutes of training."""

    updates: int = 0
    minutes: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Budget:
        """'300' or '300u' = 300 updates; '20m' or '20min' = 20 minutes of training per row."""
        value = text.strip().lower()
        try:
            if value.endswith(("min", "m")):
                minutes = float(value.removesuffix("min").removesuffix("m"))
                if minutes > 0 and math.isfinite(minutes):
                    return cls(minutes=minutes)
            else:
                updates = int(value.removesuffix("u"))
                if updates > 0:
                    return cls(updates=updates)
        except ValueError:
            pass
        raise ValueError(
            f"--budget: expected a positive number of updates (300) or minutes (20m), got {text!r}"
        )

    def __str__(self) -> str:
        return f"{self.updates} updates" if self.updates else f"{self.minutes:g} minutes"


def row_config(row: Row, base: RunConfig, budget: Budget, seed: int) -> RunConfig:
    """The run config of one row: its changes, the budget, and one validation at the end.

    Validation BLEU uses beam 4 (alpha 0.6, the Translator's default), as the paper's Table 3.
    One checkpoint is kept (every quarter of the budget), for resuming an interrupted row.
    """
    config = row.apply(base)
    if budget.updates:
        limits = dict(
            max_updates=budget.updates,
            max_minutes=0.0,
            save_every=max(1, budget.updates // 4),
            save_every_minutes=0.0,
        )
    else:
        limits = dict(
            max_updates=10**9,
            max_minutes=budget.minutes,
            save_every=0,
            save_every_minutes=max(budget.minutes / 4, 0.5),
        )
    return config.replace(
        "train",
        **limits,
        max_epochs=0,
        seed=seed,
        valid_every=0,
        valid_bleu=True,
        valid_beam=4,
        patience=0,
        keep_last=1,
        best_metric="loss",
    )


def finished_result(row_dir: Path, config: RunConfig) -> dict[str, Any] | None:
    """The row's recorded result if it was finished with exactly this config, else None."""
    try:
        result = json.loads((row_dir / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if result.get("config") == config.to_dict() else None


class RowInterrupted(Exception):
    """Training of a row stopped on SIGINT/SIGTERM (its checkpoint is saved)."""


def train_row(
    row: Row, config: RunConfig, row_dir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Train one row (resuming if it was interrupted) and return its result (also written)."""
    from transformer.training.rundir import prepare_run_dir
    from transformer.training.trainer import METRICS, Trainer

    prepare_run_dir(config, row_dir)  # refuses a directory trained with another recipe
    trainer = Trainer(config, row_dir, log=log)
    trainer.train()
    if trainer.interrupted:
        raise RowInterrupted(row.key)
    valid = train = None
    for line in (row_dir / METRICS).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("kind") == "valid":
            valid = record
        elif record.get("kind") == "train":
            train = record
    if valid is None:
        raise RuntimeError(f"{row_dir}: training gave no validation result (no validation data?)")
    result = {
        "key": row.key,
        "group": row.group,
        "description": row.description,
        "updates": trainer.step,
        "epochs": trainer.epoch + 1,
        "train_minutes": trainer.train_seconds / 60,
        "parameters": trainer.model.num_parameters(),
        "valid_loss": valid["loss"],
        "valid_ppl": valid["ppl"],
        "valid_bleu": valid.get("bleu"),
        "tokens_per_s": train["tokens_per_s"] if train else None,
        "model": trainer.model_config.to_dict(),
        "config": config.to_dict(),
    }
    atomic_write_json(row_dir / RESULT, result)
    (row_dir / ERROR).unlink(missing_ok=True)
    return result


@dataclass
class RowOutcome:
    row: Row
    result: dict[str, Any] | None = None
    error: str | None = None
    skipped: bool = False


def _run_one(row: Row, config: RunConfig, row_dir: Path) -> RowOutcome:
    """Train a row, turning any failure into a reported outcome (interruptions propagate)."""

    def log(message: str) -> None:
        print(f"[{row.key}] {message}", file=sys.stderr, flush=True)

    try:
        return RowOutcome(row, result=train_row(row, config, row_dir, log))
    except (RowInterrupted, KeyboardInterrupt):
        raise
    except Exception as e:  # one failing row must not stop the others
        message = f"{type(e).__name__}: {e}"
        row_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(row_dir / ERROR, message + "\n\n" + traceback.format_exc())
        log(f"FAILED: {message}")
        return RowOutcome(row, error=message)


def run_rows(
    rows: list[Row],
    base: RunConfig,
    out: Path,
    budget: Budget,
    seed: int,
    jobs: int = 1,
    devices: list[str] | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> list[RowOutcome]:
    """Run every row not yet finished; outcomes in the order of `rows`.

    `devices`: one entry per worker for `jobs > 1`, e.g. ["0", "1"] (CUDA device indices, each
    worker sees only its own) or ["cpu", "cpu"] (workers share the CPU cores).
    """
    outcomes: dict[str, RowOutcome] = {}
    todo: list[tuple[Row, RunConfig, Path]] = []
    for row in rows:
        config = row_config(row, base, budget, seed)
        row_dir = out / ROWS / row.key
        result = finished_result(row_dir, config)
        if result is not None:
            log(f"[{row.key}] finished earlier, kept: {row.description}")
            outcomes[row.key] = RowOutcome(row, result=result, skipped=True)
        else:
            todo.append((row, config, row_dir))
    if jobs <= 1 or len(todo) <= 1:
        for i, (row, config, row_dir) in enumerate(todo, start=1):
            log(f"[{row.key}] row {i} of {len(todo)} to train: {row.description} ({budget})")
            outcomes[row.key] = _run_one(row, config, row_dir)
    else:
        devices = devices or ["cpu"] * jobs
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        for device in devices[:jobs]:
            queue.put(device)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(
            max_workers=min(jobs, len(devices)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(queue, threads),
        ) as pool:
            futures = {pool.submit(_run_one, *item): item[0] for item in todo}
            for future in as_completed(futures):
                row = futures[future]
                try:
                    outcomes[row.key] = future.result()
                except RowInterrupted:
                    raise
                except Exception as e:  # the worker itself died
                    outcomes[row.key] = RowOutcome(row, error=f"worker failed: {e}")
    return [outcomes[r.key] for r in rows]


def _init_worker(queue: Any, threads: int) -> None:
    """Pin a pool worker to its device before anything touches CUDA."""
    device = queue.get()
    if device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    import torch

    torch.set_num_threads(threads)
