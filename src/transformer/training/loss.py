"""Label-smoothed cross-entropy (paper §5.4: epsilon_ls = 0.1).

The target distribution puts 1 - epsilon on the reference token and spreads epsilon uniformly over
the whole vocabulary, exactly as `F.cross_entropy(..., label_smoothing=epsilon)` does. Sums are
returned, not means: the trainer divides by the number of target tokens in the whole accumulated
(and, with several processes, all-reduced) batch, so that gradient accumulation and data
parallelism give the same update as one big batch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from transformer.vocab import PAD_ID


def label_smoothed_nll_loss(
    logits: Tensor, target: Tensor, epsilon: float, ignore_index: int = PAD_ID
) -> tuple[Tensor, Tensor]:
    """logits (..., V), target (...) -> (smoothed loss sum, NLL sum) over non-padding positions.

    The NLL sum (no smoothing) gives the perplexity; both are float32 scalars whatever the
    logits' dtype.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1).flatten(0, -2)  # (N, V)
    target = target.reshape(-1)  # (N,)
    keep = target != ignore_index  # (N,)
    nll = -lprobs.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (N,)
    uniform = -lprobs.mean(dim=-1)  # (N,) cross-entropy against the uniform distribution
    loss = (1.0 - epsilon) * nll + epsilon * uniform
    return loss[keep].sum(), nll[keep].sum()
