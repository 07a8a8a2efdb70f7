"""`transformer study STUDY ...`: experiments that re-run the paper's arguments on your machine.

    table3, questions   rows of model variants trained for one budget (below)
    complexity          the paper's Table 1 measured: layer types against sequence length
    lengths             positional encodings on inputs longer than those seen in training
    heads               what each attention head of a model does, and what it is worth

table3 and questions (`--config CONFIG.yaml --budget N|Nm --out DIR`) train one model per row
for the same budget, validate each `--curve-points` times on the way (perplexity: the learning
curve) and its final weights with BLEU (beam 4, alpha 0.6, no checkpoint averaging, as the
paper's Table 3), and write OUT/results.csv, OUT/results.md (the paper's layout, with the
expected direction of each row and the verdict), OUT/results.png and OUT/curves.png. With
`--seeds N` the base is trained with N seeds, to measure the noise, and every row whose result
lies close to the base with all N. Re-running the same command skips finished rows and resumes
an interrupted one.

    transformer study table3 --config configs/study-multi30k.yaml --budget 400 --seeds 3 --out out/t3
    transformer study questions --config configs/study-multi30k.yaml --budget 400 --seeds 3 --out out/q \
        --reuse out/t3    # the base and the rows both studies share are not trained twice
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

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
    "Q5 (no positional encoding), Q6 (one head), Q7 (additive attention), Q8 (h heads of "
    "d_model), Q9 (unscaled embeddings), Q10-Q13 (learned, relative, rotary, ALiBi positions), "
    "Q14 (no residuals), Q15/Q16 (twice as deep with/without residuals), Q17 (BatchNorm), "
    "Q18 (RMSNorm), Q19 (GELU), Q20 (d_ff = d_model/4), or Q for all of them; 'base' alone for "
    "the base row only (e.g. with --seeds)"
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
        "--seed",
        type=int,
        default=None,
        help="the first seed, S (default: the config's); with --seeds N the seeds are S..S+N-1",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train the base with N seeds to measure the noise, and every other row with all N "
        "when its perplexity lies within twice the base's range of the base (default 1: one "
        "seed, no verdict); the run of row KEY with its i-th seed (i > 1) is OUT/rows/KEY-si",
    )
    parser.add_argument(
        "--seeds-all",
        action="store_true",
        help="train every row with all --seeds seeds, not only those close to the base",
    )
    parser.add_argument(
        "--curve-points",
        type=int,
        default=8,
        metavar="P",
        help="validate (perplexity) P times, evenly over an update budget, for the learning "
        "curves (default 8; 0: only at the end; a time budget validates only at its end)",
    )
    parser.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="DIR",
        help="another study's output directory (repeatable): a row finished there with the same "
        "recipe (config, budget and seed), whatever its key, is kept instead of trained again, "
        "e.g. the base shared by table3 and questions",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the report of the rows finished so far (e.g. while the study "
        "runs in another process); the others show as 'not trained'",
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
    for name, value, least in (
        ("--jobs", jobs, 1),
        ("--seeds", args.seeds, 1),
        ("--curve-points", args.curve_points, 0),
    ):
        if value < least:
            print(f"error: {name} must be >= {least}, got {value}", file=sys.stderr)
            return 2
    for directory in args.reuse:
        if not (Path(directory) / "rows").is_dir():
            print(
                f"error: --reuse {directory}: not a study's output (no rows/ in it)",
                file=sys.stderr,
            )
            return 2
    devices = [str(i % gpus) for i in range(jobs)] if gpus else ["cpu"] * jobs
    seed = base.train.seed if args.seed is None else args.seed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = _seeds_text(seed, args.seeds)
    print(
        f"study {args.study}: {len(rows)} rows ({', '.join(r.key for r in rows)}), {budget} "
        f"each, {seeds}"
        + (
            ""
            if args.seeds == 1
            else " for every row"
            if args.seeds_all
            else " for the base (the others: the first, all where close to the base)"
        )
        + f", {jobs} at a time; output in {out}",
        file=sys.stderr,
    )
    for note in notes:
        print(f"  {note}", file=sys.stderr)
    from transformer.study.runner import RowInterrupted

    try:
        outcomes = run_rows(
            rows,
            base,
            out,
            budget,
            seed,
            jobs=jobs,
            devices=devices,
            seeds=args.seeds,
            seeds_all=args.seeds_all,
            curve_points=args.curve_points,
            reuse=[Path(d) for d in args.reuse],
            train=not args.report_only,
        )
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
    context += f"; {seeds}; validation split {base.data.valid_split} of {base.data.dir}."
    padding = _padding_probe(out, base, outcomes) if args.study == "questions" else None
    paths = write_report(out, args.study, outcomes, budget, notes, context, padding)
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


def _seeds_text(first: int, n: int) -> str:
    """The seeds in words: "seed 1", "seeds 1, 2", "seeds 1-3"."""
    if n == 1:
        return f"seed {first}"
    return f"seeds {first}, {first + 1}" if n == 2 else f"seeds {first}-{first + n - 1}"


def _padding_probe(out: Path, base: Any, outcomes: list[Any]) -> dict[str, Any] | None:
    """The padding question's measurement on the base row's first seed, once it is trained
    (None before, or if it cannot be measured: said on stderr)."""
    from transformer.study.padding import study_probe
    from transformer.study.rows import BASE_ROW
    from transformer.study.runner import run_dir

    result = next((o.result for o in outcomes if o.row.key == "base"), None)
    if result is None:
        return None
    trained = Path(result.get("reused_from") or run_dir(out, BASE_ROW))  # a reused base: its own
    try:
        return study_probe(out, trained, Path(base.data.dir), base.data.valid_split)
    except Exception as e:  # the rows' results stand without it
        print(f"padding probe: not measured ({type(e).__name__}: {e})", file=sys.stderr)
        return None
