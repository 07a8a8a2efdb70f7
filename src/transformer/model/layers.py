"""Position-wise feed-forward network, encoder layer and decoder layer (sections 3.1 and 3.3).

Shapes: B batch, S source length, T target length, D d_model.

Each sub-layer is wrapped as the paper does, ``LayerNorm(x + Dropout(Sublayer(x)))`` ("post"), or,
as an option that is not the paper, ``x + Dropout(Sublayer(LayerNorm(x)))`` ("pre"; the stack then
ends with one final LayerNorm, see transformer.py). Options for the learners' questions replace
LayerNorm (RMSNorm, BatchNorm over real tokens: norms.py), ReLU (GELU), or drop the residual
connection ``x +``; others score attention additively, or put positions inside self-attention
(relative, rotary, ALiBi: positions.py), the encoder's and the decoder's, never cross-attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from transformer.model.attention import MultiHeadAttention, causal_mask
from transformer.model.cache import LayerCache
from transformer.model.dropout import Dropout
from transformer.model.norms import apply_norm, make_norm
from transformer.model.positions import PositionModule, make_positions


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (ReLU, the paper), or with GELU in place of max(0, .)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu"):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.gelu = activation == "gelu"

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)
        return self.linear2(nn.functional.gelu(h) if self.gelu else h.relu())


class SublayerConnection(nn.Module):
    """Residual connection, dropout and normalisation around one sub-layer, post- or pre-norm.

    `mask` (B, T) marks the real tokens for BatchNorm (the other norms ignore it); with
    `residual` False the ``x +`` is left out.
    """

    def __init__(
        self,
        d_model: int,
        dropout: float,
        norm_position: str,
        eps: float,
        norm: str = "layer",
        residual: bool = True,
    ):
        super().__init__()
        self.norm = make_norm(norm, d_model, eps)
        self.dropout = Dropout(dropout)
        self.pre = norm_position == "pre"
        self.residual = residual

    def forward(
        self, x: Tensor, sublayer: Callable[[Tensor], Tensor], mask: Tensor | None = None
    ) -> Tensor:
        if self.pre:
            out = self.dropout(sublayer(apply_norm(self.norm, x, mask)))
            return x + out if self.residual else out
        out = self.dropout(sublayer(x))
        return apply_norm(self.norm, x + out if self.residual else out, mask)


@dataclass
class AttentionRecord:
    """Collects attention weights per layer when passed down the model (reference path).

    Each entry is (B, H, Tq, Tk). Explicit and opt-in: the fast path never fills it.
    """

    encoder_self: list[Tensor] = field(default_factory=list)
    decoder_self: list[Tensor] = field(default_factory=list)
    cross: list[Tensor] = field(default_factory=list)


class _Layer(nn.Module):
    """What encoder and decoder layers share: their sizes and options, the self-attention
    sub-layer (with the positions of `positional` where they live in attention), and the
    feed-forward sub-layer, added last by `_add_feed_forward` so that every layer registers (and
    initialises) its sub-layers in the order they run."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_k: int,
        d_v: int,
        d_ff: int,
        dropout: float,
        attention_dropout: float = 0.0,
        norm_position: str = "post",
        eps: float = 1e-5,
        scale_attention: bool = True,
        shared_query_key: bool = False,
        norm: str = "layer",
        activation: str = "relu",
        residual: bool = True,
        positional: str = "sinusoidal",
        relative_clip: int = 16,
        attention: str = "dot",
    ):
        super().__init__()
        self._attention_args = dict(
            d_model=d_model, n_heads=n_heads, d_k=d_k, d_v=d_v,
            attention_dropout=attention_dropout, scale=scale_attention,
            shared_query_key=shared_query_key, scoring=attention,
        )  # fmt: skip
        self._sublayer_args = (d_model, dropout, norm_position, eps)
        self._wrap = dict(norm=norm, residual=residual)
        self._feed_forward_args = (d_model, d_ff, activation)
        self.self_attn = self._attention(
            make_positions(positional, n_heads, d_k, d_v, relative_clip)
        )
        self.self_attn_sublayer = self._sublayer()

    def _attention(self, positions: PositionModule | None = None) -> MultiHeadAttention:
        return MultiHeadAttention(**self._attention_args, positions=positions)

    def _sublayer(self) -> SublayerConnection:
        return SublayerConnection(*self._sublayer_args, **self._wrap)

    def _add_feed_forward(self) -> None:
        self.feed_forward = FeedForward(*self._feed_forward_args)
        self.feed_forward_sublayer = self._sublayer()


