"""Helpers of the training tests: a micro-model config, configs on disk, the CLI in a subprocess.

The small prepared Multi30k slice (`small_data`) is a fixture of tests/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from transformer.training.config import RunConfig, parse_config

REPO = Path(__file__).resolve().parents[2]


def micro_config(data_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config dict for a model small enough that tests train it in a second or two."""
    config: dict[str, Any] = {
        "model": {
            "d_model": 32,
            "n_heads": 2,
            "d_ff": 48,
            "n_encoder_layers": 1,
            "n_decoder_layers": 1,
            "dropout": 0.1,
        },
        "data": {"dir": str(data_dir), "max_tokens": 400},
        "optim": {"warmup": 10},
        "train": {
            "max_updates": 12,
            "valid_every": 0,
            "valid_bleu": False,
            "save_every": 4,
            "save_every_minutes": 0,
            "log_every": 1,
            "keep_last": 10,
            "best_metric": "loss",
            "progress": True,
            "precision": "fp32",  # exact comparisons (auto would choose bf16 on an AMX CPU)
        },
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def run_config(data_dir: Path, **sections: dict[str, Any]) -> RunConfig:
    return parse_config(micro_config(data_dir, **sections), where="test config")


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def cli_env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONFAULTHANDLER"] = "1"  # a crash (e.g. SIGABRT) prints every thread's Python stack
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_command(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "transformer.cli",
        "train",
        str(config),
        "--run-dir",
        str(run_dir),
        *extra,
    ]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "transformer.cli", *args],
        capture_output=True, text=True, env=cli_env(), timeout=300,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"transformer {' '.join(args)} failed:\n{result.stderr}")
    return result
