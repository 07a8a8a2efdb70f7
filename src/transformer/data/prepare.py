"""`transformer prepare`: check parallel text, train a joint BPE tokenizer, binarize every split.

    transformer prepare --src de --tgt en --train data/multi30k/train --valid data/multi30k/val \\
        --test data/multi30k/test_2016_flickr --vocab-size 8000 --out runs/multi30k-data

Each PREFIX names `PREFIX.SRC` / `PREFIX.TGT` (or the same with `.gz`). Splits are called
"train", "valid" and, for each `--test`, the base name of its prefix. The output directory is
described in `transformer.data.dataset`.

Guarantees:

- inputs are checked before any work (equal line counts, strict UTF-8, LF or CRLF) and every
  problem names the file and, where there is one, the line;
- nothing half-written is ever left: the directory is built in a temporary directory beside
  `--out` and renamed into place at the end, or removed on any error or interrupt;
- memory does not grow with the corpus: text is read, encoded (in parallel, by the fast batch
  encoder) and appended to the output in chunks, and length statistics are kept as histograms;
- only the training split is filtered (empty side, longer than `--max-len` subwords, length ratio
  above `--max-ratio`), each removal counted under its first reason; validation and test sets are
  kept whole, so that scores are comparable with published ones. Sentences are stripped of
  surrounding whitespace before encoding; the raw text of validation and test sets is copied
  unchanged (`NAME.src.txt`, `NAME.tgt.txt`) to serve as BLEU references.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from transformer.data.dataset import FORMAT_VERSION, MANIFEST, TOKENIZER, SideWriter, token_dtype
from transformer.data.errors import DataError
from transformer.data.textfiles import (
    count_lines,
    file_sha256,
    read_lines,
    resolve_prefix,
)
from transformer.data.tokenizer import MIN_VOCAB_SIZE, SubwordTokenizer
from transformer.io import atomic_directory

FILTER_REASONS = ("empty", "too_long", "ratio")
MAX_LEN = 256  # the default --max-len of translation (and --trees)


@dataclass(frozen=True)
class SplitInput:
    """One split to binarize: its name, its two files and their (checked) line count."""

    name: str
    src: Path
    tgt: Path
    lines: int


def prepare(
    *,
    src_lang: str,
    tgt_lang: str,
    train: str | Path,
    valid: str | Path,
    out: str | Path,
    tests: Sequence[str | Path] = (),
    vocab_size: int | None = None,
    tokenizer: str | Path | None = None,
    max_len: int = MAX_LEN,
    max_ratio: float = 3.0,
    min_frequency: int = 2,
    force: bool = False,
    chunk_size: int = 10_000,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    task: Mapping[str, Any] | None = None,
    copies: Mapping[str, Path] | None = None,
    inputs: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build the data directory `out` from parallel text; returns its manifest.

    Trains a joint BPE tokenizer of `vocab_size` tokens on the training split (both languages),
    or uses the existing `tokenizer` file. `max_ratio=math.inf` disables the ratio filter.
    Raises DataError, leaving nothing behind, on any problem with the inputs or `out`.

    For tasks whose data was turned into parallel text first (`transformer.data.treebank`):
    `task` is recorded in the manifest (and from there in every model trained on it), `copies`
    maps file names of the directory to files copied into it as plain text (e.g. gold trees),
    and `inputs` replaces the recorded input files of the named splits by the original ones.
    """
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    _check_options(
        src_lang, tgt_lang, vocab_size, tokenizer, max_len, max_ratio, min_frequency, chunk_size
    )
    out = Path(os.path.abspath(out))  # normalises "." and "..": the temp dir goes beside it
    check_out(out, force)
    splits = _resolve_splits(src_lang, tgt_lang, train, valid, tests)
    say(f"checking {2 * len(splits)} input files")
    checked = [_check_split(s) for s in splits]
    if checked[0].lines == 0:
        raise DataError(f"{checked[0].src}: the training set is empty")

    created = missing_ancestors(out.parent)
    with removed_on_failure(created), atomic_directory(out) as tmp:
        if tokenizer is not None:
            tok = SubwordTokenizer.from_file(tokenizer)
            if vocab_size is not None and vocab_size != tok.vocab_size:
                raise DataError(
                    f"{tokenizer}: has {tok.vocab_size} tokens but --vocab-size is {vocab_size}; "
                    "drop --vocab-size to use the tokenizer as it is"
                )
            say(f"using tokenizer {tokenizer} ({tok.vocab_size} tokens)")
        else:
            assert vocab_size is not None
            say(f"training a joint BPE tokenizer of {vocab_size} tokens")
            tok = SubwordTokenizer.train(
                [checked[0].src, checked[0].tgt], vocab_size, min_frequency
            )
        tok.save(tmp / TOKENIZER)
        dtype = token_dtype(tok.vocab_size)

        split_info: dict[str, Any] = {}
        for s in checked:
            split_info[s.name] = _binarize(
                s,
                tok,
                tmp,
                dtype,
                is_train=s.name == "train",
                max_len=max_len,
                max_ratio=max_ratio,
                chunk_size=chunk_size,
                progress=progress,
            )
            info = split_info[s.name]
            dropped = ", ".join(f"{r} {n}" for r, n in info["filtered"].items())
            say(
                f"{s.name}: {info['pairs']} pairs of {s.lines} lines"
                + (f" (filtered: {dropped})" if s.name == "train" else "")
            )
        if split_info["train"]["pairs"] == 0:
            raise DataError(
                f"{checked[0].src}: every training pair was filtered out "
                f"({split_info['train']['filtered']}); check --max-len and --max-ratio"
            )
        manifest = {
            "format_version": FORMAT_VERSION,
            "src_lang": src_lang,
            "tgt_lang": tgt_lang,
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "tokenizer": tokenizer_record(tok, tokenizer, min_frequency),
            "filter": {
                "splits": ["train"],
                "max_len": max_len,
                "max_ratio": None if math.isinf(max_ratio) else max_ratio,
            },
            "splits": split_info,
        }
        for name, original in (inputs or {}).items():
            split_info[name]["inputs"] = dict(original)
        for name, path in (copies or {}).items():
            _copy_text(path, tmp / name)
        if task is not None:
            manifest["task"] = dict(task)
        write_json(tmp / MANIFEST, manifest)
    say(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return manifest


# ---------------------------------------------------------------------------------- checking


def _check_options(
    src_lang: str,
    tgt_lang: str,
    vocab_size: int | None,
    tokenizer: str | Path | None,
    max_len: int,
    max_ratio: float,
    min_frequency: int,
    chunk_size: int,
) -> None:
    problems = []
    for flag, lang in (("--src", src_lang), ("--tgt", tgt_lang)):
        if not lang or "/" in lang or lang.startswith("."):
            problems.append(f"{flag}: expected a language code such as 'de', got {lang!r}")
    if src_lang == tgt_lang:
        problems.append(f"--src and --tgt must differ (both are {src_lang!r})")
    if vocab_size is None and tokenizer is None:
        problems.append("give --vocab-size N to train a tokenizer, or --tokenizer FILE")
    if vocab_size is not None and vocab_size < MIN_VOCAB_SIZE:
        problems.append(f"--vocab-size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    if max_len < 1:
        problems.append(f"--max-len must be at least 1, got {max_len}")
    if not max_ratio >= 1.0:  # also catches NaN
        problems.append(f"--max-ratio must be at least 1 (inf disables it), got {max_ratio}")
    if min_frequency < 1:
        problems.append(f"--min-frequency must be at least 1, got {min_frequency}")
    if chunk_size < 1:
        problems.append(f"--chunk-size must be at least 1, got {chunk_size}")
    if problems:
        raise DataError("; ".join(problems))


def check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite anything but an empty directory or, with force, a data directory."""
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a directory; choose another path")
    if not any(out.iterdir()):
        return
    if not force:
        raise DataError(f"--out {out}: exists and is not empty; add --force to replace it")
    if not (out / MANIFEST).is_file():
        raise DataError(
            f"--out {out}: is not empty and holds no {MANIFEST}, so it does not look like a data "
            "directory written by `transformer prepare`; --force only replaces those. "
            "Choose another --out, or empty it yourself"
        )


def _resolve_splits(
    src_lang: str,
    tgt_lang: str,
    train: str | Path,
    valid: str | Path,
    tests: Sequence[str | Path],
) -> list[SplitInput]:
    named = [("train", train), ("valid", valid)]
    for prefix in tests:
        name = Path(prefix).name
        if not name or name.startswith("."):
            raise DataError(f"--test {prefix}: cannot name a split after this prefix")
        clash = [p for n, p in named if n == name]
        if clash:
            raise DataError(
                f"--test {prefix}: its split name '{name}' is already used by {clash[0]}; "
                "rename the files so that each test set has its own base name"
            )
        named.append((name, prefix))
    return [
        SplitInput(name, resolve_prefix(p, src_lang), resolve_prefix(p, tgt_lang), -1)
        for name, p in named
    ]


def _check_split(split: SplitInput) -> SplitInput:
    """Count lines (validating UTF-8 on the way); the two sides must have as many."""
    n_src, n_tgt = count_lines(split.src), count_lines(split.tgt)
    if n_src != n_tgt:
        raise DataError(
            f"{split.name}: {split.src} has {n_src} lines but {split.tgt} has {n_tgt}; "
            "line i of one must be the translation of line i of the other"
        )
    return SplitInput(split.name, split.src, split.tgt, n_src)


def missing_ancestors(path: Path) -> list[Path]:
    """Directories from `path` upwards that do not exist yet, deepest first."""
    missing = []
    path = path.absolute()
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


@contextlib.contextmanager
def removed_on_failure(created: list[Path]) -> Iterator[None]:
    """Remove the directories `created` for the output (innermost first) if the block fails."""
    try:
        yield
    except BaseException:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        raise


# ---------------------------------------------------------------------------------- encoding


def _binarize(
    split: SplitInput,
    tok: SubwordTokenizer,
    out_dir: Path,
    dtype: np.dtype,
    *,
    is_train: bool,
    max_len: int,
    max_ratio: float,
    chunk_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Encode one split chunk by chunk into its .bin/.idx files; returns its manifest entry."""
    filtered = dict.fromkeys(FILTER_REASONS, 0)
    kept = 0
    pairs = zip(read_lines(split.src), read_lines(split.tgt))
    with contextlib.ExitStack() as stack:
        writers, texts, bar = open_split_writers(
            stack, out_dir, split.name, dtype, is_train, split.lines, split.name, " lines", progress
        )
        while chunk := list(itertools.islice(pairs, chunk_size)):
            src_lines = [s for s, _ in chunk]
            tgt_lines = [t for _, t in chunk]
            for f, lines in zip(texts, (src_lines, tgt_lines)):
                f.write("".join(line + "\n" for line in lines))
            src_ids = tok.encode_batch([s.strip() for s in src_lines])
            tgt_ids = tok.encode_batch([t.strip() for t in tgt_lines])
            if is_train:
                keep = []
                for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
                    reason = _filter_reason(len(s), len(t), max_len, max_ratio)
                    if reason is None:
                        keep.append(i)
                    else:
                        filtered[reason] += 1
                src_ids = [src_ids[i] for i in keep]
                tgt_ids = [tgt_ids[i] for i in keep]
            writers[0].write(src_ids)
            writers[1].write(tgt_ids)
            kept += len(src_ids)
            bar.update(len(chunk))
    return {
        "pairs": kept,
        "input_lines": split.lines,
        "filtered": filtered if is_train else dict.fromkeys(FILTER_REASONS, 0),
        "inputs": {
            "src": {"path": str(split.src), "sha256": file_sha256(split.src)},
            "tgt": {"path": str(split.tgt), "sha256": file_sha256(split.tgt)},
        },
        "tokens": {"src": writers[0].offset, "tgt": writers[1].offset},
        "lengths": {"src": writers[0].lengths.stats(), "tgt": writers[1].lengths.stats()},
        "text": None if is_train else {side: f"{split.name}.{side}.txt" for side in ("src", "tgt")},
    }


def open_split_writers(
    stack: contextlib.ExitStack,
    out_dir: Path,
    name: str,
    dtype: np.dtype,
    is_train: bool,
    total: int,
    desc: str,
    unit: str,
    progress: bool,
) -> tuple[list[SideWriter], list[TextIO], tqdm]:
    """What writing split `name` needs, closed with `stack`: the token writers of both sides,
    the raw text files of both sides (none for train: evaluation reads the raw text of the other
    splits only), and a progress bar of `total` `unit`s."""
    writers = [
        stack.enter_context(SideWriter(out_dir, name, side, dtype)) for side in ("src", "tgt")
    ]
    texts: list[TextIO] = []
    if not is_train:
        texts = [
            stack.enter_context(
                open(out_dir / f"{name}.{side}.txt", "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            )
            for side in ("src", "tgt")
        ]
    bar = stack.enter_context(
        tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=True,
            disable=not progress,
            file=sys.stderr,
            mininterval=0.5,
        )
    )
    return writers, texts, bar


def _filter_reason(n_src: int, n_tgt: int, max_len: int, max_ratio: float) -> str | None:
    """Why a training pair is dropped (the first reason that applies), or None to keep it."""
    if n_src == 0 or n_tgt == 0:
        return "empty"
    if n_src > max_len or n_tgt > max_len:
        return "too_long"
    if max(n_src, n_tgt) > max_ratio * min(n_src, n_tgt):
        return "ratio"
    return None


# ---------------------------------------------------------------------------------- finishing


def _copy_text(source: Path, target: Path) -> None:
    """Copy a text file (plain or .gz, checked as UTF-8) as plain text with LF line ends."""
    with open(target, "w", encoding="utf-8", newline="\n") as f:
        for line in read_lines(source):
            f.write(line + "\n")


def tokenizer_record(
    tok: SubwordTokenizer, tokenizer: Path | None, min_frequency: int
) -> dict[str, Any]:
    """The manifest's "tokenizer" entry: the file, its digest, and whether it was learned here (with
    which minimum frequency) or read from `tokenizer`."""
    return {
        "file": TOKENIZER,
        "sha256": tok.sha256,
        "trained": tokenizer is None,
        "from_file": None if tokenizer is None else str(tokenizer),
        "min_frequency": min_frequency if tokenizer is None else None,
    }


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented UTF-8 JSON (a manifest; the directory is made atomic around it)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ---------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `transformer prepare`."""
    from transformer.data import classification as cls  # imports this module: not at the top

    add = parser.add_argument
    add("--src", metavar="LANG", help="source language code, e.g. de (not with --trees)")
    add("--tgt", metavar="LANG", help="target language code, e.g. en (not with --trees)")
    add(
        "--train",
        required=True,
        metavar="PREFIX",
        help="reads PREFIX.SRC and PREFIX.TGT (.gz ok); with --trees, a treebank file; with "
        "--classify, a file of labelled texts",
    )
    add(
        "--valid",
        metavar="PREFIX",
        help="validation set, never filtered (required, but for --classify, which carves one "
        "out of --train if it is not given)",
    )
    add(
        "--test",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a test set (repeatable; once with --classify), never filtered; its split is named "
        'after PREFIX\'s base name ("test" with --classify)',
    )
    add("--out", required=True, metavar="DIR", help="the data directory to write")
    add("--vocab-size", type=int, metavar="N", help="train a joint BPE tokenizer of N tokens")
    add("--tokenizer", metavar="FILE", help="use this tokenizer.json instead of training one")
    add(
        "--min-frequency",
        type=int,
        default=2,
        metavar="N",
        help="BPE merges need at least N occurrences (default: %(default)s)",
    )
    add(
        "--max-len",
        type=int,
        default=None,
        metavar="N",
        help=f"drop training pairs with a side longer than N subwords (default: {MAX_LEN}); with "
        f"--classify, truncate every text to N subwords instead (default: {cls.DEFAULT_MAX_LEN})",
    )
    add(
        "--max-ratio",
        type=float,
        default=None,
        metavar="R",
        help="drop training pairs whose longer side has more than R times the subwords of the "
        "shorter; inf keeps all (default: 3, and inf with --trees)",
    )
    add(
        "--chunk-size",
        type=int,
        default=10_000,
        metavar="N",
        help="lines read and encoded at once; bounds memory (default: %(default)s)",
    )
    add("--force", action="store_true", help="replace an existing data directory")
    add("--quiet", action="store_true", help="no progress bars and no summary")
    g = parser.add_argument_group(
        "parsing (see transformer.data.treebank)",
        "With --trees, --train, --valid and --test name treebank files (one bracketed tree per "
        "line, plain or .gz) and each tree becomes a pair: its sentence and its linearisation.",
    )
    g.add_argument("--trees", action="store_true", help="the inputs are treebanks")
    g.add_argument(
        "--placeholders",
        action="store_true",
        help="replace the words of the linearised trees by XX, as Vinyals et al. (default: keep "
        "the words, which small models learn much faster)",
    )
    g.add_argument(
        "--function-tags",
        action="store_true",
        help="keep function tags such as NP-SBJ (default: stripped, as for EVALB)",
    )
    c = parser.add_argument_group(
        "classification (see transformer.data.classification)",
        "With --classify, --train (and --valid, --test if given) are CSV, TSV or JSONL files (.gz "
        "ok) of labelled texts; the validation (and test) split is otherwise a fold carved out "
        "of --train, stratified by class.",
    )
    c.add_argument("--classify", action="store_true", help="the inputs are labelled texts")
    c.add_argument(
        "--text-columns",
        metavar="COLS",
        help="the text column(s): comma-separated names or 0-based numbers, joined with a space",
    )
    c.add_argument("--label-column", metavar="COL", help="the label column: a name or a number")
    c.add_argument(
        "--format",
        choices=("csv", "tsv", "jsonl"),
        help="the input format (default: from the file name: .csv, .tsv, .jsonl, also .gz)",
    )
    c.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether CSV / TSV files start with a header row (default: yes iff a column is "
        "given by name)",
    )
    c.add_argument(
        "--classes",
        metavar="FILE",
        help="class names, one per line; a label is a name or a 1-based line number (default: "
        "the distinct labels of --train, sorted)",
    )
    c.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help=f"folds of --train to carve splits from (default: {cls.DEFAULT_FOLDS})",
    )
    c.add_argument(
        "--valid-fold",
        type=int,
        metavar="I",
        help=f"the fold that is --valid (default: {cls.DEFAULT_VALID_FOLD})",
    )
    c.add_argument(
        "--test-fold", type=int, metavar="I", help="a fold that is the test split (default: none)"
    )
    c.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help=f"the seed of the fold assignment (default: {cls.DEFAULT_SEED})",
    )


def run(args: argparse.Namespace) -> int:
    """Run `transformer prepare`; bad input prints `error: ...` and returns 2."""
    log = None if args.quiet else print
    common = {
        "train": args.train,
        "out": args.out,
        "vocab_size": args.vocab_size,
        "tokenizer": args.tokenizer,
        "min_frequency": args.min_frequency,
        "force": args.force,
        "chunk_size": args.chunk_size,
        "progress": not args.quiet,
        "log": log,
    }
    try:
        if args.classify:
            _run_classify(args, common)
            return 0
        classify_only = [
            flag for flag, value in _CLASSIFY_FLAGS.items() if getattr(args, value) is not None
        ]
        if classify_only:
            raise DataError(f"{', '.join(classify_only)}: only with --classify")
        if args.valid is None:
            raise DataError(
                "--valid PREFIX is required (only --classify carves a validation set out of "
                "--train)"
            )
        common.update(
            valid=args.valid,
            tests=args.test,
            max_len=MAX_LEN if args.max_len is None else args.max_len,
        )
        if args.trees:
            from transformer.data.treebank import prepare_treebank

            if args.src or args.tgt:
                raise DataError(
                    "--src and --tgt are not used with --trees (the pairs are sentence -> tree)"
                )
            prepare_treebank(
                words=not args.placeholders,
                function_tags=args.function_tags,
                max_ratio=math.inf if args.max_ratio is None else args.max_ratio,
                **common,
            )
        else:
            if args.placeholders or args.function_tags:
                raise DataError("--placeholders and --function-tags need --trees")
            if not (args.src and args.tgt):
                raise DataError("give --src LANG and --tgt LANG (or --trees for a treebank)")
            prepare(
                src_lang=args.src,
                tgt_lang=args.tgt,
                max_ratio=3.0 if args.max_ratio is None else args.max_ratio,
                **common,
            )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# flag -> attribute of the options that only --classify takes
_CLASSIFY_FLAGS = {
    "--text-columns": "text_columns",
    "--label-column": "label_column",
    "--format": "format",
    "--header/--no-header": "header",
    "--classes": "classes",
    "--folds": "folds",
    "--valid-fold": "valid_fold",
    "--test-fold": "test_fold",
    "--seed": "seed",
}


def _run_classify(args: argparse.Namespace, common: dict[str, Any]) -> None:
    """`transformer prepare --classify`: check the flags, then `prepare_classification`."""
    from transformer.data import classification as cls

    translation_only = [
        flag
        for flag, given in (
            ("--src", args.src),
            ("--tgt", args.tgt),
            ("--trees", args.trees),
            ("--placeholders", args.placeholders),
            ("--function-tags", args.function_tags),
            ("--max-ratio", args.max_ratio is not None),
        )
        if given
    ]
    if translation_only:
        raise DataError(f"{', '.join(translation_only)}: not used with --classify")
    if not (args.text_columns and args.label_column):
        raise DataError("--classify needs --text-columns COLS and --label-column COL")
    if len(args.test) > 1:
        raise DataError('--test may be given once with --classify (its split is named "test")')
    if args.valid is not None and args.valid_fold is not None:
        raise DataError("give --valid FILE or --valid-fold I, not both")
    cls.prepare_classification(
        valid=args.valid,
        test=args.test[0] if args.test else None,
        text_columns=cls.parse_columns(args.text_columns),
        label_column=cls.column(args.label_column),
        format=args.format,
        header=args.header,
        classes=args.classes,
        folds=cls.DEFAULT_FOLDS if args.folds is None else args.folds,
        valid_fold=cls.DEFAULT_VALID_FOLD if args.valid_fold is None else args.valid_fold,
        test_fold=args.test_fold,
        seed=cls.DEFAULT_SEED if args.seed is None else args.seed,
        max_len=cls.DEFAULT_MAX_LEN if args.max_len is None else args.max_len,
        **common,
    )
