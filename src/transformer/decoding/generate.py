"""The decoding loop: many sentences (x beams) at once over `Transformer.encode` / `decode`.

Shapes: N sentences still open, K beams, R rows of the decoder batch (N, N*K or N*samples),
S source length, t tokens generated so far, V vocabulary, F hypotheses kept per sentence.

Each source is encoded once. With the KV cache (the default), every step feeds only the newest
token; the cross-attention keys/values are computed at the first step and reused. Sentences that
are done leave the batch at once (their rows are dropped from the cache, memory and mask), so they
cost nothing afterwards. The step's choice of tokens is delegated to `search.py`.

Lengths: a hypothesis holds at most `max_len[i]` tokens before its EOS; at that point EOS is
forced (with its real log-probability). `min_len` forbids EOS before that many tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer.decoding.options import DecodeOptions
from transformer.decoding.search import (
    BeamSearch,
    ban_repeated_ngrams,
    best_possible_score,
    greedy_step,
    normalise,
    sample_step,
)
from transformer.model import DecoderCache, Transformer, pad_keys, padding_mask
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID

# --------------------------------------------------------------------------------- model state


class ModelState:
    """One model's decoding state for a batch: encoder memory, source mask and the KV cache."""

    def __init__(self, model: Transformer, src_ids: Tensor, use_cache: bool = True):
        self.model = model
        self.src_mask = padding_mask(src_ids)  # (R, S)
        self.memory = model.encode(src_ids, self.src_mask)  # (R, S, D)
        if src_ids.device.type == "cpu":  # padded once to the keys that CPU attention would
            # pad them to at every step (a multiple of 16, so a sentence's sums are the same in
            # any batch; `pad_keys`)
            self.src_mask, self.memory = pad_keys(self.src_mask, self.memory, dim=1)
        self.cache = DecoderCache() if use_cache else None
        self._out = torch.empty(0, device=src_ids.device)  # the log-probabilities' block

    def log_probs(self, prefix: Tensor) -> Tensor:
        """prefix (R, t + 1) = BOS + tokens so far -> next-token log-probabilities (R, V), float32.

        The result lives in a block that the next call overwrites (R x V floats, megabytes at
        every step: allocating a fresh block each time made CPU beam search 15-25% slower)."""
        if self.cache is not None:
            new = prefix[:, self.cache.length :]  # (R, 1): only what the cache has not seen
            logits = self.model.decode(new, self.memory, self.src_mask, self.cache)
        else:
            logits = self.model.decode(prefix, self.memory, self.src_mask)
        last = logits[:, -1]
        if self._out.numel() < last.numel():
            self._out = torch.empty(last.numel(), device=last.device)
        out = self._out[: last.numel()].view(last.shape)
        if last.dtype != out.dtype:  # bf16 logits: converted into the block, then in place (a
            last = out.copy_(last)  # fresh float32 copy of them cost as much as log_softmax)
        return torch.log_softmax(last, dim=-1, out=out)

    def reorder(self, indices: Tensor, sources: Tensor | None) -> None:
        """Keep rows `indices` of the cache, and rows `sources` of the memory, the mask and the
        cross-attention keys/values (None: every source stays, e.g. beams of one sentence
        trading places). Each source serves len(indices) / len(sources) consecutive rows."""
        if sources is not None:
            self.memory = self.memory.index_select(0, sources)
            self.src_mask = self.src_mask.index_select(0, sources)
        if self.cache is not None:
            self.cache.reorder(indices, cross=False if sources is None else sources)


class Scorer:
    """Next-token log-probabilities of one model or of an ensemble (their log-probs averaged).

    The average of log-probabilities is a geometric mean of the distributions; it is used as is,
    not renormalised, so that an ensemble of one model is exactly that model.
    """

    def __init__(self, models: Sequence[Transformer], src_ids: Tensor, use_cache: bool = True):
        if not models:
            raise ValueError("no model to decode with")
        self.states = [ModelState(m, src_ids, use_cache) for m in models]

    def log_probs(self, prefix: Tensor) -> Tensor:
        if len(self.states) == 1:
            return self.states[0].log_probs(prefix)
        return torch.stack([s.log_probs(prefix) for s in self.states]).mean(dim=0)  # (R, V)

    def reorder(self, indices: Tensor, sources: Tensor | None) -> None:
        for state in self.states:
            state.reorder(indices, sources)


