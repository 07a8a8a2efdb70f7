"""The binarized parallel dataset: flat memory-mapped token arrays plus offsets, one pair per row.

A data directory (written by `transformer prepare`) holds, for each split NAME:

- `NAME.src.bin`, `NAME.tgt.bin`: all token ids of the split back to back, without special
  tokens; `uint16` when the vocabulary fits (<= 65,535 ids), else `int32`;
- `NAME.src.idx`, `NAME.tgt.idx`: `int64` offsets into the `.bin` file, n + 1 of them, so that
  pair i is `bin[idx[i]:idx[i + 1]]`;
- for splits other than train, `NAME.src.txt`, `NAME.tgt.txt`: the raw text, for BLEU against
  untouched references;

and once: `tokenizer.json` and `manifest.json` (languages, counts, length statistics, checksums).
Memory-mapping means that opening a split costs O(pairs) for the offsets, never O(tokens), and
that DataLoader workers share the page cache instead of copying the corpus.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from transformer.data.errors import DataError
from transformer.data.tokenizer import SubwordTokenizer

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1
SIDES = ("src", "tgt")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id: uint16 up to 65,535 ids, else int32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.int32)


def split_paths(data_dir: Path, split: str, side: str) -> tuple[Path, Path]:
    """The (`.bin`, `.idx`) files of one side of one split."""
    return data_dir / f"{split}.{side}.bin", data_dir / f"{split}.{side}.idx"


# --------------------------------------------------------------------------------------- writing


class LengthHistogram:
    """Exact length statistics in memory bounded by the longest sequence, not the corpus size."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, lengths: np.ndarray) -> None:
        if lengths.size == 0:
            return
        counts = np.bincount(lengths)
        if counts.size > self.counts.size:
            counts[: self.counts.size] += self.counts
            self.counts = counts
        else:
            self.counts[: counts.size] += counts

    def stats(self) -> dict[str, float | int]:
        """min / mean / max and the 50th, 90th, 95th, 99th percentiles (nearest rank)."""
        n = int(self.counts.sum())
        if n == 0:
            return {"count": 0}
        values = np.nonzero(self.counts)[0]
        cumulative = np.cumsum(self.counts)
        out: dict[str, float | int] = {
            "count": n,
            "min": int(values[0]),
            "mean": round(float((np.arange(self.counts.size) * self.counts).sum() / n), 3),
            "max": int(values[-1]),
        }
        for q in (50, 90, 95, 99):
            rank = max(1, int(np.ceil(q / 100 * n)))  # nearest-rank percentile
            out[f"p{q}"] = int(np.searchsorted(cumulative, rank))
        return out


class SideWriter:
    """Appends tokenized sentences of one side to its `.bin` / `.idx` files, chunk by chunk."""

    def __init__(self, data_dir: Path, split: str, side: str, dtype: np.dtype) -> None:
        self.bin_path, self.idx_path = split_paths(data_dir, split, side)
        self.dtype = dtype
        self.offset = 0
        self.lengths = LengthHistogram()
        # Closed by close() / the with-block: the writer outlives any one statement.
        self._bin: BinaryIO = open(self.bin_path, "wb")  # noqa: SIM115
        self._idx: BinaryIO = open(self.idx_path, "wb")  # noqa: SIM115
        self._idx.write(np.zeros(1, dtype=np.int64).tobytes())

    def write(self, sequences: list[list[int]]) -> None:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        flat = np.fromiter(
            itertools.chain.from_iterable(sequences), dtype=self.dtype, count=int(lengths.sum())
        )
        self._bin.write(flat.tobytes())
        ends = self.offset + np.cumsum(lengths)
        self._idx.write(ends.astype(np.int64).tobytes())
        if len(ends):
            self.offset = int(ends[-1])
        self.lengths.add(lengths)

    def close(self) -> None:
        self._bin.close()
        self._idx.close()

    def __enter__(self) -> SideWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------- reading


