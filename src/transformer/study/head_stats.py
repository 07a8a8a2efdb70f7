"""What each attention head does: statistics of its weights, and masking it from outside the model.

Shapes: L layers, H heads, Q query positions, K key positions.

Three attention kinds, the three boxes of the paper's Figure 1 that hold attention:

    encoder_self   queries and keys: the source subwords + EOS
    decoder_self   queries and keys: the decoder inputs, BOS + hypothesis (causal)
    cross          queries: the decoder inputs (row i predicts target token i, the last row EOS);
                   keys: the source subwords + EOS

The statistics of one head (`STATISTICS`) are means over query rows, each row weighted alike, so
that a sentence counts in proportion to its length. The query of decoder self-attention at BOS
(row 0) sees one key only and has no choice: it is left out of every decoder self-attention
statistic. Padding never enters: the weights are those of single sentences, cut to their length.

Masking a head (`masked_heads`) zeroes its slice of Concat(head_1..head_h) on the way into W^O (a
forward pre-hook on the attention's `out_proj`), so MultiHead = sum over the other heads of
head_i W_i^O, plus the bias of W^O. The model's code is untouched and the hooks are removed on
leaving the context.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from transformer.model import Transformer
from transformer.model.attention import MultiHeadAttention
from transformer.visualize import SPACE_MARK, readable_token
from transformer.vocab import SPECIAL_TOKENS

if TYPE_CHECKING:
    from transformer.translator import AttentionMaps

KINDS: tuple[str, ...] = ("encoder_self", "decoder_self", "cross")
KIND_TITLES = {
    "encoder_self": "Encoder self-attention",
    "decoder_self": "Decoder self-attention",
    "cross": "Encoder-decoder (cross) attention",
}
KIND_SHORT = {"encoder_self": "encoder", "decoder_self": "decoder", "cross": "cross"}
SELF_KINDS = ("encoder_self", "decoder_self")


@dataclass(frozen=True)
class Statistic:
    """One number per head: its name (a CSV column), heading, unit, the kinds it is defined for,
    and what it means."""

    name: str
    heading: str
    unit: str  # "share" (a fraction of the attention, 0 to 1), "tokens" or "nats"
    kinds: tuple[str, ...]
    meaning: str


STATISTICS: tuple[Statistic, ...] = (
    Statistic(
        "distance",
        "distance",
        "tokens",
        KINDS,
        "mean |key position - query position| weighted by the attention, in tokens; for cross "
        "attention the query's position is its place on the diagonal, i * (S-1) / (T-1) for "
        "row i of T over S source tokens (first target token -> first source token, EOS -> EOS)",
    ),
    Statistic(
        "offset",
        "offset",
        "tokens",
        KINDS,
        "the same without the absolute value: negative looks back (left of the diagonal for "
        "cross attention), positive ahead",
    ),
    Statistic(
        "entropy",
        "entropy",
        "nats",
        KINDS,
        "-sum w ln w over the keys, in nats: 0 when all attention is on one key, ln(n) when it "
        "is spread evenly over n keys",
    ),
    Statistic(
        "previous",
        "previous",
        "share",
        SELF_KINDS,
        "share on the token just before the query (queries that have one)",
    ),
    Statistic("same", "same", "share", SELF_KINDS, "share on the query's own token"),
    Statistic(
        "next",
        "next",
        "share",
        ("encoder_self",),
        "share on the token just after the query (queries that have one; decoder "
        "self-attention cannot see it)",
    ),
    Statistic(
        "punctuation",
        "punct.",
        "share",
        KINDS,
        'share on punctuation tokens (subwords made only of Unicode punctuation, such as . , - ")',
    ),
    Statistic(
        "eos",
        "EOS/BOS",
        "share",
        KINDS,
        "share on the sentence-boundary token: the source EOS for encoder self- and cross "
        "attention; BOS for decoder self-attention, whose inputs hold no EOS",
    ),
)
STATISTIC = {s.name: s for s in STATISTICS}


def statistics_of(kind: str) -> list[Statistic]:
    """The statistics defined for one attention kind, in `STATISTICS` order."""
    return [s for s in STATISTICS if kind in s.kinds]


# ------------------------------------------------------------------------------- statistics


def is_punctuation(token: str) -> bool:
    """True for a subword made only of Unicode punctuation (a leading space aside).

    `token` is the tokenizer's piece (byte-level BPE, `Ġ` for a space) or readable text; the
    special tokens (<s>, </s>, ...) are not punctuation.
    """
    if token in SPECIAL_TOKENS:
        return False
    text = readable_token(token).replace(SPACE_MARK, "").strip()
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)


def punctuation_mask(tokens: Sequence[str]) -> Tensor:
    """(K,) bool: which of these key tokens are punctuation."""
    return torch.tensor([is_punctuation(t) for t in tokens], dtype=torch.bool)


def row_statistics(
    kind: str, weights: Tensor, punctuation: Tensor | None = None
) -> dict[str, tuple[Tensor, Tensor]]:
    """Every statistic of `kind` per query row: name -> (values (L, H, Q), rows counted (Q,) bool).

    weights (L, H, Q, K) of one sentence, each row summing to 1; punctuation (K,) bool marks the
    punctuation keys (none when omitted). Statistics and their definitions: `STATISTICS`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; one of {', '.join(KINDS)}")
    if weights.dim() != 4:
        raise ValueError(f"weights must be (layers, heads, queries, keys), got {weights.shape}")
    w = weights.double()
    n_q, n_k = w.shape[-2:]
    if kind in SELF_KINDS and n_q != n_k:
        raise ValueError(f"{kind}: self-attention weights must be square, got {n_q} x {n_k}")
    rows = torch.arange(n_q, dtype=torch.float64)
    keys = torch.arange(n_k, dtype=torch.float64)
    if kind == "cross":  # the query's place on the source: the diagonal, scaled by the lengths
        centre = rows * (n_k - 1) / (n_q - 1) if n_q > 1 else torch.full((1,), n_k - 1.0)
    else:
        centre = rows
    delta = keys[None, :] - centre[:, None]  # (Q, K)
    counted = torch.ones(n_q, dtype=torch.bool)
    if kind == "decoder_self":
        counted[0] = False  # BOS sees itself only: no choice to measure
    has_previous, has_next = rows >= 1, rows <= n_k - 2
    stats = {
        "distance": (w * delta.abs()).sum(-1),  # (L, H, Q)
        "offset": (w * delta).sum(-1),
        "entropy": torch.special.entr(w).sum(-1),
    }
    if kind in SELF_KINDS:
        zero = w.new_zeros((*w.shape[:-2], 1))  # (L, H, 1): no previous / next key
        stats["previous"] = torch.cat([zero, w.diagonal(-1, -2, -1)], -1)
        stats["same"] = w.diagonal(0, -2, -1)
        stats["next"] = torch.cat([w.diagonal(1, -2, -1), zero], -1)
    if punctuation is None:
        punctuation = torch.zeros(n_k, dtype=torch.bool)
    if punctuation.shape != (n_k,):
        raise ValueError(f"punctuation must be ({n_k},) for {n_k} keys, got {punctuation.shape}")
    stats["punctuation"] = (w * punctuation.to(w.dtype)).sum(-1)
    boundary = 0 if kind == "decoder_self" else n_k - 1  # BOS, or the source's final EOS
    stats["eos"] = w[..., boundary]
    out = {}
    for s in statistics_of(kind):
        valid = counted
        if s.name == "previous":
            valid = counted & has_previous
        elif s.name == "next":
            valid = counted & has_next
        out[s.name] = (stats[s.name], valid)
    return out


