"""Does bf16 training lose quality? The first N updates of a config in fp32 and in bf16, each with
several seeds, validation perplexity every V updates, in one run.

What is measured
----------------
For every precision P (default fp32 and bf16) and seed S (default 1 and 2), ``transformer train
CONFIG --set train.precision=P --set train.seed=S`` runs for ``--updates`` updates (no time limit),
validating every ``--valid-every`` updates (perplexity only: no BLEU decoding, so that the curves
cost little beside training). The seed fixes the initial weights, the dropout masks and the batch
order, so two seeds of one precision give the run-to-run noise, and the two precisions with the same
seed start from the same weights and see the same batches.

Verdict rule, at every validation point: the difference between the precisions' mean
perplexities is "within noise" when it is at most the larger of the two precisions' seed ranges
(max - min over seeds) at that point, else one precision is "better". The headline is the verdict
at the last point and the number of points within noise.

Speed is reported too (target tokens/s of the training log, median over its rows), but runs that
share the CPU (``--jobs 2``) slow each other, so compare speed with benchmarks/train_speed.py.

Resumable: each run is an ordinary run directory under ``--work`` (default
work/precision_curves); re-running the benchmark resumes unfinished runs and reads finished ones.

Run (from the repository root; prepares work/multi30k-de-en first if needed)::

    .venv/bin/python benchmarks/precision_curves.py --updates 1000 --valid-every 100 --jobs 2
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from _results import write_result
from _runs import (
    REPO,
    read_metrics,
    rel,
    run_child,
    run_finished,
    threads_env,
    train_command,
)
from train_speed import ensure_data
from transformer.training.config import load_config

DEFAULT_CONFIG = REPO / "configs" / "multi30k.yaml"
DEFAULT_DATA = REPO / "work" / "multi30k-de-en"
DEFAULT_WORK = REPO / "work" / "precision_curves"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "precision_curves.json"
# --tiny: the script's own check in seconds (tests/benchmarks/test_precision_curves.py).
TINY_OVERRIDES = (
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_ff=64",
    "model.n_encoder_layers=1",
    "model.n_decoder_layers=1",
    "data.max_tokens=512",
    "train.device=cpu",
)


def run_key(precision: str, seed: int) -> str:
    return f"{precision}-seed{seed}"


def overrides(args: argparse.Namespace, precision: str, seed: int) -> list[str]:
    """The `--set` values of one run: the budget, validation perplexity only, one checkpoint
    kept for resuming."""
    return [
        f"data.dir={args.data}",
        f"train.precision={precision}",
        f"train.seed={seed}",
        f"train.max_updates={args.updates}",
        "train.max_minutes=0",
        "train.max_epochs=0",
        f"train.valid_every={args.valid_every}",
        "train.valid_bleu=false",
        "train.best_metric=loss",
        "train.patience=0",
        f"train.save_every={args.valid_every}",
        "train.save_every_minutes=0",
        "train.keep_last=1",
        f"train.log_every={max(1, min(50, args.valid_every))}",
        "train.progress=false",
        *args.overrides,
    ]


def train(args: argparse.Namespace, precision: str, seed: int) -> dict[str, Any]:
    """Train one run (or resume / reuse it) and return its curve and speed."""
    run_dir = args.work / run_key(precision, seed)
    sets = overrides(args, precision, seed)
    command = train_command(args.config, run_dir, sets)
    config = load_config(args.config, sets)
    if not run_finished(run_dir, config):
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "train.log"
        print(f"{run_key(precision, seed)}: {shlex.join(rel(command))} (log: {log})", flush=True)
        status = run_child(command, threads_env(args.threads), log)
        if status != 0 or not run_finished(run_dir, config):
            raise SystemExit(
                f"error: {run_dir} did not finish (exit status {status}); see {log}, "
                "re-run to resume it"
            )
    records = read_metrics(run_dir)
    valid = {r["step"]: r["ppl"] for r in records if r["kind"] == "valid"}  # last one wins
    speeds = [r["tokens_per_s"] for r in records if r["kind"] == "train"]
    return {
        "precision": precision,
        "seed": seed,
        "command": shlex.join(rel(command)),
        "curve": [[step, valid[step]] for step in sorted(valid)],
        "tokens_per_s": statistics.median(speeds) if speeds else None,
        "train_minutes": max(r.get("train_minutes", 0.0) for r in records),
    }


def compare(runs: list[dict[str, Any]], precisions: list[str]) -> list[dict[str, Any]]:
    """Per validation point: each precision's mean and seed range, the difference of the means
    (second precision minus first) and the verdict (module docstring)."""
    curves: dict[str, list[dict[int, float]]] = {p: [] for p in precisions}
    for run in runs:
        curves[run["precision"]].append(dict(map(tuple, run["curve"])))
    steps = sorted(set.intersection(*(set(c) for cs in curves.values() for c in cs)))
    points = []
    for step in steps:
        point: dict[str, Any] = {"step": step}
        for p in precisions:
            values = [c[step] for c in curves[p]]
            point[p] = {"mean": statistics.fmean(values), "range": max(values) - min(values)}
        first, second = precisions[0], precisions[-1]
        difference = point[second]["mean"] - point[first]["mean"]
        noise = max(point[p]["range"] for p in precisions)
        point["difference"] = difference
        point["noise"] = noise
        point["verdict"] = verdict(difference, noise, first, second)
        points.append(point)
    return points


def verdict(difference: float, noise: float, first: str, second: str) -> str:
    """ "within noise" when |difference| <= noise; else which precision has the lower perplexity."""
    if abs(difference) <= noise:
        return "within noise"
    return f"{first if difference > 0 else second} better"


def plot(runs: list[dict[str, Any]], precisions: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = dict(
        zip(precisions, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False)
    )
    for run in runs:
        steps, ppl = zip(*run["curve"], strict=True)
        ax.plot(
            steps,
            ppl,
            marker="o",
            markersize=3,
            color=colours[run["precision"]],
            linestyle="-" if run["seed"] == runs[0]["seed"] else "--",
            label=f"{run['precision']}, seed {run['seed']}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title("Training in bf16 against fp32: validation perplexity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    precisions = result["precisions"]
    first, second = precisions[0], precisions[-1]
    lines = [
        f"Validation perplexity over the first {result['updates']:,} updates of "
        f"{result['config']} ({len(result['seeds'])} seeds each; mean, seed range in brackets):",
        "",
        "| updates | "
        + " | ".join(precisions)
        + f" | {second} - {first} | noise (largest range) | verdict |",
        "| ---: | " + " | ".join("---:" for _ in precisions) + " | ---: | ---: | --- |",
    ]
    for point in result["points"]:
        cells = [f"{point[p]['mean']:.2f} [{point[p]['range']:.2f}]" for p in precisions]
        lines.append(
            f"| {point['step']:,} | "
            + " | ".join(cells)
            + f" | {point['difference']:+.2f} | {point['noise']:.2f} | {point['verdict']} |"
        )
    within = sum(p["verdict"] == "within noise" for p in result["points"])
    lines += [
        "",
        f"Within noise at {within} of {len(result['points'])} points; at the last: "
        f"{result['points'][-1]['verdict']}."
        if result["points"]
        else "No common points.",
        "",
        "| run | tokens/s (median, runs shared the CPU) | minutes |",
        "| --- | ---: | ---: |",
    ]
    for run in result["runs"]:
        speed = f"{run['tokens_per_s']:,.0f}" if run["tokens_per_s"] else "-"
        lines.append(
            f"| {run['precision']}, seed {run['seed']} | {speed} | {run['train_minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--data", type=Path, default=None,
                   help=f"prepared data (default {rel([str(DEFAULT_DATA)])[0]}, made if missing)")  # fmt: skip
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--valid-every", type=int, default=100)
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated, compared in order")
    p.add_argument("--seeds", default="1,2", help="comma-separated seeds (at least 2: the noise)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (they share the CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--out", type=Path, default=None, help="JSON result (.md and .png beside it)")
    p.add_argument("--tiny", action="store_true", help="a micro model, for the script's own test")
    args = p.parse_args(argv)
    args.precisions = [x for x in args.precisions.split(",") if x]
    args.seeds = [int(x) for x in args.seeds.split(",") if x]
    if len(args.precisions) < 2 or len(args.seeds) < 2:
        p.error("give at least two precisions and two seeds")
    if args.updates < 1 or args.valid_every < 1:
        p.error("--updates and --valid-every must be positive")
    if args.tiny:
        args.overrides = [*TINY_OVERRIDES, *args.overrides]
    args.data = args.data or DEFAULT_DATA
    args.out = args.out or (args.work / "precision_curves.json" if args.tiny else DEFAULT_OUT)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ensure_data(args.data)
    started = time.perf_counter()
    # seed by seed, so that runs sharing the CPU are of different precisions
    todo = [(p, s) for s in args.seeds for p in args.precisions]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = dict(zip(todo, pool.map(lambda ps: train(args, *ps), todo), strict=True))
    runs = [done[p, s] for p in args.precisions for s in args.seeds]
    points = compare(runs, args.precisions)
    result = {
        "benchmark": "precision_curves",
        "config": rel([str(args.config)])[0],
        "updates": args.updates,
        "valid_every": args.valid_every,
        "precisions": args.precisions,
        "seeds": args.seeds,
        "overrides": args.overrides,
        "runs": runs,
        "points": points,
        "wall_minutes": (time.perf_counter() - started) / 60,
    }
    table = markdown(result)
    plot(runs, args.precisions, args.out.with_suffix(".png"))
    write_result(args.out, result, table)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
