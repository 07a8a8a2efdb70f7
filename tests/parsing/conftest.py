"""A tiny parser of a synthetic grammar (tests/parsing/grammar.py), trained once per session."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from tests.parsing.grammar import sample_trees
from tests.training.conftest import run_config
from transformer.data.treebank import prepare_treebank
from transformer.training.average import average_run
from transformer.training.trainer import Trainer


def write_treebank(path: Path, trees: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in trees))
    return path


@pytest.fixture(scope="session")
def treebank(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("treebank")
    return {
        "train": write_treebank(root / "train.trees.gz", sample_trees(600, seed=1)),
        "dev": write_treebank(root / "dev.trees.gz", sample_trees(40, seed=2)),
        "test": write_treebank(root / "test.trees.gz", sample_trees(60, seed=3)),
    }


@pytest.fixture(scope="session")
def parsing_data(treebank: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "gum"
    prepare_treebank(
        train=treebank["train"],
        valid=treebank["dev"],
        tests=[treebank["test"]],
        out=out,
        vocab_size=300,
        max_ratio=float("inf"),
    )
    return out


@pytest.fixture(scope="session")
def parser_dir(parsing_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny parser trained for 1,000 updates (about 20 s on one core), averaged."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("run")
        config = run_config(
            parsing_data,
            model={
                "d_model": 64,
                "n_heads": 4,
                "d_ff": 128,
                "n_encoder_layers": 2,
                "n_decoder_layers": 2,
                "dropout": 0.0,
            },
            data={"max_tokens": 1200},
            optim={"warmup": 100, "lr_factor": 0.7},
            train={"max_updates": 1000, "save_every": 50, "log_every": 100, "progress": False},
        )
        Trainer(config, run, log=lambda m: None).train()
        average_run(run, last=3, out=run / "model")
        return run / "model"
    finally:
        torch.set_num_threads(threads)
