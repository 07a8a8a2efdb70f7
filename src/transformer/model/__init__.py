"""The Transformer of Figure 1, one file per box: attention, layers, embeddings, the model, its cache."""

from transformer.model.attention import (
    MultiHeadAttention,
    causal_mask,
    pad_keys,
    padding_mask,
    reference_attention,
)
from transformer.model.cache import DecoderCache
from transformer.model.classifier import TransformerClassifier
from transformer.model.embeddings import sinusoid_table
from transformer.model.layers import AttentionRecord, DecoderLayer, EncoderLayer, FeedForward
from transformer.model.transformer import Decoder, Encoder, Transformer, autocast_copy

__all__ = [
    "AttentionRecord",
    "Decoder",
    "DecoderCache",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "MultiHeadAttention",
    "Transformer",
    "TransformerClassifier",
    "autocast_copy",
    "causal_mask",
    "pad_keys",
    "padding_mask",
    "reference_attention",
    "sinusoid_table",
]
