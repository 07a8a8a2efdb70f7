"""The normalisation of a sub-layer connection: LayerNorm (the paper), RMSNorm, or BatchNorm over
the real tokens of a batch.

Shapes: B batch, T length, D d_model; a token mask (B, T) is True at real tokens.

- LayerNorm (Ba et al., 2016): each token's D features to zero mean and unit variance, then a
  learned gain and bias. Per token, so padding and batch composition cannot matter.
- RMSNorm (Zhang and Sennrich, 2019): x / sqrt(mean(x^2) + eps) * gain; no mean, no bias.
- BatchNorm (Ioffe and Szegedy, 2015) as a sequence model must use it: each feature's mean and
  variance over every *real* token of the batch (B x T positions, padding left out, or a batch's
  statistics would depend on how much padding it happens to carry), running averages of them for
  inference. A token's output then depends on the other sentences of its batch during training,
  and train and inference statistics differ: the reasons the Transformer uses LayerNorm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the feature dimension, with statistics from the real tokens only.

    Training: y = (x - mean) / sqrt(var + eps) * weight + bias with the biased mean and variance
    over the tokens where `mask` is True; running_mean and running_var (unbiased) move towards
    them by `momentum`, as `nn.BatchNorm1d` does. Evaluation: the running statistics.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("running_mean", torch.zeros(d_model))
        self.register_buffer("running_var", torch.ones(d_model))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, T, D), mask (B, T) bool or None (every token real) -> (B, T, D) float32."""
        x = x.float()  # statistics in float32, also under bf16 autocast (as LayerNorm's)
        if self.training:
            tokens = x.reshape(-1, x.size(-1))
            if mask is not None:
                tokens = tokens[mask.reshape(-1)]  # (N real tokens, D)
            var, mean = torch.var_mean(tokens, dim=0, correction=0)
            with torch.no_grad():
                n = tokens.size(0)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    """The normalisation `kind` ("layer", "rms", "batch") of width d_model."""
    if kind == "layer":
        return nn.LayerNorm(d_model, eps=eps)
    if kind == "rms":
        return nn.RMSNorm(d_model, eps=eps)
    if kind == "batch":
        return MaskedBatchNorm(d_model, eps=eps)
    raise ValueError(f"unknown norm {kind!r} (layer, rms or batch)")


def apply_norm(norm: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    """norm(x), with the token mask for the one normalisation that reads it (BatchNorm)."""
    if isinstance(norm, MaskedBatchNorm):
        return norm(x, mask)
    return norm(x)
