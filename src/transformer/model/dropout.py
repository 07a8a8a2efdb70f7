"""Dropout (Srivastava et al., 2014), as the paper applies it: P_drop on every sub-layer output
and on the sums of embeddings and positions.

On a CPU, `torch.nn.Dropout` draws one Bernoulli variable per element from the Mersenne Twister,
one generator call each: its `bernoulli_` was 7% of the self time of a bf16 training step in a
profile on this project's CPU (one thread, configs/multi30k.yaml), and training in bf16 ran about
4% faster with this class (benchmarks/train_speed.py, interleaved runs). `Dropout` draws 64
random bits per generator call and cuts them into four 16-bit numbers, one per element: an
element is kept when its number is at least p * 2^16 (rounded), so
P(keep) = 1 - round(p * 2^16) / 2^16 (p = 0.1: 0.9000061). The kept elements are scaled by
1 / (1 - p), as in `torch.nn.Dropout`, and the mask is stored as one byte per element for the
backward pass. On other devices (CUDA has a fused kernel) it is `torch.nn.Dropout`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BITS = 16  # per element
_PER_DRAW = 64 // _BITS  # elements per 64-bit draw


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """A bool mask of `shape`, True (keep) with probability 1 - round(p * 2^16) / 2^16."""
    n = math.prod(shape)
    draws = -(-n // _PER_DRAW)
    # The whole int64 range (high is exclusive: 2^63 - 1 alone is never drawn).
    bits = torch.randint(-(2**63), 2**63 - 1, (draws,), dtype=torch.int64, device=device)
    numbers = bits.view(torch.int16)[:n]  # uniform over -2^15 .. 2^15 - 1
    threshold = round(p * 2**_BITS) - 2 ** (_BITS - 1)
    return (numbers >= threshold).view(shape)


class _DropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


class Dropout(nn.Module):
    """In training, zero each element with probability p and scale the others by 1 / (1 - p);
    the identity in eval mode. A drop-in for `torch.nn.Dropout` (no parameters, no state)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0 or x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return _DropoutFunction.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
