"""Validation during training: loss, perplexity and BLEU.

Runs on one process. Loss and perplexity are teacher-forced over the whole validation split;
BLEU decodes the sources (beam search, or greedily: cheaper) and scores the detokenized output
against the raw references with sacreBLEU.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import sacrebleu
import torch

from transformer.data.batching import TokenBatchSampler, collate
from transformer.data.dataset import ParallelDataset
from transformer.data.tokenizer import SubwordTokenizer
from transformer.model import Transformer
from transformer.training.loss import label_smoothed_nll_loss
from transformer.translator import Translator


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
    """{"loss", "nll_loss", "ppl", and given (sources, references) "bleu"}; leaves eval mode on.

    BLEU translates the raw source lines through the same `Translator` users call: greedily for
    `beam` 1, else by beam search with the paper's length penalty (alpha 0.6).
    """
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
        translator = Translator([model], tokenizer, device)
        with autocast():
            how = {"method": "greedy"} if beam == 1 else {"method": "beam", "beam": beam}
            outputs = translator.translate(sources[:n], max_tokens=budget, **how)
        result["bleu"] = sacrebleu.corpus_bleu(outputs, [references[:n]]).score
    result["valid_seconds"] = time.monotonic() - start
    return result
