"""`transformer study lengths`: the joined test inputs hold every sentence once and keep references
in order; the training subset keeps exactly the short sources; the study writes every output and
resumes."""

from __future__ import annotations

import argparse
import csv
import json
import typing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import micro_config, write_config
from transformer.config import Positional
from transformer.data.dataset import load_split, load_tokenizer, read_manifest
from transformer.data.errors import DataError
from transformer.data.subset import source_length_subset
from transformer.study.lengths import (
    ALL_SINGLE,
    add_arguments,
    bin_index,
    join_consecutive,
    limit_position,
    make_bins,
    parse_sizes,
    positional_options,
    run,
)


def main(argv: list[str]) -> int:
    """`transformer study lengths ARGV` (the module as `transformer.study.cli` calls it)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))


def test_joining_keeps_every_sentence_once_alone_and_references_in_order():
    n = 11
    sources = [f" quelle {i} " for i in range(n)]  # surrounding spaces are stripped
    references = [f"ref {i}" for i in range(n)]
    inputs = join_consecutive(sources, references, [2, 3])
    singles = [x for x in inputs if len(x.lines) == 1]
    assert [x.lines for x in singles] == [(i,) for i in range(n)]  # each once, in order
    assert [x.source for x in singles] == [f"quelle {i}" for i in range(n)]
    for k in (2, 3):
        groups = [x for x in inputs if len(x.lines) == k]
        assert len(groups) == n // k  # the shorter last group is left out
        covered = Counter(i for x in groups for i in x.lines)
        assert set(covered.values()) == {1} and len(covered) == (n // k) * k
        for x in groups:
            assert list(x.lines) == list(range(x.lines[0], x.lines[0] + k))  # consecutive
            assert x.source == " ".join(f"quelle {i}" for i in x.lines)
            assert x.reference == " ".join(f"ref {i}" for i in x.lines)  # same order
    assert len(inputs) == n + n // 2 + n // 3
    with pytest.raises(ValueError, match="must pair up"):
        join_consecutive(sources, references[:-1], [2])
    with pytest.raises(ValueError, match="--join"):
        join_consecutive(sources, references, [1])


def test_bins_cover_every_length_once():
    bins = make_bins(parse_sizes("10,20,30,45,70", "--bins"))
    assert [b.label for b in bins] == ["1-10", "11-20", "21-30", "31-45", "46-70", "71+"]
    for length in range(0, 200):
        holding = [i for i, b in enumerate(bins) if b.contains(length)]
        assert holding == ([] if length == 0 else [bin_index(length, bins)])
    assert [bin_index(n, bins) for n in (0, 10, 11, 45, 46, 71, 500)] == [0, 0, 1, 3, 4, 5, 5]
    assert limit_position(bins, 20) == pytest.approx(1.5)  # between 11-20 and 21-30
    assert limit_position(bins, 33) == pytest.approx(2.7)  # 3 of the 15 lengths of 31-45
    for text in ("10,5", "0,4", "a,b", ""):
        with pytest.raises(ValueError, match="--bins"):
            parse_sizes(text, "--bins")


def test_the_subset_keeps_exactly_the_pairs_with_short_sources(small_data, tmp_path):
    original = load_split(small_data, "train")
    limit = int(np.median(original.src_lengths))
    out = tmp_path / "subset"
    manifest = source_length_subset(small_data, out, limit)
    subset = load_split(out, "train")  # also checks the offsets and the manifest's count
    expected = [original[i] for i in range(len(original)) if len(original[i][0]) <= limit]
    assert 0 < len(expected) < len(original)
    assert len(subset) == len(expected) == manifest["subset"]["pairs"]
    for i, (src, tgt) in enumerate(expected):
        got_src, got_tgt = subset[i]
        assert np.array_equal(got_src, src) and np.array_equal(got_tgt, tgt)
    assert manifest["splits"]["train"]["lengths"]["src"]["max"] <= limit
    assert manifest["subset"]["pairs_before"] == len(original)
    valid, copied = load_split(small_data, "valid"), load_split(out, "valid")
    assert len(valid) == len(copied)
    assert all(np.array_equal(valid[i][0], copied[i][0]) for i in range(len(valid)))
    assert (out / "valid.tgt.txt").read_bytes() == (small_data / "valid.tgt.txt").read_bytes()
    assert load_tokenizer(out).sha256 == load_tokenizer(small_data).sha256
    assert read_manifest(out)["subset"]["max_source_length"] == limit

    mtime = (out / "train.src.bin").stat().st_mtime_ns
    assert source_length_subset(small_data, out, limit)["subset"] == manifest["subset"]
    assert (out / "train.src.bin").stat().st_mtime_ns == mtime  # the same subset is kept
    source_length_subset(small_data, out, limit - 1)  # another limit replaces the subset
    assert len(load_split(out, "train")) == sum(int(n) <= limit - 1 for n in original.src_lengths)
    with pytest.raises(DataError, match="max_source_length"):
        source_length_subset(small_data, tmp_path / "none", 0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a subset directory"):
        source_length_subset(small_data, tmp_path / "other", limit)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_smoke_the_study_writes_every_output_and_resumes(small_data, tmp_path, capsys, one_thread):
    config = write_config(
        tmp_path / "base.yaml",
        micro_config(small_data, train={"progress": False, "valid_bleu_sentences": 4}),
    )
    limit = int(np.median(load_split(small_data, "train").src_lengths))
    out, work = tmp_path / "out", tmp_path / "work"
    args = [
        "--config", str(config), "--budget", "3", "--out", str(out), "--work", str(work),
        "--max-source-length", str(limit), "--test-split", "valid", "--greedy",
        "--bins", f"{limit // 2},{limit},{2 * limit}", "--join", "2,3",
    ]  # fmt: skip
    assert main(args) == 0
    options = positional_options()
    assert options == typing.get_args(Positional) and "learned" in options
    table = read_csv(out / "results.csv")
    assert [r["option"] for r in table] == [o for o in options for _ in range(9)]
    bins = ["1-" + str(limit // 2), f"{limit // 2 + 1}-{limit}", f"{limit + 1}-{2 * limit}"]
    assert [r["bin"] for r in table[:9]] == [
        *bins, f"{2 * limit + 1}+", ALL_SINGLE, f"single <= {limit}", f"single > {limit}",
        "joined 2", "joined 3",
    ]  # fmt: skip
    inputs = 40 + 40 // 2 + 40 // 3  # the 40 validation sentences alone, in pairs, in triples
    for option in options:
        rows = [r for r in table if r["option"] == option]
        assert sum(int(r["sentences"]) for r in rows[:4]) == inputs
        assert rows[4]["sentences"] == "40" and rows[4]["updates"] == "3"
        assert int(rows[5]["sentences"]) + int(rows[6]["sentences"]) == 40
        assert [r["sentences"] for r in rows[7:]] == ["20", "13"]
        run_config = json.loads((work / "rows" / option / "config.json").read_text())
        assert run_config["model"]["positional"] == option
        assert run_config["data"]["dir"] == str(work / f"train-src{limit}")
    md = (out / "results.md").read_text(encoding="utf-8")
    assert f"L = {limit}" in md and f"{limit + 1}-{2 * limit} †" in md
    assert all(f"| {o} | 3 |" in md for o in options)
    assert md in capsys.readouterr().out
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.md", "results.png"]

    kept = {o: (work / "rows" / o / "result.json").stat().st_mtime_ns for o in options}
    assert main(args) == 0  # re-run: every model is kept, translations too
    err = capsys.readouterr().err
    assert all(f"[{o}] finished earlier, kept" in err for o in options)
    assert err.count("translations of") == len(options)
    assert kept == {o: (work / "rows" / o / "result.json").stat().st_mtime_ns for o in options}
    assert read_csv(out / "results.csv") == table


def test_bad_options_are_named(small_data, tmp_path, capsys):
    config = write_config(tmp_path / "base.yaml", micro_config(small_data))
    base = ["--config", str(config), "--budget", "3", "--out", str(tmp_path)]
    for extra, message in (
        (["--positional", "fourier"], "--positional: unknown fourier"),
        (["--max-source-length", "0"], "--max-source-length"),
        (["--bins", "20,10"], "--bins"),
        ([], "no test split"),  # small_data has train and valid only
        (["--test-split", "test"], "--test-split test"),
    ):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
