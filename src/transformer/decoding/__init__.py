"""Decoding: greedy, beam search (the strategy in search.py, the batched cached loop in
generate.py) and sampling, configured by `DecodeOptions` (options.py, the one declaration of the
decoding options); inputs grouped by length in batching.py."""

from transformer.decoding.batching import length_batches
from transformer.decoding.generate import (
    Generated,
    ModelState,
    Scorer,
    generate,
    max_output_lengths,
)
from transformer.decoding.options import METHODS, DecodeOptions
from transformer.decoding.search import (
    LENGTH_PENALTIES,
    BeamSearch,
    BeamStep,
    ban_repeated_ngrams,
    gnmt_length_penalty,
    no_length_penalty,
    power_length_penalty,
    sample_step,
)

__all__ = [
    "LENGTH_PENALTIES",
    "METHODS",
    "BeamSearch",
    "BeamStep",
    "DecodeOptions",
    "Generated",
    "ModelState",
    "Scorer",
    "ban_repeated_ngrams",
    "generate",
    "gnmt_length_penalty",
    "length_batches",
    "max_output_lengths",
    "no_length_penalty",
    "power_length_penalty",
    "sample_step",
]
