"""The `transformer` command: thin subcommands over library functions.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their subcommand runs, so `transformer --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from transformer.version import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": (
        "transformer.data.prepare",
        "train a BPE tokenizer and binarize parallel text, treebanks or labelled texts",
    ),
    "train": (
        "transformer.training.cli",
        "train a model from a YAML config (resumes if interrupted)",
    ),
    "average": (
        "transformer.training.average",
        "average the last N checkpoints into a model directory",
    ),
    "plot": ("transformer.training.plot", "plot a run's training curves as PNG files"),
    "translate": (
        "transformer.decoding.cli",
        "translate lines (stdin or a file) with a model directory: a Unix filter",
    ),
    "classify": (
        "transformer.classify",
        "classify lines (stdin or a file) with a classification model: a Unix filter",
    ),
    "evaluate": (
        "transformer.evaluation.cli",
        "translate a test set and report sacreBLEU BLEU / chrF with signatures and speed",
    ),
    "export": (
        "transformer.export.cli",
        "export a model directory to CTranslate2 (int8...) for `--engine ctranslate2`",
    ),
    "serve": (
        "transformer.serve.cli",
        "serve a model over HTTP: JSON API, metrics and an attention web page",
    ),
    "study": (
        "transformer.study.cli",
        "re-run the paper's Table 3 variations (or the 'why' questions) on your data and budget",
    ),
    "visualize": (
        "transformer.visualize",
        "translate one sentence and plot its attention maps and positional encodings as PNGs",
    ),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformer",
        description="Train, evaluate and use Transformer translation models (Vaswani et al., 2017).",
    )
    parser.add_argument("--version", action="version", version=f"transformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:  # import only the module of the command being run
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
