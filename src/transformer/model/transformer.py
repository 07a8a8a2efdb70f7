"""Encoder, Decoder and the Transformer (Figure 1), built from a ModelConfig.

Shapes: B batch, S source length, T target length, D d_model, V vocabulary.
Ids use the project's fixed special tokens (transformer.vocab); masks are derived from ids via
`padding_mask` (True = real token).

Positions: absolute vectors added to the embeddings (sinusoidal, the paper, or learned), none at
all, or (`positional` relative, rotary, alibi) terms inside the self-attention of both stacks,
with nothing added to the embeddings and nothing in cross-attention (positions.py).
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

import torch
from torch import Tensor, nn

from transformer.config import ModelConfig
from transformer.model.attention import key_mask, padding_mask
from transformer.model.cache import DecoderCache
from transformer.model.embeddings import (
    LearnedPositionalEmbedding,
    ScaledEmbedding,
    SinusoidalPositionalEncoding,
    TransformerEmbedding,
)
from transformer.model.layers import AttentionRecord, DecoderLayer, EncoderLayer
from transformer.model.norms import apply_norm, make_norm
from transformer.model.positions import IN_ATTENTION


def _positional(config: ModelConfig) -> nn.Module | None:
    """The absolute position vectors added to the embeddings (None: nothing is added)."""
    if config.positional == "none":  # an ablation: the model sees a bag of tokens
        return None
    if config.positional in IN_ATTENTION:  # relative, rotary, ALiBi: inside self-attention
        return None
    if config.positional == "learned":
        return LearnedPositionalEmbedding(config.d_model, config.max_positions)
    return SinusoidalPositionalEncoding(config.d_model, config.max_positions)


def _layer_kwargs(config: ModelConfig) -> dict:
    return dict(
        d_model=config.d_model,
        n_heads=config.n_heads,
        d_k=config.d_k,
        d_v=config.d_v,
        d_ff=config.d_ff,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        norm_position=config.norm_position,
        eps=config.layer_norm_eps,
        scale_attention=config.scale_attention,
        shared_query_key=config.shared_query_key,
        norm=config.norm,
        activation=config.activation,
        residual=config.residual,
        positional=config.positional,
        relative_clip=config.relative_clip,
        attention=config.attention,
    )


def _final_norm(config: ModelConfig) -> nn.Module | None:
    """The norm closing a pre-norm stack (none in post-norm: each layer ends normalised)."""
    if config.norm_position != "pre":
        return None
    return make_norm(config.norm, config.d_model, config.layer_norm_eps)


def _batch_norm_tokens(module: Encoder | Decoder, real: Callable[[], Tensor]) -> Tensor | None:
    """The real tokens (B, T), where a norm needs them: BatchNorm's statistics, in training."""
    return real() if module.config.norm == "batch" and module.training else None


