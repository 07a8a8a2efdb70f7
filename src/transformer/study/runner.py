"""Train and evaluate the rows of a study, each in its own run directory, skipping finished ones.

OUT/rows/KEY/ is an ordinary run directory (`transformer train` could resume it) plus
`result.json` once the row is finished: validation perplexity and BLEU of the final weights (beam 4,
alpha 0.6, no checkpoint averaging, as in the paper's Table 3), updates, minutes, parameters, the
seed and the learning curve (`curve`: [[update, valid_ppl], ...], validated `curve_points` times,
evenly over an update budget; a time budget gives only its final point, since the trainer validates
every so many updates, not minutes). A row whose result.json records the same recipe (its config,
however often it was validated) is skipped when the study is run again; an interrupted row resumes
from its last checkpoint, so a crash loses at most part of one row. A row that fails is reported
(OUT/rows/KEY/error.txt) and the others go on.

Seeds: with `seeds` N > 1 the i-th seed is `seed + i - 1` and its run directory OUT/rows/KEY-s{i}
(the first keeps OUT/rows/KEY). The base row is trained with every seed; another row first with
the first seed only, then with all of them if its perplexity lies within twice the base's range of
the base's mean (`needs_more_seeds`: there its verdict could change with the seed), or always with
`seeds_all`. A row's results are aggregated over its finished seeds (`Spread`).

Reuse: `reuse` names other studies' output directories; a row (at a seed) finished there with the
same recipe, under any key (Table 3's D3 and the questions' Q4 are one model), is kept instead of
trained again: its result.json is copied into this study's row directory with `reused_from`.

Rows run one after another in this process, or with `jobs > 1` in a pool of worker processes,
each pinned to one GPU (or sharing the CPU cores).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
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


# How often a row is validated does not change what it learns: a row finished with other
# validation settings is kept.
VALIDATION_KEYS = ("valid_every", "valid_bleu")


def run_dir(out: Path, row: Row, index: int = 1) -> Path:
    """OUT/rows/KEY for a row's first seed, OUT/rows/KEY-s{index} for the others."""
    return out / ROWS / (row.key if index == 1 else f"{row.key}-s{index}")


def curve_every(budget: Budget, points: int) -> int:
    """Updates between two validations for `points` evenly spaced ones; 0: none but the final.

    ceil(updates / points), so that at most `points` validations fall within the budget, the last
    at its end (exactly `points` when they divide the budget). A time budget has no curve: the
    trainer validates every so many updates, and how many a row makes in its minutes is not known
    in advance.
    """
    if points <= 0 or not budget.updates:
        return 0
    return max(1, math.ceil(budget.updates / points))


def row_config(
    row: Row, base: RunConfig, budget: Budget, seed: int, curve_points: int = 0
) -> RunConfig:
    """The run config of one row: its changes, the budget, the seed and the validations.

    The trainer validates perplexity only (`curve_points` times, evenly, and at the end); BLEU of
    the final weights (beam 4, alpha 0.6, the Translator's default, as the paper's Table 3) is
    computed by `train_row` after training. One checkpoint is kept (every quarter of the budget),
    for resuming an interrupted row.
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
        valid_every=curve_every(budget, curve_points),
        valid_bleu=False,
        valid_beam=4,
        patience=0,
        keep_last=1,
        best_metric="loss",
    )


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    train = {k: v for k, v in config.get("train", {}).items() if k not in VALIDATION_KEYS}
    return {**config, "train": train}


def reused_result(
    row: Row, config: RunConfig, row_dir: Path, reuse: Sequence[Path]
) -> dict[str, Any] | None:
    """A result finished with `config`'s recipe in one of the `reuse` study directories (any row
    key), copied into `row_dir` under this row's key; None if there is none."""
    for study in reuse:
        for other in sorted((study / ROWS).glob("*")):
            result = finished_result(other, config)
            if result is None:
                continue
            result = {
                **result,
                "key": row.key,
                "group": row.group,
                "description": row.description,
                "reused_from": str(other),
            }
            row_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(row_dir / RESULT, result)
            (row_dir / ERROR).unlink(missing_ok=True)
            return result
    return None


