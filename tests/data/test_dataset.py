"""The binarized format: what load_split returns equals what the tokenizer says, file by file."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from transformer.data import (
    Batch,
    DataError,
    ParallelDataset,
    TokenBatchSampler,
    collate,
    load_split,
    load_tokenizer,
    read_manifest,
)
from transformer.data.dataset import LengthHistogram, SideWriter, token_dtype


def lines_of(prefix: Path, lang: str) -> list[str]:
    return Path(f"{prefix}.{lang}").read_text(encoding="utf-8").split("\n")[:-1]


@pytest.mark.parametrize("split,key", [("valid", "valid"), ("test_2016_flickr", "test")])
def test_unfiltered_split_holds_exactly_the_encoded_lines(
    data_dir: Path, corpus: dict[str, Path], split: str, key: str
) -> None:
    tok = load_tokenizer(data_dir)
    ds = load_split(data_dir, split)
    src, tgt = lines_of(corpus[key], "de"), lines_of(corpus[key], "en")
    assert len(ds) == len(src) == len(tgt)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == np.int64 and y.dtype == np.int64
        assert x.tolist() == tok.encode(src[i].strip())
        assert y.tolist() == tok.encode(tgt[i].strip())
    assert ds.src_lengths.dtype == np.int64
    assert ds.src_lengths.tolist() == [len(tok.encode(s.strip())) for s in src]
    assert ds.tgt_lengths.tolist() == [len(tok.encode(t.strip())) for t in tgt]


def test_raw_text_copies_of_valid_and_test(data_dir: Path, corpus: dict[str, Path]) -> None:
    for split, key in (("valid", "valid"), ("test_2016_flickr", "test")):
        for side, lang in (("src", "de"), ("tgt", "en")):
            copy = (data_dir / f"{split}.{side}.txt").read_bytes()
            assert copy == Path(f"{corpus[key]}.{lang}").read_bytes()
    assert not (data_dir / "train.src.txt").exists()


def test_files_on_disk_follow_the_format(data_dir: Path) -> None:
    manifest = read_manifest(data_dir)
    assert manifest["dtype"] == "uint16"
    for split, info in manifest["splits"].items():
        ds = load_split(data_dir, split)
        for side, lengths in (("src", ds.src_lengths), ("tgt", ds.tgt_lengths)):
            idx = np.fromfile(data_dir / f"{split}.{side}.idx", dtype=np.int64)
            tokens = np.fromfile(data_dir / f"{split}.{side}.bin", dtype=np.uint16)
            assert idx.size == info["pairs"] + 1 and idx[0] == 0 and idx[-1] == tokens.size
            assert np.array_equal(np.diff(idx), lengths)
            assert tokens.size == info["tokens"][side]
            assert tokens.min() > 3  # no special tokens stored


def test_indexing(data_dir: Path) -> None:
    ds = load_split(data_dir, "valid")
    last = ds[len(ds) - 1]
    assert all(np.array_equal(a, b) for a, b in zip(ds[-1], last))
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds[-len(ds) - 1]


def test_pickles_by_path_not_by_content(data_dir: Path) -> None:
    ds = load_split(data_dir, "train")
    blob = pickle.dumps(ds)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    assert len(again) == len(ds)
    assert all(np.array_equal(a, b) for a, b in zip(again[5], ds[5]))


def test_dataloader_with_sampler_and_collate(data_dir: Path) -> None:
    ds = load_split(data_dir, "train")
    sampler = TokenBatchSampler(ds.src_lengths, ds.tgt_lengths, max_tokens=300, seed=1)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    seen = 0
    for batch, indices in zip(loader, sampler.all_batches()):
        assert isinstance(batch, Batch)
        assert batch.src.numel() <= 300 and batch.tgt_in.numel() <= 300
        assert batch.n_src_tokens == int(ds.src_lengths[indices].sum()) + len(indices)
        seen += batch.size
    assert seen == len(ds)


def test_int32_tokens_for_large_vocabularies(tmp_path: Path) -> None:
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.int32
    seqs = [[70000, 5], [], [65536, 100000, 7]]
    for side in ("src", "tgt"):
        with SideWriter(tmp_path, "x", side, token_dtype(200000)) as w:
            w.write(seqs[:2])
            w.write(seqs[2:])
    ds = ParallelDataset(tmp_path, "x", "int32")
    assert [ds[i][0].tolist() for i in range(3)] == seqs
    assert ds.tgt_lengths.tolist() == [2, 0, 3]


def test_length_histogram_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 300, size=5000) ** 2 // 300
    hist = LengthHistogram()
    for part in np.array_split(values, 7):
        hist.add(part)
    stats = hist.stats()
    assert stats["count"] == values.size
    assert stats["min"] == values.min() and stats["max"] == values.max()
    assert stats["mean"] == pytest.approx(values.mean(), abs=1e-3)
    for q in (50, 90, 95, 99):
        assert stats[f"p{q}"] == np.percentile(values, q, method="inverted_cdf")


def test_unknown_split_lists_the_available_ones(data_dir: Path) -> None:
    with pytest.raises(DataError, match=r"no split 'dev' \(available: train, valid, test_2016"):
        load_split(data_dir, "dev")


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"manifest\.json: not found"):
        load_split(tmp_path, "train")
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(DataError, match="cannot read the manifest"):
        read_manifest(tmp_path)


def test_tampered_tokenizer_is_detected(data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    tok = json.loads((copy / "tokenizer.json").read_text())
    tok["model"]["merges"] = tok["model"]["merges"][:-1]
    (copy / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(DataError, match="does not match the manifest"):
        load_tokenizer(copy)


def test_truncated_data_file_is_detected(data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    path = copy / "valid.tgt.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"valid\.tgt\.idx: offsets do not match"):
        load_split(copy, "valid")
