"""Multi-head attention (section 3.2) and the project's one mask convention.

Shapes: B batch, H heads, Tq query length, Tk key length, D d_model, d_k / d_v per-head sizes.

Mask convention (the only one in the project): a boolean tensor, ``True`` = may attend. Masks are
built from token ids here (`padding_mask`, `causal_mask`) and nowhere else.

Options that are not the paper (see ModelConfig), each off by default: additive scoring (Bahdanau,
Cho & Bengio 2015) in place of scaled dot products, and positions inside self-attention
(positions.py: relative, rotary, ALiBi). With them off, attention is exactly the paper's and runs
through the same calls (the fused kernel).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from transformer.model.positions import (
    AlibiPositions,
    PositionModule,
    RelativePositions,
    RotaryPositions,
)
from transformer.vocab import PAD_ID


def padding_mask(ids: Tensor, pad_id: int = PAD_ID) -> Tensor:
    """(B, S) token ids -> (B, S) bool, True at real tokens."""
    return ids != pad_id


# Inference on a CPU attends over a multiple of this many keys (`pad_keys`).
KEY_BLOCK = 16


def pad_keys(mask: Tensor, *tensors: Tensor, dim: int) -> tuple[Tensor, ...]:
    """(mask, *tensors) up to a multiple of `KEY_BLOCK` keys: the mask (keys on its last
    dimension) with keys that may not be attended to, the keys or values `tensors` with zeros
    along `dim`.

    This keeps a sentence's attention the same bit for bit alone and in any padded batch. On a
    CPU the rounding of a row depends on how many keys there are, not only on the real ones:
    PyTorch's fused kernel and the products of the written-out path add in vectors of 16 lanes
    and treat the last, incomplete vector apart, and float32 matrix products (MKL) even give
    other dot products q.k when the number of keys changes. Alone and among longer sentences,
    the same sentence therefore rounded differently (in bf16 at beam 4, 11 of the 1,000 test2016
    translations changed). With every key length a multiple of 16, the real keys take the same
    lanes and kernels whatever the padding, and masked keys add exact zeros. Measured with
    torch 2.13 on an AMD EPYC (Zen 5), float32 and bfloat16, 1 to 40 queries, both paths: the
    same output for 1 to 112 real keys padded to lengths up to 256
    (tests/model/test_attention.py); with more real keys, a longer padding can change the
    float32 rounding again (120 real keys padded to 208).
    """
    extra = -mask.size(-1) % KEY_BLOCK
    if not extra:
        return mask, *tensors
    fill = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
    padded = [F.pad(mask, (0, extra), value=fill)]
    for x in tensors:
        padded.append(F.pad(x, [0, 0] * (x.dim() - dim % x.dim() - 1) + [0, extra]))
    return tuple(padded)


def _pad_key_axis(
    k: Tensor, v: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(B, H, Tk, d) keys and values and a mask over Tk keys, padded by `pad_keys` (unchanged
    without a mask, or with one that broadcasts over the keys)."""
    if mask is None or mask.size(-1) != k.size(-2):
        return k, v, mask
    mask, k, v = pad_keys(mask, k, v, dim=-2)
    return k, v, mask


def key_mask(mask: Tensor) -> Tensor:
    """(B, Tk) bool key mask -> (B, 1, 1, Tk), broadcastable over heads and queries."""
    return mask[:, None, None, :]


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) bool: query i (the last Tq of Tk positions) may attend to keys j <= i + Tk - Tq."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def score_scale(q: Tensor, scale: float | None) -> float:
    """The factor of the dot products: `scale` when given, else 1/sqrt(d_k) (the paper)."""
    return 1.0 / math.sqrt(q.size(-1)) if scale is None else scale


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
    return written_out_attention(q, k, v, mask, is_causal, dropout_p, scale)


def attention_weights(
    scores: Tensor, mask: Tensor | None = None, is_causal: bool = False, dropout_p: float = 0.0
) -> Tensor:
    """softmax over the keys of scores (B, H, Tq, Tk), masked as `reference_attention` masks them
    (the dtype's lowest finite value where not allowed), then attention dropout."""
    if is_causal:
        causal = causal_mask(scores.size(-2), scores.size(-1), scores.device)
        mask = causal if mask is None else mask & causal
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights


