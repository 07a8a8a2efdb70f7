"""Classification scores: accuracy, per-class and averaged precision / recall / F1, the confusion
matrix, a plain-text report and a confusion-matrix plot.

Scores are fractions in [0, 1] (the report prints them in percent). Conventions, those of
scikit-learn's `precision_recall_fscore_support(..., zero_division=0)`, so that numbers compare
with papers and tools that use it:

- the confusion matrix has gold classes down (rows) and predicted classes across (columns);
- a ratio whose denominator is 0 is 0: the precision of a class never predicted, the recall of a
  class with no gold example, the F1 of a class with neither;
- macro averages are unweighted means over ALL classes in `labels`, those absent from both gold
  and predictions included (each counts as 0), so the number depends only on the label set and
  not on which classes a test sample happens to contain; weighted F1 weights each class's F1 by
  its gold count (its support).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transformer.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110  # the resolution of the project's other plots


@dataclass(frozen=True)
class ClassificationScores:
    """The scores of predicted class indices against gold ones (fractions in [0, 1]).

    confusion[i][j] counts the examples of gold class i predicted as class j. The per-class
    tuples follow the order of `labels`; support is the gold count of each class. See the module
    docstring for the 0/0 convention and what the averages run over.
    """

    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # (n, n): rows gold, columns predicted
    count: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_f1: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]

    @property
    def correct(self) -> int:
        """The number of examples predicted right (the trace of the confusion matrix)."""
        return sum(self.confusion[i][i] for i in range(len(self.labels)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: the summary scores, per-class scores by label, the matrix as lists."""
        return {
            "count": self.count,
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "weighted_f1": self.weighted_f1,
            "per_class": {
                label: {
                    "precision": self.precision[i],
                    "recall": self.recall[i],
                    "f1": self.f1[i],
                    "support": self.support[i],
                }
                for i, label in enumerate(self.labels)
            },
            "labels": list(self.labels),
            "confusion": [list(row) for row in self.confusion],
            "confusion_axes": "rows gold, columns predicted",
        }


def classification_scores(
    gold: Sequence[int], predicted: Sequence[int], labels: Sequence[str]
) -> ClassificationScores:
    """Score predicted class indices against gold ones; indices are 0-based into `labels`.

    Accepts lists, numpy arrays or CPU tensors of integers. Raises ValueError on unequal lengths,
    no examples, an empty or repeated label, or an index out of range (naming its position).
    """
    names = _check_labels(labels)
    n = len(names)
    if len(gold) != len(predicted):
        raise ValueError(
            f"{len(predicted)} predictions but {len(gold)} gold labels; they must pair up"
        )
    if len(gold) == 0:
        raise ValueError("no examples to score: gold and predicted are empty")
    g = _check_indices(gold, "gold", n)
    p = _check_indices(predicted, "predicted", n)

    confusion = np.bincount(g * n + p, minlength=n * n).reshape(n, n)  # (n, n): gold x predicted
    true_positive = np.diag(confusion)
    support = confusion.sum(axis=1)  # gold count of each class
    predicted_count = confusion.sum(axis=0)
    precision = _ratio(true_positive, predicted_count)
    recall = _ratio(true_positive, support)
    f1 = _ratio(2 * true_positive, support + predicted_count)  # = 2PR / (P + R) where defined
    count = int(support.sum())
    return ClassificationScores(
        labels=names,
        confusion=tuple(tuple(int(c) for c in row) for row in confusion),
        count=count,
        accuracy=float(true_positive.sum() / count),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        weighted_f1=float((f1 * support).sum() / count),
        precision=tuple(float(x) for x in precision),
        recall=tuple(float(x) for x in recall),
        f1=tuple(float(x) for x in f1),
        support=tuple(int(x) for x in support),
    )


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    names = tuple(labels)
    if not names:
        raise ValueError("no class labels given; a classifier needs at least one class")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise ValueError(f"labels[{i}] = {name!r} is not a label; labels are non-empty strings")
        if name in seen:
            raise ValueError(f"labels[{i}] = {name!r} repeats an earlier label; labels must differ")
        seen.add(name)
    return names


