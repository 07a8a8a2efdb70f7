"""Label-smoothed cross-entropy (paper §5.4: epsilon_ls = 0.1).

The target distribution puts 1 - epsilon on the reference token and spreads epsilon uniformly over
the whole vocabulary, exactly as `F.cross_entropy(..., label_smoothing=epsilon)` does. Sums are
returned, not means: the trainer divides by the number of target tokens in the whole accumulated
(and, with several processes, all-reduced) batch, so that gradient accumulation and data
parallelism give the same update as one big batch.

The logits (tokens x V) are the largest tensor of a training step, so the loss is one autograd
function that never makes a new tensor of that size: it works through them in blocks of rows (in
float32, whatever their dtype), and its hand-written backward, d loss / d logits = softmax(logits)
- q (q the smoothed target distribution, zero at padding), is written over the logits themselves
(the output projection's backward needs its input and weight, never its output, so the logits
are free once the loss is known; do not read them after `backward`). Autograd's own backward of
log_softmax + gather + mean makes several (N, V) tensors and a float32 copy of bf16 logits, which
on a CPU cost a third of a bf16 training step (page faults of fresh allocations included).
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer.vocab import PAD_ID

ROWS = 256  # rows of logits per block: a float32 block of 256 x 32,000 is 32 MB


def _blocks(n: int) -> range:
    return range(0, n, ROWS)


_SCRATCH: dict[tuple[torch.device, int], Tensor] = {}


def _scratch(device: torch.device, v: int) -> Tensor:
    """A float32 block of ROWS x V kept from one call to the next: converting bf16 logits into a
    fresh block at every call costs the page faults of a new allocation each time (on a CPU,
    as much as the conversion itself)."""
    key = (device, v)
    if key not in _SCRATCH:
        _SCRATCH.clear()  # one vocabulary at a time
        _SCRATCH[key] = torch.empty(ROWS, v, dtype=torch.float32, device=device)
    return _SCRATCH[key]


class _SmoothedCrossEntropy(torch.autograd.Function):
    """(logits (N, V), target (N,), epsilon, ignore_index, overwrite) -> (smoothed loss sum, NLL
    sum); `overwrite`: the backward may write the gradient over the logits."""

    @staticmethod
    def forward(
        ctx, logits: Tensor, target: Tensor, epsilon: float, ignore_index: int, overwrite: bool
    ):
        n, v = logits.shape
        keep = target != ignore_index  # (N,)
        index = target.clamp_min(0)
        dtype = torch.float32
        lse = torch.empty(n, dtype=dtype, device=logits.device)  # log sum exp per row
        total = torch.empty_like(lse)  # sum of the logits per row
        scratch = None if logits.dtype == dtype else _scratch(logits.device, v)
        for i in _blocks(n):
            block = logits[i : i + ROWS]
            if scratch is not None:
                block = scratch[: block.size(0)].copy_(block)
            lse[i : i + ROWS] = torch.logsumexp(block, dim=-1)
            total[i : i + ROWS] = block.sum(dim=-1)
        picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1).to(dtype)  # (N,)
        nll = lse - picked  # -log p(target)
        uniform = lse - total / v  # cross-entropy against the uniform distribution
        loss = (1.0 - epsilon) * nll + epsilon * uniform
        ctx.save_for_backward(logits, lse, index, keep)
        ctx.epsilon, ctx.overwrite = epsilon, overwrite
        zero = lse.new_zeros(())
        return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum()

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        logits, lse, index, keep = ctx.saved_tensors
        eps = ctx.epsilon
        n, v = logits.shape
        weight = keep.to(lse.dtype) * grad_loss  # (N,): 0 at padding
        grad = logits if ctx.overwrite else torch.empty_like(logits)
        in_place = ctx.overwrite and logits.dtype == lse.dtype
        scratch = None if in_place else _scratch(logits.device, v)
        for i in _blocks(n):
            rows = logits[i : i + ROWS]
            block = rows if scratch is None else scratch[: rows.size(0)].copy_(rows)
            block.sub_(lse[i : i + ROWS, None]).exp_().sub_(eps / v)  # softmax - eps / V
            block[torch.arange(block.size(0), device=block.device), index[i : i + ROWS]] -= (
                1.0 - eps
            )
            block.mul_(weight[i : i + ROWS, None])
            if not in_place:
                grad[i : i + ROWS] = block
        return grad, None, None, None, None


def label_smoothed_nll_loss(
    logits: Tensor, target: Tensor, epsilon: float, ignore_index: int = PAD_ID
) -> tuple[Tensor, Tensor]:
    """logits (..., V), target (...) -> (smoothed loss sum, NLL sum) over non-padding positions.

    The NLL sum (no smoothing) gives the perplexity; only the smoothed loss has a gradient. Both
    are float32 scalars whatever the logits' dtype. The backward pass overwrites `logits` when
    they were computed (a model's output), not when they are a leaf tensor.
    """
    flat = logits.flatten(0, -2)  # (N, V), a view
    overwrite = logits.grad_fn is not None
    loss, nll = _SmoothedCrossEntropy.apply(
        flat, target.reshape(-1), epsilon, ignore_index, overwrite
    )
    return loss, nll.detach()