def additive_scores(
    q: Tensor, k: Tensor, score_vector: Tensor, key_term: Tensor | None = None
) -> Tensor:
    """Additive attention scores per head, w_h^T tanh(q_i + k_j) (Bahdanau, Cho & Bengio 2015).

    q (B, H, Tq, d_k), k (B, H, Tk, d_k), score_vector w (H, d_k) -> (B, H, Tq, Tk); no scale.
    `key_term` (Tq, Tk, d_k), when given, is added to every k_j inside the tanh (relative
    positions' a^K_ij). The tanh is taken of every (query, key) pair: memory grows as
    B * H * Tq * Tk * d_k, d_k times that of dot-product scores.
    """
    hidden = q.unsqueeze(-2) + k.unsqueeze(-3)  # (B, H, Tq, Tk, d_k)
    if key_term is not None:
        hidden = hidden + key_term.to(hidden.dtype)
    w = score_vector.to(hidden.dtype)[None, :, None, :, None]  # (1, H, 1, d_k, 1)
    return (hidden.tanh() @ w).squeeze(-1)


def written_out_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    *,
    score_vector: Tensor | None = None,
    positions: PositionModule | None = None,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Attention with the options that are not the paper, written out; returns (output, weights).

    Scores: scaled dot products as `reference_attention` (`scale`), or additive scores
    (`additive_scores`, no scale) when `score_vector` is given. `positions` (self-attention only;
    queries at offset.., keys at 0..): relative positions add q_i . a^K_ij (times the same scale,
    or a^K_ij inside the tanh) to the scores and sum_j alpha_ij a^V_ij to the output; ALiBi adds
    its bias to the scores; rotary positions are already in q and k and change nothing here.
    Masking, softmax and dropout as in `reference_attention`.
    """
    t_q, t_k = q.size(-2), k.size(-2)
    rows = None
    if isinstance(positions, RelativePositions):
        rows = positions.indices(offset, t_q, t_k, q.device)  # (Tq, Tk)
    if score_vector is None:
        scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
        if rows is not None:
            scores = scores + positions.key_logits(q, rows)
        scores = scores * score_scale(q, scale)
    else:
        key_term = positions.key_vectors(rows) if rows is not None else None
        scores = additive_scores(q, k, score_vector, key_term)
    if isinstance(positions, AlibiPositions):
        scores = scores + positions.bias(offset, t_q, t_k).to(scores.dtype)
    weights = attention_weights(scores, mask, is_causal, dropout_p)
    out = weights @ v  # (B, H, Tq, d_v)
    if rows is not None:
        out = out + positions.value_term(weights, rows).to(out.dtype)
    return out, weights


def written_out_is_faster(q: Tensor) -> bool:
    """Whether attention written out (`reference_attention`) beats the fused kernel in training
    here, for queries q (B, H, Tq, d_k) that need a gradient.

    PyTorch's fused CPU kernel is fast forward in every precision and backward in float32, but its
    backward in bfloat16 / float16 is several times slower than three plain ops (measured with
    torch 2.13 on an AMX CPU: a third of a bf16 training step went to it). So training in reduced
    precision on a CPU writes attention out; everything else (CUDA, float32) is fused. (For
    inference, see `inference_faster`.)
    """
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and torch.is_grad_enabled()
        and q.requires_grad
    )


def cpu_inference(q: Tensor) -> bool:
    """Whether queries q are a CPU inference's: on a CPU, no gradient wanted."""
    return q.device.type == "cpu" and not (torch.is_grad_enabled() and q.requires_grad)


def inference_faster(q: Tensor) -> bool:
    """Whether `inference_attention` beats the fused kernel for queries q (B, H, Tq, d_k): CPU
    inference in bf16 / fp16 at any length, and in float32 with at most `KEY_BLOCK` queries per
    (row, head), which is a decoder at each step of incremental decoding (its self-attention has
    one query per row and head, its cross-attention one per beam of a source).

    Measured with torch 2.13 on an AMD EPYC (Zen 5), one thread, fused against written out:
    - self-attention of a decoding step, 800 rows x 4 heads over 30 cached positions: 8.1 ms in
      bf16 and 3.6 ms in float32, against 1.6 and 2.4 ms;
    - cross-attention of a beam-4 step, 64 sources x 4 heads x 4 beams over 32 keys: 0.41 ms in
      bf16 and 0.25 ms in float32, against 0.17 and 0.22 ms;
    - an encoder's self-attention, 64 sentences x 4 heads x 32 positions: 1.23 ms in bf16
      against 0.63 ms, but 1.05 ms in float32 against 1.13 ms (fused from 17 queries on).
    """
    return cpu_inference(q) and (
        q.dtype in (torch.bfloat16, torch.float16) or q.size(-2) <= KEY_BLOCK
    )