class HeadStatistics:
    """Running means of every statistic of every head, over the sentences added."""

    def __init__(self, layers: dict[str, int], heads: int):
        self.layers, self.heads = dict(layers), heads
        self._sums: dict[tuple[str, str], Tensor] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self.queries = dict.fromkeys(KINDS, 0)  # query rows counted (all statistics but some)
        self._uniform = dict.fromkeys(KINDS, 0.0)  # sum of ln(visible keys) over those rows
        self.sentences = 0

    def add(self, kind: str, weights: Tensor, punctuation: Tensor | None = None) -> None:
        """One sentence's weights (L, H, Q, K) of one kind (see `row_statistics`)."""
        expected = (self.layers[kind], self.heads)
        if tuple(weights.shape[:2]) != expected:
            raise ValueError(f"{kind}: expected {expected} layers x heads, got {weights.shape}")
        per_row = row_statistics(kind, weights, punctuation)
        for name, (values, valid) in per_row.items():
            key = (kind, name)
            total = values[..., valid].sum(-1)  # (L, H)
            self._sums[key] = self._sums.get(key, 0) + total
            self._counts[key] = self._counts.get(key, 0) + int(valid.sum())
        counted = per_row["entropy"][1]
        n_q, n_k = weights.shape[-2:]
        visible = torch.arange(1, n_q + 1) if kind == "decoder_self" else torch.full((n_q,), n_k)
        self.queries[kind] += int(counted.sum())
        self._uniform[kind] += float(visible[counted].double().log().sum())

    def add_maps(self, maps: AttentionMaps) -> None:
        """Every kind of one sentence's `AttentionMaps` (from `translate_nbest(attention=True)`)."""
        source_punct = punctuation_mask(maps.source_tokens)
        self.add("encoder_self", maps.encoder_self, source_punct)
        self.add("decoder_self", maps.decoder_self, punctuation_mask(maps.decoder_tokens))
        self.add("cross", maps.cross, source_punct)
        self.sentences += 1

    def means(self) -> dict[str, dict[str, Tensor]]:
        """kind -> statistic -> (L, H) means (NaN where no query row was counted)."""
        out: dict[str, dict[str, Tensor]] = {}
        for kind in KINDS:
            out[kind] = {}
            for s in statistics_of(kind):
                count = self._counts.get((kind, s.name), 0)
                shape = (self.layers[kind], self.heads)
                if count == 0:
                    out[kind][s.name] = torch.full(shape, float("nan"), dtype=torch.float64)
                else:
                    out[kind][s.name] = self._sums[(kind, s.name)] / count
        return out

    def uniform_entropy(self, kind: str) -> float:
        """The mean entropy a head spreading its attention evenly would have, in nats (NaN
        without queries): the yardstick of the entropy column."""
        n = self.queries[kind]
        return self._uniform[kind] / n if n else float("nan")


