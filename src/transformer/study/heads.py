"""`transformer study heads`: what every attention head of a model does, and what it is worth.

    transformer study heads --model runs/demo/model --out docs/heads

The paper (section 4, "Why self-attention") observes that "individual attention heads clearly
learn to perform different tasks". This study makes that visible on your own model:

1. It translates the first --sentences sentences of --src (default: the bundled Multi30k test
   set 2016, German, with its English references), then runs the model teacher-forced over its
   own best translations and measures every head of every layer and attention kind (encoder
   self, decoder self, cross): mean attention distance and offset, entropy (nats), the share of
   attention on the previous, own and next token, on punctuation and on EOS (BOS in decoder
   self-attention). Definitions: `transformer.study.head_stats.STATISTICS`.
2. Head ablation (off with --no-ablation): the test sentences are translated again once per
   head with that head alone masked (its output zeroed before W^O, from outside the model), and
   the corpus BLEU (sacreBLEU) is compared with the whole model's.
3. It writes OUT/heads.csv (one row per head), OUT/heads.md (a table per attention kind, the 5
   heads whose removal costs the most and the least BLEU, and every head in plain words), the
   heat maps OUT/heads_{encoder_self,decoder_self,cross}.png (layers x heads, one panel per
   statistic and one for the BLEU change) and OUT/heads_examples.png (the attention maps of the
   most distinctive heads on one sentence), and prints the Markdown.

Cost: one decode of the sentences per head, plus one. For the 3+3-layer, 4-head Multi30k model
(36 heads) one decode of the default 500 sentences with beam 4 (the paper's search) takes about
4 s on 2 idle CPU cores, so about 3 minutes in all; --greedy is about 4 times cheaper, and a
6+6-layer, 8-head model has four times as many heads, each slower. On cores shared with another
busy process, --threads 1 is several times faster than two threads. The time is estimated after
the first decode.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformer.decoding.options import DecodeOptions
    from transformer.study.head_report import HeadRow, ReportContext
    from transformer.study.head_stats import HeadStatistics
    from transformer.translator import Translation, Translator

DEFAULT_SRC = "data/multi30k/test_2016_flickr.de.gz"
DEFAULT_REF = "data/multi30k/test_2016_flickr.en.gz"
DEFAULT_SENTENCES = 500
EXAMPLE_LENGTH = 12  # source subwords + EOS of the automatically chosen example sentence
PLOTS = ("heads_encoder_self.png", "heads_decoder_self.png", "heads_cross.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `transformer study heads`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="model directory (config.json, model.safetensors, tokenizer.json)",
    )
    parser.add_argument(
        "--src",
        default=DEFAULT_SRC,
        metavar="FILE",
        help="source sentences, plain or .gz (default: %(default)s, the bundled test set)",
    )
    parser.add_argument(
        "--ref",
        default=DEFAULT_REF,
        metavar="FILE",
        help="reference translations, plain or .gz (default: %(default)s)",
    )
    parser.add_argument(
        "--sentences",
        type=int,
        default=DEFAULT_SENTENCES,
        metavar="N",
        help="use the first N sentences (default %(default)s; all if the files hold fewer)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--no-ablation",
        action="store_true",
        help="only the attention statistics: no decode per masked head (one decode in all)",
    )
    parser.add_argument(
        "--example",
        type=int,
        default=None,
        metavar="I",
        help="draw the example attention maps on sentence I (1-based, of the N used; default: "
        f"the first whose source has about {EXAMPLE_LENGTH} subwords)",
    )
    _add_decoding_arguments(parser)


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding flags of `transformer translate` (derived from DecodeOptions), --device and
    --threads."""
    from transformer.decoding.options import add_option_flags

    add_option_flags(parser)
    g = parser.add_argument_group("device")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (1 is fastest for small models on busy cores)",
    )


def run(args: argparse.Namespace) -> int:
    """Measure, ablate, write the report; 2 on bad input (the message names the option)."""
    from transformer.config import ConfigError
    from transformer.data.errors import DataError
    from transformer.modeldir import ModelDirError

    try:
        options = decode_options(args)
        sources, references = read_test_set(args.src, args.ref, args.sentences)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise DataError(f"--out {out}: exists and is not a directory")
        if args.example is not None and not 1 <= args.example <= len(sources):
            raise DataError(f"--example {args.example}: must be 1 to {len(sources)}")
        translator = load_translator(args.model, args.device, args.threads)
    except (ConfigError, ModelDirError, DataError) as e:
        print(f"transformer study heads: {e}", file=sys.stderr)
        return 2
    try:
        study = study_heads(translator, sources, references, options, ablation=not args.no_ablation)
    except KeyboardInterrupt:
        print("transformer study heads: interrupted; nothing written", file=sys.stderr)
        return 130
    context = study.context(args.model, args.src, args.ref)
    paths = write_report(out, study, context, example=args.example)
    print((out / "heads.md").read_text(encoding="utf-8"), end="")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ inputs


