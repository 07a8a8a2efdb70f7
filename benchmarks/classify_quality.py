"""Classification quality: the real fastText library against our Transformer classifier, on the
same K stratified folds of the shipped AG News rows, in one run.

What is measured
----------------
The rows of ``data/ag_news/train_head.csv.gz`` (3,263 news texts, 4 topics) are dealt into K
folds (default 5) by the project's own stratified, seeded assignment
(`transformer.data.classification.fold_of`). For fold k: test = fold k, validation = fold
(k + 1) mod K, training = the other K - 2 folds. Each fold's data directory is written by
`prepare_classification` (``transformer prepare --classify``: a BPE tokenizer trained on that
fold's training texts only); the texts both systems see are the project's (title and description
joined with a space, whitespace collapsed), and the benchmark checks that its own reading of the
folds gives exactly the prepared validation and test texts.

* ``fastText`` (Joulin et al., 2016, "Bag of Tricks for Efficient Text Classification"): the
  real library (PyPI ``fasttext-numpy2``), ``train_supervised`` with bigrams (``wordNgrams 2``),
  ``dim 10``, softmax loss, ``minCount 1``; texts lowercased with punctuation split off as in
  fastText's own AG News script (``classification-results.sh``), labels ``__label__K``. The
  learning rate and the number of epochs are chosen on the validation fold from a grid (highest
  validation accuracy; a tie goes to the earlier grid point), then that setting is trained again
  (the timed "final fit") and scored on the test fold. One thread and a fixed seed, so that the
  result is reproducible (``--fasttext-threads N`` trains on N threads: faster, but fastText with
  more than one thread is not deterministic).
* ``ours``: ``transformer train CONFIG`` (configs/ag_news.yaml) in its own process per fold, for
  at most ``--minutes / K`` minutes of training (``train.max_minutes``; the config's other limits
  apply too). Two models of each run are scored: ``best/`` (kept by validation accuracy) and the
  average of the last 5 checkpoints (`transformer average`); ``--ours`` (default ``best``) names
  the headline one. ``best`` because it is chosen on the validation fold, as fastText's
  hyperparameters are, and with only minutes of training on a few thousand texts the last
  checkpoints need not be the best ones; the average is reported next to it.

Scores (accuracy, macro-F1: `transformer.evaluation.classification`) are per fold on the test
fold, then mean and sample standard deviation over folds; "vs fastText" is the mean of the
per-fold (paired) differences. Training time: fastText's final fit (wall clock); ours: the run's
``train_minutes`` in metrics.jsonl (the trainer's clock of its training loop, which counts the
periodic validations and checkpoints inside the loop, but not process start-up or the final
validation). Inference: texts/s over the whole test fold, text in and label out
(preprocessing / tokenization included), the best of ``--repeats`` passes: fastText's
``predict`` on a list, ours `Classifier.probabilities` on the CPU in fp32 in length-sorted
batches of at most 8,192 padded tokens, with the torch threads of this process.

Resumable: everything lives in the work directory (``--work``, default work/classify_quality):
data directories and runs are reused (a run re-started with the same command resumes by itself),
and each fold's results are cached in ``results.json`` there, so that re-running the benchmark
after an interruption continues where it stopped. A work directory made with other settings is
refused (pass another ``--work``).

Run (from the repository root; about ``--minutes`` plus a few minutes)::

    .venv/bin/python -m pip install -e '.[bench]'     # fasttext-numpy2
    .venv/bin/python benchmarks/classify_quality.py                 # 5 folds, 30 minutes
    .venv/bin/python benchmarks/classify_quality.py --minutes 60 --folds 10
    .venv/bin/python benchmarks/classify_quality.py --only-fold 0   # one fold (resumable)
    .venv/bin/python benchmarks/classify_quality.py --tiny          # the script's own check

Writes benchmarks/results/classify_quality.json and .md (``--out``) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from _results import write_result
from _runs import REPO, read_metrics, rel, run_child, run_finished, threads_env, train_command
from transformer.classifier import Classifier
from transformer.data.classification import (
    FoldAssigner,
    LabelIndex,
    prepare_classification,
    read_classes,
    read_labelled,
)
from transformer.data.textfiles import file_sha256
from transformer.evaluation.classification import classification_scores, mean_and_spread
from transformer.io import atomic_write_json, atomic_write_text
from transformer.training.average import average_run
from transformer.training.config import load_config

DATA = REPO / "data" / "ag_news" / "train_head.csv.gz"
CLASSES = REPO / "data" / "ag_news" / "classes.txt"
TEXT_COLUMNS = (1, 2)  # title, description
LABEL_COLUMN = 0  # 1-based index into classes.txt
DEFAULT_CONFIG = REPO / "configs" / "ag_news.yaml"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "classify_quality.json"
DEFAULT_WORK = REPO / "work" / "classify_quality"
TINY_WORK = REPO / "work" / "classify_quality_tiny"
SYSTEMS = {
    "fasttext": "fastText (bigrams, dim 10)",
    "ours_best": "ours: best/ by validation accuracy",
    "ours_average": "ours: average of the last 5 checkpoints",
}
FASTTEXT_LABEL = "__label__"
FASTTEXT_PARAMS = {  # Joulin et al. (2016) with bigrams; lr and epoch come from the grid
    "dim": 10,
    "wordNgrams": 2,
    "minCount": 1,
    "loss": "softmax",
    "bucket": 2_000_000,  # fastText's default (its AG News script: 10M; plenty for 3,263 texts)
}
LRS = (0.05, 0.1, 0.25, 0.5, 1.0)
EPOCHS = (5, 10, 25, 50)
AVERAGE_LAST = 5
INFER_MAX_TOKENS = 8192  # padded tokens per inference batch of ours (the Classifier default)
# --tiny: the script's own check in seconds (tests/benchmarks/test_classify_quality.py).
TINY = {
    "folds": 3,
    "rows": 300,
    "vocab_size": 400,
    "minutes": 3.0,
    "lrs": (0.25, 1.0),
    "epochs": (5, 10),
    "repeats": 1,
    "threads": 1,
    "overrides": (
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_ff=64",
        "model.n_encoder_layers=1",
        "data.max_tokens=2048",
        "train.max_updates=6",
        "train.valid_every=3",
        "train.save_every=2",
        "train.log_every=2",
        "train.device=cpu",
    ),
}


# ------------------------------------------------------------------------------------- data


def fasttext_text(text: str) -> str:
    """fastText's AG News preprocessing (classification-results.sh, `normalize_text`):
    lowercase, `'` `.` `,` `(` `)` `!` `?` split off as tokens, `"` dropped, `;` `:` and
    `<br />` as spaces, runs of spaces squeezed."""
    text = text.lower().replace("'", " ' ").replace('"', "").replace(".", " . ")
    text = text.replace("<br />", " ")
    for mark in ",()!?":
        text = text.replace(mark, f" {mark} ")
    text = text.replace(";", " ").replace(":", " ")
    return " ".join(text.split())


def subset_rows(source: Path, rows: int, out: Path) -> Path:
    """`rows` evenly spaced records of the CSV `source` (every class is in them: the file's
    classes come in runs), written as plain CSV to `out` (once)."""
    if out.is_file():
        return out
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8", newline="") as f:
        records = list(csv.reader(f))
    if rows > len(records):
        raise SystemExit(f"error: --rows {rows}: {source} has only {len(records)} rows")
    chosen = [records[i * len(records) // rows] for i in range(rows)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".tmp"), "w", encoding="utf-8", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(chosen)
    out.with_suffix(".tmp").replace(out)
    return out


def split_rows(
    data: Path, labels: list[str], folds: int, seed: int, valid_fold: int, test_fold: int
) -> dict[str, list[tuple[str, int]]]:
    """(text, class index) of every row by split, with prepare's stratified fold assignment."""
    lookup = LabelIndex(labels, one_based=True)
    assign = FoldAssigner(folds, seed)
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "valid": [], "test": []}
    for row in read_labelled(data, text_columns=TEXT_COLUMNS, label_column=LABEL_COLUMN):
        k = lookup(data, row)
        fold = assign(k)
        name = {valid_fold: "valid", test_fold: "test"}.get(fold, "train")
        splits[name].append((row.text, k))
    return splits