class EncoderLayer(_Layer):
    """Multi-head self-attention, then the feed-forward network, each wrapped as above. The
    arguments are `_Layer`'s."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._add_feed_forward()

    def forward(
        self,
        x: Tensor,
        src_mask: Tensor | None,
        record: AttentionRecord | None = None,
        tokens: Tensor | None = None,
    ) -> Tensor:
        """x (B, S, D), src_mask (B, 1, 1, S) bool -> (B, S, D). `tokens` (B, S): the real
        tokens, for BatchNorm's statistics (None: all)."""

        def self_attention(h: Tensor) -> Tensor:
            out, weights = self.self_attn(h, mask=src_mask, need_weights=record is not None)
            if record is not None:
                record.encoder_self.append(weights)
            return out

        x = self.self_attn_sublayer(x, self_attention, tokens)
        return self.feed_forward_sublayer(x, self.feed_forward, tokens)


class DecoderLayer(_Layer):
    """Masked self-attention, attention over the encoder output, then the feed-forward network.
    The arguments are `_Layer`'s."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # No position term in cross-attention: the queries carry their positions from the
        # decoder's self-attention, the keys from the encoder's.
        self.cross_attn = self._attention()
        self.cross_attn_sublayer = self._sublayer()
        self._add_feed_forward()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        src_mask: Tensor | None,
        cache: LayerCache | None = None,
        record: AttentionRecord | None = None,
        tokens: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, D) new target positions, memory (B / g, S, D), src_mask (B / g, 1, 1, S) ->
        (B, T, D): each of the B / g sources serves g consecutive target rows (`Decoder.forward`).
        `tokens` (B, T): the real target tokens, for BatchNorm's statistics (None: all).

        Without a cache, x is the whole target prefix and self-attention is causal. With a cache,
        x holds only the positions after those already cached: their keys/values are appended, and
        the cross-attention keys/values of `memory` are computed on the first call and reused.
        """
        need = record is not None

        def self_attention(h: Tensor) -> Tensor:
            # The new positions start after the cached ones (rotary: k rotated before caching).
            offset = 0 if cache is None else cache.length
            q, k, v = self.self_attn.project_qkv(h, offset)  # (B, H, T, d_k|d_v)
            if cache is None:
                out, weights = self.self_attn.attend(q, k, v, is_causal=True, need_weights=need)
            else:
                k, v = cache.append_self(k, v)  # (B, H, past+T, d)
                t_q, t_k = q.size(2), k.size(2)
                # One new position may see every cached one; several need a causal offset mask.
                mask = None if t_q == 1 else causal_mask(t_q, t_k, q.device)
                out, weights = self.self_attn.attend(
                    q, k, v, mask, need_weights=need, offset=offset
                )
            if record is not None:
                record.decoder_self.append(weights)
            return out

        def cross_attention(h: Tensor) -> Tensor:
            q = self.cross_attn.project_q(h)  # (B, H, T, d_k)
            if cache is None:
                k, v = self.cross_attn.project_kv(memory)
            else:
                if cache.cross_k is None:  # contiguous once: each step's products read
                    k, v = self.cross_attn.project_kv(memory)  # them without a copy
                    cache.cross_k, cache.cross_v = k.contiguous(), v.contiguous()
                k, v = cache.cross_k, cache.cross_v
            b, heads, t, d_k = q.shape
            group = b // k.size(0)  # target rows per source (beams); see `Decoder.forward`
            if group > 1:  # (B, H, T, d_k) -> (B / g, H, g * T, d_k): one source, g * T queries
                q = (
                    q.view(-1, group, heads, t, d_k)
                    .transpose(1, 2)
                    .reshape(-1, heads, group * t, d_k)
                )
            out, weights = self.cross_attn.attend(q, k, v, src_mask, need_weights=need)
            if group > 1:
                out = out.view(b, t, -1)  # (B / g, g * T, D) -> (B, T, D)
                if weights is not None:  # (B / g, H, g * T, S) -> (B, H, T, S)
                    weights = weights.view(-1, heads, group, t, weights.size(-1))
                    weights = weights.transpose(1, 2).reshape(b, heads, t, -1)
            if record is not None:
                record.cross.append(weights)
            return out

        x = self.self_attn_sublayer(x, self_attention, tokens)
        x = self.cross_attn_sublayer(x, cross_attention, tokens)
        return self.feed_forward_sublayer(x, self.feed_forward, tokens)
