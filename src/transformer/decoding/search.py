"""Search strategies: one decoding step, scores -> chosen tokens. The loop lives in generate.py.

Shapes: N sentences still being decoded, K beams per sentence, V vocabulary.

Scores. A hypothesis Y = y_1 .. y_|Y| (its last token is EOS) has
  - `log_prob` = sum of log P(y_t | y_<t, X) over all |Y| tokens, EOS included;
  - `score` = log_prob / lp(|Y|), the normalised score used for ranking, where lp is a length
    penalty. |Y| counts the EOS, i.e. it is the number of log-probabilities summed.

Length penalties (named, because they are different formulas that share a name in the literature):
  - `gnmt_length_penalty`: ((5 + |Y|) / 6)^alpha (Wu et al. 2016), the paper's, alpha = 0.6;
  - `power_length_penalty`: |Y|^alpha, what fairseq, Hugging Face and CTranslate2 divide by;
  - `no_length_penalty`: 1 (rank by log_prob).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LengthPenalty = Callable[[Tensor, float], Tensor]


def gnmt_length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha = (5 + |Y|)^alpha / (5 + 1)^alpha."""
    return ((5.0 + length.to(torch.float64)) / 6.0).pow(alpha)


def power_length_penalty(length: Tensor, alpha: float) -> Tensor:
    """lp(Y) = |Y|^alpha: the normalisation of fairseq / Hugging Face / CTranslate2."""
    return length.to(torch.float64).pow(alpha)


def no_length_penalty(length: Tensor, alpha: float) -> Tensor:
    """lp(Y) = 1: hypotheses are ranked by their summed log-probability."""
    return torch.ones_like(length, dtype=torch.float64)


LENGTH_PENALTIES: dict[str, LengthPenalty] = {
    "gnmt": gnmt_length_penalty,
    "power": power_length_penalty,
    "none": no_length_penalty,
}


def normalise(log_prob: Tensor, length: Tensor, penalty: LengthPenalty, alpha: float) -> Tensor:
    """The ranking score log_prob / lp(length), in the dtype of `log_prob`."""
    return (log_prob.to(torch.float64) / penalty(length, alpha)).to(log_prob.dtype)


def best_possible_score(
    log_prob: Tensor, length: Tensor, max_length: Tensor, penalty: LengthPenalty, alpha: float
) -> Tensor:
    """An upper bound on the score any continuation of an open hypothesis can reach.

    log_prob (...) <= 0 can only decrease as tokens are added, and the final length lies in
    [length + 1, max_length]; for a monotone penalty the best case is dividing the current
    log_prob by the largest lp over that range, which is at one of its ends.
    """
    lp = torch.maximum(penalty(length + 1, alpha), penalty(max_length, alpha))
    return (log_prob.to(torch.float64) / lp).to(log_prob.dtype)


@dataclass
class BeamStep:
    """The 2K best extensions of each sentence's beam, best first.

    scores (N, 2K) cumulative log-probabilities; tokens (N, 2K) the appended token;
    origins (N, 2K) the beam (0..K-1) each extends.
    """

    scores: Tensor
    tokens: Tensor
    origins: Tensor


# Columns per group of `row_top_k`'s first pass (the first that divides the row length is used).
TOP_K_GROUPS = (64, 32)