# ------------------------------------------------------------------------------------ masking


def attention_module(model: Transformer, kind: str, layer: int) -> MultiHeadAttention:
    """The multi-head attention of one kind in one layer (0-based)."""
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; one of {', '.join(KINDS)}")
    stack = model.encoder.layers if kind == "encoder_self" else model.decoder.layers
    if not 0 <= layer < len(stack):
        raise ValueError(f"{kind}: layer {layer} out of range; the model has {len(stack)}")
    return stack[layer].cross_attn if kind == "cross" else stack[layer].self_attn


def layer_counts(model: Transformer) -> dict[str, int]:
    """kind -> number of layers holding that kind of attention."""
    n_enc, n_dec = len(model.encoder.layers), len(model.decoder.layers)
    return {"encoder_self": n_enc, "decoder_self": n_dec, "cross": n_dec}


def all_heads(model: Transformer) -> list[tuple[str, int, int]]:
    """Every (kind, layer, head) of the model, 0-based, in kind, layer, head order."""
    counts, heads = layer_counts(model), model.config.n_heads
    return [(k, layer, h) for k in KINDS for layer in range(counts[k]) for h in range(heads)]


@contextmanager
def masked_heads(model: Transformer, heads: Iterable[tuple[str, int, int]]) -> Iterator[None]:
    """Inside the context, the given heads (kind, layer, head; 0-based) contribute nothing.

    Each masked head's d_v outputs are set to zero before W^O by a forward pre-hook on its
    attention's `out_proj`, in every pass (teacher-forced or cached decoding); the hooks are
    removed on exit, also on an exception. Masking nothing leaves the model as it is.
    """
    keep: dict[tuple[str, int], Tensor] = {}
    modules: dict[tuple[str, int], MultiHeadAttention] = {}
    for kind, layer, head in heads:
        module = attention_module(model, kind, layer)
        if not 0 <= head < module.n_heads:
            raise ValueError(f"{kind} layer {layer}: head {head} out of range 0..{module.n_heads}")
        if (kind, layer) not in keep:
            keep[(kind, layer)] = torch.ones(module.n_heads * module.d_v, dtype=torch.bool)
            modules[(kind, layer)] = module
        keep[(kind, layer)][head * module.d_v : (head + 1) * module.d_v] = False
    handles = []
    try:
        for key, module in modules.items():
            handles.append(module.out_proj.register_forward_pre_hook(_zero_slices(keep[key])))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _zero_slices(keep: Tensor):
    """A pre-hook that zeroes the features of Concat(heads) (..., H*d_v) where `keep` is False."""

    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        x = args[0]  # (B, Tq, H*d_v)
        return (x.masked_fill(~keep.to(x.device), 0.0), *args[1:])

    return hook
