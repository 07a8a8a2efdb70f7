"""Dropout (Srivastava et al., 2014), as the paper applies it: P_drop on every sub-layer output
and on the sums of embeddings and positions.

On a CPU, `torch.nn.Dropout` draws one Bernoulli variable per element from the Mersenne Twister,
one generator call each: its `bernoulli_` was 7% of the self time of a bf16 training step in a
profile on this project's CPU (one thread, configs/multi30k.yaml), and training in bf16 ran about
4% faster with this class (benchmarks/train_speed.py, interleaved runs). `Dropout` draws 64
random bits per generator call and cuts them into four 16-bit numbers, one per element: an
element is kept when its number is at least p * 2^16 (rounded), so
P(keep) = 1 - round(p * 2^16) / 2^16 (p = 0.1: 0.9000061). The kept elements are scaled by
1 / (1 - p), as in `torch.nn.Dropout`, and the mask is stored in the dtype of the input for the
backward pass. On other devices (CUDA has a fused kernel) it is `torch.nn.Dropout`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BITS = 16  # per element
_PER_DRAW = 64 // _BITS  # elements per 64-bit draw


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    device: torch.device,
    dtype: torch.dtype = torch.bool,
) -> Tensor:
    """A mask of `shape` in `dtype`: 1 (keep, True) with probability 1 - round(p * 2^16) / 2^16,
    else 0.

    The comparison with the threshold is written as a clamp and a subtraction in int16, which
    gives 0 or 1 directly: on a CPU, `>=` and the conversion of its bool result to a float type
    took several times as long as the product with the mask itself."""
    n = math.prod(shape)
    dropped = round(p * 2**_BITS)  # of the 2^16 numbers, how many drop an element
    if dropped == 0 or dropped == 2**_BITS:  # every element kept, or none
        return torch.full(shape, dropped == 0, dtype=dtype, device=device)
    draws = -(-n // _PER_DRAW)
    # 64 random bits per draw: `random_` from the lowest int64 with no upper bound is the whole
    # range, the generator's 64-bit output as it is (25% faster on a CPU than `randint` over the
    # same range, which reduces it modulo 2^64 - 1).
    bits = torch.empty(draws, dtype=torch.int64, device=device).random_(-(2**63), None)
    numbers = bits.view(torch.int16)[:n]  # uniform over -2^15 .. 2^15 - 1
    threshold = dropped - 2 ** (_BITS - 1)  # kept: numbers >= threshold
    keep = numbers.clamp(threshold - 1, threshold).sub_(threshold - 1)  # int16, 0 or 1
    return keep.to(dtype).view(shape)


# dtypes whose products with a Python float are computed in the dtype itself: there the scale can
# be folded into the mask, x * (keep * scale) being x * scale exactly. bf16 and fp16 multiply in
# float32, where bf16(scale) would round the scale.
_FOLD_SCALE = (torch.float32, torch.float64)


class _DropoutFunction(torch.autograd.Function):
    """The mask is kept in x's dtype: a product with a bool mask first converts it, which on a
    CPU cost more than the product (bf16: 7 times as long)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        mask = keep_mask(x.shape, p, x.device, x.dtype)
        scale = 1.0 / (1.0 - p)
        if x.dtype in _FOLD_SCALE:
            mask.mul_(scale)
            scale = None
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return _apply(x, mask, scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (mask,) = ctx.saved_tensors
        return _apply(grad, mask, ctx.scale), None


def _apply(x: Tensor, mask: Tensor, scale: float | None) -> Tensor:
    out = x.mul(mask)
    return out if scale is None else out.mul_(scale)


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
