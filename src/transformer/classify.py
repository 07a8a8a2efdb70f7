"""`transformer classify`: a Unix filter, one output line per input line.

Each input line is one text; its output line is `LABEL<TAB>PROBABILITY`, or with `--top-k K` the
K most probable classes, best first: `LABEL<TAB>PROB<TAB>LABEL<TAB>PROB...`. An empty (or
all-whitespace) input line gives an empty output line, so outputs stay aligned with inputs. Lines
are read as they arrive and classified in batches of what is waiting (at most `--buffer` lines),
so it works on a live pipe as well as on a file. A text longer than a learned-position model can
take is classified from its beginning, with a warning naming the line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import BinaryIO, TextIO

PROG = "transformer classify"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="a classification model directory"
    )
    parser.add_argument("--input", default="-", help="input file (plain or .gz), - = stdin")
    parser.add_argument("--output", default="-", help="output file, - = stdout")
    parser.add_argument(
        "--top-k",
        type=int,
        default=1,
        metavar="K",
        help="write the K most probable classes of each text (default 1)",
    )
    parser.add_argument(
        "--buffer",
        type=int,
        default=256,
        metavar="LINES",
        help="classify at most this many waiting lines at once (default 256)",
    )
    from transformer.decoding.cli import add_device_arguments

    add_device_arguments(parser.add_argument_group("device"))


def load_classifier(args: argparse.Namespace):
    """The Classifier of `--model`, after setting `--threads`."""
    import torch

    from transformer.classifier import Classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    return Classifier.from_pretrained(args.model, device=args.device, precision=args.precision)


def run(args: argparse.Namespace) -> int:
    from transformer.data.errors import DataError
    from transformer.data.textfiles import open_binary
    from transformer.decoding.cli import EXACT_HINT, precision_note, run_filter
    from transformer.modeldir import ModelDirError

    try:
        classifier = load_classifier(args)
        if note := precision_note(classifier):
            print(f"{PROG}: precision {note}; {EXACT_HINT}", file=sys.stderr)
        if not 1 <= args.top_k <= len(classifier.labels):
            raise DataError(
                f"--top-k must be in [1, {len(classifier.labels)}] (the model's classes), "
                f"got {args.top_k}"
            )
        source: BinaryIO = sys.stdin.buffer if args.input == "-" else open_binary(Path(args.input))
    except (ModelDirError, DataError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    return run_filter(
        source,
        args.output,
        args.buffer,
        lambda lines, out: _classify_lines(classifier, lines, args.top_k, out),
        PROG,
    )


def _classify_lines(classifier, lines: list[tuple[int, str]], top_k: int, out: TextIO) -> None:
    """Classify one batch of (line number, text), write its lines, flush."""
    todo = [(n, text) for n, text in lines if text.strip()]
    predictions = iter(classifier.classify([text for _, text in todo], top_k=top_k))
    chunks = []
    for lineno, text in lines:
        if not text.strip():
            chunks.append("\n")
            continue
        p = next(predictions)
        if p.truncated:
            print(
                f"{PROG}: line {lineno}: longer than the model's positions; classified its "
                f"first {classifier.max_text_subwords} subwords only",
                file=sys.stderr,
            )
        chunks.append("\t".join(f"{label}\t{prob:.4f}" for label, prob in p.top) + "\n")
    out.write("".join(chunks))
    out.flush()