@dataclass
class Generated:
    """Hypotheses of N sentences, F per sentence, best first (`score` descending).

    tokens (N, F, T) the hypothesis tokens, EOS included, PAD after it; lengths (N, F) = |Y|
    (EOS counted); log_prob (N, F) summed token log-probabilities (EOS included); score (N, F)
    = log_prob / lp(|Y|), the ranking score.
    """

    tokens: Tensor
    lengths: Tensor
    log_prob: Tensor
    score: Tensor
    steps: int = 0


# ------------------------------------------------------------------------------------ entry


@torch.inference_mode()
def generate(
    models: Sequence[Transformer],
    src_ids: Tensor,
    max_len: Tensor,
    settings: DecodeOptions | None = None,
) -> Generated:
    """Decode a padded batch of sources (N, S) (subwords + EOS); max_len (N,) tokens before the
    EOS per sentence (see `max_output_lengths`). `settings`: how (default: the paper's beam 4);
    its `max_len_*` and batch fields are not read here."""
    settings = settings or DecodeOptions()
    if settings.method == "beam":
        return _beam_search(models, src_ids, max_len, settings)
    if settings.method == "greedy":
        return _sample_like(models, src_ids, max_len, settings, greedy=True)
    if settings.method == "sample":
        return _sample_like(models, src_ids, max_len, settings, greedy=False)
    raise ValueError(f"unknown decoding method {settings.method!r}")


def max_output_lengths(src_lengths: Tensor, a: float, b: int, cap: int | None = None) -> Tensor:
    """max_len = a * |source subwords| + b per sentence (N,), capped at `cap` if given."""
    lengths = (a * src_lengths.to(torch.float64)).floor().long() + b
    lengths = lengths.clamp(min=1)
    return lengths if cap is None else lengths.clamp(max=cap)


# ------------------------------------------------------------------------------ shared pieces


def _constrain(
    log_probs: Tensor, prefix: Tensor, max_len: Tensor, step: int, settings: DecodeOptions
) -> None:
    """In place: never PAD or BOS; EOS not before min_len; no repeated n-grams; EOS at max_len.

    log_probs (R, V); prefix (R, step + 1) BOS + history; max_len (R,).
    """
    log_probs[:, PAD_ID] = -math.inf
    log_probs[:, BOS_ID] = -math.inf
    if step < settings.min_len:
        log_probs[:, EOS_ID] = -math.inf
    if settings.no_repeat_ngram > 0:
        ban_repeated_ngrams(log_probs, prefix[:, 1:], settings.no_repeat_ngram)
    at_limit = max_len <= step  # (R,)
    if bool(at_limit.any()):
        eos = log_probs[:, EOS_ID].clone()
        log_probs.masked_fill_(at_limit[:, None], -math.inf)
        log_probs[:, EOS_ID] = torch.where(at_limit, eos, log_probs[:, EOS_ID])
        # A row whose EOS was banned (min_len > max_len) still ends: EOS gets log-prob 0 there.
        log_probs[:, EOS_ID] = torch.where(at_limit & (eos == -math.inf), 0.0, log_probs[:, EOS_ID])


def _pad_to(tokens: Tensor, length: int) -> Tensor:
    """Right-pad the last dimension of `tokens` with PAD to `length`."""
    return F.pad(tokens, (0, length - tokens.size(-1)), value=PAD_ID)


# ------------------------------------------------------------------------------- beam search


