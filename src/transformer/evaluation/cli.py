"""`transformer evaluate`: decode a test set, score it, time the decoding.

Translation: BLEU and chrF are computed on the detokenized output against the raw reference file,
and printed with sacreBLEU's signatures. Parsing (a model directory whose task is parsing): `--ref`
is the gold treebank (one bracketed tree per line; `--src` defaults to its sentences), and the
scores are labeled bracket precision, recall and F1 in the EVALB convention
(`transformer.evaluation.brackets`), unlabeled F1, exact match, the share of outputs that were
well-formed before repair, and the right-branching baseline on the same sentences. Speed: decoding
wall-clock time (model loading excluded), sentences/s and target tokens/s, where target tokens are
the subword tokens of the best hypotheses, each sentence's EOS included (the decoder steps that
produced them).

Classification (a model directory whose task is classification): `--src` holds one text per line
and `--ref` its label, by name, per line (a data directory written by `transformer prepare
--classify` keeps both for its valid and test splits: NAME.src.txt, NAME.tgt.txt). The report
gives accuracy, macro-F1, per-class precision, recall and F1 and the confusion matrix (also drawn
to `--confusion`, a PNG), and the speed in texts/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from transformer.config import ConfigError
from transformer.decoding.cli import (
    add_decode_arguments,
    add_engine_argument,
    decode_options,
    load_translator,
    one_line,
    precision_note,
)
from transformer.decoding.options import cli_fields


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n", 1)[0]
    add_decode_arguments(parser)
    add_engine_argument(parser)
    parser.add_argument(
        "--src",
        default=None,
        help="source sentences (plain or .gz); for a parser, by default the gold trees' words",
    )
    parser.add_argument(
        "--ref",
        required=True,
        help="reference translations, or for a parser the gold trees (plain or .gz)",
    )
    parser.add_argument("--output", default=None, help="also write the hypotheses to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    g = parser.add_argument_group("classification models")
    g.add_argument(
        "--confusion",
        default="confusion.png",
        metavar="PNG",
        help="where to draw the confusion matrix (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from transformer.data.errors import DataError
    from transformer.data.trees import PARSING_TASK
    from transformer.modeldir import ModelDirError, is_classification, load_task

    try:
        if len(args.model) == 1 and is_classification(load_task(args.model[0])):
            return _run_classification(args)
        options = decode_options(args)  # bad options are reported before loading anything
        translator = load_translator(args)
        parsing = translator.task_name == PARSING_TASK
        if parsing:
            src, gold = _parsing_inputs(args)
        else:
            src, ref = _translation_inputs(args)
        resolved = translator.options(**options)
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
                f"transformer evaluate: {args.src or args.ref}:{i}: longer than the model's "
                f"{translator.max_positions} positions; translated its first "
                f"{translator.max_source_subwords} subwords only",
                file=sys.stderr,
            )
    if args.output:
        from transformer.io import atomic_write_text

        atomic_write_text(args.output, "".join(h + "\n" for h in hyps))
    report: dict[str, Any] = {"task": translator.task_name}
    if parsing:
        report.update(_parsing_scores(gold, src, results))
    else:
        report.update(_translation_scores(hyps, ref))
    report.update(
        {
            "sentences": len(src),
            "seconds": round(seconds, 4),
            "sentences_per_second": round(len(src) / seconds, 3) if seconds > 0 else None,
            "target_tokens": tokens,
            "target_tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
            "models": [str(m) for m in args.model],
            "engine": args.engine,
            # Not "precision": a parser's report has its bracket precision under that name.
            "inference_precision": translator.precision,
            "decoding": {f.name: getattr(resolved, f.name) for f in cli_fields()},
        }
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if parsing:
        _print_parsing(report)
    else:
        _print_translation(report)
    how = (
        f"beam {resolved.beam}, alpha {resolved.alpha}"
        if resolved.method == "beam"
        else resolved.method
    )
    if args.engine == "torch":
        how += f", {precision_note(translator) or report['inference_precision']}"
    print(
        f"decoding ({how}, engine {args.engine}): {len(src)} sentences in {seconds:.2f} s, "
        f"{report['sentences_per_second']} sentences/s, "
        f"{report['target_tokens_per_second']} target tokens/s"
    )
    return 0


# ---------------------------------------------------------------------------------- translation


def _translation_inputs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from transformer.data.errors import DataError
    from transformer.data.textfiles import read_lines

    if args.src is None:
        raise DataError("--src: required for a translation model (the sources of --ref)")
    src = list(read_lines(Path(args.src)))
    ref = list(read_lines(Path(args.ref)))
    if len(src) != len(ref):
        raise DataError(
            f"{args.src} has {len(src)} lines but {args.ref} has {len(ref)}; "
            "line i of the references must translate line i of the sources"
        )
    return src, ref


def _translation_scores(hyps: list[str], ref: list[str]) -> dict[str, Any]:
    from transformer.evaluation.metrics import corpus_scores

    scores = corpus_scores(hyps, ref)
    return {
        "bleu": round(scores.bleu, 4),
        "chrf": round(scores.chrf, 4),
        "bleu_signature": scores.bleu_signature,
        "chrf_signature": scores.chrf_signature,
        "bleu_details": scores.bleu_details,
    }


def _print_translation(report: dict[str, Any]) -> None:
    print(report["bleu_details"])
    print(f"  signature: BLEU|{report['bleu_signature']}")
    print(f"chrF2 = {report['chrf']:.2f}")
    print(f"  signature: chrF2|{report['chrf_signature']}")


# ---------------------------------------------------------------------------------- parsing


def _parsing_inputs(args: argparse.Namespace) -> tuple[list[str], list[Any]]:
    """The sentences (--src, or the gold trees' own) and the gold trees, checked to pair up."""
    from transformer.data.errors import DataError
    from transformer.data.textfiles import read_lines
    from transformer.data.trees import read_trees, sentence

    gold = list(read_trees(args.ref))
    if args.src is None:
        return [sentence(t) for t in gold], gold
    src = list(read_lines(Path(args.src)))
    if len(src) != len(gold):
        raise DataError(
            f"{args.src} has {len(src)} lines but {args.ref} has {len(gold)} trees; "
            "line i of the sentences must be the words of tree i"
        )
    for i, (line, tree) in enumerate(zip(src, gold), start=1):
        if len(line.split()) != len(tree.leaves()):
            raise DataError(
                f"{args.src}:{i}: {len(line.split())} words but tree {i} of {args.ref} has "
                f"{len(tree.leaves())}; give the trees' words separated by spaces"
            )
    return src, gold


def _parsing_scores(gold: list[Any], src: list[str], results: list[Any]) -> dict[str, Any]:
    from transformer.data.trees import delinearise, parse_tree
    from transformer.evaluation.brackets import bracket_scores, right_branching

    trees = [parse_tree(r.text) if r.text else right_branching([]) for r in results]
    well_formed = sum(
        delinearise(r.hypotheses[0].sequence or "", line.split()).well_formed
        for r, line in zip(results, src)
    )
    baseline = [right_branching(line.split()) for line in src]
    labeled = bracket_scores(gold, trees)
    return {
        **labeled.as_dict(),
        "unlabeled_f1": round(bracket_scores(gold, trees, labeled=False).f1, 2),
        "well_formed": round(100.0 * well_formed / len(src), 2) if src else 0.0,
        "right_branching": {
            "f1": round(bracket_scores(gold, baseline).f1, 2),
            "unlabeled_f1": round(bracket_scores(gold, baseline, labeled=False).f1, 2),
        },
    }


def _print_parsing(report: dict[str, Any]) -> None:
    rb = report["right_branching"]
    print(
        f"bracket F1 = {report['f1']:.2f} (precision {report['precision']:.2f}, recall "
        f"{report['recall']:.2f}; EVALB convention, labeled)"
    )
    print(
        f"unlabeled F1 = {report['unlabeled_f1']:.2f}, exact match {report['exact_match']:.2f}%, "
        f"well-formed outputs {report['well_formed']:.2f}%"
    )
    print(f"right-branching baseline: F1 {rb['f1']:.2f}, unlabeled F1 {rb['unlabeled_f1']:.2f}")


# ---------------------------------------------------------------------------------- classification


def _run_classification(args: argparse.Namespace) -> int:
    """Classify `--src` with a classification model and score it against the labels in `--ref`."""
    from transformer.classifier import Classifier
    from transformer.evaluation.classification import (
        classification_scores,
        format_report,
        plot_confusion,
    )

    if args.src is None:
        raise _data_error("--src: required for a classification model (the texts of --ref)")
    if args.engine != "torch":
        raise _data_error("--engine: a classification model runs on the torch engine only")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    classifier = Classifier.from_pretrained(
        args.model[0], device=args.device, precision=args.precision
    )
    texts, gold = _classification_inputs(args, classifier.labels)
    start = time.perf_counter()
    predicted = classifier.probabilities(texts).argmax(dim=-1).tolist()
    seconds = time.perf_counter() - start
    scores = classification_scores(gold, predicted, classifier.labels)
    if args.output:
        from transformer.io import atomic_write_text

        atomic_write_text(args.output, "".join(classifier.labels[i] + "\n" for i in predicted))
    plot = plot_confusion(scores, args.confusion, title=f"{args.model[0]} on {args.ref}")
    report = {
        "task": "classification",
        **scores.to_dict(),
        "texts": len(texts),
        "seconds": round(seconds, 4),
        "texts_per_second": round(len(texts) / seconds, 2) if seconds > 0 else None,
        "models": [str(m) for m in args.model],
        "inference_precision": classifier.precision,  # named as in a translation's report
        "confusion_png": str(plot),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_report(scores, title=f"{args.ref} ({len(texts)} texts)"))
    print(f"confusion matrix drawn to {plot}")
    print(
        f"classifying ({precision_note(classifier) or classifier.precision}, {args.device}): "
        f"{len(texts)} texts in {seconds:.2f} s, "
        f"{report['texts_per_second']} texts/s"
    )
    return 0


def _data_error(message: str) -> Exception:
    from transformer.data.errors import DataError

    return DataError(message)


def _classification_inputs(
    args: argparse.Namespace, labels: list[str]
) -> tuple[list[str], list[int]]:
    """The texts of --src and the class index of each label in --ref, checked to pair up."""
    from transformer.data.textfiles import read_lines

    texts = list(read_lines(Path(args.src)))
    names = list(read_lines(Path(args.ref)))
    if len(texts) != len(names):
        raise _data_error(
            f"{args.src} has {len(texts)} lines but {args.ref} has {len(names)}; line i of the "
            "labels must be the class of text i"
        )
    index = {name: i for i, name in enumerate(labels)}
    gold = []
    for lineno, name in enumerate(names, start=1):
        if name.strip() not in index:
            raise _data_error(
                f"{args.ref}:{lineno}: unknown label {name.strip()!r}; the model's classes are "
                f"{', '.join(labels)}"
            )
        gold.append(index[name.strip()])
    return texts, gold
