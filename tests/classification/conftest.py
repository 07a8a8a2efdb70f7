"""A tiny classifier trained on the synthetic rule of tests/labelled_data.py (seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import micro_config
from transformer.training.config import parse_config
from transformer.training.trainer import Trainer


def classifier_config(data_dir: Path, **sections) -> dict:
    """The micro config of the training tests, as a classifier that learns the rule."""
    config = micro_config(
        data_dir,
        model={"d_model": 32, "n_heads": 2, "d_ff": 64, "n_encoder_layers": 2, "dropout": 0.0},
        data={"task": "classification"},
        optim={"warmup": 50, "label_smoothing": 0.0},
        train={
            "max_updates": 150, "valid_every": 50, "save_every": 50, "best_metric": "accuracy",
            "log_every": 50,
        },
    )  # fmt: skip
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


@pytest.fixture(scope="session")
def trained_classifier(labelled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a classifier trained 150 updates on `labelled_data`."""
    run_dir = tmp_path_factory.mktemp("classifier") / "run"
    config = parse_config(classifier_config(labelled_data), where="test config")
    Trainer(config, run_dir, log=lambda _m: None).train()
    return run_dir