def init_linear_layers(*stacks: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every projection inside the layers."""
    for stack in stacks:
        for module in stack.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    """N encoder layers over embedded source tokens (plus a final LayerNorm in pre-norm only)."""

    def __init__(self, config: ModelConfig, token_embedding: ScaledEmbedding):
        super().__init__()
        self.embed = TransformerEmbedding(token_embedding, _positional(config), config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(**_layer_kwargs(config)) for _ in range(config.n_encoder_layers)
        )
        self.config = config
        self.final_norm = _final_norm(config)

    def forward(
        self, src_ids: Tensor, src_mask: Tensor, record: AttentionRecord | None = None
    ) -> Tensor:
        """src_ids (B, S), src_mask (B, S) bool -> memory (B, S, D)."""
        x = self.embed(src_ids)
        mask = key_mask(src_mask)  # (B, 1, 1, S)
        tokens = _batch_norm_tokens(self, lambda: src_mask)
        for layer in self.layers:
            x = layer(x, mask, record, tokens)
        return x if self.final_norm is None else apply_norm(self.final_norm, x, tokens)


class Decoder(nn.Module):
    """N decoder layers over embedded target tokens (plus a final LayerNorm in pre-norm only)."""

    def __init__(self, config: ModelConfig, token_embedding: ScaledEmbedding):
        super().__init__()
        self.embed = TransformerEmbedding(token_embedding, _positional(config), config.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(**_layer_kwargs(config)) for _ in range(config.n_decoder_layers)
        )
        self.config = config
        self.final_norm = _final_norm(config)

    def forward(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        cache: DecoderCache | None = None,
        record: AttentionRecord | None = None,
    ) -> Tensor:
        """tgt_ids (B, T), memory (B / g, S, D), src_mask (B / g, S) -> hidden states (B, T, D).

        Usually g = 1: one source per target row. Beam search passes each source once for its g
        beams (target rows i*g .. i*g + g - 1 belong to source i): the cross-attention keys and
        values are then computed, cached, reordered and read once per source, not once per beam.
        """
        if tgt_ids.size(0) % memory.size(0):
            raise ValueError(
                f"{tgt_ids.size(0)} target rows do not share {memory.size(0)} sources evenly"
            )
        offset = cache.length if cache is not None else 0
        x = self.embed(tgt_ids, offset)
        mask = key_mask(src_mask)  # (B, 1, 1, S)
        tokens = _batch_norm_tokens(self, lambda: padding_mask(tgt_ids))
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layer(i) if cache is not None else None
            x = layer(x, memory, mask, layer_cache, record, tokens)
        if cache is not None:
            cache.length += tgt_ids.size(1)
        return x if self.final_norm is None else apply_norm(self.final_norm, x, tokens)


class Transformer(nn.Module):
    """The encoder-decoder Transformer.

    With `share_embeddings` (the paper), one matrix is the source embedding, the target embedding
    and the pre-softmax projection; otherwise each has its own. The model knows nothing of search:
    it exposes `encode` and `decode(..., cache)` for the decoders in `transformer.decoding`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        scale = config.scale_embedding
        src_embedding = ScaledEmbedding(config.vocab_size, config.d_model, scale)
        if config.share_embeddings:
            tgt_embedding = src_embedding
            self.output_projection = None  # logits use tgt_embedding.weight
        else:
            tgt_embedding = ScaledEmbedding(config.vocab_size, config.d_model, scale)
            self.output_projection = nn.Linear(config.d_model, config.vocab_size, bias=False)
            nn.init.normal_(self.output_projection.weight, std=config.d_model**-0.5)
        self.encoder = Encoder(config, src_embedding)
        self.decoder = Decoder(config, tgt_embedding)
        init_linear_layers(self.encoder.layers, self.decoder.layers)

    @property
    def output_weight(self) -> Tensor:
        """(V, D) matrix of the pre-softmax linear layer."""
        if self.output_projection is None:
            return self.decoder.embed.token.weight
        return self.output_projection.weight

    def encode(
        self, src_ids: Tensor, src_mask: Tensor | None = None, record: AttentionRecord | None = None
    ) -> Tensor:
        """src_ids (B, S) -> memory (B, S, D). `src_mask` (B, S) defaults to ids != pad."""
        if src_mask is None:
            src_mask = padding_mask(src_ids)
        return self.encoder(src_ids, src_mask, record)

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        cache: DecoderCache | None = None,
        record: AttentionRecord | None = None,
    ) -> Tensor:
        """Target ids (B, T) -> logits (B, T, V); memory and src_mask as in `Decoder.forward`.

        Without a cache, `tgt_ids` is the whole prefix (teacher forcing). With a `DecoderCache`,
        it holds only the new positions; the cache is updated in place.
        """
        hidden = self.decoder(tgt_ids, memory, src_mask, cache, record)
        return nn.functional.linear(hidden, self.output_weight)  # (B, T, V)

    def forward(self, src_ids: Tensor, tgt_in_ids: Tensor, project: bool = True) -> Tensor:
        """Teacher-forced logits (B, T, V) for source ids (B, S) and target input ids (B, T);
        with `project=False` the decoder's output (B, T, D) instead, which `output_weight`
        projects onto the vocabulary (the training loss does it block by block)."""
        src_mask = padding_mask(src_ids)
        memory = self.encode(src_ids, src_mask)
        if not project:
            return self.decoder(tgt_in_ids, memory, src_mask)
        return self.decode(tgt_in_ids, memory, src_mask)

    def attention_weights(self, src_ids: Tensor, tgt_in_ids: Tensor) -> AttentionRecord:
        """Every layer's attention weights (reference path) for one teacher-forced pass."""
        record = AttentionRecord()
        src_mask = padding_mask(src_ids)
        memory = self.encode(src_ids, src_mask, record)
        self.decode(tgt_in_ids, memory, src_mask, record=record)
        return record

    def num_parameters(self) -> int:
        """Distinct trainable parameters (a shared matrix counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def autocast_copy(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """A copy of `model` for inference under `torch.autocast(dtype=dtype)`, with the same
    results and far fewer casts (`dtype` None, no autocast: the model itself, in eval mode).

    Autocast casts the weights of every linear map to `dtype` at every call, and under inference
    nothing keeps those casts: at each step of decoding, about a hundred weight matrices are
    converted again (the output projection, V x D, the largest). The copy holds every `nn.Linear`
    in `dtype` once, and a Transformer that ties its output projection to the embedding gets an
    untied copy of it in `dtype`. Embeddings, norms and positions keep their dtype, so each
    operation sees the very values autocast would give it. The copy is for decoding (eval mode);
    train and save the original.
    """
    if dtype is None:
        return model.eval()
    copy = deepcopy(model).eval()
    with torch.no_grad():
        if isinstance(copy, Transformer) and copy.output_projection is None:
            weight = copy.output_weight
            copy.output_projection = nn.Linear(
                weight.size(1), weight.size(0), bias=False, device=weight.device, dtype=dtype
            )
            copy.output_projection.weight.copy_(weight)
        for module in copy.modules():
            if isinstance(module, nn.Linear):
                module.to(dtype)
    return copy
