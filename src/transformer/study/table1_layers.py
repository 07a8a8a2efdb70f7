"""The five layer types of the paper's Table 1, each mapping (B, n, d) to (B, n, d).

Shapes: B batch, n sequence length, d width (d_model), H heads, k kernel width, r window.

Every layer comes with its closed-form forward FLOP count (a multiply-add counts 2, biases and
element-wise work are left out, as `torch.utils.flop_counter` does) and the paper's complexity.
Self-attention is the project's own `MultiHeadAttention`; restricted self-attention reuses its
projections and computes the attention block by block, so that its cost really is O(r n d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from transformer.model.attention import MultiHeadAttention, reference_attention


class SelfAttention(nn.Module):
    """Multi-head self-attention over the whole sequence (the project's module, fast path)."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.attention = MultiHeadAttention(d, n_heads, d // n_heads, d // n_heads)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x)[0]  # (B, n, d)


def window_mask(n: int, r: int, device: torch.device | None = None) -> Tensor:
    """(nb, r, 3r) bool: in block b, query b*r + a may attend to key b*r - r + c.

    True where the key is a real position (0 <= j < n) within distance r of the query.
    """
    nb = -(-n // r)
    a = torch.arange(r, device=device)[:, None]  # query offset in its block
    c = torch.arange(3 * r, device=device)[None, :]  # key offset in the block's window
    near = (c - a >= 0) & (c - a <= 2 * r)  # |i - j| = |a - c + r| <= r
    j = torch.arange(nb, device=device)[:, None, None] * r - r + c  # (nb, 1, 3r) key positions
    return near & (j >= 0) & (j < n)  # (nb, r, 3r)


class RestrictedSelfAttention(nn.Module):
    """Self-attention in which each query attends only to the keys within distance r of it.

    Computed blockwise: the queries are cut into blocks of r, and each block attends to the 3r keys
    around it (its own block and one on each side, cut out with `unfold`, a view), masked to the
    exact window |i - j| <= r. Scores therefore cost 3r per query instead of n, O(r n d) in all,
    not a banded n x n mask, which would cost O(n^2 d) however many entries it masks.
    The projections are the project's `MultiHeadAttention`'s.
    """

    def __init__(self, d: int, n_heads: int, r: int):
        super().__init__()
        self.r = r
        self.attention = MultiHeadAttention(d, n_heads, d // n_heads, d // n_heads)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        r, mha = self.r, self.attention
        q, k, v = mha.project_qkv(x)  # (B, H, n, d_k) each
        nb = -(-n // r)
        pad = nb * r - n
        q = nn.functional.pad(q, (0, 0, 0, pad))  # (B, H, nb*r, d_k)
        q = q.view(b, mha.n_heads, nb, r, mha.d_k)  # (B, H, nb, r, d_k)
        k = nn.functional.pad(k, (0, 0, r, r + pad)).unfold(2, 3 * r, r)  # (B, H, nb, d_k, 3r)
        v = nn.functional.pad(v, (0, 0, r, r + pad)).unfold(2, 3 * r, r)  # (B, H, nb, d_v, 3r)
        mask = window_mask(n, r, x.device)  # (nb, r, 3r)
        out, _ = reference_attention(q, k.transpose(-2, -1), v.transpose(-2, -1), mask)
        out = out.reshape(b, mha.n_heads, nb * r, mha.d_v)[:, :, :n]  # (B, H, n, d_v)
        out = out.transpose(1, 2).reshape(b, n, mha.n_heads * mha.d_v)  # (B, n, H*d_v)
        return mha.out_proj(out)


class Recurrent(nn.Module):
    """One LSTM layer (`torch.nn.LSTM`), hidden size d."""

    def __init__(self, d: int):
        super().__init__()
        self.lstm = nn.LSTM(d, d, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]  # (B, n, d)


class Convolution(nn.Module):
    """A 1-d convolution of odd width k, centred on each position ('same' zero padding)."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.conv = nn.Conv1d(d, d, k, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, d, n) inside


class DilatedCausalConvolution(nn.Module):
    """A 1-d convolution of width k and dilation s that reads positions t, t-s, ..., t-(k-1)s.

    Stacked with dilations 1, k, k^2, ... (as in ByteNet and WaveNet) it connects positions n
    apart in ceil(log_k n) layers: the paper's O(log_k(n)) path length for convolutions.
    """

    def __init__(self, d: int, k: int, dilation: int):
        super().__init__()
        self.left = (k - 1) * dilation
        self.conv = nn.Conv1d(d, d, k, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.pad(x.transpose(1, 2), (self.left, 0))  # (B, d, left + n)
        return self.conv(x).transpose(1, 2)


class SeparableConvolution(nn.Module):
    """A depthwise convolution of width k (one filter per channel), then a pointwise one (1 x 1)."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.depthwise = nn.Conv1d(d, d, k, padding=k // 2, groups=d)
        self.pointwise = nn.Conv1d(d, d, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x.transpose(1, 2))).transpose(1, 2)


@dataclass(frozen=True)
class LayerSizes:
    """The sizes every layer type is built from: heads (attention), kernel k, window r."""

    n_heads: int = 8
    kernel: int = 3
    window: int = 16

    def __post_init__(self) -> None:
        if self.n_heads < 1:
            raise ValueError(f"--heads must be >= 1, got {self.n_heads}")
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ValueError(f"--kernel must be odd and >= 3 (a centred kernel), got {self.kernel}")
        if self.window < 1:
            raise ValueError(f"--window must be >= 1, got {self.window}")


@dataclass(frozen=True)
class LayerType:
    """One row of Table 1: its name, the paper's entries, and how to build and count it."""

    key: str
    name: str
    paper_complexity: str
    paper_exponents: tuple[float, float]  # the paper's complexity as n^a d^b: (a, b)
    paper_sequential: str
    paper_path: str
    implementation: str  # the closed form of `flops` below, for the report


LAYER_TYPES: tuple[LayerType, ...] = (
    LayerType(
        "self_attention",
        "self-attention",
        "O(n²·d)",
        (2, 1),
        "O(1)",
        "O(1)",
        "8·n·d² + 4·n²·d",
    ),
    LayerType("recurrent", "recurrent (LSTM)", "O(n·d²)", (1, 2), "O(n)", "O(n)", "16·n·d²"),
    LayerType(
        "convolutional",
        "convolutional",
        "O(k·n·d²)",
        (1, 2),
        "O(1)",
        "O(log_k(n))",
        "2·k·n·d²",
    ),
    LayerType(
        "separable",
        "separable convolution",
        "O(k·n·d + n·d²)",
        (1, 2),
        "O(1)",
        "O(log_k(n))",
        "2·k·n·d + 2·n·d²",
    ),
    LayerType(
        "restricted",
        "self-attention (restricted)",
        "O(r·n·d)",
        (1, 1),
        "O(1)",
        "O(n/r)",
        "8·n·d² + 12·⌈n/r⌉·r²·d",
    ),
)
LAYER_KEYS = tuple(t.key for t in LAYER_TYPES)


def check_width(d: int, sizes: LayerSizes, option: str = "--widths") -> None:
    """Raise ValueError naming `option` when width d cannot be split into the attention heads."""
    if d < 1 or d % sizes.n_heads:
        raise ValueError(
            f"{option}: width {d} must be a positive multiple of --heads {sizes.n_heads}"
        )


def build_layer(key: str, d: int, sizes: LayerSizes) -> nn.Module:
    """A freshly initialised layer of type `key` and width d (on the current default device)."""
    if key in ("self_attention", "restricted"):
        check_width(d, sizes)
    if key == "self_attention":
        return SelfAttention(d, sizes.n_heads)
    if key == "restricted":
        return RestrictedSelfAttention(d, sizes.n_heads, sizes.window)
    if key == "recurrent":
        return Recurrent(d)
    if key == "convolutional":
        return Convolution(d, sizes.kernel)
    if key == "separable":
        return SeparableConvolution(d, sizes.kernel)
    raise ValueError(f"unknown layer type {key!r}; choose from {', '.join(LAYER_KEYS)}")


def closed_form_flops(key: str, n: int, d: int, sizes: LayerSizes, batch: int = 1) -> int:
    """Forward FLOPs of one layer on a (batch, n, d) input, counted by hand (multiply-add = 2)."""
    k, r = sizes.kernel, sizes.window
    per_sequence = {
        "self_attention": 8 * n * d * d + 4 * n * n * d,  # Q, K, V, O projections; QK^T and AV
        "recurrent": 16 * n * d * d,  # 4 gates, each W_ih x_t + W_hh h_{t-1}
        "convolutional": 2 * k * n * d * d,
        "separable": 2 * k * n * d + 2 * n * d * d,  # depthwise, then pointwise
        # projections; scores and weighted sum over a 3r-key window for each of ⌈n/r⌉·r queries
        "restricted": 8 * n * d * d + 12 * math.ceil(n / r) * r * r * d,
    }
    if key not in per_sequence:
        raise ValueError(f"unknown layer type {key!r}; choose from {', '.join(LAYER_KEYS)}")
    return batch * per_sequence[key]


def paper_flops(key: str, n: int, d: int, sizes: LayerSizes) -> float:
    """The paper's complexity per layer with every constant set to 1 (for the crossover)."""
    k, r = sizes.kernel, sizes.window
    return {
        "self_attention": n * n * d,
        "recurrent": n * d * d,
        "convolutional": k * n * d * d,
        "separable": k * n * d + n * d * d,
        "restricted": r * n * d,
    }[key]
