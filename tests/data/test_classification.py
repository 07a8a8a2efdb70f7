"""`transformer prepare --classify`: reading labelled files, labels, stratified folds, the data
directory (read back with the translation loaders), every bad-input case, memory, the CLI."""

from __future__ import annotations

import csv
import gzip
import json
import random
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from transformer import cli
from transformer.data import DataError, SubwordTokenizer, load_split, load_tokenizer, read_manifest
from transformer.data.classification import (
    FoldAssigner,
    LabelledRow,
    fold_of,
    parse_columns,
    prepare_classification,
    read_classes,
    read_labelled,
    sort_labels,
)

AG_NEWS = Path(__file__).resolve().parents[2] / "data" / "ag_news"
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
VOCAB = 300
WORDS = {  # a few words per class, so that texts differ by class
    1: "election minister troops border embassy summit",
    2: "match goal coach season league striker",
    3: "shares profit market earnings bank oil",
    4: "software chip internet space research phone",
}


def write(path: Path, text: str | bytes) -> Path:
    """Write text (UTF-8) or bytes, gzip-compressed if the name ends in .gz."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def write_rows(path: Path, rows: list[list[Any]], delimiter: str = ",") -> Path:
    """Rows as CSV (every field quoted, like AG News) or TSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter=delimiter, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(
            rows
        )
    return path


