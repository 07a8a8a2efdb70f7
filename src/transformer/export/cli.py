"""`transformer export`: convert a model directory for another inference engine.

    transformer export --model work/model --format ctranslate2 --out work/model-ct2
    transformer translate --engine ctranslate2 --model work/model-ct2 < input.de

The model's options are all checked before anything is written, and every one that the target
cannot represent is listed; the output directory is written beside its final place and renamed
into it when complete. An earlier export at --out is replaced; another non-empty directory is not.
"""

from __future__ import annotations

import argparse
import sys

FORMATS = ("ctranslate2",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from transformer.ct2_format import QUANTIZATIONS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory")
    parser.add_argument("--format", choices=FORMATS, default="ctranslate2", help="target engine")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="int8",
        help="weight type of the export (default int8: int8 weights, float32 elsewhere; "
        "float16 is for GPUs)",
    )


def run(args: argparse.Namespace) -> int:
    from transformer.export.ct2 import ExportError, export_ctranslate2
    from transformer.modeldir import ModelDirError

    try:
        out = export_ctranslate2(args.model, args.out, args.quantization)
    except (ExportError, ModelDirError) as e:
        print(f"transformer export: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.model} to {out} ({args.format}, {args.quantization})")
    print(f"translate with: transformer translate --engine {args.format} --model {out}")
    return 0
