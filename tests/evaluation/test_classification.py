"""Classification scores (transformer.evaluation.classification): a 3-class example counted by
hand, agreement with an independent loop-based reference on random labels, the zero_division=0
convention, validation, the JSON dict, the text report and the PNG plot."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transformer.evaluation.classification import (
    ClassificationScores,
    classification_scores,
    confusion_figure,
    format_report,
    mean_and_spread,
    plot_confusion,
)

# The hand-counted example. Confusion (rows gold, columns predicted):
#        a  b  c   support
#   a    3  1  0   4
#   b    2  1  0   3
#   c    0  1  2   3
#   predicted: a 5, b 3, c 2; correct 3 + 1 + 2 = 6 of 10.
LABELS = ["a", "b", "c"]
GOLD = [0, 1, 2, 0, 1, 0, 2, 1, 0, 2]
PREDICTED = [0, 0, 2, 1, 1, 0, 1, 0, 0, 2]


def hand_scores() -> ClassificationScores:
    return classification_scores(GOLD, PREDICTED, LABELS)


# ------------------------------------------------------------------------- the hand example


def test_hand_example_confusion_is_gold_by_predicted():
    s = hand_scores()
    assert s.labels == ("a", "b", "c")
    assert s.confusion == ((3, 1, 0), (2, 1, 0), (0, 1, 2))  # asymmetric: a transpose fails
    assert s.support == (4, 3, 3)
    assert s.count == 10
    assert s.correct == 6


def test_hand_example_scores():
    s = hand_scores()
    assert s.accuracy == pytest.approx(0.6)
    # precision = correct / predicted: a 3/5, b 1/3, c 2/2
    assert s.precision == pytest.approx((3 / 5, 1 / 3, 1.0))
    # recall = correct / gold: a 3/4, b 1/3, c 2/3
    assert s.recall == pytest.approx((3 / 4, 1 / 3, 2 / 3))
    # F1 = 2PR / (P + R): a 2/3, b 1/3, c 4/5
    assert s.f1 == pytest.approx((2 / 3, 1 / 3, 4 / 5))
    assert s.macro_precision == pytest.approx((3 / 5 + 1 / 3 + 1) / 3)  # 29/45
    assert s.macro_recall == pytest.approx((3 / 4 + 1 / 3 + 2 / 3) / 3)  # 7/12
    assert s.macro_f1 == pytest.approx((2 / 3 + 1 / 3 + 4 / 5) / 3)  # 0.6
    assert s.weighted_f1 == pytest.approx((4 * 2 / 3 + 3 * 1 / 3 + 3 * 4 / 5) / 10)  # 91/150


def test_accepts_numpy_arrays_and_tensors():
    expected = hand_scores()
    assert classification_scores(np.array(GOLD), np.array(PREDICTED), LABELS) == expected
    assert classification_scores(torch.tensor(GOLD), torch.tensor(PREDICTED), LABELS) == expected
    assert classification_scores(tuple(GOLD), np.array(PREDICTED, dtype=np.int32), LABELS) == (
        expected
    )


# ------------------------------------------------------------- an independent reference


def reference_scores(gold: list[int], predicted: list[int], n: int) -> dict:
    """Per-class counts with a plain loop; P, R, then F1 = 2PR / (P + R); 0 for every 0/0;
    macro means over all n classes."""
    tp, fp, fn = [0] * n, [0] * n, [0] * n
    matrix = [[0] * n for _ in range(n)]
    for g, p in zip(gold, predicted):
        matrix[g][p] += 1
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    precision, recall, f1, support = [], [], [], []
    for c in range(n):
        pr = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0
        rc = tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else 0.0
        precision.append(pr)
        recall.append(rc)
        f1.append(2 * pr * rc / (pr + rc) if pr + rc else 0.0)
        support.append(tp[c] + fn[c])
    total = len(gold)
    return {
        "confusion": tuple(tuple(row) for row in matrix),
        "accuracy": sum(tp) / total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": tuple(support),
        "macro_precision": sum(precision) / n,
        "macro_recall": sum(recall) / n,
        "macro_f1": sum(f1) / n,
        "weighted_f1": sum(f * s for f, s in zip(f1, support)) / total,
    }


SEEDS = range(8)


def random_case(seed: int) -> tuple[list[int], list[int], int]:
    """Random gold and predicted indices over n classes, drawn from (possibly different) subsets
    of the classes, so that some classes are missing from gold, some from the predictions."""
    rng = random.Random(seed)
    n = rng.randint(2, 7)
    gold_classes = rng.sample(range(n), rng.randint(1, n))
    predicted_classes = rng.sample(range(n), rng.randint(1, n))
    size = rng.randint(1, 60)
    gold = [rng.choice(gold_classes) for _ in range(size)]
    # Mostly right where possible, so the diagonal is not empty.
    predicted = [
        g if g in predicted_classes and rng.random() < 0.6 else rng.choice(predicted_classes)
        for g in gold
    ]
    return gold, predicted, n


@pytest.mark.parametrize("seed", SEEDS)
def test_agrees_with_loop_reference_on_random_labels(seed):
    gold, predicted, n = random_case(seed)
    s = classification_scores(gold, predicted, [f"class{c}" for c in range(n)])
    ref = reference_scores(gold, predicted, n)
    assert s.confusion == ref["confusion"]
    assert s.support == ref["support"]
    assert s.count == len(gold)
    for key in ("precision", "recall", "f1"):
        assert getattr(s, key) == pytest.approx(ref[key], abs=1e-12), key
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"):
        assert getattr(s, key) == pytest.approx(ref[key], abs=1e-12), key


def test_random_cases_include_absent_classes():
    """The random cases above do exercise classes absent from gold, from the predictions, and
    from both."""
    kinds = set()
    for seed in SEEDS:
        gold, predicted, n = random_case(seed)
        for c in range(n):
            kinds.add((c in gold, c in predicted))
    assert {(False, True), (True, False), (False, False), (True, True)} <= kinds


# ---------------------------------------------------------------------- 0/0 and perfect


def test_zero_division_convention_and_macro_over_all_labels():
    # Class 2 ("c") appears in neither gold nor predictions: P = R = F1 = 0 and it still
    # counts in the macro average.
    s = classification_scores([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert s.precision == pytest.approx((1.0, 0.5, 0.0))
    assert s.recall == pytest.approx((0.5, 1.0, 0.0))
    assert s.f1 == pytest.approx((2 / 3, 2 / 3, 0.0))
    assert s.support == (2, 1, 0)
    assert s.macro_f1 == pytest.approx(4 / 9)  # not 2/3, the mean over present classes
    assert s.macro_precision == pytest.approx(0.5)
    assert s.macro_recall == pytest.approx(0.5)
    assert s.weighted_f1 == pytest.approx(2 / 3)  # support 0 weighs nothing
    assert all(math.isfinite(x) for x in (*s.precision, *s.recall, *s.f1))


def test_class_predicted_but_never_gold_and_gold_but_never_predicted():
    # "b" is predicted once but never gold: P = 0/1, R = 0/0 -> 0.
    s = classification_scores([0, 0], [0, 1], ["a", "b"])
    assert s.precision == pytest.approx((1.0, 0.0))
    assert s.recall == pytest.approx((0.5, 0.0))
    assert s.f1 == pytest.approx((2 / 3, 0.0))
    # "b" is gold once but never predicted: R = 0/1, P = 0/0 -> 0.
    s = classification_scores([0, 1], [0, 0], ["a", "b"])
    assert s.precision == pytest.approx((0.5, 0.0))
    assert s.recall == pytest.approx((1.0, 0.0))
    assert s.f1 == pytest.approx((2 / 3, 0.0))


def test_perfect_predictions_score_one_everywhere():
    gold = [2, 0, 1, 1, 3, 0, 2]
    s = classification_scores(gold, gold, ["w", "x", "y", "z"])
    assert s.accuracy == 1.0
    assert s.macro_precision == s.macro_recall == s.macro_f1 == s.weighted_f1 == 1.0
    assert s.precision == s.recall == s.f1 == (1.0, 1.0, 1.0, 1.0)
    assert s.confusion == ((2, 0, 0, 0), (0, 2, 0, 0), (0, 0, 2, 0), (0, 0, 0, 1))


# ------------------------------------------------------------------------------ validation


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions but 3 gold"):
        classification_scores([0, 1, 0], [0, 1], ["a", "b"])


def test_empty_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        classification_scores([], [], ["a", "b"])


def test_out_of_range_index_names_its_position():
    with pytest.raises(ValueError, match=r"gold\[3\] = 2 is not a class index.*0 to 1"):
        classification_scores([0, 1, 1, 2, 5], [0, 0, 0, 0, 0], ["a", "b"])
    with pytest.raises(ValueError, match=r"predicted\[1\] = -1 is not a class index"):
        classification_scores([0, 1, 1], [0, -1, 7], ["a", "b"])


def test_non_integer_index_and_bad_labels_are_errors():
    with pytest.raises(ValueError, match=r"gold\[2\] = 1.5 is not an integer"):
        classification_scores([0, 1, 1.5], [0, 1, 1], ["a", "b"])
    with pytest.raises(ValueError, match=r"labels\[2\] = 'a' repeats"):
        classification_scores([0], [0], ["a", "b", "a"])
    with pytest.raises(ValueError, match="no class labels"):
        classification_scores([0], [0], [])


# ----------------------------------------------------------------------------- to_dict


def test_to_dict_round_trips_through_json():
    s = hand_scores()
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["confusion"] == [[3, 1, 0], [2, 1, 0], [0, 1, 2]]
    assert d["per_class"]["c"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert list(d["per_class"]) == LABELS
    assert d["accuracy"] == pytest.approx(0.6)
    assert d["macro_f1"] == pytest.approx(0.6)
    assert type(d["count"]) is int and type(d["per_class"]["a"]["support"]) is int


# ------------------------------------------------------------------------------ the report


def test_report_has_labels_percentages_and_matrix_rows():
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    gold = [0, 0, 1, 1, 2, 2, 3, 3, 3]
    predicted = [0, 2, 1, 1, 2, 3, 3, 3, 2]
    report = format_report(classification_scores(gold, predicted, labels), title="AG News test")
    lines = report.splitlines()
    assert lines[0] == "AG News test"
    for label in labels:
        assert label in report
    assert re.search(r"^accuracy\s+66\.67%", report, re.M)  # 6 of 9
    assert "gold" in report and "predicted" in report
    # The matrix row of gold Sci/Tech: 1 predicted Business, 2 predicted Sci/Tech.
    assert any(re.fullmatch(r"Sci/Tech\s+0\s+0\s+1\s+2", line) for line in lines)
    assert any(re.fullmatch(r"World\s+1\s+0\s+1\s+0", line) for line in lines)
    # The per-class row of Business: P 1/3, R 1/2, F1 2/5, support 2.
    assert any(re.fullmatch(r"Business\s+33\.33%\s+50\.00%\s+40\.00%\s+2", line) for line in lines)


def test_report_columns_are_aligned():
    labels = ["x", "a much longer label"]
    report = format_report(classification_scores([0, 1, 1, 0], [0, 1, 0, 0], labels))
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("class"))
    table = [lines[start], *lines[start + 2 : start + 4]]  # header, then one row per class
    assert len({len(line) for line in table}) == 1
    # Right-aligned numbers: every row ends at the same column, and the support column lines up.
    assert len({line.rindex("%") for line in table[1:]}) == 1
    matrix_start = next(i for i, line in enumerate(lines) if line.startswith("gold \\"))
    matrix = lines[matrix_start : matrix_start + 3]
    assert len({len(line) for line in matrix}) == 1


# -------------------------------------------------------------------------------- the plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_confusion_figure_axes_cells_and_annotations():
    s = hand_scores()  # rows a (3 1 0), b (2 1 0), c (0 1 2)
    ax = confusion_figure(s, normalize=True).axes[0]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "gold"
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
    assert [t.get_text() for t in ax.get_yticklabels()] == LABELS
    cells = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(cells, [[3 / 4, 1 / 4, 0], [2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    texts = [t.get_text() for t in ax.texts]  # row by row
    assert texts[:3] == ["3\n75.0%", "1\n25.0%", "0\n0.0%"]
    assert texts[3] == "2\n66.7%"
    ax = confusion_figure(s, normalize=False).axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), s.confusion)
    assert [t.get_text() for t in ax.texts] == ["3", "1", "0", "2", "1", "0", "0", "1", "2"]


@pytest.mark.parametrize("normalize", [True, False])
def test_plot_confusion_writes_a_png(tmp_path: Path, normalize: bool):
    import matplotlib.image

    labels = ["World", "Sports", "Business", "Science and Technology"]
    gold = [0, 0, 1, 1, 2, 2, 3, 3, 3]
    predicted = [0, 2, 1, 1, 2, 3, 3, 3, 0]
    out = tmp_path / "deep" / "er" / "confusion.png"
    written = plot_confusion(
        classification_scores(gold, predicted, labels), out, normalize=normalize, title="test"
    )
    assert written == out
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(out)
    height, width = image.shape[:2]
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert 200 <= height <= 3000 and 200 <= width <= 3000
    assert image.std() > 0.01  # not a blank canvas
    assert sorted(p.name for p in out.parent.iterdir()) == ["confusion.png"]  # no temp file


def test_plot_confusion_with_an_empty_gold_row(tmp_path: Path):
    # Class "c" has no gold examples: its normalised row is 0 rather than NaN.
    out = plot_confusion(classification_scores([0, 1], [2, 1], ["a", "b", "c"]), tmp_path / "x.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_confusion_leaves_the_pyplot_backend_alone(tmp_path: Path):
    """In a fresh interpreter (pyplot may already be loaded here): plotting never imports
    pyplot, so the caller's backend is untouched."""
    code = (
        "import sys\n"
        "from transformer.evaluation.classification import classification_scores, plot_confusion\n"
        f"plot_confusion(classification_scores([0, 1], [1, 1], ['a', 'b']), {str(tmp_path / 'p.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------------------- mean_and_spread


def test_mean_and_spread():
    mean, spread = mean_and_spread([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == pytest.approx(5.0)
    assert spread == pytest.approx(math.sqrt(32 / 7))  # sample (n - 1) standard deviation
    assert mean_and_spread([0.91]) == (0.91, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_and_spread([])