def make_rows(n: int, seed: int = 0, classes: int = 4) -> list[list[Any]]:
    """n AG-News-like rows [class 1..classes, title, description], every text distinct."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randint(1, classes)
        words = WORDS[k].split()
        rows.append([str(k), f"story {i} " + " ".join(rng.choices(words, k=3)), " ".join(
            rng.choices(words, k=rng.randint(2, 8)))])  # fmt: skip
    return rows


def agnews_like(tmp_path: Path, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """A CSV of `n` rows and the classes file: prepare_classification() keyword arguments."""
    train = write_rows(tmp_path / "in" / "train.csv", make_rows(n, seed))
    classes = write(tmp_path / "in" / "classes.txt", "".join(x + "\n" for x in LABELS))
    return dict(train=train, text_columns=[1, 2], label_column=0, classes=classes)


def joined(row: list[Any]) -> str:
    return " ".join(" ".join(row[1:]).split())


def snapshot(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


# ------------------------------------------------------------------------------- reading


def test_reads_csv_with_numbered_columns_joined_and_keeps_the_text_as_is(tmp_path: Path) -> None:
    path = write(
        tmp_path / "news.csv",
        '"3","Wall St. Bears Claw Back (Reuters)","Reuters - Short-sellers, Wall Street\'s '
        'dwindling\\band of ultra-cynics, are seeing green again."\n'
        '"1","Sharon #39;s plan","A \\$5 quot;deal quot;,  said ""X"" "\n',
    )
    rows = list(read_labelled(path, text_columns=[1, 2], label_column=0))
    assert rows == [
        LabelledRow(
            1,
            "Wall St. Bears Claw Back (Reuters) Reuters - Short-sellers, Wall Street's "
            "dwindling\\band of ultra-cynics, are seeing green again.",
            "3",
        ),
        LabelledRow(2, 'Sharon #39;s plan A \\$5 quot;deal quot;, said "X"', "1"),
    ]
    # One text column, numbers given as strings (as the CLI gives them), another order.
    assert [r.text for r in read_labelled(path, text_columns=["2"], label_column="0")][1] == (
        'A \\$5 quot;deal quot;, said "X"'
    )


@pytest.mark.parametrize(("suffix", "sep"), [(".csv", ","), (".tsv", "\t")])
def test_reads_a_header_and_named_columns(tmp_path: Path, suffix: str, sep: str) -> None:
    rows = [
        ["id", "topic", "title", "body"],
        ["7", "sport", "A, b", "c d"],
        ["8", "tech", "e", "f"],
    ]
    path = write_rows(tmp_path / f"t{suffix}", rows, delimiter=sep)
    by_name = list(read_labelled(path, text_columns=["title", "body"], label_column="topic"))
    assert by_name == [LabelledRow(2, "A, b c d", "sport"), LabelledRow(3, "e f", "tech")]
    # Numbered columns with an explicit header row skip it; without, the header is a row.
    numbered = list(read_labelled(path, text_columns=[2, 3], label_column=1, header=True))
    assert numbered == by_name
    as_row = list(read_labelled(path, text_columns=[2, 3], label_column=1))
    assert as_row[0] == LabelledRow(1, "title body", "topic")


def test_reads_jsonl_objects_and_arrays_and_skips_blank_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"label": 2, "title": "Goal!", "text": "A late\nwinner."}),
        "",
        json.dumps({"text": "Rates up", "title": None, "label": "Business", "extra": [1]}),
    ]
    path = write(tmp_path / "rows.jsonl", "\n".join(lines) + "\n\n")
    rows = list(read_labelled(path, text_columns=["title", "text"], label_column="label"))
    assert rows == [
        LabelledRow(1, "Goal! A late winner.", "2"),
        LabelledRow(3, "Rates up", "Business"),
    ]
    arrays = write(tmp_path / "arrays.data", '[4, "x", "y"]\n["World", "z", ""]\n')
    rows = list(read_labelled(arrays, format="jsonl", text_columns=[1, 2], label_column=0))
    assert rows == [LabelledRow(1, "x y", "4"), LabelledRow(2, "z", "World")]


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.jsonl"])
def test_gzip_files_read_like_plain_ones(tmp_path: Path, name: str) -> None:
    if name.endswith(".jsonl"):
        text = '{"y": "a", "x": "one two"}\n{"y": "b", "x": "three"}\n'
        columns: dict[str, Any] = dict(text_columns=["x"], label_column="y")
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        text = f"a{sep}one two\nb{sep}three\n"
        columns = dict(text_columns=[1], label_column=0)
    plain = list(read_labelled(write(tmp_path / name, text), **columns))
    packed = list(read_labelled(write(tmp_path / f"{name}.gz", text), **columns))
    assert plain == packed == [LabelledRow(1, "one two", "a"), LabelledRow(2, "three", "b")]


def test_whitespace_is_collapsed_and_a_multiline_row_has_its_first_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.csv",
        '\ufeff"1","  Title\tone ","first line\r\n\n   second\u2028line  "\r\n\n" 2 ",plain,text\n',
    )
    rows = list(read_labelled(path, text_columns=[1, 2], label_column=0))
    assert rows == [
        LabelledRow(1, "Title one first line second line", "1"),
        LabelledRow(5, "plain text", "2"),  # lines 1-3 are the quoted row, line 4 is blank
    ]


def test_format_is_guessed_from_the_name_or_given(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.txt", "a\tb c\n")
    with pytest.raises(DataError, match=r"rows\.txt: cannot tell the format .*--format"):
        list(read_labelled(path, text_columns=[1], label_column=0))
    assert list(read_labelled(path, format="tsv", text_columns=[1], label_column=0)) == [
        LabelledRow(1, "b c", "a")
    ]
    assert parse_columns("1, 2") == [1, 2] and parse_columns("title,3") == ["title", 3]
    with pytest.raises(DataError, match="comma-separated"):
        parse_columns("1,,2")


# (file name, content, columns, the error's pattern: file:line and the reason)
BAD_INPUTS = [
    ("t.csv", '"1","a","b"\n"2","a"b","c"\n', [1, 2], r"t\.csv:2: malformed CSV row"),
    ("t.csv", '"1","a","b"\n"2","open\n"3","x","y"\n', [1, 2],
     r"t\.csv:2: malformed CSV row \(.*\); the row runs from line 2 to line 3: an unclosed quote"),
    ("t.csv", '"1","a","b"\n"2","a\0","c"\n', [1, 2], r"t\.csv:2: NUL byte"),
    ("t.csv", '"1","a","b"\n"2","a"\n', [1, 2],
     r"t\.csv:2: too few columns: the row has 2, but column 2 \(the 3rd\) is asked for"),
    ("t.csv", "label,title\n1,a\n", ["title", "body"],
     r"t\.csv:1: no column 'body' in the header \(columns: 'label', 'title'\)"),
    ("t.csv", '"1","a","b"\n"2"," ","\n\t"\n', [1, 2], r"t\.csv:2: empty text \(columns 1, 2\)"),
    ("t.csv", '"1","a","b"\n"2","a","b"\n" ","a","b"\n', [1, 2], r"t\.csv:3: empty label"),
    ("t.jsonl", '{"label": 1, "text": "a"}\n{"label": 2, "text": "b"\n', ["text"],
     r"t\.jsonl:2: invalid JSON"),
    ("t.jsonl", '{"label": 1, "text": "a"}\n\n{"label": 2, "body": "b"}\n', ["text"],
     r"t\.jsonl:3: no key 'text' \(keys: 'label', 'body'\)"),
    ("t.jsonl", '{"label": 1, "text": ["a"]}\n', ["text"], r"t\.jsonl:1: column 'text' holds"),
    ("t.csv", b'"1","a","b"\n"2","a","b"\n"3","caf\xe9","b"\n', [1, 2],
     r"t\.csv:3: invalid UTF-8 \(byte 9 of the line"),
    ("t.csv.gz", b'"1","a","b"\n"3","caf\xe9","b"\n', [1, 2], r"t\.csv\.gz:2: invalid UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "texts", "pattern"), BAD_INPUTS)
def test_bad_input_names_the_file_and_line_and_leaves_nothing_behind(
    tmp_path: Path, name: str, content: str | bytes, texts: list[Any], pattern: str
) -> None:
    path = write(tmp_path / "in" / name, content)
    label = "label" if isinstance(texts[0], str) else 0
    with pytest.raises(DataError, match=pattern):
        list(read_labelled(path, text_columns=texts, label_column=label))
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=pattern):
        prepare_classification(
            train=path,
            text_columns=texts,
            label_column=label,
            out=tmp_path / "new" / "deep" / "out",
            vocab_size=VOCAB,
        )
    assert snapshot(tmp_path) == before


def test_a_runaway_quote_stops_at_the_field_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformer.data.classification as classification

    monkeypatch.setattr(classification, "MAX_FIELD_CHARS", 1000)
    path = write(
        tmp_path / "t.csv", '"1","a"\n"2","open\n' + "".join(f"{i},x\n" for i in range(500))
    )
    limit = csv.field_size_limit()
    with pytest.raises(DataError, match=r"t\.csv:2: malformed CSV row \(field larger than"):
        list(read_labelled(path, text_columns=[1], label_column=0))
    assert csv.field_size_limit() == limit  # the process-wide limit is restored


def test_no_header_with_a_named_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "label,text\n1,a\n")
    with pytest.raises(DataError, match="'text' is a name, but the file has no header row"):
        list(read_labelled(path, text_columns=["text"], label_column=0, header=False))
    with pytest.raises(DataError, match="are for CSV and TSV"):
        list(read_labelled(path, format="jsonl", text_columns=["t"], label_column="l", header=True))


# ------------------------------------------------------------------------------- labels


def test_labels_from_a_classes_file_by_name_and_by_1_based_index(tmp_path: Path) -> None:
    kwargs = agnews_like(tmp_path)
    rows = [["Sports", "a match", "won"], ["2", "a goal", "scored"], ["4", "chips", "faster"],
            ["World", "a summit", "held"], ["1", "troops", "moved"], ["Sci/Tech", "space", "x"]]  # fmt: skip
    kwargs["train"] = write_rows(tmp_path / "in" / "mixed.csv", rows * 5)
    out = tmp_path / "out"
    manifest = prepare_classification(**kwargs, out=out, vocab_size=VOCAB, folds=5)
    assert manifest["task"]["labels"] == LABELS
    expected = {"Sports": 10, "World": 10, "Sci/Tech": 10, "Business": 0}
    total = Counter()
    for split in manifest["splits"].values():
        total.update(split["per_class"])
    assert dict(total) == {k: expected[k] for k in LABELS}
    valid = (out / "valid.tgt.txt").read_text().splitlines()
    data = load_split(out, "valid")
    assert [LABELS[int(data[i][1][0])] for i in range(len(data))] == valid


@pytest.mark.parametrize("bad", ["0", "5", "sports", "2.0"])
def test_unknown_label_with_a_classes_file(tmp_path: Path, bad: str) -> None:
    kwargs = agnews_like(tmp_path, 60)
    valid = write_rows(
        tmp_path / "in" / "valid.csv", [["1", "a", "b"], ["2", "c", "d"], [bad, "e", "f"]]
    )
    before = snapshot(tmp_path)
    with pytest.raises(
        DataError,
        match=rf"valid\.csv:3: unknown label '{bad}' \(the labels of the classes file: 'World', "
        r"'Sports', 'Business', 'Sci/Tech'; or 1\.\.4\)",
    ):
        prepare_classification(**kwargs, valid=valid, out=tmp_path / "out", vocab_size=VOCAB)
    assert snapshot(tmp_path) == before


def test_labels_from_the_data_sort_numerically_and_valid_labels_must_be_known(
    tmp_path: Path,
) -> None:
    rows = [[k, f"text {i}", "w"] for i, k in enumerate(["10", "2", "1", "2", "10", "1"] * 4)]
    train = write_rows(tmp_path / "train.csv", rows)
    valid = write_rows(tmp_path / "valid.csv", [["2", "a", "b"], ["10", "c", "d"]])
    out = tmp_path / "out"
    manifest = prepare_classification(
        train=train, valid=valid, text_columns=[1, 2], label_column=0, out=out, vocab_size=VOCAB
    )
    assert manifest["task"]["labels"] == ["1", "2", "10"]  # not "1", "10", "2"
    assert manifest["task"]["folds"] is None  # nothing carved: a valid file was given
    assert [int(load_split(out, "valid")[i][1][0]) for i in range(2)] == [1, 2]
    assert (out / "valid.tgt.txt").read_text() == "2\n10\n"
    assert sort_labels(["pos", "neg", "pos"]) == ["neg", "pos"]
    assert sort_labels(["-1", "+1", "0"]) == ["-1", "0", "+1"]
    write_rows(valid, [["2", "a", "b"], ["3", "c", "d"]])
    with pytest.raises(
        DataError,
        match=r"valid\.csv:2: unknown label '3' \(the labels of the training file: '1', '2', '10'\)",
    ):
        prepare_classification(
            train=train, valid=valid, text_columns=[1, 2], label_column=0, out=tmp_path / "o2",
            vocab_size=VOCAB,
        )  # fmt: skip
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", r"classes\.txt: empty"),
        ("World\nSports\nWorld\n", r"classes\.txt:3: class 'World' again \(first on line 1\)"),
        ("World\n\nSports\n", r"classes\.txt:2: empty class name"),
        ("World\n", r"classes\.txt: only one class"),
        (b"World\nSp\xf6rts\n", r"classes\.txt:2: invalid UTF-8"),
    ],
)
def test_bad_classes_file(tmp_path: Path, content: str | bytes, pattern: str) -> None:
    kwargs = agnews_like(tmp_path, 40)
    write(kwargs["classes"], content)
    with pytest.raises(DataError, match=pattern):
        read_classes(kwargs["classes"])
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=pattern):
        prepare_classification(**kwargs, out=tmp_path / "new" / "out", vocab_size=VOCAB)
    assert snapshot(tmp_path) == before


def test_read_classes_reads_ag_news_classes() -> None:
    assert read_classes(AG_NEWS / "classes.txt") == LABELS


# ------------------------------------------------------------------------------- folds


def test_fold_assignment_is_seeded_stratified_and_streamable() -> None:
    k = 10
    stream = [c for c in np.random.default_rng(0).integers(0, 4, size=2000).tolist()]
    assign = FoldAssigner(k, seed=1)
    folds = [assign(c) for c in stream]
    seen: Counter[int] = Counter()
    for c, f in zip(stream, folds):  # the streaming assigner is the public fold_of
        assert f == fold_of(c, seen[c], folds=k, seed=1)
        seen[c] += 1
    again = FoldAssigner(k, seed=1)
    assert [again(c) for c in stream] == folds
    other = FoldAssigner(k, seed=2)
    assert sum(other(c) != f for c, f in zip(stream, folds)) > 1000
    for c in range(4):
        of_class = [f for s, f in zip(stream, folds) if s == c]
        # every complete block of k rows of a class visits each fold once, so the per-fold
        # counts of a class differ by at most 1
        for b in range(len(of_class) // k):
            assert sorted(of_class[b * k : (b + 1) * k]) == list(range(k))
        counts = Counter(of_class)
        assert max(counts.values()) - min(counts[f] for f in range(k)) <= 1
    # the permutation of a block is the one the seed sequence [seed, class, block] draws
    assert [fold_of(3, i, folds=k, seed=7) for i in range(20, 30)] == (
        np.random.default_rng([7, 3, 2]).permutation(k).tolist()
    )


def test_every_row_lands_in_exactly_one_split_by_its_fold(tmp_path: Path) -> None:
    kwargs = agnews_like(tmp_path, 300)
    rows = make_rows(300)
    out = tmp_path / "out"
    manifest = prepare_classification(
        **kwargs, out=out, vocab_size=VOCAB, folds=5, valid_fold=3, test_fold=0, seed=4
    )
    assert manifest["task"]["folds"] == {"k": 5, "valid_fold": 3, "test_fold": 0, "seed": 4}
    expected: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    seen: Counter[int] = Counter()
    for row in rows:  # the rule, written out: i-th row of class c goes to fold_of(c, i)
        c = int(row[0]) - 1
        fold = fold_of(c, seen[c], folds=5, seed=4)
        seen[c] += 1
        expected[{3: "valid", 0: "test"}.get(fold, "train")].append(joined(row))
    tok = load_tokenizer(out)
    for name, texts in expected.items():
        data = load_split(out, name)
        decoded = [tok.decode(data[i][0].tolist()) for i in range(len(data))]
        assert decoded == texts, name  # in input order
        assert manifest["splits"][name]["pairs"] == len(texts)
    assert (out / "valid.src.txt").read_text().splitlines() == expected["valid"]
    assert (out / "test.src.txt").read_text().splitlines() == expected["test"]
    assert sum(len(v) for v in expected.values()) == 300
    assert manifest["splits"]["train"]["inputs"]["rows"]["folds"] == [1, 2, 4]
    # Another seed deals the rows differently.
    other = prepare_classification(
        **kwargs, out=tmp_path / "o2", vocab_size=VOCAB, folds=5, valid_fold=3, test_fold=0, seed=5
    )
    assert (tmp_path / "o2" / "valid.src.txt").read_text() != (out / "valid.src.txt").read_text()
    assert other["task"]["folds"]["seed"] == 5


def test_an_empty_fold_is_an_error_that_suggests_fewer_folds(tmp_path: Path) -> None:
    rows = [["a", "one", "x"], ["a", "two", "x"], ["b", "three", "x"]]
    train = write_rows(tmp_path / "t.csv", rows)
    used = {fold_of(0, 0, folds=10, seed=1), fold_of(0, 1, folds=10, seed=1)}
    used.add(fold_of(1, 0, folds=10, seed=1))
    empty = min(set(range(10)) - used)
    with pytest.raises(
        DataError, match=rf"the valid split \(fold {empty} of 10\) got no rows .*use fewer --folds"
    ):
        prepare_classification(
            train=train, text_columns=[1], label_column=0, out=tmp_path / "o", vocab_size=VOCAB,
            valid_fold=empty,
        )  # fmt: skip
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"vocab_size": None}, "give either --vocab-size N .* not neither"),
        ({"tokenizer": "tok.json"}, "give either --vocab-size N .* not both"),
        ({"valid_fold": 10}, r"--valid-fold must be in 0\.\.9"),
        ({"valid_fold": -1}, r"--valid-fold must be in 0\.\.9"),
        ({"test_fold": 12}, r"--test-fold must be in 0\.\.9"),
        ({"test_fold": 0}, "--valid-fold and --test-fold must differ"),
        ({"folds": 1}, "--folds must be at least 2"),
        ({"seed": -1}, "--seed must be a non-negative integer"),
        ({"max_len": 0}, "--max-len must be at least 1"),
        ({"text_columns": [0, 1]}, "column 0 cannot be both the label and a text column"),
        ({"test": "x.csv", "test_fold": 1}, "a --test file or a --test-fold, not both"),
        ({"vocab_size": 100}, "--vocab-size must be at least"),
    ],
)
def test_bad_options(tmp_path: Path, overrides: dict[str, Any], pattern: str) -> None:
    kwargs = {**agnews_like(tmp_path, 30), "vocab_size": VOCAB, **overrides}
    with pytest.raises(DataError, match=pattern):
        prepare_classification(**kwargs, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_training_file_and_empty_valid_file(tmp_path: Path) -> None:
    kwargs = agnews_like(tmp_path, 30)
    empty = write(tmp_path / "in" / "empty.csv", "\n")
    with pytest.raises(DataError, match=r"empty\.csv: the training set is empty"):
        prepare_classification(**{**kwargs, "train": empty}, out=tmp_path / "o", vocab_size=VOCAB)
    with pytest.raises(DataError, match=r"empty\.csv: the valid set is empty"):
        prepare_classification(**kwargs, valid=empty, out=tmp_path / "o", vocab_size=VOCAB)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------- the directory


def test_the_directory_loads_and_each_row_is_its_text_and_one_class_token(tmp_path: Path) -> None:
    kwargs = agnews_like(tmp_path, 250)
    test = write_rows(tmp_path / "in" / "test.csv", make_rows(40, seed=9))
    out = tmp_path / "out"
    manifest = prepare_classification(**kwargs, test=test, out=out, vocab_size=VOCAB, chunk_size=32)
    assert read_manifest(out) == manifest
    assert set(manifest["splits"]) == {"train", "valid", "test"}
    assert manifest["tokenizer"]["trained"] is True
    assert "src_lang" not in manifest
    assert manifest["task"] == {
        "name": "classification",
        "labels": LABELS,
        "input": {"format": "csv", "text_columns": [1, 2], "label_column": 0, "header": False},
        "folds": {"k": 10, "valid_fold": 0, "test_fold": None, "seed": 1},
    }
    tok = load_tokenizer(out)
    assert not any(p.name.startswith(".") for p in out.iterdir())  # the spool is gone
    for name in ("valid", "test"):
        info = manifest["splits"][name]
        data = load_split(out, name)
        texts = (out / f"{name}.src.txt").read_text().splitlines()
        labels = (out / f"{name}.tgt.txt").read_text().splitlines()
        assert len(data) == len(texts) == len(labels) == info["pairs"]
        for i in range(len(data)):
            src, tgt = data[i]
            assert tgt.tolist() == [LABELS.index(labels[i])]
            assert src.tolist() == tok.encode(texts[i])
        assert info["per_class"] == {x: labels.count(x) for x in LABELS}
        assert info["tokens"] == {"src": int(data.src_lengths.sum()), "tgt": len(data)}
        assert info["text"] == {"src": f"{name}.src.txt", "tgt": f"{name}.tgt.txt"}
    assert manifest["splits"]["test"]["inputs"]["rows"]["path"] == str(test)
    assert (out / "test.src.txt").read_text().splitlines() == [joined(r) for r in make_rows(40, 9)]
    train = load_split(out, "train")
    assert set(train.tgt_lengths.tolist()) == {1}
    assert manifest["splits"]["train"]["text"] is None
    assert not (out / "train.src.txt").exists()


def test_long_texts_are_truncated_and_counted_never_dropped(tmp_path: Path) -> None:
    kwargs = agnews_like(tmp_path, 120)
    out = tmp_path / "out"
    manifest = prepare_classification(**kwargs, out=out, vocab_size=VOCAB, max_len=30, folds=4)
    tok = load_tokenizer(out)
    texts = (out / "valid.src.txt").read_text().splitlines()
    data = load_split(out, "valid")
    full = [tok.encode(t) for t in texts]
    assert 0 < sum(len(x) > 30 for x in full) < len(full)
    assert manifest["splits"]["valid"]["truncated"] == sum(len(x) > 30 for x in full)
    assert [data[i][0].tolist() for i in range(len(data))] == [x[:30] for x in full]
    assert manifest["splits"]["train"]["truncated"] > 0
    assert sum(s["pairs"] for s in manifest["splits"].values()) == 120
    assert manifest["truncation"] == {"max_len": 30}


def test_an_existing_tokenizer_is_used_and_out_is_refused_without_force(tmp_path: Path) -> None:
    kwargs = agnews_like(tmp_path, 80)
    first = prepare_classification(**kwargs, out=tmp_path / "a", vocab_size=VOCAB)
    tok_file = tmp_path / "a" / "tokenizer.json"
    with pytest.raises(DataError, match="exists and is not empty; add --force"):
        prepare_classification(**kwargs, out=tmp_path / "a", tokenizer=tok_file)
    again = prepare_classification(**kwargs, out=tmp_path / "a", tokenizer=tok_file, force=True)
    assert again["tokenizer"]["sha256"] == first["tokenizer"]["sha256"]
    assert again["tokenizer"]["trained"] is False
    assert again["tokenizer"]["from_file"] == str(tok_file)
    assert SubwordTokenizer.from_file(tok_file).sha256 == first["tokenizer"]["sha256"]


def test_a_failure_while_encoding_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = agnews_like(tmp_path, 50)
    before = snapshot(tmp_path)

    def interrupted(self: SubwordTokenizer, texts: list[str]) -> list[list[int]]:
        raise KeyboardInterrupt

    monkeypatch.setattr(SubwordTokenizer, "encode_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_classification(**kwargs, out=tmp_path / "new" / "deep" / "out", vocab_size=VOCAB)
    assert snapshot(tmp_path) == before


def test_the_real_ag_news_head_prepares_with_its_class_counts(tmp_path: Path) -> None:
    out = tmp_path / "ag"
    manifest = prepare_classification(
        train=AG_NEWS / "train_head.csv.gz", classes=AG_NEWS / "classes.txt", text_columns=[1, 2],
        label_column=0, out=out, vocab_size=500, folds=10, valid_fold=0, test_fold=1,
    )  # fmt: skip
    total: Counter[str] = Counter()
    for split in manifest["splits"].values():
        total.update(split["per_class"])
    assert dict(total) == {"World": 812, "Sports": 630, "Business": 756, "Sci/Tech": 1065}
    sizes = {name: s["pairs"] for name, s in manifest["splits"].items()}
    assert sum(sizes.values()) == 3263
    assert 320 <= sizes["valid"] <= 332 and 320 <= sizes["test"] <= 332  # about a tenth each
    first = (out / "valid.src.txt").read_text().splitlines()
    assert all(t == " ".join(t.split()) and t for t in first)
    with gzip.open(AG_NEWS / "train_head.csv.gz", "rt", encoding="ascii", newline="") as f:
        raw = list(csv.reader(f))
    assert set(first) <= {" ".join(f"{r[1]} {r[2]}".split()) for r in raw}


# ------------------------------------------------------------------------------- memory


def test_a_120k_row_file_prepares_in_bounded_memory(tmp_path: Path) -> None:
    """Calibration (this machine): the file is ~7 MB. prepare_classification peaks at ~3 MB of
    traced memory with chunks of 1,000 rows (~17 MB with the default 10,000: a chunk's token
    lists); the same with `read_labelled` collected into a list (all rows held) peaks at ~27 MB.
    The bound, 8 MB, lies clearly between."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for _ in range(120_000):
            w.writerow([rng.randint(1, 4), " ".join(rng.choices(words, k=4)), " ".join(
                rng.choices(words, k=6))])  # fmt: skip
    size = path.stat().st_size
    assert 5_000_000 < size < 10_000_000
    started = time.perf_counter()
    tracemalloc.start()
    try:
        manifest = prepare_classification(
            train=path, text_columns=[1, 2], label_column=0, out=tmp_path / "out",
            vocab_size=VOCAB, chunk_size=1000,
        )  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert sum(s["pairs"] for s in manifest["splits"].values()) == 120_000
    assert peak < 8_000_000, f"peak traced memory {peak / 1e6:.1f} MB (file {size / 1e6:.1f} MB)"
    assert elapsed < 60