def check_same_split(
    splits: dict[str, list[tuple[str, int]]], data_dir: Path, labels: list[str]
) -> None:
    """The benchmark's own reading of the folds must be exactly what prepare wrote."""
    manifest = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))
    for name, rows in splits.items():
        info = manifest["splits"][name]
        per_class = [sum(1 for _, k in rows if k == c) for c in range(len(labels))]
        if info["pairs"] != len(rows) or list(info["per_class"].values()) != per_class:
            raise RuntimeError(f"{data_dir}: the {name} split differs from the benchmark's folds")
        if name != "train":
            texts = (data_dir / f"{name}.src.txt").read_text(encoding="utf-8").splitlines()
            names = (data_dir / f"{name}.tgt.txt").read_text(encoding="utf-8").splitlines()
            if texts != [t for t, _ in rows] or names != [labels[k] for _, k in rows]:
                raise RuntimeError(
                    f"{data_dir}: {name}.src.txt / {name}.tgt.txt differ from the benchmark's folds"
                )


def prepare_fold(
    data: Path,
    out: Path,
    folds: int,
    k: int,
    seed: int,
    vocab_size: int,
    csv_sha: str,
    tokenizer: Path | None = None,
) -> dict[str, Any]:
    """Fold k's data directory (test fold k, validation fold k+1), reused if its manifest
    matches; its manifest. With `tokenizer`, the folds use it instead of training their own
    (a classifier initialised from another model needs that model's tokenizer)."""
    want = {"k": folds, "valid_fold": (k + 1) % folds, "test_fold": k, "seed": seed}
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        same = (
            manifest.get("task", {}).get("folds") == want
            and manifest["splits"]["train"]["inputs"]["rows"]["sha256"] == csv_sha
            and (
                manifest["tokenizer"]["trained"] and manifest["vocab_size"] <= vocab_size
                if tokenizer is None
                else manifest["tokenizer"]["sha256"] == file_sha256(tokenizer)
            )
        )
        if not same:
            raise SystemExit(
                f"error: {out} holds another data set than fold {k} of these settings; "
                "delete it or pass another --work"
            )
        return manifest
    print(f"fold {k}: preparing {out}", file=sys.stderr, flush=True)
    return prepare_classification(
        train=data,
        out=out,
        text_columns=TEXT_COLUMNS,
        label_column=LABEL_COLUMN,
        classes=CLASSES,
        folds=folds,
        valid_fold=(k + 1) % folds,
        test_fold=k,
        seed=seed,
        vocab_size=None if tokenizer is not None else vocab_size,
        tokenizer=tokenizer,
    )


