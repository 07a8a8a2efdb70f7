"""What a run has done so far, and every random state it consumes: the parts of a checkpoint
that make a resumed run continue bit for bit (on CPU in fp32) where the interrupted one stopped.

Checkpoints are loaded with torch.load(weights_only=True), which accepts tensors and plain
containers only: numpy's and Python's random states are converted to that form here.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Progress:
    """The counters of a run. `batches_done` counts this process's batches of the current epoch
    (the batch sampler resumes after them); `train_seconds` sums the wall-clock time of the
    training loop over every resumed piece (validation and checkpoint writing included, so that
    `train.max_minutes` bounds the run as a clock does; loading and the final save are not); `best` is the best validation
    score so far, `bad_validations` how many validations in a row did not improve it."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    train_seconds: float = 0.0
    best: float | None = None
    bad_validations: int = 0
    last_valid_step: int = -1

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state[f.name])


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random state that training consumes (dropout, and anything built on numpy/random)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