# ------------------------------------------------------------------------------- CLI


def test_cli_prepares_labelled_texts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kwargs = agnews_like(tmp_path, 150)
    out = tmp_path / "out"
    argv = ["prepare", "--classify", "--train", str(kwargs["train"]), "--text-columns", "1,2",
            "--label-column", "0", "--classes", str(kwargs["classes"]), "--vocab-size", str(VOCAB),
            "--folds", "5", "--valid-fold", "2", "--test-fold", "4", "--seed", "3",
            "--max-len", "6", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "valid: " in captured.out and "wrote " in captured.out
    assert "rows" in captured.err  # the progress bars
    manifest = read_manifest(out)
    assert manifest["task"]["folds"] == {"k": 5, "valid_fold": 2, "test_fold": 4, "seed": 3}
    assert manifest["truncation"] == {"max_len": 6}
    assert int(load_split(out, "train").src_lengths.max()) == 6
    # the default truncation of --classify is 512, not translation's 256
    out2 = tmp_path / "out2"
    argv = ["prepare", "--classify", "--train", str(kwargs["train"]), "--text-columns", "1,2",
            "--label-column", "0", "--vocab-size", str(VOCAB), "--out", str(out2), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    m2 = read_manifest(out2)
    assert m2["truncation"] == {"max_len": 512}
    assert m2["task"]["labels"] == ["1", "2", "3", "4"]
    assert m2["task"]["folds"] == {"k": 10, "valid_fold": 0, "test_fold": None, "seed": 1}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--src", "de"], "error: --src: not used with --classify"),
        (["--trees", "--max-ratio", "2"], "error: --trees, --max-ratio: not used with --classify"),
        (["--test", "a.csv", "--test", "b.csv"], "error: --test may be given once with --classify"),
        (["--valid", "v.csv", "--valid-fold", "1"], "error: give --valid FILE or --valid-fold I"),
        (["--test-fold", "0"], "error: --valid-fold and --test-fold must differ (both are 0)"),
        (["--folds", "1"], "error: --folds must be at least 2"),
        (["--format", "jsonl", "--header"], "error: --header / --no-header are for CSV and TSV"),
    ],
)
def test_cli_errors_print_the_message_and_return_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    kwargs = agnews_like(tmp_path, 30)
    argv = ["prepare", "--classify", "--train", str(kwargs["train"]), "--text-columns", "1,2",
            "--label-column", "0", "--vocab-size", str(VOCAB), "--out", str(tmp_path / "out"),
            "--quiet", *extra]  # fmt: skip
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "out").exists()


