"""`transformer prepare --trees`: a treebank as parallel text, for parsing as translation.

    transformer prepare --trees --train gum/train.trees.gz --valid gum/dev.trees.gz \\
        --test gum/test.trees.gz --test gum/test2.trees.gz --vocab-size 2000 --out work/gum

Each file holds one bracketed tree per line (plain or .gz). Every tree becomes a pair: source =
its sentence (the words, plain text, separated by spaces), target = its linearisation
(`transformer.data.trees.linearise`). The pairs then go through `transformer prepare` unchanged
(tokenizer, binarization, the training filter), so a parser is trained, averaged, decoded and
served like any translation model. Split names are "train", "valid" and each test file's name
without `.gz` and `.trees` / `.txt` / `.ptb` (`test.trees.gz` -> "test").

The manifest records the task (`"task": {"name": "parsing", ...}`: the linearisation options and
the paper's parsing decoding, beam 21, alpha 0.3, input + 300), which training copies into every
model directory; the gold trees of the validation and test splits are kept as `NAME.trees.txt`
for bracket F1 (`transformer evaluate`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformer.data.errors import DataError
from transformer.data.prepare import prepare
from transformer.data.textfiles import file_sha256
from transformer.data.trees import (
    PARSING_DECODING,
    PARSING_TASK,
    linearise,
    read_trees,
    sentence,
)

SOURCE, TARGET = "words", "tree"  # the "languages" of the pairs
_SUFFIXES = (".gz", ".trees", ".txt", ".ptb", ".mrg")


def parsing_task(*, words: bool = True, function_tags: bool = False) -> dict[str, Any]:
    """The manifest's (and model directory's) record of a parsing task."""
    return {
        "name": PARSING_TASK,
        "words": words,
        "function_tags": function_tags,
        "decoding": dict(PARSING_DECODING),
    }


def split_name(path: Path | str) -> str:
    """The split a test treebank file becomes: its file name without the known suffixes."""
    name = Path(path).name
    while True:
        stem = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), None)
        if not stem:
            return name
        name = stem


def prepare_treebank(
    *,
    train: str | Path,
    valid: str | Path,
    out: str | Path,
    tests: Sequence[str | Path] = (),
    words: bool = True,
    function_tags: bool = False,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Build a parsing data directory from treebank files; returns its manifest.

    `options` are those of `transformer.data.prepare.prepare` (vocab_size, max_len, ...). A tree
    that cannot be read raises DataError naming the file and line, and nothing is written.
    """
    say = log or (lambda _msg: None)
    named = [("train", Path(train)), ("valid", Path(valid))]
    named += [(split_name(t), Path(t)) for t in tests]
    seen: dict[str, Path] = {}
    for name, path in named:
        if name in seen:
            raise DataError(
                f"--test {path}: its split name '{name}' is already used by {seen[name]}; "
                "rename the file so that each split has its own name"
            )
        seen[name] = path
    with tempfile.TemporaryDirectory(prefix="transformer-treebank-") as tmp:
        for name, path in named:
            say(f"linearising {path} ({name})")
            _write_pairs(path, Path(tmp) / name, words, function_tags)
        inputs = {
            name: {"trees": {"path": str(path), "sha256": file_sha256(path)}}
            for name, path in named
        }
        return prepare(
            src_lang=SOURCE,
            tgt_lang=TARGET,
            train=Path(tmp) / "train",
            valid=Path(tmp) / "valid",
            tests=[Path(tmp) / name for name, _ in named[2:]],
            out=out,
            task=parsing_task(words=words, function_tags=function_tags),
            copies={f"{name}.trees.txt": path for name, path in named[1:]},
            inputs=inputs,
            log=log,
            **options,
        )


def _write_pairs(path: Path, prefix: Path, words: bool, function_tags: bool) -> None:
    """Write PREFIX.words (sentences) and PREFIX.tree (linearised trees) from a treebank file."""
    with (
        open(f"{prefix}.{SOURCE}", "w", encoding="utf-8", newline="\n") as src,
        open(f"{prefix}.{TARGET}", "w", encoding="utf-8", newline="\n") as tgt,
    ):
        for tree in read_trees(path):
            src.write(sentence(tree) + "\n")
            tgt.write(linearise(tree, words=words, function_tags=function_tags) + "\n")
