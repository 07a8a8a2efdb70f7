"""A tiny model trained to copy its input, as a model directory: fixtures shared by the decoding,
serving and export tests (registered in tests/conftest.py).

Trained once per session (about 10 s on 2 busy CPU cores): 2 layers, d_model 32, vocabulary 300
(a byte-level BPE tokenizer trained on a slice of the shipped Multi30k), copying random sequences
of 1 to 8 subwords. A trained model makes decisive choices, so that equivalences of token
sequences (batched vs one at a time, cached vs uncached) test the decoder, not float rounding
between near-ties of a random model.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from transformer import ModelConfig, Transformer
from transformer.data import SubwordTokenizer
from transformer.modeldir import save_model_dir
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID

MULTI30K = Path(__file__).resolve().parents[1] / "data" / "multi30k"
VOCAB = 300
MAX_COPY = 8


def copy_batch(n: int, generator: torch.Generator, lo: int = 1, hi: int = MAX_COPY):
    """Random sources (N, hi + 1) = tokens + EOS + padding, the decoder input and output."""
    lengths = torch.randint(lo, hi + 1, (n,), generator=generator)
    seq = torch.randint(4, VOCAB, (n, hi), generator=generator)
    seq = seq.masked_fill(torch.arange(hi)[None] >= lengths[:, None], PAD_ID)
    src = torch.cat([seq, torch.full((n, 1), PAD_ID)], dim=1)
    src[torch.arange(n), lengths] = EOS_ID
    tgt_in = torch.cat([torch.full((n, 1), BOS_ID), seq], dim=1)
    return src, tgt_in, src.clone(), lengths


@pytest.fixture(scope="session")
def copy_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> SubwordTokenizer:
    d = tmp_path_factory.mktemp("copy-tokenizer")
    lines = []
    for lang in ("de", "en"):
        text = gzip.decompress((MULTI30K / f"train.{lang}.gz").read_bytes()).decode("utf-8")
        lines += text.split("\n")[:300]
    path = d / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return SubwordTokenizer.train([path], VOCAB)


@pytest.fixture(scope="session")
def copy_model() -> Transformer:
    """A tiny Transformer trained to copy (>= 90% of sequences exactly, asserted)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread is much faster than two on busy shared cores
    try:
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        config = ModelConfig(
            vocab_size=VOCAB,
            d_model=32,
            n_heads=4,
            d_ff=64,
            n_encoder_layers=2,
            n_decoder_layers=2,
            dropout=0.0,
        )
        model = Transformer(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.98), eps=1e-9)
        model.train()
        for step in range(1, 601):
            src, tgt_in, tgt_out, _ = copy_batch(64, generator)
            for group in optimizer.param_groups:
                group["lr"] = 5e-3 * min(1.0, step / 100) * min(1.0, (300 / step) ** 0.5)
            logits = model(src, tgt_in)
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def copy_model_dir(
    copy_model: Transformer,
    copy_tokenizer: SubwordTokenizer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("models") / "copy", copy_model, copy_tokenizer)


@pytest.fixture
def learned_positions_model(copy_tokenizer: SubwordTokenizer) -> Transformer:
    """An untrained model with learned positions and only 6 of them (to test truncation)."""
    config = ModelConfig(
        vocab_size=copy_tokenizer.vocab_size,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_encoder_layers=1,
        n_decoder_layers=1,
        dropout=0.0,
        positional="learned",
        max_positions=6,
    )
    return Transformer(config)
