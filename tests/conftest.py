"""Shared fixtures: the tiny all-sizes-distinct config (batch 3, S 7, T 5, D 16, H 4, d_ff 24, V 37)."""

from __future__ import annotations

import pytest
import torch

from tests.copy_model import (  # noqa: F401  (fixtures shared by several test packages)
    copy_model,
    copy_model_dir,
    copy_tokenizer,
    learned_positions_model,
)
from transformer import ModelConfig

B, S, T, D, H, D_FF, V = 3, 7, 5, 16, 4, 24, 37


def tiny_config(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=V,
        d_model=D,
        n_heads=H,
        d_ff=D_FF,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
    )
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
