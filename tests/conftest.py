"""Shared fixtures: the tiny all-sizes-distinct config (batch 3, S 7, T 5, D 16, H 4, d_ff 24, V 37),
the trained copy model (tests/copy_model.py) and a small prepared Multi30k slice; the hooks of
tests/optional.py (gpu tests skipped without CUDA; in strict mode, CI=true or STRICT=1, every other
skip fails)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.copy_model import (  # noqa: F401  (fixtures shared by several test packages)
    copy_model,
    copy_model_dir,
    copy_tokenizer,
    learned_positions_model,
)
from tests.data.conftest import MULTI30K, read_gz, write_lines
from tests.labelled_data import labelled_data  # noqa: F401  (a fixture)
from tests.optional import (  # noqa: F401  (hooks: gpu tests skipped without CUDA; strict mode)
    pytest_collection_modifyitems,
    pytest_make_collect_report,
    pytest_runtest_makereport,
)
from transformer import ModelConfig
from transformer.data import prepare

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (restored afterwards): for small models on 2 busy shared
    cores, one thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 training pairs and 40 validation pairs of Multi30k de-en, a 400-token BPE."""
    d = tmp_path_factory.mktemp("small-corpus")
    for name, n in {"train": 600, "val": 40}.items():
        for lang in ("de", "en"):
            write_lines(d / f"{name}.{lang}", read_gz(MULTI30K / f"{name}.{lang}.gz", n))
    out = tmp_path_factory.mktemp("small-prepared") / "data"
    prepare(
        src_lang="de", tgt_lang="en", train=d / "train", valid=d / "val", tests=[], out=out,
        vocab_size=400, progress=False, log=None,
    )  # fmt: skip
    return out
