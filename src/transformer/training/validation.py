"""Validation during training: loss, perplexity and BLEU of greedy translations.

Runs on one process. Loss and perplexity are teacher-forced over the whole validation split;
BLEU decodes the sources greedily (the cheap choice while training) and scores the detokenized
output against the raw references with sacreBLEU.
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
from transformer.model.cache import DecoderCache
from transformer.training.loss import label_smoothed_nll_loss
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID


@torch.no_grad()
def validate(
    model: Transformer,
    data: ParallelDataset,
    tokenizer: SubwordTokenizer,
    references: list[str] | None,
    *,
    device: torch.device,
    max_tokens: int,
    label_smoothing: float,
    max_sentences: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Any]:
    """{"loss", "nll_loss", "ppl", and with references "bleu"}; the model is left in eval mode."""
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
    if references is not None:
        n = len(data) if max_sentences == 0 else min(max_sentences, len(data))
        sources = [data[i][0].tolist() for i in range(n)]
        with autocast():
            hypotheses = greedy_search(model, sources, device=device, max_tokens=budget)
        outputs = tokenizer.decode_batch(hypotheses)
        bleu = sacrebleu.corpus_bleu(outputs, [references[:n]])
        result["bleu"] = bleu.score
    result["valid_seconds"] = time.monotonic() - start
    return result


@torch.no_grad()
def greedy_search(
    model: Transformer,
    sources: list[list[int]],
    *,
    device: torch.device,
    max_tokens: int,
    max_len_a: float = 1.0,
    max_len_b: int = 50,
) -> list[list[int]]:
    """Greedy translations (ids without specials) of subword-id sources, in input order.

    Batched by source length through the decoder cache; rows that reached </s> stay in the
    batch (validation only needs this to be simple and correct).
    """
    lengths = [len(s) + 1 for s in sources]
    sampler = TokenBatchSampler(lengths, [0] * len(sources), max_tokens, shuffle=False)
    out: list[list[int]] = [[] for _ in sources]
    for indices in sampler:
        b = len(indices)
        width = max(lengths[i] for i in indices)
        src = torch.full((b, width), PAD_ID, dtype=torch.long)  # (B, S)
        for row, i in enumerate(indices):
            src[row, : lengths[i]] = torch.tensor([*sources[i], EOS_ID])
        src = src.to(device)
        src_mask = src != PAD_ID
        memory = model.encode(src, src_mask)  # (B, S, D)
        cache = DecoderCache()
        token = torch.full((b, 1), BOS_ID, dtype=torch.long, device=device)  # (B, 1)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        steps = int(max_len_a * (width - 1) + max_len_b)
        generated = []
        for _ in range(steps):
            logits = model.decode(token, memory, src_mask, cache)  # (B, 1, V)
            token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            token = token.masked_fill(done.unsqueeze(1), PAD_ID)
            generated.append(token)
            done |= token.squeeze(1) == EOS_ID
            if bool(done.all()):
                break
        ids = torch.cat(generated, dim=1).tolist()  # (B, steps)
        for row, i in enumerate(indices):
            limit = int(max_len_a * (lengths[i] - 1) + max_len_b)
            hyp = []
            for t in ids[row][:limit]:
                if t in (EOS_ID, PAD_ID):
                    break
                hyp.append(t)
            out[i] = hyp
    return out