# --------------------------------------------------------------------------------- fastText


def fasttext_fold(
    splits: dict[str, list[tuple[str, int]]],
    labels: list[str],
    directory: Path,
    lrs: Sequence[float],
    epochs: Sequence[int],
    threads: int,
    seed: int,
    repeats: int,
) -> dict[str, Any]:
    """Grid over (lr, epoch) on the validation fold, the final fit timed, the test fold scored."""
    import fasttext  # the bench / test extra: fasttext-numpy2

    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        lines = "".join(f"{FASTTEXT_LABEL}{k} {fasttext_text(t)}\n" for t, k in rows)
        atomic_write_text(directory / f"{name}.txt", lines)
    train_file = str(directory / "train.txt")

    def fit(lr: float, epoch: int):
        return fasttext.train_supervised(
            train_file, lr=lr, epoch=epoch, thread=threads, seed=seed, verbose=0, **FASTTEXT_PARAMS
        )

    def predict(model, texts: list[str]) -> list[int]:
        predicted, _ = model.predict([fasttext_text(t) for t in texts], k=1)
        return [int(p[0].removeprefix(FASTTEXT_LABEL)) for p in predicted]

    valid_texts = [t for t, _ in splits["valid"]]
    valid_gold = [k for _, k in splits["valid"]]
    grid = []
    started = time.perf_counter()
    for lr in lrs:
        for epoch in epochs:
            model = fit(lr, epoch)
            accuracy = classification_scores(valid_gold, predict(model, valid_texts), labels)
            grid.append({"lr": lr, "epoch": epoch, "valid_accuracy": accuracy.accuracy})
            del model
    grid_seconds = time.perf_counter() - started
    chosen = max(grid, key=lambda g: g["valid_accuracy"])  # the first of equals: max is stable

    started = time.perf_counter()
    model = fit(chosen["lr"], chosen["epoch"])
    train_seconds = time.perf_counter() - started
    test_texts = [t for t, _ in splits["test"]]
    test_gold = [k for _, k in splits["test"]]
    best_seconds = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        predicted = predict(model, test_texts)
        best_seconds = min(best_seconds, time.perf_counter() - started)
    scores = classification_scores(test_gold, predicted, labels)
    return {
        "test": scores.to_dict(),
        "valid_accuracy": chosen["valid_accuracy"],
        "lr": chosen["lr"],
        "epoch": chosen["epoch"],
        "params": {**FASTTEXT_PARAMS, "thread": threads, "seed": seed},
        "grid": grid,
        "grid_seconds": grid_seconds,
        "train_seconds": train_seconds,
        "infer_seconds": best_seconds,
        "texts_per_s": len(test_texts) / best_seconds,
    }


