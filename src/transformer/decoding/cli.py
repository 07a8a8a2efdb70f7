"""`transformer translate`: a Unix filter, one output line per input line.

Lines are read as they arrive (a reader thread fills a queue; whatever is there, up to
`--buffer` lines, is translated as one batch, written and flushed), so it works on a live pipe as
well as on a file. An empty input line gives an empty output line. With `--nbest K` every input
line gives K lines `I ||| HYPOTHESIS ||| SCORE ||| LOG_PROB` (I the 0-based input line index, SCORE
the length-normalised ranking score, LOG_PROB the summed token log-probabilities, EOS included),
best first. Inputs longer than a learned-position model can take are truncated with a warning on
stderr naming the line; no line is ever dropped. `--engine ctranslate2` decodes with CTranslate2 a
directory written by `transformer export --format ctranslate2` (same options, same output format).
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from transformer.config import ConfigError
from transformer.decoding.options import DecodeOptions, add_option_flags, options_from_flags
from transformer.hardware import DEFAULT_INFERENCE_PRECISION, INFERENCE_PRECISIONS

# ------------------------------------------------------------------ options shared with evaluate


def add_decode_arguments(
    parser: argparse.ArgumentParser, options: type[DecodeOptions] = DecodeOptions
) -> None:
    """--model, the decoding options and --device / --threads (translate, evaluate, visualize).

    The decoding flags are derived from the fields of `options` (see decoding/options.py): one
    `--name-with-dashes` per field, with its default, type, choices and help.
    """
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR",
        help="model directory (config.json, model.safetensors, tokenizer.json); repeat it to "
        "decode with an ensemble (log-probabilities averaged)",
    )
    add_option_flags(parser, options)
    add_device_arguments(parser.add_argument_group("device"))


def add_device_arguments(group: argparse._ActionsContainer) -> None:
    """--device, --threads and --precision: where and how a model runs (translate, evaluate,
    visualize, classify, serve)."""
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    group.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default=DEFAULT_INFERENCE_PRECISION,
        help="auto (default): bf16 on a CPU with AMX-bf16 or AVX512-BF16, where it is faster, "
        "else fp32; fp32: exact; bf16: autocast, outputs may differ slightly from fp32's "
        "(torch engine)",
    )


def decode_options(
    args: argparse.Namespace, options: type[DecodeOptions] = DecodeOptions
) -> dict[str, Any]:
    """Keyword options for `Translator.translate_nbest` from arguments parsed with
    `add_decode_arguments`: those given on the command line, so that a model directory's own
    decoding defaults (a parser's beam 21) apply to the others; `Translator.options` resolves
    them. Checked (ConfigError) as far as they go without the model."""
    given = options_from_flags(args, options, given_only=True)
    options.check_given(given)
    return given


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """--engine (translate and evaluate): which engine decodes (`transformer.decoding.engine`)."""
    parser.add_argument(
        "--engine",
        choices=["torch", "ctranslate2"],
        default="torch",
        help="torch (default): PyTorch, model directories, ensembles; ctranslate2: CTranslate2 "
        "on a directory written by `transformer export --format ctranslate2` (pip install "
        "'.[fast]'); --threads sets its threads too",
    )


def load_translator(args: argparse.Namespace):
    """The Translator of `--model` (one or several), after setting `--threads`."""
    import torch

    from transformer.translator import Translator

    if args.threads:
        torch.set_num_threads(args.threads)  # CTranslate2 takes torch.get_num_threads() too
    engine = getattr(args, "engine", "torch")
    return Translator.from_pretrained(
        args.model, device=args.device, engine=engine, precision=args.precision
    )


EXACT_HINT = "--precision fp32 for exact float32"


def precision_note(facade: Any) -> str | None:
    """The precision `--precision auto` chose for a loaded Translator or Classifier, and why
    ("bf16 (auto: the CPU has AVX512-BF16)"), for the log; None when the precision was given or
    the engine is not torch's."""
    if not facade.precision_reason.startswith("auto"):
        return None
    return f"{facade.precision} ({facade.precision_reason})"


def one_line(text: str) -> str:
    """A hypothesis on one output line (a generated line break would split it in two)."""
    return text.replace("\r", " ").replace("\n", " ")


# ---------------------------------------------------------------------------------- translate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    add_decode_arguments(parser)
    add_engine_argument(parser)
    parser.add_argument("--input", default="-", help="input file (plain or .gz), - = stdin")
    parser.add_argument("--output", default="-", help="output file, - = stdout")
    parser.add_argument(
        "--buffer",
        type=int,
        default=256,
        metavar="LINES",
        help="translate at most this many waiting lines at once (default 256)",
    )


def run(args: argparse.Namespace) -> int:
    from transformer.data.errors import DataError
    from transformer.data.textfiles import open_binary
    from transformer.modeldir import ModelDirError

    try:
        options = decode_options(args)  # bad options are reported before loading anything
        translator = load_translator(args)
        if note := precision_note(translator):
            print(f"transformer translate: precision {note}; {EXACT_HINT}", file=sys.stderr)
        nbest = translator.options(**options).nbest
        source: BinaryIO = sys.stdin.buffer if args.input == "-" else open_binary(Path(args.input))
    except (ConfigError, ModelDirError, DataError) as e:
        print(f"transformer translate: {e}", file=sys.stderr)
        return 2
    return run_filter(
        source,
        args.output,
        args.buffer,
        lambda lines, out: _translate_lines(translator, lines, options, nbest, out),
    )


def run_filter(
    source: BinaryIO,
    output: str,
    buffer: int,
    process: Callable[[list[tuple[int, str]], TextIO], None],
    prog: str = "transformer translate",
) -> int:
    """A Unix filter's main loop: read `source` as lines arrive, hand each batch of (line number,
    text) to `process(lines, out)` (which writes and flushes its output lines), with a progress bar
    on a terminal; `output` "-" is stdout. Returns the exit status (0, or 130 on Ctrl-C); a
    reader that goes away (`| head`) ends it quietly."""
    out: TextIO = (
        sys.stdout if output == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
    )
    progress = progress_bar()
    try:
        for lines in line_batches(source, max(1, buffer), prog):
            process(lines, out)
            if progress is not None:
                progress.update(len(lines))
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if progress is not None:
            progress.close()
        if out is not sys.stdout:
            out.close()
    return 0


def _translate_lines(
    translator, lines: list[tuple[int, str]], options: dict, nbest: int, out: TextIO
) -> None:
    """Translate one batch of (line number, text) and write its lines, then flush."""
    results = translator.translate_nbest([text for _, text in lines], **options)
    chunks = []
    for (lineno, _), result in zip(lines, results):
        if result.truncated:
            print(
                f"transformer translate: line {lineno}: longer than the model's "
                f"{translator.max_positions} positions; translated its first "
                f"{translator.max_source_subwords} subwords only",
                file=sys.stderr,
            )
        if nbest > 1:
            for h in result.hypotheses:
                chunks.append(
                    f"{lineno - 1} ||| {one_line(h.text)} ||| {h.score:.4f} ||| {h.log_prob:.4f}\n"
                )
        else:
            chunks.append(one_line(result.text) + "\n")
    out.write("".join(chunks))
    out.flush()


_END = object()


def line_batches(
    stream: BinaryIO, size: int, prog: str = "transformer translate"
) -> Iterator[list[tuple[int, str]]]:
    """Batches of (1-based line number, text): all lines waiting (at most `size`), never waiting
    for more than the first, so each line is processed as soon as it has arrived (`prog` names
    the command in warnings)."""
    lines: queue.Queue = queue.Queue(maxsize=4 * size)

    def read() -> None:
        try:
            for lineno, raw in enumerate(stream, start=1):
                lines.put((lineno, _decode_line(raw, lineno, prog)))
        except BaseException as e:  # handed to the main thread
            lines.put(e)
        lines.put(_END)

    threading.Thread(target=read, name="translate-reader", daemon=True).start()
    done = False
    while not done:
        item = lines.get()
        batch = []
        while True:
            if item is _END:
                done = True
                break
            if isinstance(item, BaseException):
                raise item
            batch.append(item)
            if len(batch) >= size:
                break
            try:
                item = lines.get_nowait()
            except queue.Empty:
                break
        if batch:
            yield batch


def _decode_line(raw: bytes, lineno: int, prog: str) -> str:
    """A line without its LF / CRLF; invalid UTF-8 is replaced (with a warning), never dropped."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        print(
            f"{prog}: line {lineno}: invalid UTF-8, undecodable bytes replaced by U+FFFD",
            file=sys.stderr,
        )
        text = raw.decode("utf-8", errors="replace")
    return text[1:] if lineno == 1 and text.startswith("\ufeff") else text  # drop a BOM


def progress_bar():
    """A tqdm bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit=" lines", file=sys.stderr)
