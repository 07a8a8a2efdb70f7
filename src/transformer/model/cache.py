"""DecoderCache: what incremental decoding must not recompute.

Per decoder layer: the self-attention keys/values of every position decoded so far (appended in
place into a buffer that grows by doubling, so a step costs O(1) copies, not O(T)), and the
cross-attention keys/values of the encoder output (computed once per source, then reused).

Shapes: B batch (sentences x beams), H heads, T positions decoded so far, S source length. The
cross-attention keys/values hold one row per source (B / g rows when g beams share a source).
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerCache:
    """Keys and values of one decoder layer."""

    def __init__(self) -> None:
        self._self_k: Tensor | None = None  # (B, H, capacity, d_k)
        self._self_v: Tensor | None = None  # (B, H, capacity, d_v)
        self._spare_k: Tensor | None = None  # the other buffer of a pair, reused by reorder()
        self._spare_v: Tensor | None = None
        self.length = 0
        self.cross_k: Tensor | None = None  # (B / g, H, S, d_k)
        self.cross_v: Tensor | None = None  # (B / g, H, S, d_v)

    def append_self(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k (B, H, t, d_k), v (B, H, t, d_v); return all keys/values so far (B, H, T, d)."""
        t = k.size(2)
        needed = self.length + t
        if self._self_k is None or needed > self._self_k.size(2):
            capacity = max(needed, 16 if self._self_k is None else 2 * self._self_k.size(2))
            self._self_k = self._grow(self._self_k, k, capacity)
            self._self_v = self._grow(self._self_v, v, capacity)
            self._spare_k = self._spare_v = None
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

    def reorder(self, indices: Tensor, cross: Tensor | bool = True) -> None:
        """Keep batch rows `indices` (B') in that order, dropping the rest.

        The cross-attention keys/values: `cross=True` selects the same rows; `cross=False`
        leaves them alone (valid when `indices` only moves rows among the beams of a source);
        a tensor selects those rows of them (one per source, when beams share a source).
        """
        if self._self_k is not None:
            self._self_k, self._spare_k = self._select(self._self_k, self._spare_k, indices)
            self._self_v, self._spare_v = self._select(self._self_v, self._spare_v, indices)
        if cross is not False and self.cross_k is not None:
            rows = indices if cross is True else cross
            self.cross_k = self.cross_k.index_select(0, rows)
            self.cross_v = self.cross_v.index_select(0, rows)

    def _select(self, buf: Tensor, spare: Tensor | None, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Rows `indices` of buf's filled positions, written into the spare buffer (same
        capacity) when it has the right shape; returns (new buffer, new spare). Reusing two
        buffers avoids a fresh allocation (and its page faults) at every beam-search step, and only
        the positions decoded so far are copied, not the whole capacity."""
        _, h, capacity, d = buf.shape
        shape = (indices.numel(), h, capacity, d)
        if spare is None or spare.shape != shape:
            spare = buf.new_empty(shape)
        filled = slice(0, self.length)
        torch.index_select(buf[:, :, filled], 0, indices, out=spare[:, :, filled])
        return spare, buf


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
    def reorder(self, indices: Tensor, cross: Tensor | bool = True) -> None:
        """Select batch rows `indices` of every layer (see `LayerCache.reorder` for `cross`)."""
        for layer in self.layers:
            layer.reorder(indices, cross)
