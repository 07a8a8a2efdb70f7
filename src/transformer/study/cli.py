"""`transformer study STUDY ...`: experiments that re-run the paper's arguments on your machine.

    table3, questions   rows of model variants trained for one budget (below)
    complexity          the paper's Table 1 measured: layer types against sequence length
    lengths             positional encodings on inputs longer than those seen in training
    heads               what each attention head of a model does, and what it is worth

table3 and questions (`--config CONFIG.yaml --budget N|Nm --out DIR`) train one model per row for the same budget, evaluates each on the validation set (perplexity,
and BLEU with beam 4, alpha 0.6, no checkpoint averaging, as the paper's Table 3) and writes
OUT/results.csv, OUT/results.md (the paper's layout) and OUT/results.png. Re-running the same
command skips finished rows and resumes an interrupted one.

    transformer study table3 --config configs/multi30k.yaml --budget 20m --out out/table3
    transformer study questions --config configs/multi30k.yaml --budget 20m --out out/questions
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from transformer.config import ConfigError

# study -> (module with add_arguments(parser) and run(args), or None for the row studies; help)
STUDIES: dict[str, tuple[str | None, str]] = {
    "table3": (None, "the paper's Table 3 rows (A)-(E), scaled to the base config"),
    "questions": (None, "one design decision reversed per row: why is it built this way?"),
    "complexity": (
        "transformer.study.complexity",
        "the paper's Table 1 measured: time, memory, FLOPs, sequential steps and path length "
        "of self-attention, recurrent and convolutional layers as n and d grow",
    ),
    "lengths": (
        "transformer.study.lengths",
        "one model per positional encoding trained on short sentences, BLEU per source length "
        "(longer than training included)",
    ),
    "heads": (
        "transformer.study.heads",
        "what every attention head of a model does, and the BLEU lost when it alone is masked",
    ),
}

HELP_ROWS = (
    "only these rows besides the base: Table 3 groups A,B,C,D,E, or question keys "
    "Q1 (unscaled dot products), Q2 (shared W^Q = W^K), Q3 (pre-norm), Q4 (no label smoothing), "
    "Q5 (no positional encoding); 'base' alone for the base row only (e.g. with --seed)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="study", metavar="STUDY", required=True)
    for name, (module, help_text) in STUDIES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if module is None:
            add_row_arguments(p)
        else:  # these modules import only argparse at the top: cheap to load for --help
            importlib.import_module(module).add_arguments(p)


def add_row_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the row studies (table3, questions)."""
    parser.add_argument("--config", required=True, metavar="CONFIG.yaml", help="the base config")
    from transformer.training.config import add_override_argument

    add_override_argument(parser)  # of the base config
    parser.add_argument(
        "--budget",
        required=True,
        help="per row: optimizer updates (300) or minutes of training (20m)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--rows", metavar="LIST", help=HELP_ROWS)
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of every row (default: the config's)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="rows trained at once (default: one per CUDA device if there are several, else 1)",
    )


def run(args: argparse.Namespace) -> int:
    module = STUDIES[args.study][0]
    if module is not None:
        return int(importlib.import_module(module).run(args) or 0)
    return run_rows_study(args)


def run_rows_study(args: argparse.Namespace) -> int:
    from transformer.study.report import write_report
    from transformer.study.rows import study_rows
    from transformer.study.runner import Budget, run_rows
    from transformer.training.config import load_config

    try:
        budget = Budget.parse(args.budget)
        base = load_config(args.config, args.overrides)
        groups = args.rows.split(",") if args.rows else None
        rows, notes = study_rows(args.study, base, groups)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    gpus = torch.cuda.device_count() if base.train.device in ("auto", "cuda") else 0
    jobs = args.jobs or (gpus if gpus > 1 else 1)
    if jobs < 1:
        print(f"error: --jobs must be >= 1, got {jobs}", file=sys.stderr)
        return 2
    devices = [str(i % gpus) for i in range(jobs)] if gpus else ["cpu"] * jobs
    seed = base.train.seed if args.seed is None else args.seed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"study {args.study}: {len(rows)} rows ({', '.join(r.key for r in rows)}), {budget} "
        f"each, seed {seed}, {jobs} at a time; output in {out}",
        file=sys.stderr,
    )
    for note in notes:
        print(f"  {note}", file=sys.stderr)
    from transformer.study.runner import RowInterrupted

    try:
        outcomes = run_rows(rows, base, out, budget, seed, jobs=jobs, devices=devices)
    except (RowInterrupted, KeyboardInterrupt):
        print(
            "interrupted: finished rows are kept and the current one resumes; re-run the same "
            "command to go on",
            file=sys.stderr,
        )
        return 130
    context = f"Base config {args.config}" + (
        f" with {', '.join(args.overrides)}" if args.overrides else ""
    )
    context += f"; seed {seed}; validation split {base.data.valid_split} of {base.data.dir}."
    paths = write_report(out, args.study, outcomes, budget, notes, context)
    print((out / "results.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        print(
            f"{len(failed)} row(s) failed: "
            + "; ".join(f"{o.row.key}: {o.error}" for o in failed)
            + " (details in OUT/rows/KEY/error.txt; re-run to retry them)",
            file=sys.stderr,
        )
        return 1
    return 0
