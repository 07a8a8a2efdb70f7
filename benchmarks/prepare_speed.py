"""Benchmark `transformer prepare` and token-budget batching.

    .venv/bin/python benchmarks/prepare_speed.py [--pairs 1000000] [--vocab-size 8000]

Measures, each `prepare` in a fresh child process whose peak RSS comes from `os.wait4` (the
kernel's `getrusage` for that child):

1. prepare on the bundled Multi30k (train + val + test_2016_flickr): seconds, pairs/s;
2. prepare on a synthetic corpus of `--pairs` pairs generated on the fly (Zipf-distributed
   pseudo-words, correlated lengths): pairs/s and peak RSS, which must stay under 2 GB however
   large the corpus (streaming); the reference is a child that only imports the package;
3. padding fraction of length-grouped batches (TokenBatchSampler) against random batches cut
   with the same greedy budget, at max_tokens 4096, on both training sets.

Prints a table and writes benchmarks/results/prepare_speed.json. A benchmark, not a test: the
numbers depend on the machine (and on what else runs on it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT / "data" / "multi30k"
RSS_LIMIT_BYTES = 2 * 1024**3
MAX_TOKENS = 4096


# ---------------------------------------------------------------------------- child processes


def child_main(task: str, kwargs: dict[str, Any]) -> None:
    """Runs inside the measured child: do `task`, print its timing as JSON."""
    started = time.perf_counter()
    from transformer.data import prepare

    imported = time.perf_counter()
    result: dict[str, Any] = {"import_seconds": imported - started}
    if task == "prepare":
        manifest = prepare(**kwargs)
        result["seconds"] = time.perf_counter() - imported
        result["splits"] = {k: v["input_lines"] for k, v in manifest["splits"].items()}
        result["kept"] = {k: v["pairs"] for k, v in manifest["splits"].items()}
    print(json.dumps(result))


def run_child(task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run `task` in a fresh interpreter; returns its JSON result plus its peak RSS in bytes."""
    cmd = [sys.executable, __file__, "--child", task, "--child-kwargs", json.dumps(kwargs)]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"child {task} failed with exit code {proc.returncode}")
        out.seek(0)
        result = json.loads(out.read().strip().splitlines()[-1])
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return result


# ---------------------------------------------------------------------------- synthetic corpus