def decode_options(args: argparse.Namespace) -> DecodeOptions:
    """The decoding options of the flags (ConfigError naming a bad one)."""
    from transformer.decoding.options import DecodeOptions, options_from_flags

    return DecodeOptions.from_kwargs(options_from_flags(args))


def describe_options(options: DecodeOptions) -> str:
    """ "beam 4, alpha 0.6" or "greedy decoding"."""
    if options.method == "greedy" or options.beam == 1:
        return "greedy decoding" if options.method == "greedy" else "beam 1 (greedy)"
    return f"beam {options.beam}, alpha {options.alpha}"


def _bundled(path: str, default: str) -> Path:
    """`path`; the default (relative to the repository) also works from another directory."""
    p = Path(path)
    if path == default and not p.exists():
        in_repo = Path(__file__).resolve().parents[3] / default
        if in_repo.exists():
            return in_repo
    return p


def read_test_set(src: str, ref: str, sentences: int) -> tuple[list[str], list[str]]:
    """The first `sentences` lines of the source and reference files (DataError naming the
    option and the file when they are missing, unreadable, empty or do not pair up)."""
    from transformer.data.errors import DataError
    from transformer.data.textfiles import read_lines

    if sentences < 1:
        raise DataError(f"--sentences {sentences}: must be at least 1")
    texts = []
    for option, path, default in (("--src", src, DEFAULT_SRC), ("--ref", ref, DEFAULT_REF)):
        p = _bundled(path, default)
        try:
            texts.append(list(read_lines(p)))
        except DataError as e:
            raise DataError(f"{option}: {e}") from None
    source, reference = texts
    if len(source) != len(reference):
        raise DataError(
            f"--src {src} has {len(source)} lines but --ref {ref} has {len(reference)}; line i "
            "of the references must translate line i of the sources"
        )
    if not any(line.strip() for line in source[:sentences]):
        raise DataError(f"--src {src}: no sentence to translate in its first {sentences} lines")
    return source[:sentences], reference[:sentences]


def load_translator(model: str, device: str = "cpu", threads: int | None = None) -> Translator:
    """The Translator of one model directory (ModelDirError naming the file otherwise)."""
    import torch

    from transformer.translator import Translator

    if threads:
        torch.set_num_threads(threads)
    return Translator.from_pretrained(model, device=device, precision="fp32")  # exact weights


# ----------------------------------------------------------------------------------- the study


class HeadsStudy:
    """What `study_heads` measured: per-head rows, the statistics, the translations of the
    whole model (with their attention maps) and its BLEU."""

    def __init__(
        self,
        rows: list[HeadRow],
        statistics: HeadStatistics,
        translations: list[Translation],
        bleu: float,
        bleu_signature: str,
        options: DecodeOptions,
        ablation: bool,
        seconds: float,
    ):
        self.rows, self.statistics, self.translations = rows, statistics, translations
        self.bleu, self.bleu_signature = bleu, bleu_signature
        self.options, self.ablation, self.seconds = options, ablation, seconds

    def context(self, model: str, src: str, ref: str) -> ReportContext:
        """The report's header data."""
        from transformer.study.head_report import ReportContext
        from transformer.study.head_stats import KINDS

        stats = self.statistics
        return ReportContext(
            model=str(model),
            src=str(src),
            ref=str(ref),
            sentences=len(self.translations),
            decoding=describe_options(self.options),
            bleu=self.bleu,
            bleu_signature=self.bleu_signature,
            layers=stats.layers,
            heads=stats.heads,
            uniform_entropy={k: stats.uniform_entropy(k) for k in KINDS},
            ablation=self.ablation,
            seconds=self.seconds,
        )


def _hypotheses(results: list[Translation]) -> list[str]:
    return [r.text.replace("\r", " ").replace("\n", " ") for r in results]


