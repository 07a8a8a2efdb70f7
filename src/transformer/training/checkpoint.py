"""Training checkpoints: written atomically, verified on load, the last K kept.

    RUN_DIR/checkpoints/step_00012000/
      config.json, model.safetensors, tokenizer.json   # a complete model directory
      trainer.pt        # optimizer, scaler, RNG states, batch-sampler position, step, epoch, best
      run_config.json   # the training configuration
      checksums.json    # sha256 of every file above, written last

A checkpoint is assembled in a temporary directory, every file fsynced, and renamed into place,
so a crash leaves either a complete checkpoint or none. `checksums.json` additionally detects a
checkpoint damaged afterwards (a truncated copy, a full disk): `latest_checkpoint` then warns and
falls back to the previous one.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transformer.data.textfiles import file_sha256
from transformer.data.tokenizer import SubwordTokenizer
from transformer.io import atomic_directory, unfinished_directories
from transformer.modeldir import write_model_files

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer.pt"
RUN_CONFIG = "run_config.json"
CHECKSUMS = "checksums.json"
_NAME = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete or damaged."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: Path | str) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory of a run, oldest first (not verified)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    run_dir: Path | str,
    step: int,
    model: nn.Module,
    tokenizer: SubwordTokenizer,
    trainer_state: dict[str, Any],
    run_config: dict[str, Any],
    keep_last: int,
    task: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of update `step` atomically and delete all but the newest `keep_last`.

    `task`: the data's task record (see `transformer.modeldir`), kept with the model."""
    out = checkpoint_dir(Path(run_dir), step)
    with atomic_directory(out) as tmp:
        write_model_files(tmp, model, tokenizer, task)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        (tmp / RUN_CONFIG).write_text(json.dumps(run_config, indent=2) + "\n", encoding="utf-8")
        sums = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n", encoding="utf-8")
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return out


def remove_unfinished_checkpoints(run_dir: Path | str) -> None:
    """Delete temporary directories left by a checkpoint write that a crash interrupted."""
    for p in unfinished_directories(Path(run_dir) / CHECKPOINTS, "step_*"):
        shutil.rmtree(p, ignore_errors=True)


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless every file is present with its recorded checksum."""
    sums_path = path / CHECKSUMS
    try:
        sums = json.loads(sums_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: incomplete ({CHECKSUMS} missing)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{sums_path}: unreadable ({e})") from None
    for name in ("config.json", "model.safetensors", "tokenizer.json", TRAINER_STATE, RUN_CONFIG):
        if name not in sums:
            raise CheckpointError(f"{sums_path}: no checksum for {name}")
    for name, expected in sums.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if file_sha256(f) != expected:
            raise CheckpointError(f"{f}: checksum mismatch (the file is truncated or damaged)")


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)


def latest_checkpoint(
    run_dir: Path | str, warn: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint and its trainer state; damaged newer ones are skipped
    with a warning. None if the run has no checkpoint yet."""
    warn = warn or (lambda message: warnings.warn(message, stacklevel=2))
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
            state = load_trainer_state(path)
        except (CheckpointError, RuntimeError, OSError, ValueError) as e:
            warn(f"skipping damaged checkpoint of update {step}: {e}")
            continue
        return path, state
    return None
