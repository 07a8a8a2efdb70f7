"""`transformer train CONFIG.yaml [--set section.key=value ...] [--run-dir DIR]`.

The run directory remembers its configuration: re-running the same command resumes from the
newest intact checkpoint. Only keys that extend or watch a run (limits, logging and validation
frequencies, the device) may change on resume; changing anything else is refused, because the run
would no longer be the one its checkpoints belong to.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transformer.config import ConfigError
from transformer.data.errors import DataError
from transformer.training.config import add_override_argument, load_config
from transformer.training.rundir import prepare_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", metavar="CONFIG.yaml", help="training configuration (configs/*.yaml)"
    )
    add_override_argument(parser)
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where checkpoints, metrics and the best model go (default: runs/<config name>)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    from transformer.modeldir import ModelDirError  # torch loads only now
    from transformer.training.distributed import close_distributed, exit_now
    from transformer.training.trainer import Trainer, TrainingError

    try:
        # Every process checks; only the first of torchrun's processes writes.
        prepare_run_dir(config, run_dir, write=int(os.environ.get("RANK", "0")) == 0)
        code = Trainer(config, run_dir).train()
        if close_distributed():  # one of torchrun's processes: see `close_distributed`
            exit_now(code)
        return code
    except (ConfigError, DataError, TrainingError, ModelDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
