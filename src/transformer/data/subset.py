"""A copy of a prepared data directory whose training split keeps only the short sources.

    source_length_subset("work/multi30k-de-en", "out/lengths/train-src20", max_source_length=20)

The copy is an ordinary data directory (`transformer.data.dataset`): the filtered split is
re-binarized from the memory-mapped original (no re-tokenization, so the ids are exactly the
original's), every other split and the tokenizer are copied unchanged, and the manifest records
what was kept (`subset`: the original directory, its manifest's sha256, the split, the limit, the
pair counts). A training run then points `data.dir` at the copy and needs no option of its own.
The directory is written atomically; when it already holds the same subset of the same original,
it is kept as it is (another subset there is replaced; anything else is refused).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from transformer.data.dataset import (
    MANIFEST,
    SIDES,
    TOKENIZER,
    LengthHistogram,
    load_split,
    read_manifest,
    split_paths,
)
from transformer.data.errors import DataError
from transformer.io import atomic_directory

_CHUNK_PAIRS = 100_000  # pairs copied at a time: memory stays bounded on a large corpus


def subset_record(data_dir: Path | str, split: str, max_source_length: int) -> dict[str, Any]:
    """What a subset directory's manifest records under `subset` (compared to reuse one)."""
    data_dir = Path(data_dir)
    manifest_bytes = (data_dir / MANIFEST).read_bytes()
    return {
        "of": str(data_dir.resolve()),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "split": split,
        "max_source_length": max_source_length,
    }


def source_length_subset(
    data_dir: Path | str,
    out: Path | str,
    max_source_length: int,
    split: str = "train",
) -> dict[str, Any]:
    """Write `out`: `data_dir` with only the pairs of `split` whose source has at most
    `max_source_length` subwords (special tokens not counted); returns its manifest.

    Raises DataError when `data_dir` is not a prepared directory, has no such split, or no pair
    would be kept (the message names `max_source_length`, which a caller maps to its option).
    """
    data_dir, out = Path(data_dir), Path(out)
    if max_source_length < 1:
        raise DataError(f"max_source_length must be at least 1, got {max_source_length}")
    manifest = read_manifest(data_dir)
    if data_dir.resolve() == out.resolve():
        raise DataError(f"{out}: the subset cannot replace the data directory it is taken from")
    record = subset_record(data_dir, split, max_source_length)
    existing = _existing_subset(out)
    if existing is not None and _same_subset(existing["subset"], record):
        return existing
    if existing is None and out.is_dir() and any(out.iterdir()):
        raise DataError(
            f"{out}: exists and is not a subset directory; it is left alone, choose another path"
        )
    dataset = load_split(data_dir, split)  # checks the split exists and matches the manifest
    keep = dataset.src_lengths <= max_source_length
    kept = int(keep.sum())
    if kept == 0:
        raise DataError(
            f"{data_dir}: no pair of split '{split}' has a source of at most {max_source_length} "
            f"subwords (the shortest has {int(dataset.src_lengths.min(initial=0))}); "
            "raise max_source_length"
        )
    dtype = np.dtype(manifest["dtype"])
    with atomic_directory(out) as tmp:
        info = dict(manifest["splits"][split])
        info["tokens"], info["lengths"] = {}, {}
        for side in SIDES:
            tokens, histogram = _write_side(data_dir, tmp, split, side, dtype, keep)
            info["tokens"][side] = tokens
            info["lengths"][side] = histogram.stats()
        info["pairs"] = kept
        for name, other in manifest["splits"].items():
            if name == split:
                continue
            for side in SIDES:
                for path in split_paths(data_dir, name, side):
                    shutil.copyfile(path, tmp / path.name)
            for text in (other.get("text") or {}).values():
                shutil.copyfile(data_dir / text, tmp / text)
        shutil.copyfile(data_dir / TOKENIZER, tmp / TOKENIZER)
        new = dict(manifest)
        new["splits"] = {**manifest["splits"], split: info}
        new["subset"] = {**record, "pairs_before": len(dataset), "pairs": kept}
        (tmp / MANIFEST).write_text(
            json.dumps(new, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return new


def _existing_subset(out: Path) -> dict[str, Any] | None:
    """The manifest of `out` if it is a complete subset directory, else None."""
    try:
        manifest = read_manifest(out)
    except DataError:
        return None
    return manifest if isinstance(manifest.get("subset"), dict) else None


def _same_subset(recorded: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(recorded.get(k) == v for k, v in wanted.items())


def _write_side(
    data_dir: Path, out: Path, split: str, side: str, dtype: np.dtype, keep: np.ndarray
) -> tuple[int, LengthHistogram]:
    """Copy the kept sequences of one side; returns their token count and length histogram."""
    bin_in, idx_in = split_paths(data_dir, split, side)
    bin_out, idx_out = split_paths(out, split, side)
    offsets = np.fromfile(idx_in, dtype=np.int64)
    tokens = (
        np.memmap(bin_in, dtype=dtype, mode="r")
        if bin_in.stat().st_size
        else np.zeros(0, dtype=dtype)
    )
    lengths = np.diff(offsets)
    histogram = LengthHistogram()
    written = 0
    with open(bin_out, "wb") as b, open(idx_out, "wb") as x:
        x.write(np.zeros(1, dtype=np.int64).tobytes())
        for start in range(0, keep.size, _CHUNK_PAIRS):
            stop = min(start + _CHUNK_PAIRS, keep.size)
            chunk_keep = keep[start:stop]
            chunk_lengths = lengths[start:stop]
            chunk = np.asarray(tokens[offsets[start] : offsets[stop]])
            b.write(chunk[np.repeat(chunk_keep, chunk_lengths)].tobytes())
            kept_lengths = chunk_lengths[chunk_keep]
            ends = written + np.cumsum(kept_lengths)
            x.write(ends.astype(np.int64).tobytes())
            if ends.size:
                written = int(ends[-1])
            histogram.add(kept_lengths)
    return written, histogram
