"""Engines: what turns a batch of source ids into hypotheses, behind the `Translator`.

The Translator owns everything around decoding (tokenization, truncation to the model's positions,
the max-length rule, length-sorted batching, detokenization, n-best assembly); an engine only
decodes one batch of id sequences. Two exist:

- `TorchEngine` ("torch"): our PyTorch models (one or an ensemble) and the search loop of
  `generate.py`. The reference: everything the project can do, including attention maps.
- `CTranslate2Engine` ("ctranslate2", in ct2_engine.py): a model exported with
  `transformer export --format ctranslate2`, decoded by CTranslate2 (optional dependency).

Both return a `Generated` with the same conventions (tokens with EOS, |Y| counting the EOS, summed
log-probabilities, score = log_prob / lp(|Y|)), so the Translator never asks which one it has.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from transformer.decoding.batching import length_batches
from transformer.decoding.generate import Generated, generate, max_output_lengths
from transformer.decoding.options import DecodeOptions
from transformer.hardware import AUTOCAST_DTYPES, inference_context, resolve_inference_precision
from transformer.model import Transformer, autocast_copy
from transformer.vocab import EOS_ID, PAD_ID

ENGINES = ("torch", "ctranslate2")


class Engine(Protocol):
    """A decoder of id batches. `max_positions`: the most positions it can take (None: any)."""

    name: str
    vocab_size: int
    max_positions: int | None
    # The PyTorch models behind the engine (empty for engines that run none): needed for
    # attention maps and visualisation.
    models: list[Transformer]

    def problems(self, settings: DecodeOptions, attention: bool) -> list[str]:
        """Every requested option this engine cannot honour, one line each (empty: all fine)."""
        ...

    def generate(
        self, sources: list[list[int]], max_len: Tensor, settings: DecodeOptions
    ) -> Generated:
        """Decode N sources (subword ids + EOS, unpadded); max_len (N,) tokens before the EOS."""
        ...


def max_source_subwords(engine: Engine) -> int | None:
    """The most source subwords `engine` can take, one position being the EOS (None: any)."""
    return None if engine.max_positions is None else engine.max_positions - 1


def decode_batches(
    engine: Engine, ids: Sequence[Sequence[int]], options: DecodeOptions
) -> Iterator[tuple[list[int], Generated]]:
    """Decode source subword lists (non-empty, already cut to `max_source_subwords`) in
    length-sorted batches of `options.max_tokens` padded tokens: yields (indices into `ids`,
    their hypotheses). Each source gets its EOS, and each hypothesis at most
    max_len_a * |source| + max_len_b tokens (and no more than the engine's positions)."""
    cap = max_source_subwords(engine)
    lengths = [len(seq) + 1 for seq in ids]
    for batch in length_batches(lengths, options.max_tokens, options.max_sentences):
        src_lengths = torch.tensor([len(ids[i]) for i in batch])
        max_len = max_output_lengths(src_lengths, options.max_len_a, options.max_len_b, cap)
        yield batch, engine.generate([[*ids[i], EOS_ID] for i in batch], max_len, options)


def hypothesis_ids(out: Generated) -> list[list[list[int]]]:
    """The hypotheses of `out` as id lists without their EOS: (N sentences, F hypotheses)."""
    tokens, lengths = out.tokens.cpu().tolist(), out.lengths.cpu().tolist()
    return [
        [seq[: max(n - 1, 0)] for seq, n in zip(sentence, sentence_lengths)]
        for sentence, sentence_lengths in zip(tokens, lengths)
    ]


def pad_ids(seqs: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> Tensor:
    """Right-pad id lists with PAD into a (N, max length) tensor."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out.to(device)


class TorchEngine:
    """Our PyTorch model(s) on `device`, decoded by `transformer.decoding.generate`."""

    name = "torch"

    def __init__(
        self,
        models: Sequence[Transformer],
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ):
        if not models:
            raise ValueError("a TorchEngine needs at least one model")
        self.device = torch.device(device)
        # fp32: exact; bf16 autocast: faster with AMX or AVX512-BF16; "auto" chooses.
        self.precision, self.precision_reason = resolve_inference_precision(precision, device)
        # Under autocast, copies holding their linear maps in bf16 once (the same results).
        self.models = [autocast_copy(m, AUTOCAST_DTYPES.get(self.precision)) for m in models]
        self.vocab_size = models[0].config.vocab_size
        limits = [m.config.max_positions for m in models if m.config.positional == "learned"]
        self.max_positions: int | None = min(limits) if limits else None

    def problems(self, settings: DecodeOptions, attention: bool) -> list[str]:
        return []

    def generate(
        self, sources: list[list[int]], max_len: Tensor, settings: DecodeOptions
    ) -> Generated:
        src = pad_ids(sources, self.device)  # (N, S)
        with inference_context(self.device, self.precision):
            return generate(self.models, src, max_len.to(self.device), settings)
