"""`transformer prepare`: filtering and manifest, input variants, and every bad-input case."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.data.conftest import MULTI30K, VOCAB, read_gz, write_lines
from transformer import cli
from transformer.data import DataError, SubwordTokenizer, load_split, load_tokenizer, prepare
from transformer.data.tokenizer import MIN_VOCAB_SIZE

MAX_LEN = 40


def make_corpus(d: Path, train_de: list[str], train_en: list[str], suffix: str = "") -> dict:
    """Write a train / val pair of files under `d`; returns prepare() keyword arguments."""
    d.mkdir(parents=True, exist_ok=True)
    write_lines(d / f"train.de{suffix}", train_de)
    write_lines(d / f"train.en{suffix}", train_en)
    write_lines(d / f"val.de{suffix}", read_gz(MULTI30K / "val.de.gz", 20))
    write_lines(d / f"val.en{suffix}", read_gz(MULTI30K / "val.en.gz", 20))
    return dict(src_lang="de", tgt_lang="en", train=d / "train", valid=d / "val")


def small_kwargs(d: Path, n: int = 150) -> dict[str, Any]:
    return make_corpus(
        d, read_gz(MULTI30K / "train.de.gz", n), read_gz(MULTI30K / "train.en.gz", n)
    )


def snapshot(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


# ------------------------------------------------------------------------------- filtering


def test_filters_training_pairs_by_reason_and_keeps_the_rest_in_order(tmp_path: Path) -> None:
    de = read_gz(MULTI30K / "train.de.gz", 200)
    en = read_gz(MULTI30K / "train.en.gz", 200)
    long_de, long_en = " ".join(de[:8]), " ".join(en[:8])  # well over MAX_LEN subwords
    injected = [
        ("", "An empty source."),
        ("Eine leere Zielseite.", "   "),
        (long_de, long_en),
        (de[3], long_en),  # too long on one side only: "too_long" comes before "ratio"
        ("Ja.", "Yes, this is a much longer sentence than the source one."),
    ]
    for k, (s, t) in enumerate(injected):
        de.insert(10 + 20 * k, s)
        en.insert(10 + 20 * k, t)
    kwargs = make_corpus(tmp_path / "in", de, en)
    # The same sentence in both valid files is never filtered, however long.
    write_lines(tmp_path / "in" / "val.de", ["", long_de, "Hallo."])
    write_lines(tmp_path / "in" / "val.en", ["Empty source.", long_en, ""])
    out = tmp_path / "out"
    manifest = prepare(**kwargs, out=out, vocab_size=VOCAB, max_len=MAX_LEN, max_ratio=3.0)

    tok = load_tokenizer(out)
    expected = {"empty": 0, "too_long": 0, "ratio": 0}
    kept = []
    for s, t in zip(de, en):  # the reference rules, written out independently
        ns, nt = len(tok.encode(s.strip())), len(tok.encode(t.strip()))
        if min(ns, nt) == 0:
            expected["empty"] += 1
        elif max(ns, nt) > MAX_LEN:
            expected["too_long"] += 1
        elif max(ns, nt) / min(ns, nt) > 3.0:
            expected["ratio"] += 1
        else:
            kept.append((s, t))
    assert expected["empty"] == 2 and expected["too_long"] >= 2 and expected["ratio"] >= 1
    train = manifest["splits"]["train"]
    assert train["filtered"] == expected
    assert train["pairs"] == len(kept) == len(de) - sum(expected.values())
    ds = load_split(out, "train")
    for i, (s, t) in enumerate(kept):
        assert ds[i][0].tolist() == tok.encode(s.strip())
        assert ds[i][1].tolist() == tok.encode(t.strip())
    assert ds.src_lengths.max() <= MAX_LEN and ds.tgt_lengths.max() <= MAX_LEN

    valid = manifest["splits"]["valid"]
    assert valid["pairs"] == 3 and valid["filtered"] == {"empty": 0, "too_long": 0, "ratio": 0}
    assert load_split(out, "valid").src_lengths[0] == 0
    assert load_split(out, "valid").src_lengths[1] > MAX_LEN


def test_manifest_records_counts_stats_and_checksums(
    data_dir: Path, corpus: dict[str, Path]
) -> None:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert (manifest["src_lang"], manifest["tgt_lang"]) == ("de", "en")
    assert manifest["vocab_size"] == VOCAB
    assert list(manifest["splits"]) == ["train", "valid", "test_2016_flickr"]
    assert (
        manifest["tokenizer"]["sha256"]
        == hashlib.sha256((data_dir / "tokenizer.json").read_bytes()).hexdigest()
    )
    assert manifest["filter"] == {"splits": ["train"], "max_len": 256, "max_ratio": 3.0}
    for split, key, n in (("train", "train", 400), ("valid", "valid", 60)):
        info = manifest["splits"][split]
        assert info["input_lines"] == n
        assert info["pairs"] == n - sum(info["filtered"].values())
        for side, lang in (("src", "de"), ("tgt", "en")):
            path = Path(f"{corpus[key]}.{lang}")
            assert info["inputs"][side]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        ds = load_split(data_dir, split)
        for side, lengths in (("src", ds.src_lengths), ("tgt", ds.tgt_lengths)):
            stats = info["lengths"][side]
            assert stats["count"] == len(ds)
            assert (stats["min"], stats["max"]) == (lengths.min(), lengths.max())
            assert stats["mean"] == pytest.approx(lengths.mean(), abs=1e-3)
            assert stats["p50"] == np.percentile(lengths, 50, method="inverted_cdf")


# ------------------------------------------------------------------------------- input variants


def test_gzip_crlf_bom_and_chunking_give_identical_output(tmp_path: Path) -> None:
    de = read_gz(MULTI30K / "train.de.gz", 120)
    en = read_gz(MULTI30K / "train.en.gz", 120)
    plain = make_corpus(tmp_path / "plain", de, en)
    prepare(**plain, out=tmp_path / "a", vocab_size=400, chunk_size=10_000)

    gz = make_corpus(tmp_path / "gz", de, en, suffix=".gz")
    write_lines(tmp_path / "gz" / "train.de.gz", ["\ufeff" + de[0], *de[1:]], newline="\r\n")
    prepare(**gz, out=tmp_path / "b", vocab_size=400, chunk_size=7)

    for name in ("tokenizer.json", "train.src.bin", "train.tgt.idx", "valid.src.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_existing_tokenizer_is_reused(data_dir: Path, tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in")
    manifest = prepare(**kwargs, out=tmp_path / "out", tokenizer=data_dir / "tokenizer.json")
    assert manifest["tokenizer"]["sha256"] == load_tokenizer(data_dir).sha256
    assert manifest["tokenizer"]["trained"] is False
    with pytest.raises(DataError, match=f"has {VOCAB} tokens but --vocab-size is 999"):
        prepare(
            **kwargs, out=tmp_path / "o2", tokenizer=data_dir / "tokenizer.json", vocab_size=999
        )
    assert not (tmp_path / "o2").exists()


def test_force_replaces_a_previous_data_directory(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in")
    out = tmp_path / "out"
    prepare(**kwargs, out=out, vocab_size=300)
    (out / "stale.bin").write_bytes(b"old")
    manifest = prepare(**kwargs, out=out, vocab_size=400, force=True)
    assert manifest["vocab_size"] == 400 and load_tokenizer(out).vocab_size == 400
    assert not (out / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # nothing beside it


def test_empty_existing_out_directory_is_used(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    prepare(**small_kwargs(tmp_path / "in"), out=out, vocab_size=300)
    assert (out / "manifest.json").is_file()


# ------------------------------------------------------------------------------- bad input


def expect_error(tmp_path: Path, pattern: str, **kwargs: Any) -> DataError:
    """prepare(...) must raise DataError matching `pattern` and leave tmp_path as it was."""
    before = snapshot(tmp_path)
    kwargs.setdefault("out", tmp_path / "out" / "data")
    kwargs.setdefault("vocab_size", 300)
    with pytest.raises(DataError, match=pattern) as info:
        prepare(**kwargs)
    assert snapshot(tmp_path) == before
    return info.value


def test_differing_line_counts_name_both_files_and_counts(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    write_lines(tmp_path / "in" / "val.en", read_gz(MULTI30K / "val.en.gz", 19))
    err = expect_error(tmp_path, "has 20 lines but", **kwargs)
    assert "val.de has 20 lines" in str(err) and "val.en has 19" in str(err)


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    path = tmp_path / "in" / "train.en"
    lines = path.read_bytes().split(b"\n")
    lines[6] = lines[6][:5] + b"\xc3\x28" + lines[6][5:]  # invalid 2-byte sequence on line 7
    path.write_bytes(b"\n".join(lines))
    expect_error(tmp_path, r"train\.en:7: invalid UTF-8", **kwargs)


def test_invalid_utf8_in_gzip_file(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    (tmp_path / "in" / "val.de").unlink()
    (tmp_path / "in" / "val.de.gz").write_bytes(gzip.compress(b"ok\n" * 10 + b"\x80\n" * 10))
    expect_error(tmp_path, r"val\.de\.gz:11: invalid UTF-8", **kwargs)


def test_corrupt_gzip_file(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    (tmp_path / "in" / "val.de").unlink()
    (tmp_path / "in" / "val.de.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    expect_error(tmp_path, r"val\.de\.gz: cannot read", **kwargs)


def test_missing_file(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    (tmp_path / "in" / "train.en").unlink()
    expect_error(tmp_path, r"no file .*train\.en or .*train\.en\.gz", **kwargs)


def test_ambiguous_plain_and_gzip(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    write_lines(tmp_path / "in" / "train.en.gz", ["x"])
    expect_error(tmp_path, r"both .*train\.en and .*train\.en\.gz exist", **kwargs)


def test_existing_non_empty_out_is_refused_without_force(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    expect_error(tmp_path, "exists and is not empty; add --force", out=out, **kwargs)
    # --force replaces only what looks like a data directory, never arbitrary files.
    expect_error(tmp_path, "holds no manifest.json", out=out, force=True, **kwargs)
    assert (out / "keep.txt").read_text() == "precious"


def test_empty_training_set(tmp_path: Path) -> None:
    kwargs = make_corpus(tmp_path / "in", [], [])
    expect_error(tmp_path, "the training set is empty", **kwargs)


def test_everything_filtered(tmp_path: Path) -> None:
    kwargs = make_corpus(tmp_path / "in", ["", "a"], ["b", ""])
    expect_error(tmp_path, "every training pair was filtered out", **kwargs)


def test_test_split_name_collisions(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    (tmp_path / "other").mkdir()
    for lang in ("de", "en"):
        write_lines(tmp_path / "other" / f"val.{lang}", ["x"])
        write_lines(tmp_path / "other" / f"valid.{lang}", ["x"])
    tests = [tmp_path / "in" / "val", tmp_path / "other" / "val"]
    expect_error(tmp_path, "split name 'val' is already used", tests=tests, **kwargs)
    tests = [tmp_path / "other" / "valid"]
    expect_error(tmp_path, "split name 'valid' is already used", tests=tests, **kwargs)


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        ({"vocab_size": None}, "give --vocab-size N"),
        ({"vocab_size": 100}, f"at least {MIN_VOCAB_SIZE}"),
        ({"max_len": 0}, "--max-len must be at least 1"),
        ({"max_ratio": 0.5}, "--max-ratio must be at least 1"),
        ({"tgt_lang": "de"}, "--src and --tgt must differ"),
        ({"tokenizer": "missing.json", "vocab_size": None}, "missing.json: tokenizer file not"),
    ],
)
def test_bad_options(tmp_path: Path, overrides: dict[str, Any], pattern: str) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    kwargs.update(overrides)
    expect_error(tmp_path, pattern, **kwargs)


def test_interrupt_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    before = snapshot(tmp_path)

    def interrupted(self: SubwordTokenizer, texts: list[str]) -> list[list[int]]:
        raise KeyboardInterrupt

    monkeypatch.setattr(SubwordTokenizer, "encode_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(**kwargs, out=tmp_path / "new" / "deep" / "out", vocab_size=300)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------- CLI


def test_cli_subprocess_prepares_a_directory(tmp_path: Path) -> None:
    kwargs = small_kwargs(tmp_path / "in", 80)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "transformer.cli", "prepare", "--src", "de", "--tgt", "en",
           "--train", str(kwargs["train"]), "--valid", str(kwargs["valid"]),
           "--test", str(MULTI30K / "test_2016_flickr"), "--vocab-size", "300",
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "train: 80 pairs of 80 lines" in proc.stdout
    assert "lines/s" in proc.stderr  # the progress bar
    assert len(load_split(out, "test_2016_flickr")) == 1000
    assert len(load_split(out, "train")) == 80


def test_cli_error_prints_message_and_returns_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kwargs = small_kwargs(tmp_path / "in", 50)
    (tmp_path / "in" / "val.en").unlink()
    argv = ["prepare", "--src", "de", "--tgt", "en", "--train", str(kwargs["train"]),
            "--valid", str(kwargs["valid"]), "--vocab-size", "300", "--out",
            str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no file ") and "val.en" in err
    assert not (tmp_path / "out").exists()
