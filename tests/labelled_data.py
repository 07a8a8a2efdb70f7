"""A synthetic labelled-text task that a tiny classifier learns in seconds: a text of random
words is "red" if it contains the word red, "blue" if it contains blue, else "none" (the rule
"does the text contain token X")."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from transformer.data.classification import prepare_classification

LABELS = ["blue", "none", "red"]  # the data's labels, sorted
WORDS = [
    "the", "a", "dog", "cat", "runs", "sleeps", "big", "small", "house", "tree", "under", "over",
    "green", "yellow", "quickly", "slowly", "man", "woman", "park", "street",
]  # fmt: skip


def labelled_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """n (label, text) rows, the three classes about equally frequent."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 10))
        label = rng.choice(LABELS)
        if label != "none":
            words.insert(rng.randrange(len(words) + 1), label)
        rows.append((label, " ".join(words)))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def labelled_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared classification data directory: 900 rows of the rule above, folds 10 (valid
    fold 0, test fold 1), a 400-token BPE: every word one token."""
    d = tmp_path_factory.mktemp("labelled")
    out = tmp_path_factory.mktemp("labelled-prepared") / "data"
    prepare_classification(
        train=write_csv(d / "train.csv", labelled_rows(900, seed=0)), out=out,
        text_columns=["text"], label_column="label", folds=10, valid_fold=0, test_fold=1,
        vocab_size=400, min_frequency=1,
    )  # fmt: skip
    return out