def read_manifest(data_dir: Path | str) -> dict[str, Any]:
    """The manifest of a data directory; a DataError if it is missing or unreadable."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path}: not found; is {data_dir} a directory written by `transformer prepare`?"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"{path}: cannot read the manifest ({e}); re-run `transformer prepare`"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: unsupported manifest (format_version "
            f"{manifest.get('format_version') if isinstance(manifest, dict) else None!r}, "
            f"expected {FORMAT_VERSION}); re-run `transformer prepare`"
        )
    return manifest


def load_tokenizer(data_dir: Path | str) -> SubwordTokenizer:
    """The tokenizer of a data directory, checked against the hash recorded in its manifest."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    tokenizer = SubwordTokenizer.from_file(data_dir / TOKENIZER)
    expected = manifest.get("tokenizer", {}).get("sha256")
    if expected is not None and tokenizer.sha256 != expected:
        raise DataError(
            f"{data_dir / TOKENIZER}: does not match the manifest (sha256 {tokenizer.sha256[:12]}… "
            f"vs {expected[:12]}…); the token ids would be misread, re-run `transformer prepare`"
        )
    return tokenizer


def _open_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    """Memory-map a flat token file (an empty file maps to an empty array)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class ParallelDataset:
    """One split of a data directory: pair i is (source ids, target ids), without special tokens.

    Pickles cheaply (by path), so DataLoader workers started with `spawn` re-open the memory maps
    instead of receiving a copy of the corpus.
    """

    def __init__(self, data_dir: Path | str, split: str, dtype: np.dtype | str) -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        self.dtype = np.dtype(dtype)
        self._open()

    def _open(self) -> None:
        offsets: list[np.ndarray] = []
        tokens: list[np.ndarray] = []
        for side in SIDES:
            bin_path, idx_path = split_paths(self.data_dir, self.split, side)
            for p in (bin_path, idx_path):
                if not p.is_file():
                    raise DataError(f"{p}: missing; the data directory is incomplete")
            idx = np.fromfile(idx_path, dtype=np.int64)
            toks = _open_tokens(bin_path, self.dtype)
            if idx.size == 0 or idx[0] != 0 or idx[-1] != toks.size or np.any(np.diff(idx) < 0):
                raise DataError(
                    f"{idx_path}: offsets do not match {bin_path.name} "
                    f"({toks.size} tokens); the data directory is corrupt, re-run prepare"
                )
            offsets.append(idx)
            tokens.append(toks)
        if offsets[0].size != offsets[1].size:
            raise DataError(
                f"{self.data_dir}: split '{self.split}' has {offsets[0].size - 1} source but "
                f"{offsets[1].size - 1} target sentences; re-run `transformer prepare`"
            )
        self._src_idx, self._tgt_idx = offsets
        self._src, self._tgt = tokens
        self.src_lengths: np.ndarray = np.diff(self._src_idx)
        self.tgt_lengths: np.ndarray = np.diff(self._tgt_idx)

    def __len__(self) -> int:
        return int(self.src_lengths.size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"pair {i} out of range for split '{self.split}' of {n} pairs")
        i = int(i) % n
        src = np.array(self._src[self._src_idx[i] : self._src_idx[i + 1]], dtype=np.int64)
        tgt = np.array(self._tgt[self._tgt_idx[i] : self._tgt_idx[i + 1]], dtype=np.int64)
        return src, tgt

    def __getstate__(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "split": self.split, "dtype": self.dtype.str}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.data_dir = Path(state["data_dir"])
        self.split = state["split"]
        self.dtype = np.dtype(state["dtype"])
        self._open()

    def __repr__(self) -> str:
        return f"ParallelDataset({str(self.data_dir)!r}, split={self.split!r}, pairs={len(self)})"


def load_split(data_dir: Path | str, split: str) -> ParallelDataset:
    """Open split `split` ("train", "valid", or a test set's name) of a prepared data directory."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    splits = manifest.get("splits", {})
    if split not in splits:
        raise DataError(
            f"{data_dir}: no split '{split}' (available: {', '.join(splits) or 'none'})"
        )
    dataset = ParallelDataset(data_dir, split, manifest["dtype"])
    if len(dataset) != splits[split]["pairs"]:
        raise DataError(
            f"{data_dir}: split '{split}' has {len(dataset)} pairs, the manifest says "
            f"{splits[split]['pairs']}; re-run `transformer prepare`"
        )
    return dataset
