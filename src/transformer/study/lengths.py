"""`transformer study lengths`: do positional encodings let a model translate inputs longer than
any it saw in training?

    transformer study lengths --config configs/study-multi30k.yaml --budget 600 --out out/lengths

1. Training data: WORK/train-srcL/ is the config's prepared data directory with only the training
   pairs whose source has at most L subwords (--max-source-length, default 20: 86 % of Multi30k's
   training pairs, whose sources have 15 subwords on average and at most 54). Validation and test
   splits are copied whole. A filtered copy (`transformer.data.subset`) rather than a training
   option keeps the trainer and the run config as they are: each model's `data.dir` points at the
   copy, which records in its manifest what it was taken from.
2. One model per value of `ModelConfig.positional` (sinusoidal, learned, none; an option added to
   the `Positional` type joins by itself), all trained on that copy for the same budget by the
   row runner of the other studies: WORK/rows/OPTION/ is resumable and kept once finished.
3. Test inputs: the sentences of the test split alone, each exactly once, and joined with their
   neighbours in consecutive, non-overlapping groups of 2, 3, 4 and 6 (--join; a last, shorter
   group is left out), the references joined in the same order. Joining makes inputs far longer
   than L from real sentences. Every input goes into the bin of its source length in subwords
   (--bins 10,20,30,45,70: 1-10, 11-20, 21-30, 31-45, 46-70, 71+; empty inputs count in the first).
4. Each model translates every input through the Translator (beam 4, alpha 0.6; --greedy: greedy
   search), and the hypotheses of each bin are scored against their references with sacreBLEU
   corpus BLEU. Translations are kept per model (WORK/rows/OPTION/length-translations.json),
   so re-running only scores again. WORK is --work, or OUT itself.

Learned positions: the table has `max_positions` rows (1024 by default), far more than the test
inputs need, but the encoder trained only those of sources up to L subwords; the others keep their
random initial values. An input longer than the table would be cut to `max_positions - 1` subwords
and flagged by the Translator; the report counts such inputs (column `truncated`).

Outputs in OUT: results.csv (one row per option and bin), results.md (bins as columns, options as
rows; printed), results.png (BLEU and length ratio per bin, the training limit marked).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MAX_SOURCE_LENGTH = 20
DEFAULT_BINS = "10,20,30,45,70"
DEFAULT_JOIN = "2,3,4,6"
TRANSLATIONS = "length-translations.json"
ALL_SINGLE = "all single sentences"  # the bin name of the whole un-joined test set


def positional_options() -> tuple[str, ...]:
    """Every value of `ModelConfig.positional`, in the order the type declares them."""
    from transformer.config import Positional

    return tuple(typing.get_args(Positional))


# ------------------------------------------------------------------------------ bins and inputs


@dataclass(frozen=True)
class LengthBin:
    """Source lengths `low`..`high` subwords (`high` None: no upper end)."""

    low: int
    high: int | None

    @property
    def label(self) -> str:
        return f"{self.low}+" if self.high is None else f"{self.low}-{self.high}"

    def contains(self, length: int) -> bool:
        return length >= self.low and (self.high is None or length <= self.high)


def parse_sizes(text: str, option: str) -> list[int]:
    """'10,20,30' -> [10, 20, 30]: positive integers, strictly increasing; errors name `option`."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"{option}: expected comma-separated whole numbers, got {text!r}"
        ) from None
    if not values or values[0] < 1 or any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(
            f"{option}: expected positive numbers in increasing order, e.g. 2,3,4, got {text!r}"
        )
    return values


def make_bins(edges: Sequence[int]) -> list[LengthBin]:
    """Bins ending at each edge, then one open bin: [10, 20] -> 1-10, 11-20, 21+."""
    bins, low = [], 1
    for edge in edges:
        bins.append(LengthBin(low, edge))
        low = edge + 1
    bins.append(LengthBin(low, None))
    return bins


