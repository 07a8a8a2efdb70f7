"""The Transformer encoder as a text classifier: the paper's encoder, a pooling step, a linear head.

Shapes: B batch, S source length, D d_model, C classes. The encoder is the project's `Encoder`
itself (every ModelConfig option applies to it); only `pooling` and the head are new. A text is
fed as the translation model's source is (subwords + `</s>`); with `pooling="cls"` the model puts
`<s>` in front and classifies from the encoder's output there, as BERT does with [CLS].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from transformer.config import ModelConfig
from transformer.model.attention import padding_mask
from transformer.model.dropout import Dropout
from transformer.model.embeddings import ScaledEmbedding
from transformer.model.layers import AttentionRecord
from transformer.model.transformer import Encoder, init_linear_layers
from transformer.vocab import BOS_ID


class TransformerClassifier(nn.Module):
    """Encoder -> pooled vector (B, D) -> dropout -> linear head -> logits (B, C).

    `config.pooling`: "mean" averages the encoder's outputs over the real tokens (padding never
    enters it), "cls" takes the output at the `<s>` token the model prepends. The head sees the
    pooled vector through dropout (`config.dropout`), as BERT's classifier does.
    """

    def __init__(self, config: ModelConfig, n_classes: int):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        self.config = config
        self.n_classes = n_classes
        self.encoder = Encoder(
            config, ScaledEmbedding(config.vocab_size, config.d_model, config.scale_embedding)
        )
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, n_classes)
        init_linear_layers(self.encoder.layers, self.head)

    def inputs(self, src_ids: Tensor) -> Tensor:
        """The ids the encoder reads: `src_ids` (B, S), or (B, 1 + S) with `<s>` in front."""
        if self.config.pooling != "cls":
            return src_ids
        cls = torch.full_like(src_ids[:, :1], BOS_ID)  # (B, 1)
        return torch.cat([cls, src_ids], dim=1)  # (B, 1 + S)

    def features(self, src_ids: Tensor, record: AttentionRecord | None = None) -> Tensor:
        """src_ids (B, S), padded with PAD_ID -> pooled encoder output (B, D)."""
        ids = self.inputs(src_ids)
        mask = padding_mask(ids)  # (B, S') True = real token
        memory = self.encoder(ids, mask, record)  # (B, S', D)
        if self.config.pooling == "cls":
            return memory[:, 0]  # (B, D)
        weights = mask.unsqueeze(-1).to(memory.dtype)  # (B, S', 1)
        total = (memory * weights).sum(dim=1)  # (B, D)
        return total / weights.sum(dim=1).clamp(min=1.0)  # (B, D)

    def forward(self, src_ids: Tensor) -> Tensor:
        """src_ids (B, S) -> logits (B, C)."""
        return self.head(self.dropout(self.features(src_ids)))

    def attention_weights(self, src_ids: Tensor) -> AttentionRecord:
        """Every encoder layer's self-attention weights (reference path) for one pass; keys and
        queries are `inputs(src_ids)` (with the `<s>` token for "cls" pooling)."""
        record = AttentionRecord()
        self.features(src_ids, record)
        return record

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