# -------------------------------------------------------------------------------------- ours


def train_overrides(data_dir: Path, minutes: float, overrides: Sequence[str]) -> list[str]:
    """Ours: the `--set` values of one fold's run."""
    return [f"data.dir={data_dir}", f"train.max_minutes={minutes:g}", *overrides]


def evaluate_model(
    model_dir: Path, splits: dict[str, list[tuple[str, int]]], labels: list[str], repeats: int
) -> dict[str, Any]:
    """Test-fold scores and inference speed of a model directory, and its validation accuracy."""
    classifier = Classifier.from_pretrained(
        model_dir, device="cpu", precision="fp32", max_tokens=INFER_MAX_TOKENS
    )
    if classifier.labels != labels:
        raise RuntimeError(f"{model_dir}: labels {classifier.labels}, expected {labels}")
    valid = splits["valid"]
    valid_predicted = classifier.probabilities([t for t, _ in valid]).argmax(-1).tolist()
    valid_scores = classification_scores([k for _, k in valid], valid_predicted, labels)
    texts = [t for t, _ in splits["test"]]
    best_seconds = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        predicted = classifier.probabilities(texts).argmax(-1).tolist()
        best_seconds = min(best_seconds, time.perf_counter() - started)
    scores = classification_scores([k for _, k in splits["test"]], predicted, labels)
    return {
        "test": scores.to_dict(),
        "valid_accuracy": valid_scores.accuracy,
        "infer_seconds": best_seconds,
        "texts_per_s": len(texts) / best_seconds,
    }


