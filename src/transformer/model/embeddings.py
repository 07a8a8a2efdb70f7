"""Embeddings and positional encodings (sections 3.4 and 3.5).

Shapes: B batch, T length, D d_model, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from transformer.model.dropout import Dropout


class ScaledEmbedding(nn.Module):
    """Learned token embedding multiplied by sqrt(d_model) (section 3.4).

    Initialised N(0, d_model^-0.5) so that the scaled embedding has unit variance, matching the
    scale of the sinusoids it is added to. Its weight doubles as the pre-softmax projection when
    embeddings are shared.
    """

    def __init__(self, vocab_size: int, d_model: int, scaled: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        # scaled=False (an ablation): the embedding enters at std d_model^-0.5, small beside the
        # unit-amplitude sinusoids added to it.
        self.scale = math.sqrt(d_model) if scaled else 1.0
        nn.init.normal_(self.weight, mean=0.0, std=d_model**-0.5)

    def forward(self, ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D)."""
        return nn.functional.embedding(ids, self.weight) * self.scale


def sinusoid_table(n_positions: int, d_model: int) -> Tensor:
    """The paper's interleaved table: PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...).

    Sine on even dimensions and cosine on odd ones, each pair sharing the exponent 2i/D (not the
    [sin | cos] halves of fairseq and Marian). Computed in float64 so that large positions stay exact.
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(D/2),)
    angles = pos / torch.pow(10000.0, two_i / d_model)  # (P, ceil(D/2))
    table = torch.empty(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoids; the table grows on demand, so any length works (no index error past max)."""

    def __init__(self, d_model: int, max_positions: int):
        super().__init__()
        self.d_model = d_model
        # Not a parameter and not saved: it is a pure function of the sizes.
        self.register_buffer("table", sinusoid_table(max_positions, d_model), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings of positions offset .. offset+length-1 -> (length, D)."""
        end = offset + length
        if end > self.table.size(0):
            grown = sinusoid_table(max(end, 2 * self.table.size(0)), self.d_model)
            self.table = grown.to(self.table.device)
        return self.table[offset:end]


class LearnedPositionalEmbedding(nn.Module):
    """Learned position vectors (Table 3 row E); limited to `max_positions`."""

    def __init__(self, d_model: int, max_positions: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_positions, d_model))
        nn.init.normal_(self.weight, mean=0.0, std=d_model**-0.5)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        end = offset + length
        if end > self.weight.size(0):
            raise ValueError(
                f"sequence of {end} positions exceeds max_positions={self.weight.size(0)} of this "
                "model's learned positional embeddings; shorten the input or use sinusoids"
            )
        return self.weight[offset:end]


class TransformerEmbedding(nn.Module):
    """Dropout(sqrt(D) * Embedding(ids) + PE(positions)): the bottom of each stack."""

    def __init__(
        self, token: ScaledEmbedding, positional: nn.Module | None, dropout: float
    ) -> None:
        super().__init__()
        self.token = token
        self.positional = positional
        self.dropout = Dropout(dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        """(B, T) ids, first position `offset` -> (B, T, D). No PE when `positional` is None."""
        x = self.token(ids)
        if self.positional is not None:
            x = x + self.positional(ids.size(1), offset)
        return self.dropout(x)
