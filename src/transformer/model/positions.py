"""Positions inside attention: rotary, ALiBi and relative position representations.

The paper adds absolute positions to the token embeddings (section 3.5, embeddings.py). The kinds
here, options of `ModelConfig.positional` and not the paper, instead let position enter the
attention itself, as a function of the query and key positions:

- "relative": Shaw, Uszkoreit & Vaswani (2018), learned vectors for the clipped distance j - i,
  added to the keys (in the logits) and to the values (in the output);
- "rotary": RoPE, Su et al. (2021), queries and keys rotated by their absolute position, so that
  their dot product depends on the distance only;
- "alibi": Press, Smith & Lewis (2022), a fixed penalty proportional to the distance, added to
  the logits, with a different slope per head.

Each is used by the self-attention of the encoder and of the decoder only. Cross-attention has no
position term: its queries carry their position through the decoder's self-attention, its keys
through the encoder's. No absolute position vector is added to the embeddings with these kinds.

Positions in self-attention: the keys are at 0 .. Tk-1 and the queries at offset .. offset+Tq-1.
Without a cache offset = 0 and Tq = Tk; with the decoder's cache, offset is the number of
positions cached before this step and Tk = offset + Tq.

Shapes: B batch, H heads, Tq query length, Tk key length, d_k / d_v per-head sizes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

IN_ATTENTION = ("relative", "rotary", "alibi")  # the kinds that add nothing to the embeddings


def distances(offset: int, t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) long: j - i for query i at positions offset.., key j at positions 0..."""
    query = torch.arange(offset, offset + t_q, device=device)
    key = torch.arange(t_k, device=device)
    return key[None, :] - query[:, None]


# --------------------------------------------------------------------------------------- rotary


