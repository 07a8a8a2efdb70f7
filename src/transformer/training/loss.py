"""Label-smoothed cross-entropy (paper §5.4: epsilon_ls = 0.1), with the output projection.

The target distribution puts 1 - epsilon on the reference token and spreads epsilon uniformly over
the whole vocabulary, exactly as `F.cross_entropy(..., label_smoothing=epsilon)` does. Sums are
returned, not means: the trainer divides by the number of target tokens in the whole accumulated
(and, with several processes, all-reduced) batch, so that gradient accumulation and data
parallelism give the same update as one big batch.

The logits (tokens x V) are the largest tensor of a training step, so the loss starts from the
decoder's output and the output matrix, not from the logits, and never keeps them: one autograd
function (`projected_smoothed_loss`) makes them a block of rows at a time (`block_rows`: small on
a CPU, for its caches; large on a GPU, where every block costs kernel launches that the CPU must
issue), normalises each block in float32 while it is in the cache, and, when a gradient is
needed, turns it there into d loss / d logits = softmax - q (q the smoothed target distribution,
zero at padding). The projection's two backward products run at the end of the forward pass; the
backward only scales them by the upstream gradient. The softmax is thus computed once, where
autograd's log_softmax + gather would keep the logits and make several (N, V) tensors (and a
float32 copy of bf16 logits) in the backward: on a CPU that cost a third of a bf16 training step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer.hardware import Linear, weight_gradient
from transformer.vocab import PAD_ID

# Rows of logits per block on a CPU: a float32 block of 512 x 8,000 is 16 MB. Measured on an AMD
# EPYC (Zen 5), 2 threads, 4,092 rows over 8,000 types: forward and backward in 85 ms (bf16) and
# 145 ms (fp32) with 512 rows, 89 and 150 with 256, 86 and 145 with 1,024.
ROWS = 512
GPU_BLOCK_ELEMENTS = 2**27  # elements per block elsewhere: 512 MB in float32


def block_rows(device: torch.device, n: int, v: int) -> int:
    """Rows per block of n x v logits: ROWS on a CPU; on a GPU as many as GPU_BLOCK_ELEMENTS hold
    (a whole batch of 12,500 tokens over 8,000 types is one block), since there each block costs
    about fifteen kernel launches: with 256 rows, the loss was a third of the CPU time of a bf16
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


class _ProjectedSmoothedCrossEntropy(torch.autograd.Function):
    """(hidden (N, D), weight (V, D), target (N,), epsilon, ignore_index, dtype, linear,
    need_grad) -> (smoothed loss sum, NLL sum) of the logits linear(hidden, weight) in `dtype`;
    see `projected_smoothed_loss`."""

    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        target: Tensor,
        epsilon: float,
        ignore_index: int,
        dtype: torch.dtype,
        linear: Linear,
        need_grad: bool,
    ):
        n, v = hidden.size(0), weight.size(0)
        device, f32 = hidden.device, torch.float32
        keep = target != ignore_index  # (N,)
        index = target.clamp_min(0)
        x, w = hidden.to(dtype), weight.to(dtype)
        lse = torch.empty(n, dtype=f32, device=device)  # log sum exp per row
        total = torch.empty_like(lse)  # sum of the logits per row
        picked = torch.empty_like(lse)  # the target's logit per row
        grad = torch.empty(n, v, dtype=dtype, device=device) if need_grad else None
        rows = block_rows(device, n, v)
        scratch = None if dtype == f32 else _scratch(device, v, rows)
        for i in range(0, n, rows):
            logits = linear(x[i : i + rows], w, None)  # (r, V) in dtype
            r = logits.size(0)
            block = logits if scratch is None else scratch[:r].copy_(logits)
            at = torch.arange(r, device=device), index[i : i + r]
            picked[i : i + r] = block[at]
            torch.sum(block, dim=-1, out=total[i : i + r])
            top = block.amax(dim=-1, keepdim=True)
            sums = block.sub_(top).exp_().sum(dim=-1, keepdim=True)  # block: exp(logit - top)
            torch.add(sums.log(), top, out=lse[i : i + r, None])
            if grad is not None:  # softmax - q, and 0 at padding
                block.div_(sums).sub_(epsilon / v)
                block[at] -= 1.0 - epsilon
                grad[i : i + r] = block.mul_(keep[i : i + r, None])
        nll = lse - picked  # -log p(target)
        uniform = lse - total / v  # cross-entropy against the uniform distribution
        loss = (1.0 - epsilon) * nll + epsilon * uniform
        zero = lse.new_zeros(())
        if grad is not None:  # d loss / d x = grad W and d loss / d W = grad^T x
            grad_x = linear(grad, w.t(), None)
            grad_w = weight_gradient(linear, grad, x)
            ctx.save_for_backward(grad_x.to(hidden.dtype), grad_w.to(weight.dtype))
        return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum()

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None, None, None, None


def projected_smoothed_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    epsilon: float,
    ignore_index: int = PAD_ID,
    linear: Linear = F.linear,
) -> tuple[Tensor, Tensor]:
    """The label-smoothed cross-entropy of the logits F.linear(hidden, weight) against `target`,
    without keeping the logits.

    hidden (..., D), weight (V, D) and target (...) -> (smoothed loss sum, NLL sum) over the
    positions whose target is not `ignore_index`: float32 scalars; the NLL sum (no smoothing)
    gives the perplexity, and only the smoothed loss has a gradient. Call it where the logits
    would be computed: under autocast the logits are multiplied in autocast's dtype, as F.linear
    would (and normalised in float32). `linear` (x, W, b) -> x W^T + b does the products
    (`hardware.current_linear()`: oneDNN's in a `OneDNNLinear` context).

    When hidden or weight needs a gradient, d loss / d logits (unscaled) is kept in the logits'
    dtype to the end of the forward pass, which then computes both gradients: the backward scales
    them.
    """
    device = hidden.device
    dtype = (
        torch.get_autocast_dtype(device.type)
        if torch.is_autocast_enabled(device.type)
        else hidden.dtype
    )
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, nll = _ProjectedSmoothedCrossEntropy.apply(
        hidden.reshape(-1, hidden.size(-1)),
        weight,
        target.reshape(-1),
        epsilon,
        ignore_index,
        dtype,
        linear,
        need_grad,
    )
    return loss, nll.detach()