def study_heads(
    translator: Translator,
    sources: list[str],
    references: list[str],
    options: DecodeOptions,
    ablation: bool = True,
    log: Any = None,
) -> HeadsStudy:
    """Translate, measure every head's attention, and (with `ablation`) the BLEU without each
    head. `log(message)` reports progress (default: stderr)."""
    from dataclasses import asdict

    from transformer.evaluation import corpus_scores
    from transformer.study.head_report import HeadRow
    from transformer.study.head_stats import (
        STATISTICS,
        HeadStatistics,
        all_heads,
        layer_counts,
        masked_heads,
    )

    if log is None:

        def log(message: str) -> None:
            print(message, file=sys.stderr, flush=True)

    model = translator.models[0]
    kwargs = asdict(options)
    start = time.perf_counter()
    results = translator.translate_nbest(sources, attention=True, **kwargs)
    scores = corpus_scores(_hypotheses(results), references)
    first = time.perf_counter() - start
    heads = all_heads(model)
    log(
        f"whole model: BLEU {scores.bleu:.2f} on {len(sources)} sentences "
        f"({describe_options(options)}, {first:.1f} s)"
        + (
            f"; {len(heads)} heads to ablate, about {len(heads) * first / 60:.1f} min"
            if ablation
            else ""
        )
    )
    statistics = HeadStatistics(layer_counts(model), model.config.n_heads)
    for r in results:
        if r.attention_maps is not None:  # None: an empty source line
            statistics.add_maps(r.attention_maps)
    means = statistics.means()
    rows = []
    for kind, layer, head in heads:
        stats = {
            s.name: float(means[kind][s.name][layer, head])
            if s.name in means[kind]
            else float("nan")
            for s in STATISTICS
        }
        rows.append(HeadRow(kind, layer + 1, head + 1, stats))
    if ablation:
        for i, ((kind, layer, head), row) in enumerate(zip(heads, rows), start=1):
            with masked_heads(model, [(kind, layer, head)]):
                masked = translator.translate_nbest(sources, **kwargs)
            row.bleu_without = corpus_scores(_hypotheses(masked), references).bleu
            row.delta = row.bleu_without - scores.bleu
            log(f"[{i}/{len(heads)}] {row.name}: BLEU {row.bleu_without:.2f} ({row.delta:+.2f})")
    return HeadsStudy(
        rows,
        statistics,
        results,
        scores.bleu,
        scores.bleu_signature,
        options,
        ablation,
        time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------- the report


def example_index(translations: list[Translation], chosen: int | None = None) -> int | None:
    """The sentence (0-based) whose attention maps are drawn: `chosen` (1-based) if given, else
    the first whose source has nearest EXAMPLE_LENGTH subwords + EOS; None if none has maps."""
    if chosen is not None:
        return chosen - 1 if translations[chosen - 1].attention_maps is not None else None
    candidates = [i for i, t in enumerate(translations) if t.attention_maps is not None]
    if not candidates:
        return None

    def distance(i: int) -> int:
        return abs(len(translations[i].attention_maps.source_tokens) - EXAMPLE_LENGTH)  # type: ignore[union-attr]

    return min(candidates, key=distance)


def write_report(
    out: Path, study: HeadsStudy, context: ReportContext, example: int | None = None
) -> list[Path]:
    """Write heads.csv, heads.md and the PNGs into `out` (each atomically); returns the paths."""
    from transformer.io import atomic_write_bytes, atomic_write_text
    from transformer.study.head_report import (
        distinctive_heads,
        examples_figure,
        heads_csv,
        heads_markdown,
        heatmap_figure,
        png_bytes,
    )
    from transformer.study.head_stats import KINDS

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "heads.csv", out / "heads.md"]
    atomic_write_text(written[0], heads_csv(study.rows))
    for kind, name in zip(KINDS, PLOTS):
        atomic_write_bytes(out / name, png_bytes(heatmap_figure(kind, study.rows, context)))
        written.append(out / name)
    index = example_index(study.translations, example)
    if index is not None:
        t = study.translations[index]
        picks = distinctive_heads(study.rows, context.uniform_entropy)
        caption = f"\nsentence {index + 1}: {t.source}\ntranslation: {t.text}"
        figure = examples_figure(t.attention_maps, picks, caption)  # type: ignore[arg-type]
        atomic_write_bytes(out / "heads_examples.png", png_bytes(figure))
        written.append(out / "heads_examples.png")
        context.example = f"sentence {index + 1}, “{t.source}” → “{t.text}”"
    context.files = [p.name for p in written]
    atomic_write_text(written[1], heads_markdown(study.rows, context))
    return written