def bin_index(length: int, bins: Sequence[LengthBin]) -> int:
    """The bin of a source length (an empty input counts in the first bin)."""
    for i, b in enumerate(bins):
        if b.contains(length):
            return i
    return 0


@dataclass(frozen=True)
class TestInput:
    """One input: test lines `lines` (consecutive, 0-based) joined, with their joined references."""

    lines: tuple[int, ...]
    source: str
    reference: str


def join_consecutive(
    sources: Sequence[str], references: Sequence[str], sizes: Sequence[int]
) -> list[TestInput]:
    """Every sentence alone, then consecutive non-overlapping groups of each size in `sizes`.

    Lines are stripped and joined with one space, references in the same order as sources.
    A last group shorter than its size is left out, so every input of size k joins k sentences.
    """
    if len(sources) != len(references):
        raise ValueError(
            f"{len(sources)} source lines but {len(references)} references; they must pair up"
        )
    src = [s.strip() for s in sources]
    ref = [r.strip() for r in references]
    inputs = [TestInput((i,), src[i], ref[i]) for i in range(len(src))]
    for k in sizes:
        if k < 2:
            raise ValueError(f"--join: group sizes are 2 or more (1 is always there), got {k}")
        for start in range(0, len(src) - k + 1, k):
            lines = tuple(range(start, start + k))
            inputs.append(
                TestInput(lines, " ".join(src[i] for i in lines), " ".join(ref[i] for i in lines))
            )
    return inputs


# ------------------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class BinScore:
    """BLEU of one option on one set of inputs, with what tells a short output from a bad one.

    kind: "length" (a source-length bin), "all" (the whole un-joined test set) or "sentences"
    (by the number of sentences joined: single ones up to L or longer, pairs, triples...).
    """

    option: str
    kind: str
    bin: str
    low: int | None
    high: int | None
    sentences: int
    bleu: float | None
    chrf: float | None
    mean_source_length: float | None
    length_ratio: float | None  # mean over inputs of hypothesis / reference words
    corpus_length_ratio: float | None  # all hypothesis words / all reference words
    truncated: int


def single_label(max_source_length: int, longer: bool) -> str:
    """The name of the un-joined inputs up to L subwords, or of those longer than L."""
    return f"single > {max_source_length}" if longer else f"single <= {max_source_length}"


def score_bins(
    option: str,
    inputs: Sequence[TestInput],
    lengths: Sequence[int],
    hypotheses: Sequence[str],
    truncated: Sequence[bool],
    bins: Sequence[LengthBin],
    max_source_length: int,
) -> list[BinScore]:
    """Corpus BLEU per bin; over the whole un-joined test set (ALL_SINGLE); then by sentences
    joined: single sentences up to L and longer than L, then each join size ("joined K").

    The split by sentences tells a longer input from a multi-sentence one: a single sentence
    longer than L is long without being joined.
    """
    from transformer.evaluation.metrics import corpus_scores

    by_length: list[list[int]] = [[] for _ in bins]
    for i, length in enumerate(lengths):
        by_length[bin_index(length, bins)].append(i)
    singles = [i for i, x in enumerate(inputs) if len(x.lines) == 1]
    named: list[tuple[str, str, int | None, int | None, list[int]]] = [
        ("length", b.label, b.low, b.high, g) for b, g in zip(bins, by_length)
    ]
    named.append(("all", ALL_SINGLE, None, None, singles))
    for longer in (False, True):
        members = [i for i in singles if (lengths[i] > max_source_length) == longer]
        named.append(("sentences", single_label(max_source_length, longer), None, None, members))
    for k in sorted({len(x.lines) for x in inputs} - {1}):
        members = [i for i, x in enumerate(inputs) if len(x.lines) == k]
        named.append(("sentences", f"joined {k}", None, None, members))
    scores = []
    for kind, label, low, high, members in named:
        if not members:
            scores.append(
                BinScore(option, kind, label, low, high, 0, None, None, None, None, None, 0)
            )
            continue
        hyps = [hypotheses[i] for i in members]
        refs = [inputs[i].reference for i in members]
        result = corpus_scores(hyps, refs)
        hyp_words = [len(h.split()) for h in hyps]
        ref_words = [max(1, len(r.split())) for r in refs]
        scores.append(
            BinScore(
                option=option,
                kind=kind,
                bin=label,
                low=low,
                high=high,
                sentences=len(members),
                bleu=result.bleu,
                chrf=result.chrf,
                mean_source_length=sum(lengths[i] for i in members) / len(members),
                length_ratio=sum(h / r for h, r in zip(hyp_words, ref_words)) / len(members),
                corpus_length_ratio=sum(hyp_words) / sum(ref_words),
                truncated=sum(bool(truncated[i]) for i in members),
            )
        )
    return scores


