"""`transformer prepare --classify`: labelled texts (CSV, TSV, JSONL) as a classification data set.

    transformer prepare --classify --train data/ag_news/train_head.csv.gz --text-columns 1,2 \\
        --label-column 0 --classes data/ag_news/classes.txt --vocab-size 8000 \\
        --folds 10 --valid-fold 0 --test-fold 1 --out work/ag_news

The output is an ordinary data directory (`transformer.data.dataset`), read by `load_split`
unchanged: the source side of row i is its text's subword ids (truncated to `max_len`), the target
side is exactly one token, the row's class index (0-based, in the order of the manifest's
`task.labels`). Validation and test splits also keep `NAME.src.txt` (the text, whitespace
collapsed) and `NAME.tgt.txt` (the label name), one row per line. The manifest records the task:
`{"name": "classification", "labels": [...], "input": {...}, "folds": {...} or None}`.

- Reading (`read_labelled`): rows of CSV / TSV (the stdlib `csv` module: quoted fields may hold
  commas, tabs and newlines) or JSONL (one object or array per line), plain or `.gz`, strict
  UTF-8. Columns are named (a header row, or JSON keys) or numbered from 0; several text columns
  are joined with a space, and every run of whitespace (newlines included) becomes one space.
  Blank lines are skipped. Everything else in the text (backslashes, `#39;` remnants) is kept.
- Labels: the lines of a classes file (a raw label is a name, or a 1-based index into the file,
  as in AG News), or else the distinct labels of the training file, sorted (numerically when all
  are integers).
- Splits: separate `valid` / `test` files, or folds carved out of the training file: the rows of
  each class are dealt, in blocks of K, over the K folds by a seeded permutation (`fold_of`), so
  the folds are stratified, reproducible, and assigned in one pass with O(1) memory per class.
  K data directories with `valid_fold = 0..K-1` give K-fold cross-validation.
- Memory does not grow with the input: rows are streamed, spooled to plain text in the temporary
  output directory (the tokenizer trains on the spooled training texts), then encoded chunk by
  chunk; the spool is deleted before the directory is renamed into place. On any error nothing is
  left behind, as with `transformer prepare`.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import re
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np
from tqdm import tqdm

from transformer.data.dataset import FORMAT_VERSION, MANIFEST, TOKENIZER, token_dtype
from transformer.data.errors import DataError
from transformer.data.prepare import (
    check_out,
    missing_ancestors,
    open_split_writers,
    removed_on_failure,
    tokenizer_record,
    write_json,
)
from transformer.data.textfiles import decode_line, file_sha256, open_binary, read_lines
from transformer.data.tokenizer import MIN_VOCAB_SIZE, SubwordTokenizer
from transformer.io import atomic_directory

TASK_NAME = "classification"
FORMATS = ("csv", "tsv", "jsonl")
DEFAULT_FOLDS = 10
DEFAULT_VALID_FOLD = 0
DEFAULT_SEED = 1
DEFAULT_MAX_LEN = 512  # subwords; longer texts are truncated
# A field (and a physical line) may be this long: generous for any text, but a runaway quote
# stops with an error instead of reading the rest of the file into one field.
MAX_FIELD_CHARS = 10_000_000
MAX_LINE_BYTES = 4 * MAX_FIELD_CHARS  # a line of UTF-8 holds at most 4 bytes per character
# More distinct labels than this in the training file is a wrong --label-column, not a task.
MAX_LABELS = 10_000

Column = int | str
_INTEGER = re.compile(r"[+-]?[0-9]+")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_SPOOL = ".spool"  # the temporary directory's subdirectory of spooled rows


class LabelledRow(NamedTuple):
    """One row of a labelled file: the line it starts on (1-based), its text, its raw label."""

    line: int
    text: str
    label: str


# ---------------------------------------------------------------------------------- reading


def collapse(text: str) -> str:
    """The text with every run of whitespace (newlines, tabs included) as one space, stripped."""
    return " ".join(text.split())


def parse_columns(spec: str) -> list[Column]:
    """'1,2' -> [1, 2]; 'title,description' -> names (an all-digit item is a 0-based number)."""
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise DataError(f"columns {spec!r}: expected comma-separated names or 0-based numbers")
    return [column(item) for item in items]


def column(value: Column) -> Column:
    """A column as given: an int, or a string that is an int if it is all digits, else a name."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataError(f"column {value!r}: expected a name or a 0-based number")
    if isinstance(value, str):
        if not value.strip():
            raise DataError("a column name cannot be empty")
        value = int(value) if value.isascii() and value.isdigit() else value
    if isinstance(value, int) and value < 0:
        raise DataError(f"column {value}: column numbers start at 0")
    return value


