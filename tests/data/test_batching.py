"""TokenBatchSampler and collate: budget, coverage, determinism, resumption, exact tensors."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from transformer.data import Batch, DataError, TokenBatchSampler, collate, pack_batches
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID


def lengths(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Skewed, correlated source/target lengths (many short, few long, some zero)."""
    rng = np.random.default_rng(seed)
    src = np.minimum(rng.geometric(1 / 20, size=n) - 1, 200)
    tgt = np.clip(src + rng.integers(-5, 6, size=n), 0, 200)
    return src, tgt


def padded(batch: list[int], lens: np.ndarray) -> int:
    """Padded tokens of one side: batch size times (longest + 1 special token)."""
    return len(batch) * (int(lens[batch].max()) + 1)


def flatten(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


@pytest.mark.parametrize("max_tokens", [202, 500, 4096])
@pytest.mark.parametrize("shuffle", [True, False])
def test_budget_is_never_exceeded(max_tokens: int, shuffle: bool) -> None:
    src, tgt = lengths()
    sampler = TokenBatchSampler(src, tgt, max_tokens, shuffle=shuffle, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        for b in batches:
            assert padded(b, src) <= max_tokens and padded(b, tgt) <= max_tokens
        if not shuffle:  # greedy: a batch is closed only because the next pair did not fit
            for b, nxt in itertools.pairwise(batches):
                grown = [*b, nxt[0]]
                assert padded(grown, src) > max_tokens or padded(grown, tgt) > max_tokens


def test_collated_tensors_respect_the_budget() -> None:
    src, tgt = lengths(500)
    pairs = [(np.full(s, 7), np.full(t, 8)) for s, t in zip(src, tgt)]
    sampler = TokenBatchSampler(src, tgt, 300, seed=1)
    for b in sampler:
        batch = collate([pairs[i] for i in b])
        assert batch.src.numel() <= 300 and batch.tgt_in.numel() <= 300


def test_every_pair_exactly_once_per_epoch_on_one_rank() -> None:
    src, tgt = lengths()
    sampler = TokenBatchSampler(src, tgt, 1000, seed=5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert sorted(flatten(list(sampler))) == list(range(len(src)))


def test_every_pair_exactly_once_across_ranks_when_batches_divide_evenly() -> None:
    src, tgt = lengths()
    replicas = 4
    for max_tokens in range(1000, 1400):  # find a budget whose batch count divides by 4
        if len(TokenBatchSampler(src, tgt, max_tokens, drop_uneven=False)) % replicas == 0:
            break
    else:
        pytest.fail("no budget with a batch count divisible by 4 found")
    ranks = [
        TokenBatchSampler(src, tgt, max_tokens, seed=9, num_replicas=replicas, rank=r)
        for r in range(replicas)
    ]
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1
    assert sorted(flatten([i for r in per_rank for i in r])) == list(range(len(src)))


@pytest.mark.parametrize("epoch", [0, 1, 2, 3])
def test_uneven_batch_counts_drop_fewer_than_num_replicas_batches(epoch: int) -> None:
    src, tgt = lengths()
    replicas = 3
    ranks = [TokenBatchSampler(src, tgt, 777, seed=2, num_replicas=replicas, rank=r)
             for r in range(replicas)]  # fmt: skip
    full = TokenBatchSampler(src, tgt, 777, seed=2, drop_uneven=False)
    for s in [*ranks, full]:
        s.set_epoch(epoch)
    per_rank = [list(s) for s in ranks]
    all_batches = list(full)
    assert len({len(b) for b in per_rank}) == 1  # equal counts: no hang in all-reduce
    got = flatten([i for r in per_rank for i in r])
    assert len(got) == len(set(got))  # no pair twice
    dropped = len(all_batches) - sum(len(b) for b in per_rank)
    assert dropped == len(all_batches) % replicas < replicas
    # What is missing is exactly the last `dropped` batches of the epoch's order.
    missing = sorted(set(range(len(src))) - set(got))
    assert missing == sorted(flatten(all_batches[len(all_batches) - dropped :]))


def test_without_dropping_ranks_cover_everything() -> None:
    src, tgt = lengths()
    ranks = [TokenBatchSampler(src, tgt, 777, shuffle=False, num_replicas=3, rank=r,
                               drop_uneven=False) for r in range(3)]  # fmt: skip
    got = flatten([b for s in ranks for b in s])
    assert sorted(got) == list(range(len(src)))
    assert max(len(s) for s in ranks) - min(len(s) for s in ranks) <= 1


def test_same_seed_and_epoch_same_order_else_different() -> None:
    src, tgt = lengths()

    def order(seed: int, epoch: int) -> list[list[int]]:
        s = TokenBatchSampler(src, tgt, 1000, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(1, 4) == order(1, 4)
    assert order(1, 4) != order(1, 5)
    assert order(1, 4) != order(2, 4)
    # Random tie-breaking: the batches themselves, not only their order, change with the epoch.
    assert {tuple(sorted(b)) for b in order(1, 4)} != {tuple(sorted(b)) for b in order(1, 5)}


def test_length_grouping_reduces_padding() -> None:
    src, tgt = lengths()
    sampler = TokenBatchSampler(src, tgt, 2000, seed=0)
    random = pack_batches(np.random.default_rng(0).permutation(len(src)), src, tgt, 2000)

    def fraction(batches: list) -> float:
        real = sum(int(src[b].sum() + tgt[b].sum()) + 2 * len(b) for b in batches)
        total = sum(padded(list(b), src) + padded(list(b), tgt) for b in batches)
        return 1 - real / total

    assert fraction(list(sampler)) < 0.25 * fraction(random)


def test_unshuffled_order_is_sorted_by_length() -> None:
    src, tgt = lengths()
    order = flatten(list(TokenBatchSampler(src, tgt, 1000, shuffle=False)))
    keys = list(zip(np.maximum(src, tgt)[order], src[order], tgt[order]))
    assert keys == sorted(keys)


@pytest.mark.parametrize("replicas,rank", [(1, 0), (3, 1)])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(replicas: int, rank: int) -> None:
    src, tgt = lengths()

    def make() -> TokenBatchSampler:
        return TokenBatchSampler(src, tgt, 900, seed=11, num_replicas=replicas, rank=rank)

    a = make()
    a.set_epoch(2)
    full = list(a)
    a.set_epoch(2)
    it = iter(a)
    head = [next(it) for _ in range(7)]
    state = json.loads(json.dumps(a.state_dict()))  # must survive a JSON checkpoint
    assert state["epoch"] == 2 and state["batches_done"] == 7

    b = make()
    b.load_state_dict(state)
    assert head + list(b) == full
    # After the resumed epoch, the next one is the ordinary next epoch.
    b.set_epoch(3)
    fresh = make()
    fresh.set_epoch(3)
    assert list(b) == list(fresh)
    # A second iteration without set_epoch restarts the epoch instead of resuming again.
    b.load_state_dict(state)
    assert len(list(b)) == len(full) - 7
    assert list(b) == full


def test_resume_with_batches_done_from_the_trainer() -> None:
    """With a prefetching DataLoader the trainer's own count is what matters."""
    src, tgt = lengths()
    a = TokenBatchSampler(src, tgt, 900)
    full = list(a)
    state = a.state_dict(batches_done=5)  # the sampler itself ran to the end
    b = TokenBatchSampler(src, tgt, 900)
    b.load_state_dict(state)
    assert list(b) == full[5:]


def test_resume_refuses_a_different_sampler() -> None:
    src, tgt = lengths()
    state = TokenBatchSampler(src, tgt, 900, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed: saved 1, now 2"):
        TokenBatchSampler(src, tgt, 900, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="max_tokens: saved 900, now 800"):
        TokenBatchSampler(src, tgt, 800, seed=1).load_state_dict(state)


def test_pair_larger_than_budget_is_a_clear_error() -> None:
    src, tgt = np.array([3, 10, 99]), np.array([4, 120, 5])
    with pytest.raises(DataError, match=r"pair 1 needs 121 tokens .* at least 121"):
        TokenBatchSampler(src, tgt, 100)
    TokenBatchSampler(src, tgt, 121)  # exactly fits: fine


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="equally long"):
        TokenBatchSampler([1, 2], [1], 10)
    with pytest.raises(ValueError, match="rank"):
        TokenBatchSampler([1], [1], 10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBatchSampler([1], [1], 0)


def test_collate_exact_tensors() -> None:
    pairs = [(np.array([5, 6, 7]), np.array([8])), (np.array([9]), np.array([10, 11, 12]))]
    batch = collate(pairs)
    assert batch.src.tolist() == [[5, 6, 7, EOS_ID], [9, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, PAD_ID, PAD_ID], [BOS_ID, 10, 11, 12]]
    assert batch.tgt_out.tolist() == [[8, EOS_ID, PAD_ID, PAD_ID], [10, 11, 12, EOS_ID]]
    assert (batch.n_src_tokens, batch.n_tgt_tokens) == (6, 6)
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.int64
    assert batch.size == 2
    # The counts are the non-padding positions of src and tgt_out.
    assert batch.n_src_tokens == int((batch.src != PAD_ID).sum())
    assert batch.n_tgt_tokens == int((batch.tgt_out != PAD_ID).sum())


def test_collate_empty_sequences_and_device_move() -> None:
    batch = collate([(np.array([], dtype=np.int64), np.array([], dtype=np.int64))])
    assert (batch.src.tolist(), batch.tgt_in.tolist(), batch.tgt_out.tolist()) == (
        [[EOS_ID]],
        [[BOS_ID]],
        [[EOS_ID]],
    )
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.n_tgt_tokens == 1
    with pytest.raises(ValueError, match="empty"):
        collate([])
