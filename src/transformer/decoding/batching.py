"""Inputs grouped by source length into batches of at most `max_tokens` padded source tokens.

Sorting by length keeps padding (wasted work) small; callers put the results back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence


def length_batches(
    lengths: Sequence[int], max_tokens: int, max_sentences: int | None = None
) -> list[list[int]]:
    """Indices into `lengths` grouped into batches, shortest sources first.

    A batch's cost is its number of sentences times its longest source (padded tokens); it never
    exceeds `max_tokens` unless a single sentence is longer, which then forms a batch of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        too_many = max_sentences is not None and len(batch) >= max_sentences
        if batch and (new_longest * (len(batch) + 1) > max_tokens or too_many):
            batches.append(batch)
            batch, new_longest = [], lengths[i]
        batch.append(i)
        longest = new_longest
    if batch:
        batches.append(batch)
    return batches
