"""What the trainer learns, per task: the model, how a split is batched, and the loss.

The trainer is task-agnostic: it asks an objective for the model to build, the lengths the token
budget batches by, how rows become a batch, and the summed loss of a batch with the number of
items it is normalised by (target tokens for translation, texts for classification). The data
directory's task record (`transformer prepare` writes it) chooses the objective; `data.task` in
the run config may name it too, and must then agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer.config import ModelConfig
from transformer.data.batching import Batch, LabelledBatch, collate, collate_labelled
from transformer.data.dataset import ParallelDataset
from transformer.hardware import current_linear
from transformer.modeldir import CLASSIFICATION, build_model, is_classification
from transformer.training.errors import TrainingError
from transformer.training.loss import projected_smoothed_loss

TRANSLATION = "translation"  # any sequence-to-sequence task: translation, parsing, ...
TASKS = (TRANSLATION, CLASSIFICATION)

Autocast = Callable[[], contextlib.AbstractContextManager]


class Objective(Protocol):
    """The task-specific part of training."""

    name: str
    unit: str  # what the loss is normalised by, in the log: "tok" (target tokens), "texts"

    def build(self, config: ModelConfig) -> nn.Module: ...

    def lengths(self, data: ParallelDataset) -> tuple[np.ndarray, np.ndarray]: ...

    def collate(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> Any: ...

    def count(self, batch: Any) -> int: ...

    def loss(
        self, net: nn.Module, batch: Any, label_smoothing: float, autocast: Autocast
    ) -> tuple[Tensor, Tensor]: ...


class Seq2SeqObjective:
    """Translation (and every task turned into one, e.g. parsing): the paper's label-smoothed
    cross-entropy summed over target tokens (section 5.4)."""

    name = TRANSLATION
    unit = "tok"

    def __init__(self, task: dict[str, Any] | None) -> None:
        self.task = task

    def build(self, config: ModelConfig) -> nn.Module:
        return build_model(config, self.task)

    def lengths(self, data: ParallelDataset) -> tuple[np.ndarray, np.ndarray]:
        return data.src_lengths, data.tgt_lengths

    def collate(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> Batch:
        return collate(rows)

    def count(self, batch: Batch) -> int:
        return batch.n_tgt_tokens

    def loss(
        self, net: nn.Module, batch: Batch, label_smoothing: float, autocast: Autocast
    ) -> tuple[Tensor, Tensor]:
        """(smoothed loss, NLL), each summed over the batch's target tokens."""
        return sequence_loss(net, batch, label_smoothing, autocast)


def sequence_loss(
    net: nn.Module, batch: Batch, label_smoothing: float, autocast: Autocast
) -> tuple[Tensor, Tensor]:
    """(smoothed loss, NLL) of a Transformer (or its DDP or compiled wrapper) on a batch, each
    summed over the target tokens; the output projection is part of the loss
    (`projected_smoothed_loss`), in autocast's precision."""
    model = getattr(net, "_orig_mod", net)  # torch.compile
    model = getattr(model, "module", model)  # DistributedDataParallel
    with autocast():
        hidden = net(batch.src, batch.tgt_in, project=False)  # (B, T, D)
        return projected_smoothed_loss(
            hidden, model.output_weight, batch.tgt_out, label_smoothing, linear=current_linear()
        )


class ClassificationObjective:
    """Text classification: cross-entropy (optionally label-smoothed) summed over texts."""

    name = CLASSIFICATION
    unit = "texts"

    def __init__(self, task: dict[str, Any]) -> None:
        self.task = task
        self.labels: list[str] = list(task["labels"])
        self.extra_tokens = 0  # set by build(): "cls" pooling puts <s> in front of each text

    def build(self, config: ModelConfig) -> nn.Module:
        self.extra_tokens = 1 if config.pooling == "cls" else 0
        return build_model(config, self.task)

    def lengths(self, data: ParallelDataset) -> tuple[np.ndarray, np.ndarray]:
        """Texts batch by their length (with the <s> of "cls" pooling); the one label costs
        nothing on the target side of the budget."""
        return data.src_lengths + self.extra_tokens, np.zeros_like(data.tgt_lengths)

    def collate(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> LabelledBatch:
        return collate_labelled(rows)

    def count(self, batch: LabelledBatch) -> int:
        return batch.size

    def loss(
        self, net: nn.Module, batch: LabelledBatch, label_smoothing: float, autocast: Autocast
    ) -> tuple[Tensor, Tensor]:
        """(loss, NLL), each summed over the batch's texts; the loss is `F.cross_entropy` with
        `label_smoothing`, in fp32 whatever the autocast precision."""
        with autocast():
            logits = net(batch.src)  # (B, C)
        logits = logits.float()
        loss = F.cross_entropy(
            logits, batch.labels, reduction="sum", label_smoothing=label_smoothing
        )
        with torch.no_grad():
            nll = F.cross_entropy(logits, batch.labels, reduction="sum")
        return loss, nll


def objective_for(task: dict[str, Any] | None, named: str = "auto") -> Objective:
    """The objective of a data directory's task record; `named` (the run config's `data.task`)
    is "auto" or must agree with it."""
    actual = CLASSIFICATION if is_classification(task) else TRANSLATION
    if named not in ("auto", actual):
        raise TrainingError(
            f"data.task is {named!r} but the prepared data is for {actual!r} "
            + (
                "(prepare labelled texts with `transformer prepare --classify`)"
                if named == CLASSIFICATION
                else "(it was prepared with `transformer prepare --classify`)"
            )
        )
    if is_classification(task):
        assert task is not None
        return ClassificationObjective(task)
    return Seq2SeqObjective(task)