def _beam_search(
    models: Sequence[Transformer], src_ids: Tensor, max_len: Tensor, settings: DecodeOptions
) -> Generated:
    n0, device = src_ids.size(0), src_ids.device
    k, f = settings.beam, settings.nbest
    if not 1 <= f <= k:
        raise ValueError(f"nbest must be between 1 and the beam size {k}, got {f}")
    search = BeamSearch(k)
    penalty, alpha = settings.penalty, settings.alpha
    t_cap = int(max_len.max()) + 1  # longest possible hypothesis, EOS included

    # Results, indexed by original sentence.
    out_tokens = torch.full((n0, f, t_cap), PAD_ID, dtype=torch.long, device=device)
    out_lengths = torch.zeros(n0, f, dtype=torch.long, device=device)
    out_logp = torch.full((n0, f), -math.inf, device=device)
    out_score = torch.full((n0, f), -math.inf, device=device)

    scorer = Scorer(models, src_ids, settings.use_cache)
    sentences = torch.arange(n0, device=device)  # (N,) original index of each open sentence
    limit = max_len.to(device)  # (N,)
    beams = 1  # open beams per sentence: 1 at the first step, K afterwards
    prefix = torch.full((n0, 1), BOS_ID, dtype=torch.long, device=device)  # (R, t + 1)
    beam_scores = torch.zeros(n0, 1, device=device)  # (N, beams)
    # The F best finished hypotheses of each open sentence.
    fin_tokens = torch.full((n0, f, t_cap), PAD_ID, dtype=torch.long, device=device)
    fin_lengths = torch.zeros(n0, f, dtype=torch.long, device=device)
    fin_logp = torch.full((n0, f), -math.inf, device=device)
    fin_score = torch.full((n0, f), -math.inf, device=device)

    step = 0
    while True:
        n = sentences.numel()
        log_probs = scorer.log_probs(prefix)  # (R, V), R = N * beams
        _constrain(log_probs, prefix, limit.repeat_interleave(beams), step, settings)
        # log_probs is the scorer's scratch block: the step may overwrite it.
        cand = search.step(log_probs.view(n, beams, -1), beam_scores, overwrite=True)  # (N, 2K)
        width = cand.scores.size(1)
        rows = torch.arange(n, device=device)[:, None] * beams + cand.origins  # (N, 2K)
        history = prefix[:, 1:].index_select(0, rows.view(-1)).view(n, width, step)  # (N, 2K, t)

        # Candidates ending in EOS among the K best become finished hypotheses.
        is_eos = (cand.tokens == EOS_ID) & torch.isfinite(cand.scores)  # (N, 2K)
        is_eos[:, k:] = False
        length = torch.full_like(cand.tokens, step + 1)  # |Y| with the EOS
        new_score = normalise(cand.scores, length, penalty, alpha).masked_fill(~is_eos, -math.inf)
        new_tokens = _pad_to(torch.cat([history, cand.tokens[:, :, None]], dim=2), t_cap)
        all_score = torch.cat([fin_score, new_score], dim=1)  # (N, F + 2K)
        fin_score, pick = all_score.topk(f, dim=1)  # (N, F)
        fin_logp = torch.cat([fin_logp, cand.scores], dim=1).gather(1, pick)
        fin_lengths = torch.cat([fin_lengths, length], dim=1).gather(1, pick)
        fin_tokens = torch.cat([fin_tokens, new_tokens], dim=1).gather(
            1, pick[:, :, None].expand(n, f, t_cap)
        )  # (N, F, T)

        # The K best candidates not ending in EOS continue.
        open_scores = cand.scores.masked_fill(cand.tokens == EOS_ID, -math.inf)
        beam_scores, keep = open_scores.topk(k, dim=1)  # (N, K)
        tokens = cand.tokens.gather(1, keep)  # (N, K)
        rows = rows.gather(1, keep)  # (N, K) row of each new beam's parent

        # Done: nothing open, or no open beam can beat the F-th best finished hypothesis.
        bound = best_possible_score(
            beam_scores, torch.full_like(tokens, step + 1), (limit + 1)[:, None], penalty, alpha
        ).amax(dim=1)  # (N,)
        done = torch.isneginf(beam_scores).all(dim=1) | (
            torch.isfinite(fin_score[:, -1]) & (fin_score[:, -1] >= bound)
        )
        step += 1
        kept = None  # the sources that stay (None: all of them)
        if bool(done.any()):
            ids = sentences[done]
            out_tokens[ids] = fin_tokens[done]
            out_lengths[ids] = fin_lengths[done]
            out_logp[ids] = fin_logp[done]
            out_score[ids] = fin_score[done]
            if bool(done.all()):
                break
            open_ = ~done
            kept = open_.nonzero().squeeze(1)
            sentences, limit = sentences[open_], limit[open_]
            beam_scores, tokens, rows = beam_scores[open_], tokens[open_], rows[open_]
            fin_tokens, fin_lengths = fin_tokens[open_], fin_lengths[open_]
            fin_logp, fin_score = fin_logp[open_], fin_score[open_]
        indices = rows.reshape(-1)  # (N' * K,)
        # Each sentence's source is kept once for its K beams (see `Decoder.forward`).
        scorer.reorder(indices, sources=kept)
        prefix = torch.cat([prefix.index_select(0, indices), tokens.reshape(-1, 1)], dim=1)
        beams = k

    return Generated(out_tokens, out_lengths, out_logp, out_score, steps=step)