def guess_format(path: Path | str, format: str | None = None) -> str:
    """The format of a labelled file: `format` if given, else from its name (`.gz` ignored)."""
    if format is not None:
        if format not in FORMATS:
            raise DataError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
        return format
    name = Path(path).name
    name = name[: -len(".gz")] if name.endswith(".gz") else name
    guessed = _SUFFIXES.get(Path(name).suffix.lower())
    if guessed is None:
        raise DataError(
            f"{path}: cannot tell the format from the file name (expected .csv, .tsv or .jsonl, "
            "optionally .gz); give it with --format"
        )
    return guessed


def has_header(format: str, columns: Iterable[Column], header: bool | None) -> bool | None:
    """Whether a CSV / TSV file starts with a header row (None for JSONL): `header` if given,
    else yes iff a column is given by name. A header is needed to find a column by name."""
    named = [c for c in columns if isinstance(c, str)]
    if format == "jsonl":
        if header is not None:
            raise DataError(
                "--header / --no-header are for CSV and TSV; JSONL rows name their keys"
            )
        return None
    if header is None:
        return bool(named)
    if not header and named:
        raise DataError(
            f"column {named[0]!r} is a name, but the file has no header row (--no-header); "
            "give 0-based column numbers, or drop --no-header"
        )
    return header


def read_labelled(
    path: Path | str,
    *,
    format: str | None = None,
    text_columns: Sequence[Column],
    label_column: Column,
    header: bool | None = None,
    delimiter: str | None = None,
) -> Iterator[LabelledRow]:
    """Stream the rows of a CSV, TSV or JSONL file (plain or .gz) as `LabelledRow`s.

    `text_columns` are joined with a space, whitespace is collapsed (`collapse`). Columns are
    0-based numbers or names (CSV / TSV header row, JSON keys); `header=None` means a CSV / TSV
    file has a header iff a column is given by name. `format` overrides the guess from the file
    name; `delimiter` that of the format (`,` or a tab). Raises DataError naming the file and the
    line on a malformed row, invalid JSON or UTF-8, a missing column, an empty text or label.
    """
    path = Path(path)
    fmt = guess_format(path, format)
    texts = [column(c) for c in text_columns]
    label = column(label_column)
    if not texts:
        raise DataError("give at least one text column")
    if fmt == "jsonl":
        has_header(fmt, [], header)
        yield from _read_jsonl(path, texts, label)
    else:
        with_header = has_header(fmt, [*texts, label], header)
        sep = delimiter or ("\t" if fmt == "tsv" else ",")
        yield from _read_delimited(path, fmt, texts, label, bool(with_header), sep)


def _physical_lines(path: Path) -> Iterator[str]:
    """The lines of `path` with their line ends, checked: strict UTF-8, no NUL, bounded length."""
    lineno = 0
    with open_binary(path) as f:
        try:
            while raw := f.readline(MAX_LINE_BYTES + 1):
                lineno += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise DataError(
                        f"{path}:{lineno}: line longer than {MAX_LINE_BYTES:,} bytes; "
                        "is this a text file with one row per line?"
                    )
                if (nul := raw.find(b"\0")) >= 0:
                    raise DataError(
                        f"{path}:{lineno}: NUL byte (byte {nul + 1} of the line); "
                        "this is not UTF-8 text (UTF-16? a binary file?), convert it to UTF-8"
                    )
                yield decode_line(raw, path, lineno)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: cannot read after line {lineno}: {e}") from None