def _check_indices(values: Sequence[int], name: str, n: int) -> np.ndarray:
    """`values` as an int64 array (N,), every one a class index in [0, n)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one class index per example, got shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        # Only on this error path: find the first value that is not an int, to name it.
        position = next(
            (
                i
                for i, v in enumerate(values)
                if isinstance(v, bool) or not isinstance(v, (int, np.integer))
            ),
            0,
        )
        raise ValueError(
            f"{name}[{position}] = {values[position]!r} is not an integer class index "
            f"(the values have type {array.dtype})"
        )
    bad = np.flatnonzero((array < 0) | (array >= n))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {int(array[i])} is not a class index: {n} labels give indices "
            f"0 to {n - 1}"
        )
    return array.astype(np.int64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0 (zero_division=0)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


# ---------------------------------------------------------------------------- the report


def format_report(scores: ClassificationScores, title: str | None = None) -> str:
    """A plain-text report for a terminal: summary scores, a per-class table and the confusion
    matrix (gold classes down, predicted across); scores in percent with 2 decimals."""

    def pct(x: float) -> str:
        return f"{100 * x:.2f}%"

    lines: list[str] = []
    if title:
        lines += [title, "=" * len(title), ""]
    lines += [
        f"examples      {scores.count}",
        f"accuracy      {pct(scores.accuracy)}  ({scores.correct} of {scores.count} correct)",
        f"macro F1      {pct(scores.macro_f1)}  (unweighted mean over {len(scores.labels)} classes)",
        f"weighted F1   {pct(scores.weighted_f1)}  (classes weighted by their gold count)",
        "",
    ]

    # Per-class table: the label column left-aligned, numbers right-aligned.
    header = ("class", "precision", "recall", "F1", "support")
    rows = [
        (label, pct(p), pct(r), pct(f), str(s))
        for label, p, r, f, s in zip(
            scores.labels, scores.precision, scores.recall, scores.f1, scores.support
        )
    ]
    rows.append(
        (
            "macro average",
            pct(scores.macro_precision),
            pct(scores.macro_recall),
            pct(scores.macro_f1),
            str(scores.count),
        )
    )
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]

    def table_line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(cells)

    lines.append(table_line(header))
    lines.append("-" * len(table_line(header)))
    lines += [table_line(row) for row in rows[:-1]]
    lines.append("-" * len(table_line(header)))
    lines.append(table_line(rows[-1]))
    lines.append("")

    # Confusion matrix: one row per gold class, one column per predicted class.
    corner = "gold \\ predicted"
    row_width = max(len(corner), *(len(label) for label in scores.labels))
    cell_width = max(
        *(len(label) for label in scores.labels),
        *(len(str(c)) for row in scores.confusion for c in row),
    )
    lines.append("confusion matrix (rows: gold class, columns: predicted class)")
    lines.append(
        "  ".join([corner.ljust(row_width)] + [label.rjust(cell_width) for label in scores.labels])
    )
    for label, row in zip(scores.labels, scores.confusion):
        lines.append("  ".join([label.ljust(row_width)] + [str(c).rjust(cell_width) for c in row]))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the plot


def confusion_figure(
    scores: ClassificationScores, normalize: bool = True, title: str | None = None
) -> Figure:
    """The confusion matrix as a heat map (gold down, predicted across), each cell annotated
    with its count; with `normalize`, coloured by and annotated with its share of the gold row
    (a row without gold examples is all 0)."""
    # Imported here so that scoring (e.g. validation inside training) does not load matplotlib.
    from matplotlib.figure import Figure

    counts = np.array(scores.confusion, dtype=np.int64)  # (n, n): gold x predicted
    n = len(scores.labels)
    row_fraction = _ratio(counts, counts.sum(axis=1, keepdims=True))  # (n, n), rows sum to 1 or 0
    values = row_fraction if normalize else counts

    cell = max(0.45, min(1.1, 9.0 / n))  # inches per class
    font = max(5.0, min(10.0, cell * 9))
    longest = max(len(label) for label in scores.labels)
    rotate = longest * n > 40 or longest > 8  # tilt the column labels when they would overlap
    label_room = min(longest, 30) * font / 72 * 0.65 + 0.6
    width = n * cell + label_room + 1.6  # + colour bar
    height = n * cell + label_room * (0.75 if rotate else 0.3) + 0.9 + (0.3 if title else 0)
    fig = Figure(figsize=(max(width, 4.0), max(height, 3.5)), layout="constrained")
    ax = fig.subplots()
    vmax = 1.0 if normalize else max(1, int(counts.max()))
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, aspect="equal")
    for i in range(n):
        for j in range(n):
            text = str(counts[i, j])
            if normalize and counts[i].sum():
                text += f"\n{100 * row_fraction[i, j]:.1f}%"
            dark = values[i, j] > 0.55 * vmax
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=font,
                color="white" if dark else "black",
            )
    ax.set_xticks(
        range(n),
        scores.labels,
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontsize=font,
        parse_math=False,
    )
    ax.set_yticks(range(n), scores.labels, fontsize=font, parse_math=False)
    ax.tick_params(length=0)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.colorbar(
        image,
        ax=ax,
        shrink=0.8,
        label="fraction of the gold class (each row sums to 1)" if normalize else "examples",
    )
    heading = title or ""
    summary = f"accuracy {100 * scores.accuracy:.2f}%, macro F1 {100 * scores.macro_f1:.2f}%"
    ax.set_title(f"{heading}\n{summary}" if heading else summary, fontsize=10)
    return fig


def plot_confusion(
    scores: ClassificationScores,
    path: Path | str,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Write the confusion matrix (see `confusion_figure`) as a PNG to `path`, atomically (a
    temporary sibling renamed into place), creating parent directories; returns the path.

    Builds a `matplotlib.figure.Figure` directly, never through pyplot, so the caller's
    matplotlib backend is left alone.
    """
    path = Path(path)
    fig = confusion_figure(scores, normalize=normalize, title=title)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    return path


# ------------------------------------------------------------------------- over several runs


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n - 1 in the denominator) of `values`, e.g. a
    score over several seeds; the spread of a single value is 0."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_and_spread needs at least one value")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"mean_and_spread needs finite values, got {xs}")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0