def inference_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """softmax(Q K^T * scale) V for inference (`inference_faster`): the products in the inputs'
    precision, the scaling, the mask and the softmax in float32. A mask (bool, broadcastable to
    (B, H, Tq, Tk)) first pads the keys to a multiple of `KEY_BLOCK` (`pad_keys`), so that a
    sentence gets the same result in any batch."""
    k, v, mask = _pad_key_axis(k, v, mask)
    scores = torch.matmul(q, k.transpose(-2, -1)).float().mul_(score_scale(q, scale))
    if mask is not None:
        scores = scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


# On CUDA, every fused kernel but cuDNN's: cuDNN's attention builds an execution plan for each new
# shape, and batches of sentences come in ever new lengths. Measured on an H200 (torch 2.11,
# configs/base.yaml in bf16): 13.6 ms of CPU per forward and 13.9 ms per backward call, against
# about 0.2 ms of GPU time each.
CUDA_ATTENTION_BACKENDS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """`F.scaled_dot_product_attention`, without the cuDNN backend on CUDA. For inference on a
    CPU, a masked batch attends over a multiple of `KEY_BLOCK` keys (`pad_keys`), which makes
    a sentence's result the same in any batch."""
    if cpu_inference(q):
        k, v, attn_mask = _pad_key_axis(k, v, attn_mask)
    backends = sdpa_kernel(CUDA_ATTENTION_BACKENDS) if q.is_cuda else contextlib.nullcontext()
    with backends:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    The h per-head projections are stored as one matrix each (q_proj: D -> H*d_k, and so on), which
    is the same function and lets all heads run as one batched matmul. The fast path is PyTorch's
    fused `scaled_dot_product_attention` (except where `written_out_is_faster`); the reference path
    (`need_weights=True`) also returns the attention weights, for visualisation and tests.

    Two ablations, not the paper (see ModelConfig): `scale=False` drops the 1/sqrt(d_k), and
    `shared_query_key=True` projects keys with the query matrix (there is then no `k_proj`).

    Two more options, not the paper, for self- and cross-attention alike or self-attention only:
    - `scoring="additive"`: scores w_h^T tanh(q_i + k_j) (`additive_scores`), with W^Q and W^K in
      the roles of Bahdanau's W and U and one learned vector w_h per head (`score_vector`,
      (H, d_k)); no 1/sqrt(d_k). Written out (`written_out_attention`).
    - `positions` (positions.py), for a self-attention: rotary positions rotate q and k in
      `project_qkv` (before the decoder caches the keys) and keep the fused kernel; ALiBi passes
      its bias to the fused kernel as a float mask; relative positions are written out. A
      cross-attention has none (its queries and keys carry their positions from the self-
      attentions below them).
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
        scoring: str = "dot",
        positions: PositionModule | None = None,
    ):
        super().__init__()
        if scoring not in ("dot", "additive"):
            raise ValueError(f"scoring must be 'dot' or 'additive', got {scoring!r}")
        self.n_heads, self.d_k, self.d_v = n_heads, d_k, d_v
        self.attention_dropout = attention_dropout
        self.scale: float | None = None if scale else 1.0  # None: the kernel's 1/sqrt(d_k)
        self.q_proj = nn.Linear(d_model, n_heads * d_k)
        self.k_proj = None if shared_query_key else nn.Linear(d_model, n_heads * d_k)
        self.v_proj = nn.Linear(d_model, n_heads * d_v)
        self.out_proj = nn.Linear(n_heads * d_v, d_model)
        # Options (not the paper): absent, and no parameter or state-dict entry, when off.
        self.score_vector: nn.Parameter | None = None
        if scoring == "additive":  # w_h, one per head; N(0, 1/d_k): scores of about unit size
            self.score_vector = nn.Parameter(torch.randn(n_heads, d_k) * d_k**-0.5)
        self.positions = positions
        self.rotates = isinstance(positions, RotaryPositions)  # q and k rotated in project_qkv
        # The paper's attention (rotary positions too: they live in q and k), through the calls
        # it has always made; the other options take `_attend_with_options`.
        self.plain = self.score_vector is None and (positions is None or self.rotates)
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

    def project_qkv(self, x: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention projections of x (B, T, D) in one matmul -> q, k (B, H, T, d_k), v (B, H, T, d_v).

        With rotary positions, q and k come out rotated by their positions offset .. offset+T-1.
        """
        if self.k_proj is None:  # shared query/key projection: the keys are the queries
            weight, bias = self._fused_linear("qv", (self.q_proj, self.v_proj))
            q, v = F.linear(x, weight, bias).split(
                [self.n_heads * self.d_k, self.n_heads * self.d_v], dim=-1
            )
            q = self._heads(q, self.d_k)
            if self.rotates:
                q = self.positions.rotate(q, offset)
            return q, q, self._heads(v, self.d_v)
        weight, bias = self._fused_linear("qkv", (self.q_proj, self.k_proj, self.v_proj))
        hk = self.n_heads * self.d_k
        q, k, v = F.linear(x, weight, bias).split([hk, hk, self.n_heads * self.d_v], dim=-1)
        q, k, v = self._heads(q, self.d_k), self._heads(k, self.d_k), self._heads(v, self.d_v)
        if self.rotates:
            q, k = self.positions.rotate(q, offset), self.positions.rotate(k, offset)
        return q, k, v

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
        offset: int = 0,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention over projected heads, then concat and W^O -> ((B, Tq, D), weights or None).

        `offset`: the position of the first query when this module has ALiBi or relative
        positions (self-attention; the keys are at 0 .. Tk-1); ignored otherwise.
        """
        dropout_p = self.attention_dropout if self.training else 0.0
        if not self.plain:
            out, weights = self._attend_with_options(
                q, k, v, mask, is_causal, need_weights, offset, dropout_p
            )
        elif need_weights or written_out_is_faster(q):
            out, weights = reference_attention(q, k, v, mask, is_causal, dropout_p, self.scale)
            weights = weights if need_weights else None
        elif not is_causal and inference_faster(q):
            out, weights = inference_attention(q, k, v, mask, scale=self.scale), None
        else:
            out = fused_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=self.scale
            )
            weights = None
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_v)  # (B, Tq, H*d_v)
        return self.out_proj(out), weights

    def _attend_with_options(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        is_causal: bool,
        need_weights: bool,
        offset: int,
        dropout_p: float,
    ) -> tuple[Tensor, Tensor | None]:
        """(B, H, Tq, d_v) output and the weights (None unless asked) for additive scoring,
        ALiBi or relative positions. Dot products with ALiBi use the fused kernel with the bias
        as a float mask (the dtype's lowest finite value where not allowed), as the paper's
        attention does; everything else, and every request for weights, is written out."""
        alibi = self.positions if isinstance(self.positions, AlibiPositions) else None
        if (
            alibi is not None
            and self.score_vector is None
            and not need_weights
            and not written_out_is_faster(q)
        ):
            t_q, t_k = q.size(-2), k.size(-2)
            if is_causal:
                causal = causal_mask(t_q, t_k, q.device)
                mask = causal if mask is None else mask & causal
            bias = alibi.bias(offset, t_q, t_k).to(q.dtype)  # (H, Tq, Tk)
            if mask is not None:
                bias = bias.masked_fill(~mask, torch.finfo(q.dtype).min)  # (B|1, H, Tq, Tk)
            out = fused_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=self.scale)
            return out, None
        out, weights = written_out_attention(
            q, k, v, mask, is_causal, dropout_p, self.scale,
            score_vector=self.score_vector, positions=self.positions, offset=offset,
        )  # fmt: skip
        return out, weights if need_weights else None

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
        Positions (`positions`) belong to self-attention: queries and keys both at 0 .. T-1.
        """
        if key_value is None:
            q, k, v = self.project_qkv(query)
        elif self.positions is not None:
            raise ValueError(
                f"this attention has {self.positions.kind} positions, which belong to "
                "self-attention; call it without key_value"
            )
        else:
            q = self.project_q(query)
            k, v = self.project_kv(key_value)
        return self.attend(q, k, v, mask, is_causal, need_weights)
