"""Multi-head attention (section 3.2) and the project's one mask convention.

Shapes: B batch, H heads, Tq query length, Tk key length, D d_model, d_k / d_v per-head sizes.

Mask convention (the only one in the project): a boolean tensor, ``True`` = may attend. Masks are
built from token ids here (`padding_mask`, `causal_mask`) and nowhere else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer.vocab import PAD_ID


def padding_mask(ids: Tensor, pad_id: int = PAD_ID) -> Tensor:
    """(B, S) token ids -> (B, S) bool, True at real tokens."""
    return ids != pad_id


def key_mask(mask: Tensor) -> Tensor:
    """(B, Tk) bool key mask -> (B, 1, 1, Tk), broadcastable over heads and queries."""
    return mask[:, None, None, :]


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) bool: query i (the last Tq of Tk positions) may attend to keys j <= i + Tk - Tq."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """softmax(Q K^T / sqrt(d_k)) V, written out; returns (output, weights).

    `scale` replaces 1/sqrt(d_k) when given (1.0: unscaled dot products, an ablation).

    q (B, H, Tq, d_k), k (B, H, Tk, d_k), v (B, H, Tk, d_v), mask broadcastable to (B, H, Tq, Tk).
    Masked scores are set to the dtype's lowest finite value before the softmax (never -inf, which
    would turn a fully masked row into NaN, and never an added constant, which overflows in fp16).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if is_causal:
        causal = causal_mask(q.size(-2), k.size(-2), q.device)
        mask = causal if mask is None else mask & causal
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights  # (B, H, Tq, d_v), (B, H, Tq, Tk)


def written_out_is_faster(q: Tensor) -> bool:
    """Whether attention written out (`reference_attention`) beats the fused kernel here.

    PyTorch's fused CPU kernel is fast forward in every precision and backward in float32, but its
    backward in bfloat16 / float16 is several times slower than three plain ops (measured with
    torch 2.13 on an AMX CPU: a third of a bf16 training step went to it). So training in reduced
    precision on a CPU writes attention out; everything else (CUDA, inference, float32) is fused.
    """
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and torch.is_grad_enabled()
        and q.requires_grad
    )


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    The h per-head projections are stored as one matrix each (q_proj: D -> H*d_k, and so on), which
    is the same function and lets all heads run as one batched matmul. The fast path is PyTorch's
    fused `scaled_dot_product_attention` (except where `written_out_is_faster`); the reference path
    (`need_weights=True`) also returns the attention weights, for visualisation and tests.

    Two ablations, not the paper (see ModelConfig): `scale=False` drops the 1/sqrt(d_k), and
    `shared_query_key=True` projects keys with the query matrix (there is then no `k_proj`).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_k: int,
        d_v: int,
        attention_dropout: float = 0.0,
        scale: bool = True,
        shared_query_key: bool = False,
    ):
        super().__init__()
        self.n_heads, self.d_k, self.d_v = n_heads, d_k, d_v
        self.attention_dropout = attention_dropout
        self.scale: float | None = None if scale else 1.0  # None: the kernel's 1/sqrt(d_k)
        self.q_proj = nn.Linear(d_model, n_heads * d_k)
        self.k_proj = None if shared_query_key else nn.Linear(d_model, n_heads * d_k)
        self.v_proj = nn.Linear(d_model, n_heads * d_v)
        self.out_proj = nn.Linear(n_heads * d_v, d_model)
        # Concatenated projection weights, reused across calls when no gradient is needed (decoding).
        # A plain attribute, not a buffer: never in the state dict.
        self._fused: dict[str, tuple[tuple, Tensor, Tensor]] = {}

    def _heads(self, x: Tensor, d: int) -> Tensor:
        """(B, T, H*d) -> (B, H, T, d)."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, d).transpose(1, 2)

    def _fused_linear(self, name: str, layers: tuple[nn.Linear, ...]) -> tuple[Tensor, Tensor]:
        """The weights and biases of `layers` stacked into one linear map.

        With gradients enabled (training) they are concatenated on every call so that gradients
        flow; otherwise (decoding) the concatenation is kept, at the cost of one extra copy of
        those weights, and rebuilt only when a parameter changed (new storage, e.g. after `.to()`,
        or an in-place update such as an optimizer step or `load_state_dict`, which bumps
        `_version`).
        """
        if torch.is_grad_enabled():
            self._fused.pop(name, None)
            return (
                torch.cat([layer.weight for layer in layers]),
                torch.cat([layer.bias for layer in layers]),
            )
        params = [p for layer in layers for p in (layer.weight, layer.bias)]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cached = self._fused.get(name)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                weight = torch.cat([layer.weight for layer in layers])
                bias = torch.cat([layer.bias for layer in layers])
            cached = (key, weight, bias)
            self._fused[name] = cached
        return cached[1], cached[2]

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention projections of x (B, T, D) in one matmul -> q, k (B, H, T, d_k), v (B, H, T, d_v)."""
        if self.k_proj is None:  # shared query/key projection: the keys are the queries
            weight, bias = self._fused_linear("qv", (self.q_proj, self.v_proj))
            q, v = F.linear(x, weight, bias).split(
                [self.n_heads * self.d_k, self.n_heads * self.d_v], dim=-1
            )
            q = self._heads(q, self.d_k)
            return q, q, self._heads(v, self.d_v)
        weight, bias = self._fused_linear("qkv", (self.q_proj, self.k_proj, self.v_proj))
        hk = self.n_heads * self.d_k
        q, k, v = F.linear(x, weight, bias).split([hk, hk, self.n_heads * self.d_v], dim=-1)
        return self._heads(q, self.d_k), self._heads(k, self.d_k), self._heads(v, self.d_v)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of memory (B, S, D) in one matmul -> k (B, H, S, d_k), v (B, H, S, d_v)."""
        k_proj = self.q_proj if self.k_proj is None else self.k_proj
        weight, bias = self._fused_linear("kv", (k_proj, self.v_proj))
        k, v = F.linear(memory, weight, bias).split(
            [self.n_heads * self.d_k, self.n_heads * self.d_v], dim=-1
        )
        return self._heads(k, self.d_k), self._heads(v, self.d_v)

    def project_q(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, d_k)."""
        return self._heads(self.q_proj(x), self.d_k)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention over projected heads, then concat and W^O -> ((B, Tq, D), weights or None)."""
        dropout_p = self.attention_dropout if self.training else 0.0
        if need_weights or written_out_is_faster(q):
            out, weights = reference_attention(q, k, v, mask, is_causal, dropout_p, self.scale)
            weights = weights if need_weights else None
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=self.scale
            )
            weights = None
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_v)  # (B, Tq, H*d_v)
        return self.out_proj(out), weights

    def forward(
        self,
        query: Tensor,
        key_value: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Self-attention when `key_value` is None, else attention of `query` over `key_value`.

        query (B, Tq, D), key_value (B, Tk, D), mask bool broadcastable to (B, H, Tq, Tk).
        """
        if key_value is None:
            q, k, v = self.project_qkv(query)
        else:
            q = self.project_q(query)
            k, v = self.project_kv(key_value)
        return self.attend(q, k, v, mask, is_causal, need_weights)