def test_cli_classify_needs_columns_and_its_flags_need_classify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["prepare", "--train", "t.csv", "--vocab-size", "300", "--out", str(tmp_path / "o")]
    assert cli.main([*common, "--classify", "--label-column", "0"]) == 2
    assert capsys.readouterr().err == (
        "error: --classify needs --text-columns COLS and --label-column COL\n"
    )
    assert cli.main([*common, "--valid", "v", "--folds", "3", "--no-header"]) == 2
    assert capsys.readouterr().err == "error: --header/--no-header, --folds: only with --classify\n"
    # Translation (and --trees) still require --valid, now checked after parsing.
    assert cli.main([*common, "--src", "de", "--tgt", "en"]) == 2
    assert capsys.readouterr().err.startswith("error: --valid PREFIX is required")
    assert cli.main([*common, "--trees"]) == 2
    assert capsys.readouterr().err.startswith("error: --valid PREFIX is required")
    assert not (tmp_path / "o").exists()


def test_cli_prepare_help_lists_the_classification_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["prepare", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--classify", "--text-columns", "--label-column", "--format", "--no-header",
                 "--classes", "--folds", "--valid-fold", "--test-fold", "--seed", "--trees"):  # fmt: skip
        assert flag in text
    assert "(default: 256)" in text and "(default: 512)" in text
