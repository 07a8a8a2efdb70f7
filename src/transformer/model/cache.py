"""DecoderCache: what incremental decoding must not recompute.

Per decoder layer: the self-attention keys/values of every position decoded so far (appended in
place into a buffer that grows by doubling, so a step costs O(1) copies, not O(T)), and the
cross-attention keys/values of the encoder output (computed once per source, then reused).

Shapes: B batch (sentences x beams), H heads, T positions decoded so far, S source length.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerCache:
    """Keys and values of one decoder layer."""

    def __init__(self) -> None:
        self._self_k: Tensor | None = None  # (B, H, capacity, d_k)
        self._self_v: Tensor | None = None  # (B, H, capacity, d_v)
        self.length = 0
        self.cross_k: Tensor | None = None  # (B, H, S, d_k)
        self.cross_v: Tensor | None = None  # (B, H, S, d_v)

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k (B, H, t, d_k), v (B, H, t, d_v); return all keys/values so far (B, H, T, d)."""
        t = k.size(2)
        needed = self.length + t
        if self._self_k is None or needed > self._self_k.size(2):
            capacity = max(needed, 16 if self._self_k is None else 2 * self._self_k.size(2))
            self._self_k = self._grow(self._self_k, k, capacity)
            self._self_v = self._grow(self._self_v, v, capacity)
        self._self_k[:, :, self.length : needed] = k
        self._self_v[:, :, self.length : needed] = v
        self.length = needed
        return self._self_k[:, :, :needed], self._self_v[:, :, :needed]

    def _grow(self, old: Tensor | None, like: Tensor, capacity: int) -> Tensor:
        b, h, _, d = like.shape
        new = like.new_empty(b, h, capacity, d)
        if old is not None:
            new[:, :, : self.length] = old[:, :, : self.length]
        return new

    def reorder(self, indices: Tensor) -> None:
        """Keep batch rows `indices` (B') in that order, dropping the rest."""
        if self._self_k is not None:
            self._self_k = self._self_k.index_select(0, indices)
            self._self_v = self._self_v.index_select(0, indices)
        if self.cross_k is not None:
            self.cross_k = self.cross_k.index_select(0, indices)
            self.cross_v = self.cross_v.index_select(0, indices)


class DecoderCache:
    """The state of incremental decoding, passed explicitly to `Transformer.decode`.

    `decode(new_ids, memory, src_mask, cache)` reads it and updates it in place: feed it only the
    positions after `cache.length`. `reorder(indices)` selects batch rows (beam search's origins,
    or dropping finished sentences); the memory and source mask must then be indexed the same way.
    """

    def __init__(self) -> None:
        self.layers: list[LayerCache] = []
        self.length = 0  # target positions decoded so far

    def layer(self, i: int) -> LayerCache:
        while len(self.layers) <= i:
            self.layers.append(LayerCache())
        return self.layers[i]

    @torch.no_grad()
    def reorder(self, indices: Tensor) -> None:
        for layer in self.layers:
            layer.reorder(indices)
