"""configs/tiny.yaml on the bundled Multi30k: 50 updates and the validation loss falls."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.data.conftest import MULTI30K
from tests.training.conftest import REPO
from transformer.data import prepare
from transformer.training.config import load_config
from transformer.training.trainer import Trainer


@pytest.mark.timeout(300)
def test_tiny_config_learns_on_multi30k(tmp_path: Path) -> None:
    data = tmp_path / "multi30k"
    prepare(
        src_lang="de", tgt_lang="en", train=MULTI30K / "train", valid=MULTI30K / "val",
        out=data, vocab_size=2000, progress=False, log=None,
    )  # fmt: skip
    config = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"data.dir={data}", "train.max_updates=50", "train.valid_every=25",
         "train.valid_bleu=false", "train.save_every=0"],
    )  # fmt: skip
    Trainer(config, tmp_path / "run", log=lambda m: None).train()
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    valid = [r["loss"] for r in rows if r["kind"] == "valid"]
    assert len(valid) == 2
    assert valid[1] < valid[0] < math.log(2000)  # below a uniform guess, and still falling
