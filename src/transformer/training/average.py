"""`transformer average RUN_DIR --last N --out MODEL_DIR`: average the last N checkpoints.

The paper's base models average the last 5 checkpoints (written every 10 minutes), the big models
the last 20. Parameters are summed in float64 and the mean cast back to each tensor's dtype; the
result is written as a model directory (config.json, model.safetensors, tokenizer.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from transformer.data.tokenizer import SubwordTokenizer
from transformer.modeldir import (
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    ModelDirError,
    build_model,
    load_model_config,
    load_task,
    save_model_dir,
)
from transformer.training.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the weights stored in `paths` (model directories)."""
    if not paths:
        raise ValueError("no checkpoint to average")
    total: dict[str, torch.Tensor] = {}
    reference: dict[str, tuple[torch.Size, torch.dtype]] = {}
    for path in paths:
        weights = load_file(str(path / WEIGHTS_FILE))
        if not reference:
            reference = {k: (v.shape, v.dtype) for k, v in weights.items()}
        elif {k: (v.shape, v.dtype) for k, v in weights.items()} != reference:
            raise ModelDirError(
                f"{path}: its weights do not have the names and shapes of {paths[0]}"
            )
        for name, tensor in weights.items():
            acc = total.get(name)
            total[name] = tensor.double() if acc is None else acc.add_(tensor.double())
    return {k: (v / len(paths)).to(reference[k][1]) for k, v in total.items()}


def average_run(run_dir: Path | str, last: int, out: Path | str) -> list[Path]:
    """Average the newest `last` intact checkpoints of a run into the model directory `out`."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"{run_dir}: no checkpoints (is it a `transformer train` run directory?)"
        )
    intact = []
    for step, path in reversed(found):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            print(f"warning: skipping checkpoint of update {step}: {e}", file=sys.stderr)
            continue
        intact.append(path)
        if len(intact) == last:
            break
    if len(intact) < last:
        print(
            f"warning: {run_dir} has {len(intact)} intact checkpoint(s), fewer than --last {last}; "
            f"averaging those",
            file=sys.stderr,
        )
    intact.reverse()
    config = load_model_config(intact[-1])
    task = load_task(intact[-1])
    model = build_model(config, task)
    averaged = average_checkpoints(intact)
    # Shared parameters appear once in the file; load through the module so they stay shared.
    missing, unexpected = model.load_state_dict(averaged, strict=False)
    shared = {n for n, _ in model.named_parameters(remove_duplicate=False)} - set(averaged)
    if unexpected or set(missing) - shared:
        raise ModelDirError(f"{intact[-1]}: weights do not match its config.json")
    tokenizer = SubwordTokenizer.from_file(intact[-1] / TOKENIZER_FILE)
    save_model_dir(out, model, tokenizer, task)
    return intact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `transformer train` run directory")
    parser.add_argument(
        "--last",
        type=int,
        default=5,
        metavar="N",
        help="average the last N checkpoints (default: 5)",
    )
    parser.add_argument(
        "--out", required=True, metavar="MODEL_DIR", help="model directory to write"
    )


def run(args: argparse.Namespace) -> int:
    if args.last < 1:
        print("error: --last must be at least 1", file=sys.stderr)
        return 2
    try:
        used = average_run(args.run_dir, args.last, args.out)
    except (CheckpointError, ModelDirError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    steps = ", ".join(p.name.removeprefix("step_").lstrip("0") or "0" for p in used)
    print(f"averaged {len(used)} checkpoint(s) (updates {steps}) into {args.out}")
    return 0
