"""Validation during training: loss, perplexity and BLEU.

Runs on one process. Loss and perplexity are teacher-forced over the whole validation split;
BLEU decodes the raw source lines (greedily by default: cheaper; or by beam search with the
paper's length penalty) through the decoding layer and scores the detokenized best hypotheses
against the raw references with sacreBLEU: the same hypotheses `transformer translate` gives.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sacrebleu
import torch

from transformer.data.batching import TokenBatchSampler, collate
from transformer.data.dataset import ParallelDataset, load_split
from transformer.data.tokenizer import SubwordTokenizer
from transformer.decoding.engine import (
    TorchEngine,
    decode_batches,
    hypothesis_ids,
    max_source_subwords,
)
from transformer.decoding.options import DecodeOptions
from transformer.model import Transformer
from transformer.training.config import RunConfig
from transformer.training.loss import label_smoothed_nll_loss


class Validator:
    """Validation as a run's config asks: on the split `data.valid_split` of the prepared
    directory (none there: no validation), BLEU if `train.valid_bleu` and the split's raw text
    was kept (`transformer prepare` keeps it for every split but train)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        data_dir, split = Path(config.data.dir), config.data.valid_split
        self.data: ParallelDataset | None = None
        if (data_dir / f"{split}.src.idx").is_file():
            self.data = load_split(data_dir, split)
        sources = _read_lines(data_dir / f"{split}.src.txt")
        references = _read_lines(data_dir / f"{split}.tgt.txt")
        self.texts = (sources, references) if sources and references else None

    def __call__(
        self,
        model: Transformer,
        tokenizer: SubwordTokenizer,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, Any]:
        """`validate`'s result; {} without a validation split."""
        if self.data is None:
            return {}
        t = self.config.train
        return validate(
            model,
            self.data,
            tokenizer,
            self.texts if t.valid_bleu else None,
            device=device,
            max_tokens=self.config.data.valid_max_tokens,
            label_smoothing=self.config.optim.label_smoothing,
            max_sentences=t.valid_bleu_sentences,
            beam=t.valid_beam,
            autocast=autocast,
        )


@torch.no_grad()
def validate(
    model: Transformer,
    data: ParallelDataset,
    tokenizer: SubwordTokenizer,
    texts: tuple[list[str], list[str]] | None,
    *,
    device: torch.device,
    max_tokens: int,
    label_smoothing: float,
    max_sentences: int = 0,
    beam: int = 1,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Any]:
    """{"loss", "nll_loss", "ppl", "valid_seconds", and given (sources, references) "bleu"}
    over the first `max_sentences` pairs (0: all); leaves eval mode on."""
    start = time.monotonic()
    model.eval()
    budget = max(max_tokens, int(max(data.src_lengths.max(), data.tgt_lengths.max())) + 1)
    sampler = TokenBatchSampler(data.src_lengths, data.tgt_lengths, budget, shuffle=False)
    loss_sum = nll_sum = 0.0
    tokens = 0
    for indices in sampler:
        batch = collate([data[i] for i in indices]).to(device)
        with autocast():
            logits = model(batch.src, batch.tgt_in)  # (B, T, V)
        loss, nll = label_smoothed_nll_loss(logits, batch.tgt_out, label_smoothing)
        loss_sum += loss.item()
        nll_sum += nll.item()
        tokens += batch.n_tgt_tokens
    result: dict[str, Any] = {
        "loss": loss_sum / tokens,
        "nll_loss": nll_sum / tokens,
        "ppl": math.exp(min(nll_sum / tokens, 50.0)),
    }
    if texts is not None:
        sources, references = texts
        n = len(sources) if max_sentences == 0 else min(max_sentences, len(sources))
        with autocast():
            outputs = best_translations(model, tokenizer, sources[:n], beam, device, budget)
        result["bleu"] = sacrebleu.corpus_bleu(outputs, [references[:n]]).score
    result["valid_seconds"] = time.monotonic() - start
    return result


def best_translations(
    model: Transformer,
    tokenizer: SubwordTokenizer,
    sources: list[str],
    beam: int,
    device: torch.device,
    max_tokens: int,
) -> list[str]:
    """The best hypothesis of each source as text: greedy for `beam` 1, else beam search with
    the decoding defaults (GNMT alpha 0.6, at most source + 50 tokens). Sources longer than a
    learned-position model's table are cut to it; an empty source gives an empty line."""
    method = "greedy" if beam == 1 else "beam"
    options = DecodeOptions(method=method, beam=beam, max_tokens=max_tokens)
    engine = TorchEngine([model], device)
    cap = max_source_subwords(engine)
    ids = [seq[:cap] for seq in tokenizer.encode_batch(sources)]
    outputs = [""] * len(sources)
    todo = [i for i, seq in enumerate(ids) if seq and sources[i].strip()]
    for batch, out in decode_batches(engine, [ids[i] for i in todo], options):
        best = [hyps[0] for hyps in hypothesis_ids(out)]
        for j, text in zip(batch, tokenizer.decode_batch(best)):
            outputs[todo[j]] = text
    return outputs


def _read_lines(path: Path) -> list[str] | None:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else None
