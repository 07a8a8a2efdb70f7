"""The Classifier facade: texts in, labels and probabilities out; the classification twin of
the Translator, and the one entry point of `transformer classify`, `evaluate`, `serve` and
`visualize` for a classification model.

    classifier = Classifier.from_pretrained("work/ag_news-model")
    classifier.classify(["Stocks rally as oil prices fall"])[0].label      # "Business"
    classifier.classify(texts, top_k=2)                                    # two best classes each
    classifier.probabilities(texts)                                        # (N, C) tensor

A text is tokenized as the model was trained (the data directory's tokenizer, saved in the model
directory), cut to what the model can take (a learned position table has `max_positions`
positions: longer texts lose their end and `Prediction.truncated` says so), and classified in
length-sorted batches of at most `max_tokens` padded tokens, so results do not depend on which
texts share a batch. An empty text is classified too (the model sees only `</s>`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from transformer.data.tokenizer import SubwordTokenizer
from transformer.decoding.batching import length_batches
from transformer.decoding.engine import pad_ids
from transformer.hardware import (
    AUTOCAST_DTYPES,
    DEFAULT_INFERENCE_PRECISION,
    inference_context,
    resolve_inference_precision,
)
from transformer.model import AttentionRecord, TransformerClassifier, autocast_copy
from transformer.modeldir import load_classifier_dir
from transformer.vocab import BOS, EOS, EOS_ID


@dataclass(frozen=True)
class Prediction:
    """The classes of one text, most probable first: `top` holds (label, probability) pairs
    (`top_k` of them); `label` and `probability` are the best one's."""

    top: tuple[tuple[str, float], ...]
    truncated: bool = False

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]


@dataclass(frozen=True)
class Attention:
    """The encoder's self-attention over one text: `tokens` as the model read them (with `<s>`
    in front for "cls" pooling, `</s>` at the end) and one (H, S, S) matrix per layer."""

    tokens: list[str]
    layers: list[Tensor]


class Classifier:
    """A TransformerClassifier with its tokenizer and class names, on one device."""

    def __init__(
        self,
        model: TransformerClassifier,
        tokenizer: SubwordTokenizer,
        labels: Sequence[str],
        device: torch.device | str = "cpu",
        precision: str = DEFAULT_INFERENCE_PRECISION,
        max_tokens: int = 8192,
    ) -> None:
        precision, self.precision_reason = resolve_inference_precision(precision, device)
        if len(labels) != model.n_classes:
            raise ValueError(f"{len(labels)} labels for a model of {model.n_classes} classes")
        # Under bf16 autocast, a copy holding its linear maps in bf16 once (the same results).
        self.model = autocast_copy(model, AUTOCAST_DTYPES.get(precision))
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.device = torch.device(device)
        self.precision = precision
        self.max_tokens = max_tokens

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Path | str,
        device: torch.device | str = "cpu",
        precision: str = DEFAULT_INFERENCE_PRECISION,
        max_tokens: int = 8192,
    ) -> Classifier:
        """Load a classifier's model directory (a checkpoint, `best/` or an averaged model).
        Raises ModelDirError naming the file for a missing or corrupt one, or for a directory
        that holds a translation model."""
        model, tokenizer, labels = load_classifier_dir(model_dir, device)
        return cls(model, tokenizer, labels, device, precision, max_tokens)

    # ------------------------------------------------------------------------------------ API

    @property
    def max_text_subwords(self) -> int | None:
        """The most subwords of a text the model reads (None: any): a learned position table
        holds the `</s>` and, for "cls" pooling, the `<s>` too."""
        config = self.model.config
        if config.positional != "learned":
            return None
        return config.max_positions - 1 - (1 if config.pooling == "cls" else 0)

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Subword ids of each text, cut to `max_text_subwords`; and whether each was cut."""
        cap = self.max_text_subwords
        ids = self.tokenizer.encode_batch([t.strip() for t in texts])
        if cap is None:
            return ids, [False] * len(ids)
        return [seq[:cap] for seq in ids], [len(seq) > cap for seq in ids]

    def probabilities(self, texts: Sequence[str]) -> Tensor:
        """(N, C) class probabilities (fp32, on the CPU) of `texts`, in their order."""
        return self._probabilities(self.encode(texts)[0])

    def classify(self, texts: Sequence[str], top_k: int = 1) -> list[Prediction]:
        """The `top_k` most probable classes of each text (all classes: top_k = number of
        classes)."""
        if not 1 <= top_k <= len(self.labels):
            raise ValueError(f"top_k must be in [1, {len(self.labels)}], got {top_k}")
        ids, truncated = self.encode(texts)
        probs = self._probabilities(ids)
        best, order = probs.topk(top_k, dim=-1)  # (N, k) each
        return [
            Prediction(
                top=tuple((self.labels[c], p) for c, p in zip(row_c, row_p)),
                truncated=cut,
            )
            for row_c, row_p, cut in zip(order.tolist(), best.tolist(), truncated)
        ]

    def attention(self, text: str) -> Attention:
        """The encoder's self-attention weights over `text`, every layer and head."""
        (ids,), _ = self.encode([text])
        src = pad_ids([[*ids, EOS_ID]], self.device)  # (1, S)
        with torch.no_grad(), self._inference():
            record: AttentionRecord = self.model.attention_weights(src)
        tokens = [self.tokenizer.id_to_token(i) or "?" for i in ids] + [EOS]
        if self.model.config.pooling == "cls":
            tokens = [BOS, *tokens]
        return Attention(tokens, [w[0].float().cpu() for w in record.encoder_self])

    # ------------------------------------------------------------------------------ internals

    def _inference(self) -> contextlib.AbstractContextManager:
        return inference_context(self.device, self.precision)

    @torch.no_grad()
    def _probabilities(self, ids: list[list[int]]) -> Tensor:
        out = torch.empty(len(ids), len(self.labels))
        if not ids:
            return out
        extra = 2 if self.model.config.pooling == "cls" else 1
        lengths = [len(seq) + extra for seq in ids]
        for batch in length_batches(lengths, self.max_tokens):
            src = pad_ids([[*ids[i], EOS_ID] for i in batch], self.device)  # (B, S)
            with self._inference():
                logits = self.model(src)  # (B, C)
            out[batch] = logits.float().softmax(dim=-1).cpu()
        return out