def ours_fold(
    fold_dir: Path,
    data_dir: Path,
    splits: dict[str, list[tuple[str, int]]],
    labels: list[str],
    args: argparse.Namespace,
    minutes: float,
) -> dict[str, Any]:
    """Train fold k in its own process (or resume / reuse its run), average, score both models."""
    run_dir = fold_dir / "run"
    overrides = train_overrides(data_dir, minutes, args.overrides)
    command = train_command(args.config, run_dir, overrides)
    config = load_config(args.config, overrides)
    env = threads_env(args.threads)
    wall = None
    if not run_finished(run_dir, config):
        print(f"{fold_dir.name}: {shlex.join(command)}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        status = run_child(command, env)
        wall = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"error: training {fold_dir.name} failed (exit status {status})")
        if not run_finished(run_dir, config):
            raise SystemExit(f"error: {run_dir} stopped before its limits; re-run to resume it")
    rows = [r for r in read_metrics(run_dir) if "train_minutes" in r]
    valid_rows = [r for r in rows if r["kind"] == "valid"]
    best_row = max(valid_rows, key=lambda r: r["accuracy"]) if valid_rows else {}
    run = {
        "command": shlex.join(rel(command)),
        "updates": max(r["step"] for r in rows),
        "epochs": max(r["epoch"] for r in rows),
        "train_seconds": 60 * max(r["train_minutes"] for r in rows),
        "process_seconds": wall,  # None: the run was already finished
        "best_step": best_row.get("step"),
        "device": config.train.device,
        "warmup": config.optim.warmup,
        "model": config.to_dict()["model"],
    }
    average_dir = fold_dir / "average"
    used = average_run(run_dir, AVERAGE_LAST, average_dir)
    best = evaluate_model(run_dir / "best", splits, labels, args.repeats)
    average = evaluate_model(average_dir, splits, labels, args.repeats)
    average["checkpoints"] = [int(p.name.removeprefix("step_")) for p in used]
    for result in (best, average):
        result["train_seconds"] = run["train_seconds"]
    return {"run": run, "ours_best": best, "ours_average": average}


# ----------------------------------------------------------------------------------- summary


