"""`transformer plot RUN_DIR`: training curves as PNG files, from the run's metrics.jsonl.

Writes RUN_DIR/plots/{loss,perplexity,bleu,learning_rate}.png and curves.png (all four in one);
for a classification run, accuracy.png (validation accuracy and macro-F1) instead of bleu.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from transformer.io import atomic_write

METRICS = "metrics.jsonl"


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found (is {run_dir} a `transformer train` run directory?)"
        )
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return rows


def _series(rows: list[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    picked = [(r["step"], r[key]) for r in rows if r.get("kind") == kind and key in r]
    return [s for s, _ in picked], [v for _, v in picked]


PANELS = {  # file name -> (title, y label, [(kind, key, label)], log scale)
    "loss": (
        "Loss",
        "label-smoothed loss",
        [("train", "loss", "train"), ("valid", "loss", "valid")],
        False,
    ),
    "perplexity": (
        "Perplexity",
        "perplexity",
        [("train", "ppl", "train"), ("valid", "ppl", "valid")],
        True,
    ),
    "bleu": ("Validation BLEU", "BLEU", [("valid", "bleu", "valid")], False),
    "accuracy": (
        "Validation accuracy",
        "percent",
        [("valid", "accuracy", "accuracy"), ("valid", "macro_f1", "macro-F1")],
        False,
    ),
    "learning_rate": ("Learning rate", "learning rate", [("train", "lr", "lr")], False),
}


def plot_run(run_dir: Path | str, out_dir: Path | str | None = None) -> list[Path]:
    """Write the PNG curves of a run; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    written = []

    def draw(ax: Any, name: str) -> None:
        title, ylabel, lines, log = PANELS[name]
        for kind, key, label in lines:
            x, y = _series(rows, kind, key)
            if x:
                ax.plot(x, y, label=label, marker="o" if kind == "valid" else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("update")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / f"{name}.png"
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
        written.append(path)

    # A classification run reports accuracy where a translation run reports BLEU.
    scored = "accuracy" if _series(rows, "valid", "accuracy")[0] else "bleu"
    names = [n for n in PANELS if n not in ("bleu", "accuracy") or n == scored]
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, name)
        save(fig, name)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, name in zip(axes.flat, names):
        draw(ax, name)
    fig.suptitle(str(run_dir))
    save(fig, "curves")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `transformer train` run directory")
    parser.add_argument(
        "--out", metavar="DIR", help="where to write the PNGs (default: RUN_DIR/plots)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        paths = plot_run(args.run_dir, args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0
