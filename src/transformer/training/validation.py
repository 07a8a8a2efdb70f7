"""Validation during training: loss, perplexity and BLEU (translation); loss, accuracy and
macro-F1 (classification).

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

import numpy as np
import sacrebleu
import torch

from transformer.data.batching import TokenBatchSampler, collate, collate_labelled
from transformer.data.dataset import ParallelDataset, load_split
from transformer.data.tokenizer import SubwordTokenizer
from transformer.decoding.engine import (
    TorchEngine,
    decode_batches,
    hypothesis_ids,
    max_source_subwords,
)
from transformer.decoding.options import DecodeOptions
from transformer.evaluation.classification import classification_scores
from transformer.model import Transformer, TransformerClassifier
from transformer.modeldir import is_classification
from transformer.training.config import RunConfig
from transformer.training.objective import sequence_loss

# Validation metrics where more is better (the others, losses and perplexity, are better lower).
HIGHER_IS_BETTER = frozenset({"bleu", "accuracy", "macro_f1"})


def describe(result: dict[str, Any]) -> str:
    """A validation result in one line: "loss 2.1, ppl 5.6, BLEU 31.2" or "loss 0.4, accuracy
    88.1%, macro-F1 87.9%"."""
    parts = [f"loss {result['loss']:.4f}"]
    if "ppl" in result:
        parts.append(f"ppl {result['ppl']:.2f}")
    if "bleu" in result:
        parts.append(f"BLEU {result['bleu']:.2f}")
    if "accuracy" in result:
        parts.append(f"accuracy {result['accuracy']:.2f}%, macro-F1 {result['macro_f1']:.2f}%")
    return ", ".join(parts)


def validator_for(
    config: RunConfig, task: dict[str, Any] | None
) -> Validator | ClassificationValidator:
    """The validator of a run on data prepared for `task` (the data manifest's record)."""
    if is_classification(task):
        assert task is not None
        return ClassificationValidator(config, list(task["labels"]))
    return Validator(config)


class Validator:
    """Validation as a run's config asks: on the split `data.valid_split` of the prepared
    directory (none there: no validation), BLEU if `train.valid_bleu` and the split's raw text
    was kept (`transformer prepare` keeps it for every split but train)."""

    primary_metric = "loss"  # the best model's metric when the configured one is not computed

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
        loss, nll = sequence_loss(model, batch, label_smoothing, autocast)
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


class ClassificationValidator:
    """Loss, accuracy and macro-F1 on the split `data.valid_split` (none there: no validation);
    the best model is the most accurate."""

    primary_metric = "accuracy"

    def __init__(self, config: RunConfig, labels: list[str]) -> None:
        self.config = config
        self.labels = labels
        data_dir, split = Path(config.data.dir), config.data.valid_split
        self.data: ParallelDataset | None = None
        if (data_dir / f"{split}.src.idx").is_file():
            self.data = load_split(data_dir, split)

    def __call__(
        self,
        model: TransformerClassifier,
        tokenizer: SubwordTokenizer,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, Any]:
        """{"loss", "nll_loss", "accuracy", "macro_f1" (percent), "valid_seconds"}; {} without
        a validation split. Leaves eval mode on."""
        if self.data is None:
            return {}
        start = time.monotonic()
        logits, labels = classify_split(
            model, self.data, device, self.config.data.valid_max_tokens, autocast
        )
        eps = self.config.optim.label_smoothing
        n = labels.numel()
        loss = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=eps).item()
        nll = torch.nn.functional.cross_entropy(logits, labels).item()
        scores = classification_scores(labels.tolist(), logits.argmax(dim=-1).tolist(), self.labels)
        return {
            "loss": loss,
            "nll_loss": nll,
            "accuracy": 100 * scores.accuracy,
            "macro_f1": 100 * scores.macro_f1,
            "texts": n,
            "valid_seconds": time.monotonic() - start,
        }


@torch.no_grad()
def classify_split(
    model: TransformerClassifier,
    data: ParallelDataset,
    device: torch.device,
    max_tokens: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C) in fp32, gold labels (N,)) of every row of a classification split, in the
    split's order, batched by length within `max_tokens`."""
    model.eval()
    extra = 1 if model.config.pooling == "cls" else 0
    lengths = data.src_lengths + extra
    budget = max(max_tokens, int(lengths.max()) + 1)
    sampler = TokenBatchSampler(lengths, np.zeros_like(lengths), budget, shuffle=False)
    logits = torch.empty(len(data), model.n_classes)
    labels = torch.empty(len(data), dtype=torch.int64)
    for indices in sampler:
        batch = collate_labelled([data[i] for i in indices]).to(device)
        with autocast():
            out = model(batch.src)  # (B, C)
        logits[indices] = out.float().cpu()
        labels[indices] = batch.labels.cpu()
    return logits, labels


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