# ---------------------------------------------------------------------- greedy and sampling


def _sample_like(
    models: Sequence[Transformer],
    src_ids: Tensor,
    max_len: Tensor,
    settings: DecodeOptions,
    greedy: bool,
) -> Generated:
    """Greedy (one hypothesis) or sampling (`nbest` independent samples per sentence)."""
    device = src_ids.device
    f = settings.n_hypotheses
    if f < 1:
        raise ValueError(f"nbest must be at least 1, got {f}")
    n0 = src_ids.size(0)
    if f > 1:
        src_ids = src_ids.repeat_interleave(f, dim=0)  # (N*F, S)
        max_len = max_len.repeat_interleave(f)
    r0 = src_ids.size(0)
    t_cap = int(max_len.max()) + 1
    generator = None
    if not greedy and settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    choose: Callable[[Tensor], tuple[Tensor, Tensor]]
    if greedy:
        choose = greedy_step
    else:

        def choose(lp: Tensor) -> tuple[Tensor, Tensor]:
            return sample_step(lp, settings.temperature, settings.top_k, settings.top_p, generator)

    out_tokens = torch.full((r0, t_cap), PAD_ID, dtype=torch.long, device=device)
    out_lengths = torch.zeros(r0, dtype=torch.long, device=device)
    out_logp = torch.zeros(r0, device=device)

    scorer = Scorer(models, src_ids, settings.use_cache)
    rows = torch.arange(r0, device=device)  # (R,) original row of each open row
    limit = max_len.to(device)
    prefix = torch.full((r0, 1), BOS_ID, dtype=torch.long, device=device)  # (R, t + 1)
    logp = torch.zeros(r0, device=device)
    step = 0
    while True:
        log_probs = scorer.log_probs(prefix)  # (R, V)
        _constrain(log_probs, prefix, limit, step, settings)
        token, token_logp = choose(log_probs)  # (R,), (R,)
        logp = logp + token_logp
        prefix = torch.cat([prefix, token[:, None]], dim=1)
        step += 1
        done = token == EOS_ID  # (R,)
        if bool(done.any()):
            ids = rows[done]
            out_tokens[ids, :step] = prefix[done, 1:]
            out_lengths[ids] = step
            out_logp[ids] = logp[done]
            if bool(done.all()):
                break
            open_ = ~done
            keep = open_.nonzero().squeeze(1)  # (R',)
            rows, limit, logp, prefix = rows[open_], limit[open_], logp[open_], prefix[open_]
            scorer.reorder(keep, sources=keep)

    score = normalise(out_logp, out_lengths, settings.penalty, settings.alpha)
    tokens = out_tokens.view(n0, f, t_cap)  # (N, F, T)
    lengths, logps, scores = out_lengths.view(n0, f), out_logp.view(n0, f), score.view(n0, f)
    order = scores.argsort(dim=1, descending=True, stable=True)  # best sample first
    return Generated(
        tokens.gather(1, order[:, :, None].expand_as(tokens)),
        lengths.gather(1, order),
        logps.gather(1, order),
        scores.gather(1, order),
        steps=step,
    )