@contextlib.contextmanager
def _field_size_limit(limit: int) -> Iterator[None]:
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_delimited(
    path: Path, fmt: str, texts: list[Column], label: Column, with_header: bool, sep: str
) -> Iterator[LabelledRow]:
    what = fmt.upper()
    lines = _physical_lines(path)
    with _field_size_limit(MAX_FIELD_CHARS), contextlib.closing(lines):
        reader = csv.reader(lines, delimiter=sep, strict=True)

        def rows() -> Iterator[tuple[int, list[str]]]:
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    end = reader.line_num
                    hint = (
                        f"; the row runs from line {start} to line {end}: an unclosed quote?"
                        if end > start or "end of data" in str(e) or "field limit" in str(e)
                        else ""
                    )
                    raise DataError(f"{path}:{start}: malformed {what} row ({e}){hint}") from None
                if fields:  # [] is a blank line
                    yield start, fields

        numbered = rows()
        names: dict[str, int] = {}
        header_line = 0
        if with_header:
            first = next(numbered, None)
            if first is None:
                raise DataError(f"{path}: empty, expected a header row first")
            header_line, header = first
            for i, name in enumerate(header):
                names.setdefault(name.strip(), i)
        available = ", ".join(repr(n) for n in names)

        def index(c: Column) -> int:
            if isinstance(c, int):
                return c
            if c not in names:
                raise DataError(
                    f"{path}:{header_line}: no column {c!r} in the header "
                    f"(columns: {available or 'none'})"
                )
            return names[c]

        text_idx = [index(c) for c in texts]
        label_idx = index(label)
        needed = max(*text_idx, label_idx) + 1
        for start, fields in numbered:
            if len(fields) < needed:
                c, k = next(
                    (c, k)
                    for c, k in zip([*texts, label], [*text_idx, label_idx])
                    if k >= len(fields)
                )
                shown = repr(c) if isinstance(c, str) else f"{c} (the {_ordinal(k + 1)})"
                raise DataError(
                    f"{path}:{start}: too few columns: the row has {len(fields)}, but column "
                    f"{shown} is asked for; check the delimiter and the column numbers"
                )
            yield _row(
                path,
                start,
                [fields[k] for k in text_idx],
                fields[label_idx],
                texts,
                label,
            )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _read_jsonl(path: Path, texts: list[Column], label: Column) -> Iterator[LabelledRow]:
    lines = _physical_lines(path)
    with contextlib.closing(lines):
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); "
                    "JSONL needs one JSON object per line"
                ) from None
            values = [_json_value(path, lineno, obj, c) for c in [*texts, label]]
            text_values = [_json_text(path, lineno, c, v) for c, v in zip(texts, values)]
            yield _row(
                path,
                lineno,
                text_values,
                _json_label(path, lineno, label, values[-1]),
                texts,
                label,
            )


def _json_value(path: Path, lineno: int, obj: Any, c: Column) -> Any:
    if isinstance(obj, dict):
        key = str(c)
        if key not in obj:
            keys = ", ".join(repr(k) for k in obj) or "none"
            raise DataError(f"{path}:{lineno}: no key {key!r} (keys: {keys})")
        return obj[key]
    if isinstance(obj, list):
        if isinstance(c, str):
            raise DataError(
                f"{path}:{lineno}: a JSON array has no key {c!r}; give 0-based column numbers"
            )
        if c >= len(obj):
            raise DataError(
                f"{path}:{lineno}: too few columns: the array has {len(obj)}, "
                f"but column {c} is asked for"
            )
        return obj[c]
    raise DataError(f"{path}:{lineno}: expected a JSON object (or array), got {type(obj).__name__}")


def _json_text(path: Path, lineno: int, c: Column, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"{path}:{lineno}: column {c!r} holds {json.dumps(value)[:40]}, expected a string"
        )
    return value


