"""Label-smoothed cross-entropy (paper §5.4: epsilon_ls = 0.1).

The target distribution puts 1 - epsilon on the reference token and spreads epsilon uniformly over
the whole vocabulary, exactly as `F.cross_entropy(..., label_smoothing=epsilon)` does. Sums are
returned, not means: the trainer divides by the number of target tokens in the whole accumulated
(and, with several processes, all-reduced) batch, so that gradient accumulation and data
parallelism give the same update as one big batch.

The logits (tokens x V) are the largest tensor of a training step, so the loss is one autograd
function that never makes a new tensor of that size: it works through them in blocks of rows (in
float32, whatever their dtype; `block_rows`: small on a CPU, for its caches, and large on a GPU,
where every block costs kernel launches that the CPU must issue), and its hand-written backward,
d loss / d logits = softmax(logits) - q (q the smoothed target distribution, zero at padding), is
written over the logits themselves (the output projection's backward needs its input and weight,
never its output, so the logits are free once the loss is known; do not read them after
`backward`). Autograd's own backward of log_softmax + gather + mean makes several (N, V) tensors
and a float32 copy of bf16 logits, which on a CPU cost a third of a bf16 training step (page
faults of fresh allocations included).
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer.vocab import PAD_ID

ROWS = 256  # rows of logits per block on a CPU: a float32 block of 256 x 32,000 is 32 MB
GPU_BLOCK_ELEMENTS = 2**27  # elements per block elsewhere: 512 MB in float32


def block_rows(device: torch.device, n: int, v: int) -> int:
    """Rows per block of n x v logits: ROWS on a CPU; on a GPU as many as GPU_BLOCK_ELEMENTS hold
    (a whole batch of 12,500 tokens over 8,000 types is one block), since there each block costs
    about ten kernel launches: with 256 rows, the loss was a third of the CPU time of a bf16
    update of configs/base.yaml on an H200 (benchmarks/gpu_profile.py). At most n, at least 1."""
    rows = ROWS if device.type == "cpu" else max(ROWS, GPU_BLOCK_ELEMENTS // v)
    return max(1, min(n, rows))


_SCRATCH: dict[tuple[torch.device, int], Tensor] = {}


def _scratch(device: torch.device, v: int, rows: int) -> Tensor:
    """A float32 block of at least `rows` x V kept from one call to the next: converting bf16
    logits into a fresh block at every call costs the page faults of a new allocation each time
    (on a CPU, as much as the conversion itself)."""
    key = (device, v)
    if key not in _SCRATCH or _SCRATCH[key].size(0) < rows:
        _SCRATCH.clear()  # one vocabulary at a time
        _SCRATCH[key] = torch.empty(rows, v, dtype=torch.float32, device=device)
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
        rows = block_rows(logits.device, n, v)
        scratch = None if logits.dtype == dtype else _scratch(logits.device, v, rows)
        for i in range(0, n, rows):
            block = logits[i : i + rows]
            if scratch is not None:
                block = scratch[: block.size(0)].copy_(block)
            torch.logsumexp(block, dim=-1, out=lse[i : i + rows])
            torch.sum(block, dim=-1, out=total[i : i + rows])
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
        rows = block_rows(logits.device, n, v)
        scratch = None if in_place else _scratch(logits.device, v, rows)
        for i in range(0, n, rows):
            part = logits[i : i + rows]
            block = part if scratch is None else scratch[: part.size(0)].copy_(part)
            block.sub_(lse[i : i + rows, None]).exp_().sub_(eps / v)  # softmax - eps / V
            block[torch.arange(block.size(0), device=block.device), index[i : i + rows]] -= (
                1.0 - eps
            )
            block.mul_(weight[i : i + rows, None])
            if not in_place:
                grad[i : i + rows] = block
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
