"""`transformer train CONFIG.yaml [--set section.key=value ...] [--run-dir DIR]`.

The run directory remembers its configuration: re-running the same command resumes from the
newest intact checkpoint. Only keys that extend or watch a run (limits, logging and validation
frequencies, the device) may change on resume; changing anything else is refused, because the run
would no longer be the one its checkpoints belong to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from transformer.config import ConfigError
from transformer.data.errors import DataError
from transformer.io import atomic_write_json
from transformer.training.config import (
    RESUMABLE_CHANGES,
    RunConfig,
    config_changes,
    load_config,
    parse_config,
)

RUN_CONFIG = "config.json"


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


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    """--set SECTION.KEY=VALUE (repeatable): override one value of a YAML config."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.max_updates=500 (repeatable)",
    )


def prepare_run_dir(config: RunConfig, run_dir: Path, write: bool = True) -> None:
    """Check the config against the one a run directory recorded, then record it (if `write`)."""
    path = run_dir / RUN_CONFIG
    if path.is_file():
        try:
            saved = parse_config(json.loads(path.read_text(encoding="utf-8")), where=str(path))
        except (ValueError, ConfigError) as e:
            raise ConfigError(str(path), [f"cannot read the run's recorded config: {e}"]) from None
        changes = config_changes(saved, config)
        fixed = [c for c in changes if c.split(":")[0] not in RESUMABLE_CHANGES]
        if fixed:
            raise ConfigError(
                f"{run_dir} (the run was started with another config; use a new --run-dir to "
                "start a new run)",
                fixed,
            )
    if write:
        atomic_write_json(path, config.to_dict())


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    from transformer.training.trainer import Trainer, TrainingError  # torch loads only now

    try:
        # Every process checks; only the first of torchrun's processes writes.
        prepare_run_dir(config, run_dir, write=int(os.environ.get("RANK", "0")) == 0)
        return Trainer(config, run_dir).train()
    except (ConfigError, DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