def finished_result(row_dir: Path, config: RunConfig) -> dict[str, Any] | None:
    """The row's recorded result if it was finished with this recipe, else None (the recipe is
    the config less how often it was validated: `VALIDATION_KEYS`)."""
    try:
        result = json.loads((row_dir / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or not isinstance(result.get("config"), dict):
        return None
    return result if _recipe(result["config"]) == _recipe(config.to_dict()) else None


class RowInterrupted(Exception):
    """Training of a row stopped on SIGINT/SIGTERM (its checkpoint is saved)."""


def train_row(
    row: Row, config: RunConfig, row_dir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Train one row (resuming if it was interrupted), validate its final weights with BLEU and
    return its result (also written)."""
    from transformer.training.rundir import prepare_run_dir
    from transformer.training.trainer import METRICS, Trainer
    from transformer.training.validation import Validator

    prepare_run_dir(config, row_dir)  # refuses a directory trained with another recipe
    trainer = Trainer(config, row_dir, log=log)
    trainer.train()
    if trainer.interrupted:
        raise RowInterrupted(row.key)
    curve: list[list[float]] = []
    train = None
    for line in (row_dir / METRICS).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("kind") == "valid" and "ppl" in record:
            curve.append([record["step"], record["ppl"]])
        elif record.get("kind") == "train":
            train = record
    # The final weights as the trainer's validator scores them, with BLEU (beam 4) this time.
    validate = Validator(config.replace("train", valid_bleu=True))
    valid = validate(trainer.model, trainer.tokenizer, trainer.device, trainer.autocast)
    if not valid:
        raise RuntimeError(f"{row_dir}: training gave no validation result (no validation data?)")
    if not curve or curve[-1][0] != trainer.step:
        curve.append([trainer.step, valid["ppl"]])
    log(
        f"final weights (update {trainer.step}): valid ppl {valid['ppl']:.2f}"
        + (f", BLEU {valid['bleu']:.2f} (beam 4)" if "bleu" in valid else "")
    )
    result = {
        "key": row.key,
        "group": row.group,
        "description": row.description,
        "seed": config.train.seed,
        "updates": trainer.step,
        "epochs": trainer.epoch + 1,
        "train_minutes": trainer.train_seconds / 60,
        "parameters": trainer.model.num_parameters(),
        "valid_loss": valid["loss"],
        "valid_ppl": valid["ppl"],
        "valid_bleu": valid.get("bleu"),
        "tokens_per_s": train["tokens_per_s"] if train else None,
        "curve": curve,
        "model": trainer.model_config.to_dict(),
        "config": config.to_dict(),
    }
    atomic_write_json(row_dir / RESULT, result)
    (row_dir / ERROR).unlink(missing_ok=True)
    return result


@dataclass(frozen=True)
class Spread:
    """A measurement over seeds: mean, min, max, and the sample standard deviation (3 or more)."""

    n: int
    mean: float
    min: float
    max: float
    std: float | None = None

    @property
    def range(self) -> float:
        return self.max - self.min


def spread(values: Sequence[float]) -> Spread | None:
    """The `Spread` of `values`; None for none."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) >= 3 else None
    return Spread(len(values), statistics.fmean(values), min(values), max(values), std)


def needs_more_seeds(row_ppl: float, base_ppls: Sequence[float]) -> bool:
    """Whether a row measured with one seed is trained with the others: when its perplexity is
    within twice the base's range over seeds of the base's mean, where another seed could move
    it across the verdict's noise band. Needs two base seeds or more (no range without them)."""
    if len(base_ppls) < 2:
        return False
    base = spread(base_ppls)
    assert base is not None
    return abs(row_ppl - base.mean) <= 2 * base.range


@dataclass
class SeedRun:
    """One training of a row: its `index`-th seed (1-based) of value `seed`."""

    index: int
    seed: int
    result: dict[str, Any] | None = None
    error: str | None = None
    skipped: bool = False


@dataclass
class RowOutcome:
    """A row's runs, one per seed trained or kept (in seed order), and their aggregates."""

    row: Row
    runs: list[SeedRun] = field(default_factory=list)

    @property
    def results(self) -> list[dict[str, Any]]:
        return [r.result for r in self.runs if r.result is not None]

    @property
    def result(self) -> dict[str, Any] | None:
        """The first finished seed's result (sizes, parameters, updates are the same for all)."""
        results = self.results
        return results[0] if results else None

    @property
    def error(self) -> str | None:
        """The failures of the row's seeds in one line, or None."""
        errors = [
            (f"seed {r.seed}: " if len(self.runs) > 1 else "") + r.error
            for r in self.runs
            if r.error is not None
        ]
        return "; ".join(errors) or None

    @property
    def skipped(self) -> bool:
        """Whether every run was finished earlier (none trained now)."""
        return bool(self.runs) and all(r.skipped for r in self.runs)

    @property
    def ppl(self) -> Spread | None:
        return spread([r["valid_ppl"] for r in self.results])

    @property
    def bleu(self) -> Spread | None:
        return spread([r["valid_bleu"] for r in self.results if r.get("valid_bleu") is not None])

    def curve_spread(self) -> list[tuple[int, Spread]]:
        """(update, dev perplexity over the seeds) at the updates where every seed with a
        learning curve was validated; results written before curves were recorded give their
        final point, and only when no seed has a curve."""
        with_curve = [r["curve"] for r in self.results if r.get("curve")]
        curves = [
            {int(u): float(p) for u, p in c}
            for c in with_curve or [[[r["updates"], r["valid_ppl"]]] for r in self.results]
        ]
        if not curves:
            return []
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        return [(u, s) for u in steps if (s := spread([c[u] for c in curves])) is not None]

    def curve(self) -> list[tuple[int, float]]:
        """(update, mean dev perplexity over the seeds): `curve_spread`'s means."""
        return [(u, s.mean) for u, s in self.curve_spread()]


@dataclass(frozen=True)
class _Task:
    row: Row
    index: int
    seed: int
    config: RunConfig
    row_dir: Path

    @property
    def label(self) -> str:
        return self.row.key if self.index == 1 else f"{self.row.key}-s{self.index}"


def _run_one(task: _Task) -> SeedRun:
    """Train one row at one seed, turning any failure into a reported outcome (interruptions
    propagate)."""

    def log(message: str) -> None:
        print(f"[{task.label}] {message}", file=sys.stderr, flush=True)

    if ORPHANED.is_set():
        raise RowInterrupted(task.row.key)
    run = SeedRun(task.index, task.seed)
    try:
        run.result = train_row(task.row, task.config, task.row_dir, log)
    except (RowInterrupted, KeyboardInterrupt):
        raise
    except Exception as e:  # one failing row must not stop the others
        message = f"{type(e).__name__}: {e}"
        task.row_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(task.row_dir / ERROR, message + "\n\n" + traceback.format_exc())
        log(f"FAILED: {message}")
        run.error = message
    return run


def run_rows(
    rows: list[Row],
    base: RunConfig,
    out: Path,
    budget: Budget,
    seed: int,
    jobs: int = 1,
    devices: list[str] | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    *,
    seeds: int = 1,
    seeds_all: bool = False,
    curve_points: int = 0,
    reuse: Sequence[Path] = (),
    train: bool = True,
) -> list[RowOutcome]:
    """Run every row not yet finished; outcomes in the order of `rows`.

    The row keyed "base" is trained with `seeds` seeds (seed, seed + 1, ...), every other row with
    the first, then with all if `needs_more_seeds` (or `seeds_all`). `devices`: one entry per
    worker for `jobs > 1`, e.g. ["0", "1"] (CUDA device indices, each worker sees only its own)
    or ["cpu", "cpu"] (workers share the CPU cores). `reuse`: other studies' output directories
    whose finished rows of the same recipe are kept (`reused_result`). With `train` False
    nothing is trained: the outcomes hold what is finished (e.g. to report a study in progress).
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")

    def task(row: Row, index: int) -> _Task:
        value = seed + index - 1
        config = row_config(row, base, budget, value, curve_points)
        return _Task(row, index, value, config, run_dir(out, row, index))

    outcomes = {row.key: RowOutcome(row) for row in rows}
    first = [
        task(row, i)
        for row in rows
        for i in range(1, (seeds if seeds_all or row.key == "base" else 1) + 1)
    ]
    for t, run in _run_tasks(first, budget, jobs, devices, log, reuse, train):
        outcomes[t.row.key].runs.append(run)
    if seeds > 1 and not seeds_all:
        base_ppls = [r["valid_ppl"] for r in outcomes["base"].results] if "base" in outcomes else []
        more: list[_Task] = []
        for row in rows:
            result = outcomes[row.key].result
            if row.key == "base" or result is None:
                continue
            extra = [task(row, i) for i in range(2, seeds + 1)]
            if needs_more_seeds(result["valid_ppl"], base_ppls):
                more += extra
            else:  # seeds of an earlier run with --seeds-all still count
                for t in extra:
                    kept = finished_result(t.row_dir, t.config)
                    if kept is not None:
                        outcomes[row.key].runs.append(SeedRun(t.index, t.seed, kept, skipped=True))
        if more:
            log(
                f"{len(sorted({t.row.key for t in more}))} row(s) within twice the base's range of "
                f"its perplexity: training their seeds 2-{seeds}"
            )
        for t, run in _run_tasks(more, budget, jobs, devices, log, reuse, train):
            outcomes[t.row.key].runs.append(run)
    for outcome in outcomes.values():
        outcome.runs.sort(key=lambda r: r.index)
    return [outcomes[r.key] for r in rows]


def _run_tasks(
    tasks: list[_Task],
    budget: Budget,
    jobs: int,
    devices: list[str] | None,
    log: Callable[[str], None],
    reuse: Sequence[Path] = (),
    train: bool = True,
) -> list[tuple[_Task, SeedRun]]:
    """Each task's run: kept if finished earlier (here or, with the same recipe, in a `reuse`
    directory), else trained (here or in a pool of workers; with `train` False, left out)."""
    done: list[tuple[_Task, SeedRun]] = []
    todo: list[_Task] = []
    for t in tasks:
        result = finished_result(t.row_dir, t.config)
        if result is None:
            result = reused_result(t.row, t.config, t.row_dir, reuse)
        if result is not None:
            where = f" from {result['reused_from']}" if "reused_from" in result else ""
            log(f"[{t.label}] finished earlier, kept{where}: {t.row.description}")
            done.append((t, SeedRun(t.index, t.seed, result, skipped=True)))
        else:
            todo.append(t)
    if not train:
        return done
    if jobs <= 1 or len(todo) <= 1:
        for i, t in enumerate(todo, start=1):
            log(
                f"[{t.label}] row {i} of {len(todo)} to train: {t.row.description} "
                f"({budget}, seed {t.seed})"
            )
            done.append((t, _run_one(t)))
        return done
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
        futures = {pool.submit(_run_one, t): t for t in todo}
        for future in as_completed(futures):
            t = futures[future]
            try:
                done.append((t, future.result()))
            except RowInterrupted:
                raise
            except Exception as e:  # the worker itself died
                done.append((t, SeedRun(t.index, t.seed, error=f"worker failed: {e}")))
    return done


def _init_worker(queue: Any, threads: int) -> None:
    """Pin a pool worker to its device before anything touches CUDA, and stop it when the study
    process dies (`watch_parent`)."""
    device = queue.get()
    if device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()


def watch_parent(parent: int, interval: float = 2.0, grace: float = 120.0) -> None:
    """Run in a pool worker: once its parent, the study process, is gone (killed, say), send the
    worker SIGTERM, so that the row in training saves a checkpoint and stops (the next run of
    the study resumes it), then end the worker after `grace` seconds. Without this a killed
    study leaves its workers training on as orphans."""
    while os.getppid() == parent:
        time.sleep(interval)
    ORPHANED.set()  # a task the pool had queued already is not started (`_run_one`)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os._exit(1)


ORPHANED = threading.Event()  # set in a pool worker whose study process is gone