def synthetic_corpus(directory: Path, pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """Write `pairs` synthetic de/en training pairs (plus 1,000 validation pairs) in chunks.

    Words are pseudo-words built from syllables, drawn Zipf-like; the English side maps each
    word to its own pseudo-word and sometimes drops or adds one, so lengths are correlated the
    way real translations are. Returns the (train, valid) prefixes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    syllables = [
        "ka",
        "te",
        "ri",
        "mo",
        "sa",
        "lu",
        "ne",
        "bi",
        "go",
        "fa",
        "ch",
        "sch",
        "ä",
        "ö",
        "ü",
        "ß",
        "ei",
        "au",
        "er",
        "en",
        "st",
        "pf",
    ]
    n_words = 30_000

    def vocabulary(offset: int) -> np.ndarray:
        words = set()
        while len(words) < n_words:
            k = int(rng.integers(1, 5))
            words.add(
                "".join(
                    syllables[(i + offset) % len(syllables)]
                    for i in rng.integers(0, len(syllables), size=k)
                )
            )
        return rng.permutation(np.array(sorted(words), dtype=object))  # rank != spelling

    de_words, en_words = vocabulary(0), vocabulary(7)
    probs = 1.0 / np.arange(1, n_words + 1)
    probs /= probs.sum()

    def write(prefix: Path, n: int) -> None:
        with (
            open(f"{prefix}.de", "w", encoding="utf-8") as fde,
            open(f"{prefix}.en", "w", encoding="utf-8") as fen,
        ):
            for start in range(0, n, 50_000):
                m = min(50_000, n - start)
                lengths = np.clip(rng.geometric(1 / 13, size=m), 1, 120)
                ids = rng.choice(n_words, size=int(lengths.sum()), p=probs)
                ends = np.cumsum(lengths)
                de_lines, en_lines = [], []
                for a, b in zip(ends - lengths, ends):
                    sent = ids[a:b]
                    de_lines.append(" ".join(de_words[sent]).capitalize() + ".")
                    en = en_words[sent]
                    if len(en) > 2 and rng.random() < 0.3:
                        en = en[:-1]
                    en_lines.append(" ".join(en).capitalize() + ".")
                fde.write("\n".join(de_lines) + "\n")
                fen.write("\n".join(en_lines) + "\n")

    write(directory / "train", pairs)
    write(directory / "valid", 1000)
    return directory / "train", directory / "valid"


# ---------------------------------------------------------------------------- padding


def padding(data_dir: Path) -> dict[str, Any]:
    """Padding fraction (padded positions / all positions, both sides) of grouped vs random."""
    from transformer.data import TokenBatchSampler, load_split, pack_batches

    ds = load_split(data_dir, "train")
    src, tgt = ds.src_lengths, ds.tgt_lengths

    def fraction(batches: list[np.ndarray]) -> tuple[float, float]:
        real = padded = 0
        for b in batches:
            real += int(src[b].sum() + tgt[b].sum()) + 2 * len(b)
            padded += len(b) * (int(src[b].max()) + 1 + int(tgt[b].max()) + 1)
        return 1 - real / padded, real / len(batches)

    started = time.perf_counter()
    sampler = TokenBatchSampler(src, tgt, MAX_TOKENS, seed=0)
    grouped = sampler.all_batches(epoch=0)
    epoch_seconds = time.perf_counter() - started
    random = pack_batches(np.random.default_rng(0).permutation(len(src)), src, tgt, MAX_TOKENS)
    g_frac, g_tokens = fraction(grouped)
    r_frac, r_tokens = fraction(random)
    return {
        "pairs": len(ds),
        "max_tokens": MAX_TOKENS,
        "grouped": {
            "batches": len(grouped),
            "padding_fraction": g_frac,
            "real_tokens_per_batch": g_tokens,
        },
        "random": {
            "batches": len(random),
            "padding_fraction": r_frac,
            "real_tokens_per_batch": r_tokens,
        },
        "sampler_epoch_seconds": epoch_seconds,
    }


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000, help="synthetic corpus size")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/prepare_speed.json")
    parser.add_argument("--workdir", type=Path, help="keep the corpora and outputs here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-kwargs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, json.loads(args.child_kwargs))
        return 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = bench(work, args.pairs, args.vocab_size)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0 if results["synthetic"]["rss_ok"] else 1


def bench(work: Path, pairs: int, vocab_size: int) -> dict[str, Any]:
    common = {"src_lang": "de", "tgt_lang": "en", "vocab_size": vocab_size, "force": True}
    print("reference: a child that only imports transformer.data", flush=True)
    baseline = run_child("import", {})

    print("prepare Multi30k", flush=True)
    m30k_out = work / "multi30k"
    m30k = run_child(
        "prepare",
        {
            **common,
            "out": str(m30k_out),
            "train": str(MULTI30K / "train"),
            "valid": str(MULTI30K / "val"),
            "tests": [str(MULTI30K / "test_2016_flickr")],
        },
    )
    m30k_pairs = sum(m30k["splits"].values())

    print(f"generate a synthetic corpus of {pairs:,} pairs", flush=True)
    started = time.perf_counter()
    train, valid = synthetic_corpus(work / "synthetic-text", pairs)
    gen_seconds = time.perf_counter() - started
    text_bytes = sum(os.path.getsize(f"{train}.{lang}") for lang in ("de", "en"))

    print("prepare the synthetic corpus", flush=True)
    syn_out = work / "synthetic"
    syn = run_child(
        "prepare", {**common, "out": str(syn_out), "train": str(train), "valid": str(valid)}
    )
    syn_pairs = sum(syn["splits"].values())

    print("padding of grouped vs random batches", flush=True)
    pad_m30k, pad_syn = padding(m30k_out), padding(syn_out)

    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "baseline": {
            "peak_rss_bytes": baseline["peak_rss_bytes"],
            "import_seconds": baseline["import_seconds"],
        },
        "multi30k": {
            "pairs": m30k_pairs,
            "seconds": m30k["seconds"],
            "pairs_per_second": m30k_pairs / m30k["seconds"],
            "sentences_per_second": 2 * m30k_pairs / m30k["seconds"],
            "peak_rss_bytes": m30k["peak_rss_bytes"],
            "vocab_size": vocab_size,
        },
        "synthetic": {
            "pairs": syn_pairs,
            "kept_train_pairs": syn["kept"]["train"],
            "text_bytes": text_bytes,
            "generate_seconds": gen_seconds,
            "seconds": syn["seconds"],
            "pairs_per_second": syn_pairs / syn["seconds"],
            "sentences_per_second": 2 * syn_pairs / syn["seconds"],
            "peak_rss_bytes": syn["peak_rss_bytes"],
            "rss_over_baseline_bytes": syn["peak_rss_bytes"] - baseline["peak_rss_bytes"],
            "rss_limit_bytes": RSS_LIMIT_BYTES,
            "rss_ok": syn["peak_rss_bytes"] < RSS_LIMIT_BYTES,
        },
        "padding": {"multi30k": pad_m30k, "synthetic": pad_syn},
    }
    print_table(results)
    return results


def print_table(r: dict[str, Any]) -> None:
    mib = 1024**2
    rows = [
        ("measure", "Multi30k", "synthetic"),
        ("pairs (all splits)", f"{r['multi30k']['pairs']:,}", f"{r['synthetic']['pairs']:,}"),
        ("prepare seconds", f"{r['multi30k']['seconds']:.1f}", f"{r['synthetic']['seconds']:.1f}"),
        (
            "pairs / s",
            f"{r['multi30k']['pairs_per_second']:,.0f}",
            f"{r['synthetic']['pairs_per_second']:,.0f}",
        ),
        (
            "sentences / s",
            f"{r['multi30k']['sentences_per_second']:,.0f}",
            f"{r['synthetic']['sentences_per_second']:,.0f}",
        ),
        (
            f"peak RSS MiB (import only: {r['baseline']['peak_rss_bytes'] / mib:.0f})",
            f"{r['multi30k']['peak_rss_bytes'] / mib:.0f}",
            f"{r['synthetic']['peak_rss_bytes'] / mib:.0f}",
        ),
        (
            f"padding, grouped @ {MAX_TOKENS}",
            f"{r['padding']['multi30k']['grouped']['padding_fraction']:.1%}",
            f"{r['padding']['synthetic']['grouped']['padding_fraction']:.1%}",
        ),
        (
            f"padding, random @ {MAX_TOKENS}",
            f"{r['padding']['multi30k']['random']['padding_fraction']:.1%}",
            f"{r['padding']['synthetic']['random']['padding_fraction']:.1%}",
        ),
        (
            "batches grouped / random",
            f"{r['padding']['multi30k']['grouped']['batches']} / "
            f"{r['padding']['multi30k']['random']['batches']}",
            f"{r['padding']['synthetic']['grouped']['batches']} / "
            f"{r['padding']['synthetic']['random']['batches']}",
        ),
        (
            "sampler epoch build s",
            f"{r['padding']['multi30k']['sampler_epoch_seconds']:.2f}",
            f"{r['padding']['synthetic']['sampler_epoch_seconds']:.2f}",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    for k, row in enumerate(rows):
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            )
        )
        if k == 0:
            print("  ".join("-" * w for w in widths))
    ok = "OK" if r["synthetic"]["rss_ok"] else "OVER THE LIMIT"
    print(
        f"\nsynthetic peak RSS {r['synthetic']['peak_rss_bytes'] / mib:.0f} MiB "
        f"(< {RSS_LIMIT_BYTES / mib:.0f} MiB: {ok})"
    )


if __name__ == "__main__":
    sys.exit(main())
