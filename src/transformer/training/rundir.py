"""The run directory's recorded configuration, which makes re-running a command resume the run.

    RUN_DIR/config.json   # the RunConfig the run was started with

Only keys that extend or watch a run (`RESUMABLE_CHANGES`: limits, logging and validation
frequencies, the device) may differ when the run is resumed; anything else would make it another
run than the one its checkpoints belong to, and is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformer.config import ConfigError
from transformer.io import atomic_write_json
from transformer.training.config import RESUMABLE_CHANGES, RunConfig, config_changes, parse_config

RUN_CONFIG = "config.json"


def prepare_run_dir(config: RunConfig, run_dir: Path, write: bool = True) -> None:
    """Check the config against the one a run directory recorded, then record it (if `write`)."""
    path = run_dir / RUN_CONFIG
    if path.is_file():
        try:
            saved = parse_config(json.loads(path.read_text(encoding="utf-8")), where=str(path))
        except (ValueError, ConfigError) as e:
            raise ConfigError(str(path), [f"cannot read the run's recorded config: {e}"]) from None
        changes = config_changes(saved, config)
        resumable = set(RESUMABLE_CHANGES)
        if config.optim.cooldown or saved.optim.cooldown:  # the schedule ends at max_updates
            resumable.discard("train.max_updates")
        if config.optim.cooldown_minutes or saved.optim.cooldown_minutes:  # ... at max_minutes
            resumable.discard("train.max_minutes")
        fixed = [c for c in changes if c.split(":")[0] not in resumable]
        if fixed:
            raise ConfigError(
                f"{run_dir} (the run was started with another config; use a new --run-dir to "
                "start a new run)",
                fixed,
            )
    if write:
        atomic_write_json(path, config.to_dict())