def row_top_k(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest values of each row of x (N, M) and their columns, best first, as
    `x.topk(k, dim=-1)` gives them.

    On a CPU, with rows far longer than k, in two passes: the maximum of each group of G
    consecutive columns, the k groups with the largest maxima, then the k best of their k * G
    columns. The k largest values lie in those groups: a value among them that lay in another
    group would have the k chosen maxima (k other values, each at least as large) above it. For
    beam 4 over 8,000 types (rows of 32,000 scores), the 26 largest steps of test2016 took 185 ms
    in PyTorch's CPU topk and 61 ms in two passes (one thread, AMD EPYC). The values are
    topk's; among equal values, which column comes back may differ from topk's choice (neither
    is specified)."""
    n, m = x.shape
    group = next((g for g in TOP_K_GROUPS if m % g == 0), 0)
    if x.device.type != "cpu" or not group or m // group < 4 * k:
        return x.topk(k, dim=-1)
    groups = x.reshape(n, m // group, group)
    best = groups.amax(dim=-1).topk(k, dim=-1).indices  # (N, k) groups
    columns = groups.gather(1, best.unsqueeze(-1).expand(n, k, group)).view(n, k * group)
    values, j = columns.topk(k, dim=-1)
    start = best.gather(1, torch.div(j, group, rounding_mode="floor")) * group
    return values, start + j % group


class BeamSearch:
    """One beam-search step: from per-beam next-token log-probabilities to the best extensions.

    It returns 2K candidates (not K) so that K of them remain to continue the beam even when up to
    K end in EOS and leave it as finished hypotheses (as in fairseq's `search.BeamSearch`).
    """

    def __init__(self, beam_size: int):
        if beam_size < 1:
            raise ValueError(f"beam size must be at least 1, got {beam_size}")
        self.beam_size = beam_size

    def step(self, log_probs: Tensor, beam_scores: Tensor, overwrite: bool = False) -> BeamStep:
        """log_probs (N, k, V) of the next token, beam_scores (N, k) cumulative -> BeamStep.

        k is the number of open beams: 1 at the first step (all K beams would be identical), then K.
        `overwrite`: log_probs is scratch that may hold the cumulative scores afterwards (the
        decoding loop's; the same sums without a fresh N x k x V block at every step).
        """
        n, k, v = log_probs.shape
        if overwrite:
            total = log_probs.add_(beam_scores.unsqueeze(-1))  # (N, k, V)
        else:
            total = beam_scores.unsqueeze(-1) + log_probs
        width = 2 * self.beam_size
        total = total.reshape(n, k * v)  # (N, k*V)
        if k * v < width:  # tiny vocabularies: pad with impossible candidates
            total = F.pad(total, (0, width - k * v), value=-math.inf)
        scores, flat = row_top_k(total, width)  # (N, 2K), best first
        flat = flat.clamp(max=k * v - 1)  # padding candidates (score -inf) point at a real one
        origins = torch.div(flat, v, rounding_mode="floor")
        return BeamStep(scores=scores, tokens=flat % v, origins=origins)


def greedy_step(log_probs: Tensor) -> tuple[Tensor, Tensor]:
    """log_probs (R, V) -> (chosen token (R,), its log-probability (R,))."""
    lp, token = log_probs.max(dim=-1)
    return token, lp


def sample_step(
    log_probs: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw one token per row from softmax(log_probs / temperature), restricted to top-k / top-p.

    log_probs (R, V) -> (token (R,), its log-probability under the model (R,), not the tempered
    and truncated distribution it was drawn from).
    """
    logits = log_probs / temperature if temperature != 1.0 else log_probs.clone()
    if top_k > 0 and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (R, V)
        probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token if the mass before it does.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[:, 0] = False
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    probs = logits.softmax(dim=-1)
    token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (R,)
    return token, log_probs.gather(-1, token[:, None]).squeeze(-1)


def ban_repeated_ngrams(log_probs: Tensor, history: Tensor, n: int) -> None:
    """Set to -inf, in place, every token that would repeat an n-gram already in `history`.

    log_probs (R, V); history (R, t) the tokens generated so far (no BOS). Vectorised: the windows
    of history whose first n-1 tokens equal its last n-1 tokens name the banned tokens.
    """
    r, t = history.shape
    if n < 1 or t < n - 1:
        return
    if n == 1:
        banned = torch.zeros_like(log_probs, dtype=torch.bool).scatter_(1, history, True)
        log_probs.masked_fill_(banned, -math.inf)
        return
    if t < n:
        return
    windows = history.unfold(1, n, 1)  # (R, t - n + 1, n)
    last = history[:, t - n + 1 :]  # (R, n - 1)
    match = (windows[:, :, :-1] == last[:, None, :]).all(dim=-1)  # (R, t - n + 1)
    hits = torch.zeros(r, log_probs.size(-1), dtype=torch.int32, device=log_probs.device)
    hits.scatter_add_(1, windows[:, :, -1], match.to(torch.int32))
    log_probs.masked_fill_(hits > 0, -math.inf)