def rotary_table(n_positions: int, d: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the angles pos * theta_i, theta_i = base^(-2i/d), i = 0 .. d/2-1.

    Each (P, d/2), computed in float64 (large positions stay exact), returned as float32.
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    theta = torch.pow(base, -torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    angles = pos * theta  # (P, d/2)
    return angles.cos().float(), angles.sin().float()


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_2i, x_2i+1) of the last dimension by the angle whose cos/sin are given.

    x (..., T, d), cos and sin (T, d/2):
    (x_2i, x_2i+1) -> (x_2i cos - x_2i+1 sin, x_2i sin + x_2i+1 cos).
    """
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2)


class RotaryPositions(nn.Module):
    """Rotary position embedding, RoPE (Su et al. 2021).

    The query and the key of each head are rotated by their absolute position m: each pair of
    dimensions (2i, 2i+1) turns by the angle m * theta_i, theta_i = 10000^(-2i/d_k) (the
    sinusoids' frequencies). Rotations compose, so (R_m q) . (R_n k) = q . (R_(n-m) k) depends on
    the positions only through n - m. Keys are rotated before they enter the decoder's cache, so
    cached decoding equals recomputing the prefix. No parameters: the table of cos/sin is a pure
    function of the sizes, kept outside the state dict and grown on demand (any length works).
    """

    kind = "rotary"

    def __init__(self, d_k: int, base: float = 10000.0):
        super().__init__()
        if d_k % 2 != 0:
            raise ValueError(
                f"rotary positions rotate pairs of dimensions: d_k must be even, got {d_k}"
            )
        self.d_k, self.base = d_k, base
        # Plain attributes, not buffers: never in the state dict and never cast by `.to(dtype)`.
        self._cos: Tensor | None = None  # (P, d_k/2) float32
        self._sin: Tensor | None = None

    def _table(self, end: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._cos is None or self._cos.size(0) < end or self._cos.device != device:
            size = max(end, 1024 if self._cos is None else 2 * self._cos.size(0))
            cos, sin = rotary_table(size, self.d_k, self.base)
            self._cos, self._sin = cos.to(device), sin.to(device)
        return self._cos, self._sin

    def rotate(self, x: Tensor, offset: int = 0) -> Tensor:
        """x (B, H, T, d_k) at positions offset .. offset+T-1 -> rotated, same shape and dtype."""
        t = x.size(-2)
        cos, sin = self._table(offset + t, x.device)
        window = slice(offset, offset + t)
        return rotate_pairs(x, cos[window].to(x.dtype), sin[window].to(x.dtype))


# ---------------------------------------------------------------------------------------- ALiBi


def alibi_slopes(n_heads: int) -> list[float]:
    """The head slopes of ALiBi (Press et al. 2022): m_h = 2^(-8h/H), h = 1..H, for H a power of 2.

    For other H, the paper's recipe (its reference code): the slopes of the closest power of two
    2^p below H, then every other slope of the sequence for 2^(p+1) heads (h = 1, 3, 5, ...)
    until there are H; e.g. H = 6: 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3.
    """

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if n_heads & (n_heads - 1) == 0:
        return power_of_two(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest]


class AlibiPositions(nn.Module):
    """Attention with linear biases, ALiBi (Press, Smith & Lewis 2022).

    No position vectors at all: head h adds -m_h * |i - j| to the logit of query i for key j,
    with the fixed slopes m_h of `alibi_slopes`. In the decoder's causal self-attention every
    allowed key has j <= i, so this is the paper's -m_h * (i - j); the encoder is bidirectional,
    and its penalty is symmetric in the distance. The bias is added after the 1/sqrt(d_k) scale,
    as in the paper. No parameters (the slopes are a buffer outside the state dict).
    """

    kind = "alibi"

    def __init__(self, n_heads: int):
        super().__init__()
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads)), persistent=False)

    def bias(self, offset: int, t_q: int, t_k: int) -> Tensor:
        """(H, Tq, Tk) float32: -m_h * |i - j|, queries at offset.., keys at 0..."""
        distance = distances(offset, t_q, t_k, self.slopes.device).abs().float()
        return -self.slopes.float()[:, None, None] * distance


# ------------------------------------------------------------------------------------- relative


class RelativePositions(nn.Module):
    """Relative position representations (Shaw, Uszkoreit & Vaswani 2018), with clipped distance.

    Two learned tables per attention layer, shared by its heads: a^K (2k+1, d_k) and a^V
    (2k+1, d_v), row r for the distance r - k. Query i and key j use the row of
    clip(j - i, -k, k), written a^K_ij and a^V_ij:

        e_ij = q_i . (k_j + a^K_ij) * scale,     z_i = sum_j alpha_ij (v_j + a^V_ij),

    where alpha = softmax_j(e). Both extra terms are computed without materialising a^K_ij for
    every pair: q_i . a^K_r for the 2k+1 rows, then gathered per (i, j); the weights summed per
    distance bucket, then times a^V. Beyond distance k every key looks the same position-wise,
    so the tables fix no maximum length. Initialised N(0, 1/d) like the learned embeddings.
    """

    kind = "relative"

    def __init__(self, d_k: int, d_v: int, clip: int):
        super().__init__()
        if clip < 1:
            raise ValueError(f"the relative clipping distance must be at least 1, got {clip}")
        self.clip = clip
        self.key_table = nn.Parameter(torch.empty(2 * clip + 1, d_k))
        self.value_table = nn.Parameter(torch.empty(2 * clip + 1, d_v))
        nn.init.normal_(self.key_table, std=d_k**-0.5)
        nn.init.normal_(self.value_table, std=d_v**-0.5)

    def indices(self, offset: int, t_q: int, t_k: int, device: torch.device) -> Tensor:
        """(Tq, Tk) long: the table row of each (query i, key j), clip(j - i, -k, k) + k."""
        return distances(offset, t_q, t_k, device).clamp(-self.clip, self.clip) + self.clip

    def key_logits(self, q: Tensor, rows: Tensor) -> Tensor:
        """q (B, H, Tq, d_k), rows (Tq, Tk) -> q_i . a^K_ij, (B, H, Tq, Tk) (unscaled)."""
        per_row = q @ self.key_table.to(q.dtype).T  # (B, H, Tq, 2k+1)
        return per_row.gather(-1, rows.expand(*per_row.shape[:-1], rows.size(-1)))

    def key_vectors(self, rows: Tensor) -> Tensor:
        """a^K_ij for every pair, (Tq, Tk, d_k) (for additive attention, inside its tanh)."""
        return self.key_table[rows]

    def value_term(self, weights: Tensor, rows: Tensor) -> Tensor:
        """weights (B, H, Tq, Tk), rows (Tq, Tk) -> sum_j alpha_ij a^V_ij, (B, H, Tq, d_v)."""
        buckets = weights.new_zeros(*weights.shape[:-1], self.value_table.size(0))
        buckets = buckets.scatter_add(-1, rows.expand_as(weights), weights)  # (B, H, Tq, 2k+1)
        return buckets @ self.value_table.to(weights.dtype)


PositionModule = RotaryPositions | AlibiPositions | RelativePositions


def make_positions(
    kind: str, n_heads: int, d_k: int, d_v: int, relative_clip: int = 16
) -> PositionModule | None:
    """The position module of one self-attention for `ModelConfig.positional` = `kind`; None for
    the absolute kinds ("sinusoidal", "learned") and "none", which leave attention as it is."""
    if kind == "rotary":
        return RotaryPositions(d_k)
    if kind == "alibi":
        return AlibiPositions(n_heads)
    if kind == "relative":
        return RelativePositions(d_k, d_v, relative_clip)
    return None