def _json_label(path: Path, lineno: int, c: Column, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise DataError(
        f"{path}:{lineno}: label column {c!r} holds {json.dumps(value)[:40]}, "
        "expected a string or an integer"
    )


def _row(
    path: Path,
    line: int,
    text_values: list[str],
    raw_label: str,
    texts: list[Column],
    label: Column,
) -> LabelledRow:
    text = collapse(" ".join(text_values))
    if not text:
        shown = ", ".join(repr(c) for c in texts)
        raise DataError(
            f"{path}:{line}: empty text (column{'s' if len(texts) > 1 else ''} {shown}); "
            "remove the row or fix the column numbers"
        )
    value = collapse(raw_label)
    if not value:
        raise DataError(f"{path}:{line}: empty label (column {label!r}); every row needs one")
    return LabelledRow(line, text, value)


# ---------------------------------------------------------------------------------- labels


def read_classes(path: Path | str) -> list[str]:
    """The class names of a classes file, one per line (as AG News's classes.txt), in order."""
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_lines(path), start=1):
        name = collapse(line)
        if not name:
            raise DataError(f"{path}:{lineno}: empty class name; one name per line, no blank lines")
        if name in seen:
            raise DataError(
                f"{path}:{lineno}: class {name!r} again (first on line {seen[name]}); "
                "class names must be distinct"
            )
        seen[name] = lineno
        names.append(name)
    if not names:
        raise DataError(f"{path}: empty; expected one class name per line")
    if len(names) < 2:
        raise DataError(f"{path}: only one class ({names[0]!r}); a classifier needs at least 2")
    return names


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Distinct raw labels in order: numerically if all are integers, else as strings."""
    distinct = set(labels)
    if all(_INTEGER.fullmatch(x) for x in distinct):
        return sorted(distinct, key=lambda x: (int(x), x))
    return sorted(distinct)


class LabelIndex:
    """Raw label -> class index. With a classes file (`one_based=True`), a raw label is a name
    or a 1-based index into it (the AG News convention); else it must be one of the names."""

    def __init__(self, names: Sequence[str], *, one_based: bool) -> None:
        self.names = list(names)
        self.one_based = one_based
        self._index = {name: i for i, name in enumerate(self.names)}

    def get(self, raw: str) -> int | None:
        """The class index of `raw`, or None if it is not a known label."""
        if raw in self._index:
            return self._index[raw]
        if self.one_based and _INTEGER.fullmatch(raw) and 1 <= int(raw) <= len(self.names):
            return int(raw) - 1
        return None

    def __call__(self, path: Path, row: LabelledRow) -> int:
        """The class index of a row; DataError naming the file and line if it is unknown."""
        k = self.get(row.label)
        if k is None:
            known = ", ".join(repr(n) for n in self.names)
            accepted = f"; or 1..{len(self.names)}" if self.one_based else ""
            source = "the classes file" if self.one_based else "the training file"
            raise DataError(
                f"{path}:{row.line}: unknown label {row.label!r} (the labels of {source}: "
                f"{known}{accepted})"
            )
        return k


# ---------------------------------------------------------------------------------- folds


def fold_of(class_index: int, i: int, *, folds: int, seed: int) -> int:
    """The fold (0..folds-1) of the `i`-th row (0-based) of class `class_index`.

    The rows of a class are dealt in blocks of `folds`: block b = i // folds goes over the folds
    in the order of a permutation drawn from `numpy.random.default_rng([seed, class_index, b])`,
    so every fold gets one row of every complete block (stratified: the per-class counts of two
    folds differ by at most 1), and the assignment depends only on (seed, class, i).
    """
    return int(_permutation(class_index, i // folds, folds, seed)[i % folds])


def _permutation(class_index: int, block: int, folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, class_index, block]).permutation(folds)


class FoldAssigner:
    """`fold_of` for a stream of rows: counts each class's rows and draws one permutation per
    block of `folds` rows (O(1) memory per class)."""

    def __init__(self, folds: int, seed: int) -> None:
        if folds < 2:
            raise DataError(f"folds must be at least 2, got {folds}")
        if seed < 0:
            raise DataError(f"the seed must be a non-negative integer, got {seed}")
        self.folds = folds
        self.seed = seed
        self._seen: dict[int, int] = {}
        self._perm: dict[int, np.ndarray] = {}

    def __call__(self, class_index: int) -> int:
        """The fold of the next row of class `class_index`."""
        i = self._seen.get(class_index, 0)
        self._seen[class_index] = i + 1
        if i % self.folds == 0:
            self._perm[class_index] = _permutation(
                class_index, i // self.folds, self.folds, self.seed
            )
        return int(self._perm[class_index][i % self.folds])


# ---------------------------------------------------------------------------------- preparing


class _Spool:
    """One split's rows on disk while the input is read: texts and class indices, one a line."""

    def __init__(self, directory: Path, name: str, n_labels: int) -> None:
        self.name = name
        self.texts = directory / f"{name}.texts"
        self.labels = directory / f"{name}.labels"
        self.rows = 0
        self.per_class = [0] * n_labels
        self._files: list[TextIO] = []

    def open(self) -> None:
        self._files = [
            open(p, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 (closed by close())
            for p in (self.texts, self.labels)
        ]

    def add(self, text: str, k: int) -> None:
        self._files[0].write(text + "\n")
        self._files[1].write(f"{k}\n")
        self.rows += 1
        self.per_class[k] += 1

    def close(self) -> None:
        for f in self._files:
            f.close()

    def read(self) -> Iterator[tuple[str, int]]:
        with (
            open(self.texts, encoding="utf-8", newline="\n") as texts,
            open(self.labels, encoding="utf-8", newline="\n") as labels,
        ):
            for text, k in zip(texts, labels):
                yield text[:-1], int(k)


def prepare_classification(
    *,
    train: str | Path,
    out: str | Path,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    text_columns: Sequence[Column],
    label_column: Column,
    format: str | None = None,
    header: bool | None = None,
    classes: str | Path | None = None,
    folds: int = DEFAULT_FOLDS,
    valid_fold: int = DEFAULT_VALID_FOLD,
    test_fold: int | None = None,
    seed: int = DEFAULT_SEED,
    vocab_size: int | None = None,
    tokenizer: str | Path | None = None,
    min_frequency: int = 2,
    max_len: int = DEFAULT_MAX_LEN,
    force: bool = False,
    chunk_size: int = 10_000,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build the classification data directory `out` from labelled texts; returns its manifest.

    Splits: "train", "valid" (the file `valid`, else fold `valid_fold` of `folds` carved out of
    `train`) and, if asked for, "test" (the file `test`, or fold `test_fold`). Labels: the lines
    of `classes`, else the distinct labels of `train`. Either trains a BPE tokenizer of
    `vocab_size` tokens on the training split's texts, or uses the `tokenizer` file. Texts longer
    than `max_len` subwords are truncated (and counted), never dropped. Raises DataError, leaving
    nothing behind, on any problem with the inputs or `out`.
    """
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    texts = [column(c) for c in text_columns]
    label = column(label_column)
    carve_valid = valid is None
    carve_test = test is None and test_fold is not None
    _check_options(
        texts,
        label,
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        test=test,
        folds=folds,
        valid_fold=valid_fold if carve_valid else None,
        test_fold=test_fold,
        seed=seed,
        min_frequency=min_frequency,
        max_len=max_len,
        chunk_size=chunk_size,
    )
    inputs = {"train": Path(train)}
    if valid is not None:
        inputs["valid"] = Path(valid)
    if test is not None:
        inputs["test"] = Path(test)
    fmt = guess_format(train, format)
    for path in inputs.values():
        if guess_format(path, format) != fmt:
            raise DataError(
                f"{path}: is {guess_format(path, format).upper()} but the training file is "
                f"{fmt.upper()}; give every file in one format (or --format)"
            )
    with_header = has_header(fmt, [*texts, label], header)
    out = Path(os.path.abspath(out))  # normalises "." and "..": the temp dir goes beside it
    check_out(out, force)
    names = None if classes is None else read_classes(classes)

    @contextlib.contextmanager
    def rows(path: Path, desc: str) -> Iterator[Iterator[LabelledRow]]:
        """The rows of `path` (closed, and the progress bar with them, when the block ends)."""
        stream = read_labelled(
            path, format=fmt, text_columns=texts, label_column=label, header=with_header
        )
        bar = tqdm(
            stream,
            desc=desc,
            unit=" rows",
            unit_scale=True,
            disable=not progress,
            file=sys.stderr,
            mininterval=0.5,
        )
        with contextlib.closing(stream), bar:
            yield iter(bar)

    created = missing_ancestors(out.parent)
    with removed_on_failure(created), atomic_directory(out) as tmp:
        if names is None:
            say(f"reading the labels of {train}")
            with rows(inputs["train"], "labels") as stream:
                names = _labels_from_data(stream, inputs["train"], label)
            if len(names) < 2:
                raise DataError(
                    f"{train}: every row has the label {names[0]!r}; a classifier needs at "
                    "least 2 classes (is the label column right?)"
                )
        lookup = LabelIndex(names, one_based=classes is not None)
        spool_dir = tmp / _SPOOL
        spool_dir.mkdir()
        split_names = ["train", "valid", *(["test"] if test is not None or carve_test else [])]
        spools = {name: _Spool(spool_dir, name, len(names)) for name in split_names}
        fold_split = {}
        if carve_valid:
            fold_split[valid_fold] = "valid"
        if carve_test:
            assert test_fold is not None
            fold_split[test_fold] = "test"
        with contextlib.ExitStack() as stack:
            for spool in spools.values():
                spool.open()
                stack.callback(spool.close)
            say(f"reading {train}")
            assign = FoldAssigner(folds, seed) if fold_split else None
            n_rows = 0
            with rows(inputs["train"], "train") as stream:
                for row in stream:
                    k = lookup(inputs["train"], row)
                    name = "train" if assign is None else fold_split.get(assign(k), "train")
                    spools[name].add(row.text, k)
                    n_rows += 1
            if n_rows == 0:
                raise DataError(f"{train}: the training set is empty (no rows)")
            for name in ("valid", "test"):
                if name in inputs:
                    say(f"reading {inputs[name]}")
                    with rows(inputs[name], name) as stream:
                        for row in stream:
                            spools[name].add(row.text, lookup(inputs[name], row))
        _check_not_empty(spools, inputs, fold_split, n_rows, folds)

        if tokenizer is not None:
            tok = SubwordTokenizer.from_file(tokenizer)
            say(f"using tokenizer {tokenizer} ({tok.vocab_size} tokens)")
        else:
            assert vocab_size is not None
            say(f"training a BPE tokenizer of {vocab_size} tokens on the training texts")
            tok = SubwordTokenizer.train([spools["train"].texts], vocab_size, min_frequency)
        tok.save(tmp / TOKENIZER)
        dtype = token_dtype(tok.vocab_size)

        train_sha = file_sha256(inputs["train"])
        split_info: dict[str, Any] = {}
        for name, spool in spools.items():
            info = _binarize(
                spool,
                names,
                tok,
                tmp,
                dtype,
                max_len=max_len,
                chunk_size=chunk_size,
                progress=progress,
            )
            if name in inputs:
                source = {"path": str(inputs[name]), "sha256": file_sha256(inputs[name])}
            else:
                taken = [f for f, n in fold_split.items() if n == name]
                source = {"path": str(inputs["train"]), "sha256": train_sha, "folds": taken}
            if name == "train" and fold_split:
                source["folds"] = [f for f in range(folds) if f not in fold_split]
            info["inputs"] = {"rows": source}
            split_info[name] = info
            counts = ", ".join(f"{n} {c}" for n, c in info["per_class"].items())
            say(f"{name}: {info['pairs']} texts ({counts}); {info['truncated']} truncated")
        shutil.rmtree(spool_dir)

        fold_record = None
        if fold_split:
            fold_record = {
                "k": folds,
                "valid_fold": valid_fold if carve_valid else None,
                "test_fold": test_fold if carve_test else None,
                "seed": seed,
            }
        manifest = {
            "format_version": FORMAT_VERSION,
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "tokenizer": tokenizer_record(tok, tokenizer, min_frequency),
            "truncation": {"max_len": max_len},
            "classes": None
            if classes is None
            else {"path": str(classes), "sha256": file_sha256(Path(classes))},
            "splits": split_info,
            "task": classification_task(
                names,
                format=fmt,
                text_columns=texts,
                label_column=label,
                header=with_header,
                folds=fold_record,
            ),
        }
        write_json(tmp / MANIFEST, manifest)
    say(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return manifest


def classification_task(
    labels: Sequence[str],
    *,
    format: str,
    text_columns: Sequence[Column],
    label_column: Column,
    header: bool | None,
    folds: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest's (and so every model directory's) record of a classification task."""
    return {
        "name": TASK_NAME,
        "labels": list(labels),
        "input": {
            "format": format,
            "text_columns": list(text_columns),
            "label_column": label_column,
            "header": header,
        },
        "folds": folds,
    }


def _check_options(
    texts: list[Column],
    label: Column,
    *,
    vocab_size: int | None,
    tokenizer: str | Path | None,
    test: str | Path | None,
    folds: int,
    valid_fold: int | None,
    test_fold: int | None,
    seed: int,
    min_frequency: int,
    max_len: int,
    chunk_size: int,
) -> None:
    problems = []
    if not texts:
        problems.append("give at least one text column (--text-columns)")
    if label in texts:
        problems.append(f"column {label!r} cannot be both the label and a text column")
    if (vocab_size is None) == (tokenizer is None):
        problems.append(
            "give either --vocab-size N to train a tokenizer or --tokenizer FILE, not "
            + ("both" if tokenizer is not None else "neither")
        )
    if vocab_size is not None and vocab_size < MIN_VOCAB_SIZE:
        problems.append(f"--vocab-size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    if test is not None and test_fold is not None:
        problems.append("give a --test file or a --test-fold, not both")
    carved = [(flag, f) for flag, f in (("--valid-fold", valid_fold), ("--test-fold", test_fold))]
    carved = [(flag, f) for flag, f in carved if f is not None]
    if carved:
        if folds < 2:
            problems.append(f"--folds must be at least 2 to carve a fold out, got {folds}")
        for flag, f in carved:
            if not 0 <= f < max(folds, 1):
                problems.append(f"{flag} must be in 0..{folds - 1} (--folds {folds}), got {f}")
        if len(carved) == 2 and valid_fold == test_fold:
            problems.append(f"--valid-fold and --test-fold must differ (both are {valid_fold})")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            problems.append(f"--seed must be a non-negative integer, got {seed!r}")
    if max_len < 1:
        problems.append(f"--max-len must be at least 1, got {max_len}")
    if min_frequency < 1:
        problems.append(f"--min-frequency must be at least 1, got {min_frequency}")
    if chunk_size < 1:
        problems.append(f"--chunk-size must be at least 1, got {chunk_size}")
    if problems:
        raise DataError("; ".join(problems))


def _labels_from_data(rows: Iterable[LabelledRow], path: Path, label: Column) -> list[str]:
    """The sorted distinct labels of a file; at most MAX_LABELS of them (memory stays bounded)."""
    seen: set[str] = set()
    n = 0
    for row in rows:
        n += 1
        if row.label not in seen:
            if len(seen) == MAX_LABELS:
                raise DataError(
                    f"{path}:{row.line}: more than {MAX_LABELS:,} distinct labels in column "
                    f"{label!r}; is it the label column?"
                )
            seen.add(row.label)
    if n == 0:
        raise DataError(f"{path}: the training set is empty (no rows)")
    return sort_labels(seen)


def _check_not_empty(
    spools: dict[str, _Spool],
    inputs: dict[str, Path],
    fold_split: dict[int, str],
    n_rows: int,
    folds: int,
) -> None:
    for name, spool in spools.items():
        if spool.rows:
            continue
        if name in inputs and name != "train":
            raise DataError(f"{inputs[name]}: the {name} set is empty (no rows)")
        if name == "train":
            raise DataError(
                f"{inputs['train']}: no training rows are left after carving out "
                f"{len(fold_split)} of {folds} folds ({n_rows} rows in all); use more --folds"
            )
        fold = next(f for f, n in fold_split.items() if n == name)
        raise DataError(
            f"{inputs['train']}: the {name} split (fold {fold} of {folds}) got no rows "
            f"({n_rows} rows in all); use fewer --folds"
        )


def _binarize(
    spool: _Spool,
    names: list[str],
    tok: SubwordTokenizer,
    out_dir: Path,
    dtype: np.dtype,
    *,
    max_len: int,
    chunk_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Encode one spooled split chunk by chunk into its .bin/.idx files; its manifest entry."""
    name = spool.name
    is_train = name == "train"
    truncated = 0
    rows = spool.read()
    with contextlib.ExitStack() as stack:
        (src, tgt), text_files, bar = open_split_writers(
            stack, out_dir, name, dtype, is_train, spool.rows, f"encoding {name}", " rows", progress
        )
        while chunk := list(itertools.islice(rows, chunk_size)):
            ids = tok.encode_batch([text for text, _ in chunk])
            truncated += sum(len(x) > max_len for x in ids)
            src.write([x[:max_len] for x in ids])
            tgt.write([[k] for _, k in chunk])
            if text_files:
                text_files[0].write("".join(text + "\n" for text, _ in chunk))
                text_files[1].write("".join(names[k] + "\n" for _, k in chunk))
            bar.update(len(chunk))
    return {
        "pairs": spool.rows,
        "per_class": dict(zip(names, spool.per_class)),
        "tokens": {"src": src.offset, "tgt": tgt.offset},
        "lengths": {"src": src.lengths.stats(), "tgt": tgt.lengths.stats()},
        "truncated": truncated,
        "text": None if is_train else {side: f"{name}.{side}.txt" for side in ("src", "tgt")},
    }
