"""`transformer evaluate`: translate a test set, score it with sacreBLEU, time the decoding.

BLEU and chrF are computed on the detokenized output against the raw reference file, and printed
with sacreBLEU's signatures. Speed: decoding wall-clock time (model loading excluded), sentences/s
and target tokens/s, where target tokens are the subword tokens of the best hypotheses, each
sentence's EOS included (the decoder steps that produced them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from transformer.config import ConfigError
from transformer.decoding.cli import (
    add_decode_arguments,
    add_engine_argument,
    decode_options,
    load_translator,
    one_line,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n", 1)[0]
    add_decode_arguments(parser)
    add_engine_argument(parser)
    parser.add_argument("--src", required=True, help="source sentences (plain or .gz)")
    parser.add_argument("--ref", required=True, help="reference translations (plain or .gz)")
    parser.add_argument("--output", default=None, help="also write the hypotheses to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from transformer.data.errors import DataError
    from transformer.data.textfiles import read_lines
    from transformer.evaluation.metrics import corpus_scores
    from transformer.io import atomic_write_text
    from transformer.modeldir import ModelDirError
    from transformer.translator import DecodeOptions

    try:
        options = decode_options(args)
        DecodeOptions.from_kwargs(options)
        src = list(read_lines(Path(args.src)))
        ref = list(read_lines(Path(args.ref)))
        if len(src) != len(ref):
            raise DataError(
                f"{args.src} has {len(src)} lines but {args.ref} has {len(ref)}; "
                "line i of the references must translate line i of the sources"
            )
        translator = load_translator(args)
    except (ConfigError, ModelDirError, DataError) as e:
        print(f"transformer evaluate: {e}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    results = translator.translate_nbest(src, **options)
    seconds = time.perf_counter() - start
    hyps = [one_line(r.text) for r in results]
    tokens = sum(len(r.hypotheses[0].tokens) + 1 for r in results if r.source.strip())
    for i, r in enumerate(results, start=1):
        if r.truncated:
            print(
                f"transformer evaluate: {args.src}:{i}: longer than the model's "
                f"{translator.max_positions} positions; translated its first "
                f"{translator.max_source_subwords} subwords only",
                file=sys.stderr,
            )
    if args.output:
        atomic_write_text(args.output, "".join(h + "\n" for h in hyps))
    scores = corpus_scores(hyps, ref)
    report = {
        "bleu": round(scores.bleu, 4),
        "chrf": round(scores.chrf, 4),
        "bleu_signature": scores.bleu_signature,
        "chrf_signature": scores.chrf_signature,
        "bleu_details": scores.bleu_details,
        "sentences": len(src),
        "seconds": round(seconds, 4),
        "sentences_per_second": round(len(src) / seconds, 3) if seconds > 0 else None,
        "target_tokens": tokens,
        "target_tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
        "models": [str(m) for m in args.model],
        "engine": args.engine,
        "decoding": options,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    method = options["method"]
    how = f"beam {options['beam']}, alpha {options['alpha']}" if method == "beam" else method
    print(scores.bleu_details)
    print(f"  signature: BLEU|{scores.bleu_signature}")
    print(f"chrF2 = {scores.chrf:.2f}")
    print(f"  signature: chrF2|{scores.chrf_signature}")
    print(
        f"decoding ({how}, engine {args.engine}): {len(src)} sentences in {seconds:.2f} s, "
        f"{report['sentences_per_second']} sentences/s, "
        f"{report['target_tokens_per_second']} target tokens/s"
    )
    return 0
