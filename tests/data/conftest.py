"""Fixtures for the data tests: small slices of the shipped Multi30k, a tiny tokenizer, a
prepared data directory. Built once per session so that the tests stay fast."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from transformer.data import SubwordTokenizer, prepare

MULTI30K = Path(__file__).resolve().parents[2] / "data" / "multi30k"
VOCAB = 500


def read_gz(path: Path, n: int | None = None) -> list[str]:
    """The first `n` lines (all if None) of a shipped .gz file, without line endings."""
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines if n is None else lines[:n]


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    """Write `lines` as UTF-8 text with the given line ending (gzip if the name ends in .gz)."""
    data = "".join(line + newline for line in lines).encode("utf-8")
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Plain-text slices: train (400 pairs), val (60), test (50), as prefixes in one directory."""
    d = tmp_path_factory.mktemp("corpus")
    sizes = {"train": 400, "val": 60, "test_2016_flickr": 50}
    for name, n in sizes.items():
        for lang in ("de", "en"):
            write_lines(d / f"{name}.{lang}", read_gz(MULTI30K / f"{name}.{lang}.gz", n))
    return {"train": d / "train", "valid": d / "val", "test": d / "test_2016_flickr"}


@pytest.fixture(scope="session")
def tokenizer(corpus: dict[str, Path]) -> SubwordTokenizer:
    """A 500-token joint BPE tokenizer trained on the training slice."""
    train = corpus["train"]
    return SubwordTokenizer.train([Path(f"{train}.de"), Path(f"{train}.en")], VOCAB)


@pytest.fixture(scope="session")
def data_dir(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory prepared from the slices (chunks of 64 lines, to exercise chunking)."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(
        src_lang="de",
        tgt_lang="en",
        train=corpus["train"],
        valid=corpus["valid"],
        tests=[corpus["test"]],
        out=out,
        vocab_size=VOCAB,
        chunk_size=64,
    )
    return out