# -------------------------------------------------------------------------------- translation


def translate_inputs(
    model_dir: Path,
    sources: Sequence[str],
    decode: dict[str, Any],
    cache: Path,
    device: str,
    log: Callable[[str], None],
) -> tuple[list[str], list[bool]]:
    """Hypotheses and truncation flags of `model_dir` for `sources`, kept in `cache` (JSON).

    The cache is used only when it was written for the same model files, inputs and decoding.
    """
    import hashlib
    import json
    import time

    from transformer.data.textfiles import file_sha256
    from transformer.io import atomic_write_json
    from transformer.translator import Translator

    key = {
        "model": file_sha256(model_dir / "model.safetensors"),
        "inputs": hashlib.sha256(json.dumps(list(sources)).encode("utf-8")).hexdigest(),
        "decode": decode,
    }
    try:
        kept = json.loads(cache.read_text(encoding="utf-8"))
        if kept.get("key") == key and len(kept["hypotheses"]) == len(sources):
            log(f"translations of {model_dir} kept from {cache}")
            return list(kept["hypotheses"]), list(kept["truncated"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    translator = Translator.from_pretrained(model_dir, device=device, precision="fp32")
    started = time.perf_counter()
    done, last = 0, started

    def progress(n: int) -> None:
        nonlocal done, last
        done += n
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            log(f"translated {done} of {len(sources)} inputs ({last - started:.0f} s)")

    results = translator.translate_nbest(list(sources), progress=progress, **decode)
    hypotheses = [r.text for r in results]
    truncated = [r.truncated for r in results]
    log(f"translated {len(sources)} inputs in {time.perf_counter() - started:.0f} s")
    atomic_write_json(cache, {"key": key, "hypotheses": hypotheses, "truncated": truncated})
    return hypotheses, truncated


# ------------------------------------------------------------------------------------- report

CSV_FIELDS = [
    "option", "kind", "bin", "low", "high", "sentences", "bleu", "chrf", "mean_source_length",
    "length_ratio", "corpus_length_ratio", "truncated", "updates", "valid_ppl",
]  # fmt: skip


@dataclass
class OptionResult:
    """One positional option: its training outcome and, once translated, its scores per bin."""

    option: str
    result: dict[str, Any] | None = None
    error: str | None = None
    scores: list[BinScore] | None = None


def results_csv(results: Sequence[OptionResult]) -> str:
    """One line per option and bin (failed options: one line with no scores)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()

    def cell(value: Any) -> Any:
        if isinstance(value, float):
            return f"{value:.6g}"
        return "" if value is None else value

    for r in results:
        trained = {
            "updates": r.result["updates"] if r.result else None,
            "valid_ppl": r.result["valid_ppl"] if r.result else None,
        }
        if r.scores is None:
            writer.writerow({"option": r.option, "bin": "failed"})
            continue
        for s in r.scores:
            row = {**s.__dict__, **trained}
            writer.writerow({k: cell(row.get(k)) for k in CSV_FIELDS})
    return buffer.getvalue()


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown_report(
    results: Sequence[OptionResult],
    bins: Sequence[LengthBin],
    max_source_length: int,
    context: list[str],
    notes: list[str],
) -> str:
    """Tables with bins as columns and options as rows: BLEU, then the length ratio."""
    labels = [b.label + (" †" if b.low > max_source_length else "") for b in bins]
    scored = [r for r in results if r.scores is not None]

    def by_bin(r: OptionResult) -> dict[str, BinScore]:
        return {s.bin: s for s in r.scores or []}

    lines = [
        "## Positional encodings on inputs longer than any seen in training",
        "",
        *context,
        "",
        f"BLEU per source length in subwords. Training sources had at most "
        f"**L = {max_source_length}** subwords; † marks bins of inputs longer than any of them.",
        "",
        "| positional | updates | dev PPL | " + " | ".join(labels) + f" | {ALL_SINGLE} |",
        "|---|---:|---:|" + "---:|" * (len(bins) + 1),
    ]
    for r in results:
        if r.scores is None:
            lines.append(
                "| " + " | ".join([r.option, "failed", "", *[""] * (len(bins) + 1)]) + " |"
            )
            continue
        cells = by_bin(r)
        row = [
            r.option,
            str(r.result["updates"]) if r.result else "",
            _fmt(r.result["valid_ppl"], ".2f") if r.result else "",
            *(_fmt(cells[b.label].bleu, ".1f") for b in bins),
            _fmt(cells[ALL_SINGLE].bleu, ".1f"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if scored:
        first = by_bin(scored[0])
        every = [*(b.label for b in bins), ALL_SINGLE]
        lines.append(
            "| *inputs* | | | " + " | ".join(str(first[k].sentences) for k in every) + " |"
        )
        lines.append(
            "| *mean source subwords* | | | "
            + " | ".join(_fmt(first[k].mean_source_length, ".1f") for k in every)
            + " |"
        )
        lines += [
            "",
            "Hypothesis / reference length in words (mean over the bin's inputs); a model that "
            "stops after the first sentence of a joined input falls well below 1:",
            "",
            "| positional | " + " | ".join(labels) + f" | {ALL_SINGLE} |",
            "|---|" + "---:|" * (len(bins) + 1),
        ]
        for r in scored:
            cells = by_bin(r)
            lines.append(
                f"| {r.option} | "
                + " | ".join(_fmt(cells[k].length_ratio, ".2f") for k in every)
                + " |"
            )
        by_sentences = [s.bin for s in scored[0].scores or [] if s.kind == "sentences"]
        lines += [
            "",
            "By sentences per input: BLEU (hypothesis / reference length). A single sentence "
            "longer than L is long without being joined; joined inputs are long and hold several "
            "sentences:",
            "",
            "| positional | " + " | ".join(by_sentences) + " |",
            "|---|" + "---:|" * len(by_sentences),
        ]
        for r in scored:
            cells = by_bin(r)
            lines.append(
                f"| {r.option} | "
                + " | ".join(
                    f"{_fmt(cells[k].bleu, '.1f')} ({_fmt(cells[k].length_ratio, '.2f')})"
                    for k in by_sentences
                )
                + " |"
            )
        lines.append(
            "| *inputs (mean source subwords)* | "
            + " | ".join(
                f"{first[k].sentences} ({_fmt(first[k].mean_source_length, '.1f')})"
                for k in by_sentences
            )
            + " |"
        )
    failed = [r for r in results if r.error is not None]
    if failed:
        lines += ["", "Failed:", ""] + [f"- {r.option}: {r.error}" for r in failed]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def limit_position(bins: Sequence[LengthBin], max_source_length: int) -> float:
    """Where L falls on a plot with bin i at x = i (a bin spans i - 0.5 to i + 0.5)."""
    for i, b in enumerate(bins):
        if b.contains(max_source_length):
            if b.high is None:
                return float(i)
            return i - 0.5 + (max_source_length - b.low + 1) / (b.high - b.low + 1)
    return -0.5


def plot_png(
    results: Sequence[OptionResult], bins: Sequence[LengthBin], max_source_length: int, title: str
) -> bytes:
    """BLEU and hypothesis/reference length per bin, one line per option, L marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(bins)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    limit = limit_position(bins, max_source_length)
    for r in results:
        if r.scores is None:
            continue
        cells = {s.bin: s for s in r.scores}
        bleu = [cells[b.label].bleu for b in bins]
        ratio = [cells[b.label].length_ratio for b in bins]
        for ax, values in ((axes[0], bleu), (axes[1], ratio)):
            ax.plot(
                x,
                [float("nan") if v is None else v for v in values],
                marker="o",
                label=r.option,
            )
    for ax, name in ((axes[0], "BLEU"), (axes[1], "hypothesis / reference length (words)")):
        ax.axvline(limit, color="black", linestyle="--", linewidth=1)
        ax.text(
            limit,
            0.98,
            f" training limit\n L = {max_source_length}",
            transform=ax.get_xaxis_transform(),
            va="top",
            fontsize=8,
        )
        ax.set_xticks(x)
        ax.set_xticklabels([b.label for b in bins])
        ax.set_xlabel("source length (subwords)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    axes[0].legend(title="positional")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------- the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `transformer study lengths`."""
    from transformer.training.config import add_override_argument

    options = ", ".join(positional_options())
    parser.add_argument("--config", required=True, metavar="CONFIG.yaml", help="the base config")
    add_override_argument(parser)
    parser.add_argument(
        "--budget",
        required=True,
        help="per model: optimizer updates (300) or minutes of training (20m)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="where results.csv, .md and .png go"
    )
    parser.add_argument(
        "--work",
        metavar="DIR",
        help="where the training subset and the models go (default: OUT), e.g. a directory "
        "kept out of version control when OUT is not",
    )
    parser.add_argument(
        "--max-source-length",
        type=int,
        default=DEFAULT_MAX_SOURCE_LENGTH,
        metavar="L",
        help="train on the pairs whose source has at most L subwords (default %(default)s)",
    )
    parser.add_argument(
        "--positional",
        metavar="LIST",
        help=f"only these positional options (default: all of {options})",
    )
    parser.add_argument(
        "--bins",
        default=DEFAULT_BINS,
        metavar="EDGES",
        help="upper ends of the source-length bins in subwords; one more bin holds the longer "
        "inputs (default %(default)s)",
    )
    parser.add_argument(
        "--join",
        default=DEFAULT_JOIN,
        metavar="SIZES",
        help="also translate consecutive test sentences joined in groups of these sizes "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--test-split",
        metavar="NAME",
        help="the split to translate (default: the data directory's first test split)",
    )
    parser.add_argument(
        "--greedy", action="store_true", help="greedy search instead of beam 4 (cheaper)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of every model (default: the config's)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="models trained at once (default: one per CUDA device if there are several, else 1)",
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _selected_options(text: str | None) -> list[str]:
    known = positional_options()
    if not text:
        return list(known)
    wanted = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in known]
    if unknown or not wanted:
        raise ValueError(
            f"--positional: unknown {', '.join(unknown) or 'empty list'} "
            f"(the options are {', '.join(known)})"
        )
    return list(dict.fromkeys(wanted))


def _test_split(manifest: dict[str, Any], data_dir: str, valid: str, wanted: str | None) -> str:
    splits = manifest.get("splits", {})
    if wanted is not None:
        if wanted not in splits or not splits[wanted].get("text"):
            raise ValueError(
                f"--test-split {wanted}: {data_dir} has no such split with its text (splits: "
                f"{', '.join(n for n in splits if splits[n].get('text')) or 'none'})"
            )
        return wanted
    tests = [n for n in splits if n not in ("train", valid) and splits[n].get("text")]
    if not tests:
        raise ValueError(
            f"{data_dir}: no test split; prepare the data with --test PREFIX, "
            "or name a split with --test-split"
        )
    return tests[0]


def run(args: argparse.Namespace) -> int:
    """Train (or keep) one model per positional option, translate the binned test inputs, report."""
    from transformer.data.dataset import load_split, load_tokenizer, read_manifest
    from transformer.data.subset import source_length_subset
    from transformer.data.textfiles import read_lines
    from transformer.io import atomic_write_bytes, atomic_write_text
    from transformer.study.rows import Row
    from transformer.study.runner import ROWS, Budget, RowInterrupted, run_rows
    from transformer.training.checkpoint import checkpoint_dir
    from transformer.training.config import load_config

    out = Path(args.out)
    work = Path(args.work) if args.work else out
    limit = args.max_source_length
    try:
        if limit < 1:
            raise ValueError(f"--max-source-length must be at least 1, got {limit}")
        if args.jobs < 0:
            raise ValueError(f"--jobs must be >= 0, got {args.jobs}")
        budget = Budget.parse(args.budget)
        options = _selected_options(args.positional)
        bins = make_bins(parse_sizes(args.bins, "--bins"))
        join = parse_sizes(args.join, "--join")
        base = load_config(args.config, args.overrides)
        data_dir = base.data.dir
        manifest = read_manifest(data_dir)
        split = _test_split(manifest, data_dir, base.data.valid_split, args.test_split)
        text = manifest["splits"][split]["text"]
        sources = list(read_lines(Path(data_dir) / text["src"]))
        references = list(read_lines(Path(data_dir) / text["tgt"]))
        inputs = join_consecutive(sources, references, join)
        train = load_split(data_dir, "train")
        subset_dir = work / f"train-src{limit}"
        _say(f"writing (or keeping) the training pairs with sources <= {limit} in {subset_dir}")
        subset = source_length_subset(data_dir, subset_dir, limit)
    except ValueError as e:  # ConfigError and DataError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    if subset["subset"]["pairs"] == len(train):
        _say(
            f"warning: no training source is longer than {limit} subwords, so every test input "
            "of that length was seen in training; lower --max-source-length"
        )

    import torch

    gpus = torch.cuda.device_count() if base.train.device in ("auto", "cuda") else 0
    jobs = args.jobs or (gpus if gpus > 1 else 1)
    devices = [str(i % gpus) for i in range(jobs)] if gpus else ["cpu"] * jobs
    seed = base.train.seed if args.seed is None else args.seed
    rows = [
        Row(o, "lengths", f"positional: {o}, sources <= {limit} subwords", {"positional": o})
        for o in options
    ]
    trained_base = base.replace("data", dir=str(subset_dir))
    _say(
        f"study lengths: {len(rows)} models ({', '.join(options)}), {budget} each, seed {seed}, "
        f"{jobs} at a time, trained on {subset['subset']['pairs']} of {len(train)} pairs; "
        f"models in {work / ROWS}, results in {out}"
    )
    try:
        outcomes = run_rows(rows, trained_base, work, budget, seed, jobs=jobs, devices=devices)
    except (RowInterrupted, KeyboardInterrupt):
        _say(
            "interrupted: finished models are kept and the current one resumes; re-run the "
            "same command to go on"
        )
        return 130

    tokenizer = load_tokenizer(data_dir)
    lengths = [len(ids) for ids in tokenizer.encode_batch([x.source for x in inputs])]
    decode: dict[str, Any] = {"method": "greedy"} if args.greedy else {"method": "beam", "beam": 4}
    device = "cuda" if gpus else "cpu"
    results: list[OptionResult] = []
    for outcome in outcomes:
        option = outcome.row.key
        entry = OptionResult(option, result=outcome.result, error=outcome.error)
        results.append(entry)
        if outcome.result is None:
            continue
        row_dir = work / ROWS / option
        model_dir = checkpoint_dir(row_dir, outcome.result["updates"])
        try:
            hypotheses, truncated = translate_inputs(
                model_dir,
                [x.source for x in inputs],
                decode,
                row_dir / TRANSLATIONS,
                device,
                lambda m, o=option: _say(f"[{o}] {m}"),
            )
        except (OSError, ValueError) as e:
            entry.error = f"cannot translate with {model_dir}: {e}"
            _say(f"[{option}] {entry.error}")
            continue
        entry.scores = score_bins(option, inputs, lengths, hypotheses, truncated, bins, limit)

    kept = subset["splits"]["train"]["lengths"]
    search = "greedy search" if args.greedy else "beam 4, alpha 0.6"
    context = [
        f"Training: the {subset['subset']['pairs']:,} of {len(train):,} training pairs of "
        f"`{data_dir}` whose source has at most {limit} subwords "
        f"({subset['subset']['pairs'] / len(train):.0%}; their targets have at most "
        f"{kept['tgt'].get('max', 0)} subwords); {budget} per model, seed {seed}; base config "
        f"`{args.config}`" + (f" with {', '.join(args.overrides)}" if args.overrides else "") + ".",
        f"Test: split `{split}`, {len(sources):,} sentences alone and joined in consecutive "
        f"groups of {', '.join(map(str, join))} (references joined in the same order): "
        f"{len(inputs):,} inputs, {max(lengths, default=0)} subwords at most. Decoding: {search}; "
        "sacreBLEU corpus BLEU per bin.",
    ]
    notes = _notes(results, lengths, kept)
    md = markdown_report(results, bins, limit, context, notes)
    title = f"Positional encodings vs source length (trained on sources <= {limit} subwords)"
    paths = [out / "results.csv", out / "results.md", out / "results.png"]
    atomic_write_text(paths[0], results_csv(results))
    atomic_write_text(paths[1], md)
    atomic_write_bytes(paths[2], plot_png(results, bins, limit, title))
    print(md)
    _say("wrote " + ", ".join(str(p) for p in paths))
    failed = [r for r in results if r.error is not None]
    if failed:
        _say(
            f"{len(failed)} model(s) failed: "
            + "; ".join(f"{r.option}: {r.error}" for r in failed)
            + f" (details in {work / ROWS}/OPTION/error.txt; re-run to retry them)"
        )
        return 1
    return 0


def _notes(
    results: Sequence[OptionResult],
    lengths: Sequence[int],
    kept: dict[str, Any],
) -> list[str]:
    """What the reader needs to read the learned row (its table and what of it was trained)."""
    notes = []
    longest = max(lengths, default=0)
    for r in results:
        if r.result is None or r.result["model"].get("positional") != "learned":
            continue
        table = r.result["model"]["max_positions"]
        cut = sum(s.truncated for s in r.scores or [] if s.kind == "length")
        notes.append(
            f"{r.option}: a table of {table} learned positions. Training used the first "
            f"{kept['src'].get('max', 0) + 1} of the encoder's (a source and its end-of-sentence "
            f"token) and the first "
            f"{kept['tgt'].get('max', 0) + 1} of the decoder's; the rows after them kept their "
            "random initial values. "
            + (
                f"{cut} input(s) longer than the table were cut to {table - 1} subwords "
                "(the Translator's `truncated` flag)."
                if cut
                else f"The longest input ({longest} subwords) fits the table, so none was cut: "
                "the long bins measure untrained rows, not truncation."
            )
        )
    if any(r.option == "none" for r in results):
        notes.append(
            "none: no position information at all; the encoder sees a bag of subwords, and the "
            "decoder can tell positions apart only through its causal mask."
        )
    if any(r.option == "sinusoidal" for r in results):
        notes.append("sinusoidal: computed for any position, trained or not.")
    return notes