def summarize(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over folds of every system's scores and times."""
    summary = {}
    for system in SYSTEMS:
        records = [f[system] for f in folds]
        acc = mean_and_spread([r["test"]["accuracy"] for r in records])
        f1 = mean_and_spread([r["test"]["macro_f1"] for r in records])
        diff = mean_and_spread(
            [
                r["test"]["accuracy"] - f["fasttext"]["test"]["accuracy"]
                for r, f in zip(records, folds)
            ]
        )
        summary[system] = {
            "name": SYSTEMS[system],
            "folds": len(records),
            "accuracy_mean": acc[0],
            "accuracy_sd": acc[1],
            "macro_f1_mean": f1[0],
            "macro_f1_sd": f1[1],
            "accuracy_minus_fasttext_mean": diff[0],
            "accuracy_minus_fasttext_sd": diff[1],
            "train_seconds_mean": mean_and_spread([r["train_seconds"] for r in records])[0],
            "texts_per_s_mean": mean_and_spread([r["texts_per_s"] for r in records])[0],
        }
    ft = summary["fasttext"]["texts_per_s_mean"]
    for s in summary.values():
        s["texts_per_s_vs_fasttext"] = s["texts_per_s_mean"] / ft
    return summary


def seconds(x: float) -> str:
    return f"{x / 60:.1f} min" if x >= 120 else f"{x:.1f} s"


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    done = [f["fold"] for f in result["folds"]]
    lines = [
        f"# Text classification: fastText vs ours, {s['folds']}-fold (AG News, "
        f"{result['rows']} rows)",
        "",
        f"Test folds {', '.join(map(str, done))} of {s['folds']}"
        + ("" if result["complete"] else " (INCOMPLETE: not every fold has run yet)")
        + f"; ours = `{result['ours']}` ({SYSTEMS[result['ours']]}). Scores in percent: mean ± "
        "sample standard deviation over folds; training time and texts/s: mean per fold.",
        "",
        "| system | accuracy | macro-F1 | accuracy vs fastText (paired) | training time per fold "
        "| inference texts/s | vs fastText |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system, r in result["summary"].items():
        vs = (
            "(reference)"
            if system == "fasttext"
            else f"{100 * r['accuracy_minus_fasttext_mean']:+.2f} ± "
            f"{100 * r['accuracy_minus_fasttext_sd']:.2f}"
        )
        name = r["name"] + (" **(ours)**" if system == result["ours"] else "")
        lines.append(
            f"| {name} | {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_sd']:.2f} "
            f"| {100 * r['macro_f1_mean']:.2f} ± {100 * r['macro_f1_sd']:.2f} | {vs} "
            f"| {seconds(r['train_seconds_mean'])} | {r['texts_per_s_mean']:,.0f} "
            f"| {r['texts_per_s_vs_fasttext']:.3g}x |"
        )
    lines += [
        "",
        "Per fold (accuracy / macro-F1 in percent on the test fold):",
        "",
        "| fold | train / valid / test texts | fastText | lr, epochs | ours best/ | "
        "ours average | updates (epochs) | ours training |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in result["folds"]:
        n = f["rows"]

        def pair(record: dict[str, Any]) -> str:
            return (
                f"{100 * record['test']['accuracy']:.2f} / {100 * record['test']['macro_f1']:.2f}"
            )

        lines.append(
            f"| {f['fold']} | {n['train']} / {n['valid']} / {n['test']} | {pair(f['fasttext'])} "
            f"| {f['fasttext']['lr']:g}, {f['fasttext']['epoch']} | {pair(f['ours_best'])} "
            f"| {pair(f['ours_average'])} | {f['run']['updates']} ({f['run']['epochs']}) "
            f"| {seconds(f['run']['train_seconds'])} |"
        )
    m = result["machine"]
    lines += [
        "",
        f"Machine: {m['processor']}, {m['cpus']} CPUs, {m['platform']}; Python {m['python']}, "
        f"torch {m['torch']} (ours at inference: {m['torch_threads']} thread(s)), "
        f"fasttext-numpy2 {m['fasttext']}.",
        "",
        *(f"- {note}" for note in result["notes"]),
        "",
        "Commands:",
        "",
        "```sh",
        result["commands"]["benchmark"],
        *(c for f in result["folds"] for c in (f["commands"]["prepare"], f["run"]["command"])),
        "```",
    ]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    try:
        ft = metadata.version("fasttext-numpy2")
    except metadata.PackageNotFoundError:
        ft = None
    return {
        "processor": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "fasttext": ft,
        "cuda": torch.cuda.is_available(),
    }


def settings(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """What decides the results; a work directory holds the results of one such record."""
    return {
        "data": str(rel([str(DATA)])[0]),
        "data_sha256": file_sha256(DATA),
        "classes_sha256": file_sha256(CLASSES),
        "rows": args.rows,
        "rows_sha256": file_sha256(data),
        "folds": args.folds,
        "seed": args.seed,
        "vocab_size": args.vocab_size,
        "tokenizer_sha256": file_sha256(args.tokenizer) if args.tokenizer else None,
        "config": rel([str(args.config)])[0],
        "config_sha256": file_sha256(args.config),
        "overrides": list(args.overrides),
        "minutes": args.minutes,
        "minutes_per_fold": args.minutes / args.folds,
        "fasttext": {**FASTTEXT_PARAMS, "lrs": list(args.lrs), "epochs": list(args.epochs)},
        "fasttext_threads": args.fasttext_threads,
    }


def load_cache(path: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    if not path.is_file():
        return {"settings": wanted, "folds": {}}
    cache = json.loads(path.read_text(encoding="utf-8"))
    if cache["settings"] != wanted:
        missing = object()
        differ = sorted(k for k in wanted.keys() | cache["settings"].keys()
                        if cache["settings"].get(k, missing) != wanted.get(k, missing))  # fmt: skip
        raise SystemExit(
            f"error: {path.parent} holds results of other settings (they differ in: "
            f"{', '.join(differ)}); pass another --work, or delete it to start again"
        )
    return cache


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folds", type=int, default=None, help="K folds (default 5; --tiny: 3)")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget of ours over all folds, split evenly (default 30)",
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="ours: training config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="ours: one more config override for every fold (repeatable)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help=f"JSON result (and .md beside it); "
                   f"default {rel([str(DEFAULT_OUT)])[0]}, --tiny: in the work directory")  # fmt: skip
    p.add_argument("--work", type=Path, default=None, help="data, runs and the result cache "
                   f"(default {rel([str(DEFAULT_WORK)])[0]}, --tiny: {rel([str(TINY_WORK)])[0]})")  # fmt: skip
    p.add_argument("--only-fold", type=int, default=None, metavar="K", help="run test fold K only")
    p.add_argument("--ours", choices=("best", "average"), default="best",
                   help="the model reported as ours (both are always scored)")  # fmt: skip
    p.add_argument("--rows", type=int, default=None, help="evenly spaced subset of the rows")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE size per fold (8000)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="ours: prepare every fold with this tokenizer.json instead of training "
                   "a BPE (with --set train.init_from=MODEL_DIR: that model's tokenizer)")  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="fold assignment and fastText seed")
    p.add_argument("--repeats", type=int, default=None, help="timed inference passes (3)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of ours, training and inference (default: torch's)")  # fmt: skip
    p.add_argument("--fasttext-lrs", type=lambda v: [float(x) for x in v.split(",")],
                   default=None, help=f"fastText's learning-rate grid ({','.join(map(str, LRS))})")  # fmt: skip
    p.add_argument("--fasttext-epochs", type=lambda v: [int(x) for x in v.split(",")],
                   default=None, help=f"fastText's epoch grid ({','.join(map(str, EPOCHS))})")  # fmt: skip
    p.add_argument("--fasttext-threads", type=int, default=1,
                   help="fastText training threads (1: deterministic)")  # fmt: skip
    p.add_argument("--tiny", action="store_true",
                   help="the script's own check: 3 folds of 300 rows, a micro model, 6 updates")  # fmt: skip
    args = p.parse_args(argv)
    tiny = TINY if args.tiny else {}
    args.folds = args.folds or tiny.get("folds", 5)
    args.minutes = args.minutes if args.minutes is not None else tiny.get("minutes", 30.0)
    args.rows = args.rows or tiny.get("rows")
    args.vocab_size = args.vocab_size or tiny.get("vocab_size", 8000)
    args.repeats = args.repeats or tiny.get("repeats", 3)
    args.threads = args.threads or tiny.get("threads")
    args.lrs = args.fasttext_lrs or tiny.get("lrs", LRS)
    args.epochs = args.fasttext_epochs or tiny.get("epochs", EPOCHS)
    args.overrides = [*tiny.get("overrides", ()), *args.overrides]
    args.work = (args.work or (TINY_WORK if args.tiny else DEFAULT_WORK)).resolve()
    args.out = args.out or (args.work / "classify_quality.json" if args.tiny else DEFAULT_OUT)
    args.config = args.config.resolve()
    if args.folds < 3:
        p.error("--folds must be at least 3 (a validation fold, a test fold and training folds)")
    if args.only_fold is not None and not 0 <= args.only_fold < args.folds:
        p.error(f"--only-fold must be in 0..{args.folds - 1}")
    if args.minutes <= 0:
        p.error("--minutes must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM (a timeout, a batch system) stops like Ctrl-C: the running trainer saves first.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.threads:
        torch.set_num_threads(args.threads)
    import fasttext  # noqa: F401  (fail now, not after the first fold's training)

    args.work.mkdir(parents=True, exist_ok=True)
    data = DATA if args.rows is None else subset_rows(DATA, args.rows, args.work / "rows.csv")
    csv_sha = file_sha256(data)
    labels = read_classes(CLASSES)
    cache_path = args.work / "results.json"
    cache = load_cache(cache_path, settings(args, data))
    atomic_write_json(cache_path, cache)
    minutes = args.minutes / args.folds
    todo = range(args.folds) if args.only_fold is None else [args.only_fold]
    for k in todo:
        fold_dir = args.work / f"fold{k}"
        record = cache["folds"].get(str(k), {"fold": k})
        data_dir = fold_dir / "data"
        manifest = prepare_fold(
            data, data_dir, args.folds, k, args.seed, args.vocab_size, csv_sha, args.tokenizer
        )
        splits = split_rows(data, labels, args.folds, args.seed, (k + 1) % args.folds, k)
        check_same_split(splits, data_dir, labels)
        record["rows"] = {name: len(rows) for name, rows in splits.items()}
        record["commands"] = {"prepare": shlex.join(rel([
            "transformer", "prepare", "--classify", "--train", str(data),
            "--text-columns", ",".join(map(str, TEXT_COLUMNS)),
            "--label-column", str(LABEL_COLUMN), "--classes", str(CLASSES),
            *(["--tokenizer", str(args.tokenizer)] if args.tokenizer
              else ["--vocab-size", str(args.vocab_size)]),
            "--folds", str(args.folds),
            "--valid-fold", str((k + 1) % args.folds), "--test-fold", str(k),
            "--seed", str(args.seed), "--out", str(data_dir),
        ]))}  # fmt: skip
        record["vocab_size"] = manifest["vocab_size"]
        if "fasttext" in record:
            print(f"fold {k}: fastText cached", file=sys.stderr)
        else:
            record["fasttext"] = fasttext_fold(
                splits,
                labels,
                fold_dir / "fasttext",
                args.lrs,
                args.epochs,
                args.fasttext_threads,
                args.seed,
                args.repeats,
            )
            cache["folds"][str(k)] = record
            atomic_write_json(cache_path, cache)
        ft = record["fasttext"]
        print(f"fold {k}: fastText lr {ft['lr']:g}, epoch {ft['epoch']}: test accuracy "
              f"{100 * ft['test']['accuracy']:.2f}%", file=sys.stderr, flush=True)  # fmt: skip
        if "ours_best" in record:
            print(f"fold {k}: ours cached", file=sys.stderr)
        else:
            record.update(ours_fold(fold_dir, data_dir, splits, labels, args, minutes))
            cache["folds"][str(k)] = record
            atomic_write_json(cache_path, cache)
        print(f"fold {k}: ours best/ {100 * record['ours_best']['test']['accuracy']:.2f}%, "
              f"average {100 * record['ours_average']['test']['accuracy']:.2f}%",
              file=sys.stderr, flush=True)  # fmt: skip

    folds = [cache["folds"][str(k)] for k in range(args.folds) if "ours_best" in cache["folds"].get(str(k), {})]  # fmt: skip
    ours = f"ours_{args.ours}"
    summary = summarize(folds)
    summary = {ours: summary.pop(ours), **summary}  # the headline first, then fastText
    result = {
        "benchmark": "classify_quality",
        "settings": cache["settings"],
        "rows": sum(folds[0]["rows"].values()),
        "ours": ours,
        "complete": [f["fold"] for f in folds] == list(range(args.folds)),
        "summary": summary,
        "folds": folds,
        "machine": machine(),
        "commands": {
            "benchmark": shlex.join(rel([sys.executable, *sys.argv])),
            "average": f"transformer average RUN_DIR --last {AVERAGE_LAST} --out MODEL_DIR",
        },
        "notes": [
            f"fastText: {args.fasttext_threads} training thread(s), seed {args.seed}"
            + (" (deterministic)" if args.fasttext_threads == 1 else " (not deterministic)")
            + f"; lr from {list(args.lrs)}, epochs from {list(args.epochs)}, chosen on the "
            "validation fold; training time = the final fit.",
            f"ours: {rel([str(args.config)])[0]}, at most {minutes:g} min of training per fold"
            + (f" (with {', '.join(args.overrides)})" if args.overrides else "")
            + "; training time = metrics.jsonl train_minutes (the training loop, its periodic "
            "validations and checkpoints included).",
            "Inference: the whole test fold, text in, label out, best of "
            f"{args.repeats}; ours on the CPU in fp32, batches of at most {INFER_MAX_TOKENS} "
            "padded tokens.",
        ],
    }
    short = [f["fold"] for f in folds if f["run"]["updates"] < f["run"]["warmup"]]
    if short:
        result["notes"].append(
            f"WARNING: ours stopped before the end of its learning-rate warm-up (optim.warmup "
            f"{folds[0]['run']['warmup']} updates) on fold(s) {', '.join(map(str, short))}: "
            "its scores say little; give it more --minutes."
        )
    table = markdown(result)
    write_result(args.out, result, table)
    atomic_write_text(args.out.with_suffix(".md"), table)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
