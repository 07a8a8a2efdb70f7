"""Search on a stub decoder whose next-token probabilities are hand-written tables.

Tokens: 0 PAD, 1 BOS, 2 EOS, 3 UNK (never possible here), 4 = "a", 5 = "b". A table maps the
prefix generated so far (a tuple of tokens, no BOS) to {token: probability}; PAD, BOS and UNK get
probability 0. Exact hypotheses and exact scores are written out below.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from transformer.decoding import (
    BeamSearch,
    DecodeOptions,
    ban_repeated_ngrams,
    generate,
    gnmt_length_penalty,
    length_batches,
    power_length_penalty,
    sample_step,
)
from transformer.decoding.search import row_top_k

EOS, A, B = 2, 4, 5
V = 6


class TableModel:
    """Duck-types Transformer.encode / decode (uncached): the last position's logits are the log
    of tables[sentence][prefix]; the sentence is the first source id. As in `Decoder.forward`,
    each row of memory serves B / len(memory) consecutive target rows (beams)."""

    def __init__(self, tables: list[dict[tuple, dict[int, float]]]):
        self.tables = tables
        self.calls: list[int] = []  # decoder batch size at each step

    def encode(self, src_ids, src_mask=None):
        return src_ids.float()[:, :, None]  # (R, S, 1): row r carries its sentence id

    def decode(self, tgt_ids, memory, src_mask, cache=None):
        assert cache is None, "the stub is used with use_cache=False"
        self.calls.append(tgt_ids.size(0))
        logits = torch.full((tgt_ids.size(0), tgt_ids.size(1), V), -math.inf)
        group = tgt_ids.size(0) // memory.size(0)
        for r in range(tgt_ids.size(0)):
            table = self.tables[int(memory[r // group, 0, 0])]
            prefix = tuple(tgt_ids[r, 1:].tolist())
            for token, p in table.get(prefix, {EOS: 1.0}).items():
                logits[r, -1, token] = math.log(p)
        return logits


def run(tables, method="beam", max_len=5, **settings):
    model = TableModel(tables)
    n = len(tables)
    src = torch.tensor([[i, EOS] for i in range(n)])  # sentence i -> table i
    s = DecodeOptions(method=method, use_cache=False, **settings)
    return generate([model], src, torch.full((n,), max_len), s), model


def hyps(out, i=0):
    """(tokens without padding, log_prob, score) of sentence i's hypotheses."""
    result = []
    for j in range(out.tokens.size(1)):
        n = int(out.lengths[i, j])
        result.append(
            (
                tuple(out.tokens[i, j, :n].tolist()),
                float(out.log_prob[i, j]),
                float(out.score[i, j]),
            )
        )
    return result


# Beam 2 finds "b" (0.4 * 0.9 = 0.36); greedy takes "a" (0.5), then "a a" (0.225), ...
BEAM_BEATS_GREEDY = {
    (): {A: 0.5, B: 0.4, EOS: 0.1},
    (A,): {A: 0.45, B: 0.3, EOS: 0.25},
    (B,): {EOS: 0.9, A: 0.05, B: 0.05},
    (A, A): {EOS: 0.6, A: 0.3, B: 0.1},
}


def test_gnmt_length_penalty_is_the_papers_formula():
    lengths = torch.tensor([1, 2, 7, 20])
    for alpha in (0.0, 0.6, 1.0):
        expected = [(5 + n) ** alpha / (5 + 1) ** alpha for n in (1, 2, 7, 20)]
        got = gnmt_length_penalty(lengths, alpha).tolist()
        assert got == pytest.approx(expected, rel=1e-12)
    assert gnmt_length_penalty(torch.tensor([7]), 0.6).item() == pytest.approx(2**0.6)
    assert power_length_penalty(lengths, 0.6).tolist() == pytest.approx(
        [n**0.6 for n in (1, 2, 7, 20)]
    )


def test_beam_search_exact_hypotheses_and_scores_without_length_penalty():
    out, _ = run([BEAM_BEATS_GREEDY], beam=2, nbest=2, length_penalty="none")
    (best, second) = hyps(out)
    assert best[0] == (B, EOS)
    assert best[1] == pytest.approx(math.log(0.4 * 0.9), abs=1e-6)
    assert best[2] == pytest.approx(best[1], abs=1e-6)
    # Step 2 finalises "a b" (0.5 * 0.3 * 1 = 0.15) and "a a" (0.135); the open "a a a" (0.0675)
    # cannot beat the second best, so the search stops there.
    assert second[0] == (A, B, EOS)
    assert second[1] == pytest.approx(math.log(0.5 * 0.3), abs=1e-6)


def test_greedy_exact_hypothesis_and_score():
    out, _ = run([BEAM_BEATS_GREEDY], method="greedy", length_penalty="none")
    ((tokens, log_prob, score),) = hyps(out)
    assert tokens == (A, A, EOS)
    assert log_prob == pytest.approx(math.log(0.5 * 0.45 * 0.6), abs=1e-6)
    assert score == pytest.approx(log_prob, abs=1e-6)


def test_length_penalty_changes_the_winner_with_the_gnmt_formula():
    table = {
        (): {A: 0.5, B: 0.4, EOS: 0.1},
        (A,): {A: 0.7, B: 0.2, EOS: 0.1},
        (B,): {EOS: 1.0},
        (A, A): {EOS: 1.0},
        (A, B): {EOS: 1.0},
    }
    out, _ = run([table], beam=2, nbest=2, length_penalty="none")
    assert [h[0] for h in hyps(out)] == [(B, EOS), (A, A, EOS)]  # log .4 > log .35

    alpha = 2.0
    out, _ = run([table], beam=2, nbest=2, length_penalty="gnmt", alpha=alpha)
    (best, second) = hyps(out)
    lp = lambda n: ((5 + n) / 6) ** alpha  # noqa: E731 - the formula, written out
    assert best[0] == (A, A, EOS)
    assert best[1] == pytest.approx(math.log(0.35), abs=1e-6)
    assert best[2] == pytest.approx(math.log(0.35) / lp(3), abs=1e-6)  # -0.5905
    assert second[0] == (B, EOS)
    assert second[2] == pytest.approx(math.log(0.4) / lp(2), abs=1e-6)  # -0.6732

    out, _ = run([table], beam=2, nbest=2, length_penalty="power", alpha=1.0)
    (best, second) = hyps(out)
    assert best[0] == (A, A, EOS)
    assert best[2] == pytest.approx(math.log(0.35) / 3, abs=1e-6)
    assert second[2] == pytest.approx(math.log(0.4) / 2, abs=1e-6)


def random_table(rng: random.Random, depth: int) -> dict[tuple, dict[int, float]]:
    table = {}
    for d in range(depth + 1):
        for prefix in itertools.product((A, B), repeat=d):
            w = [rng.random() + 0.05 for _ in range(3)]
            table[prefix] = {EOS: w[0] / sum(w), A: w[1] / sum(w), B: w[2] / sum(w)}
    return table


def exhaustive(table, max_len, penalty, alpha):
    """Every hypothesis of at most max_len tokens (+ EOS, forced at max_len), sorted by score."""
    out = []
    for d in range(max_len + 1):
        for prefix in itertools.product((A, B), repeat=d):
            logp, ok = 0.0, True
            for t in range(d):
                p = table[prefix[:t]].get(prefix[t], 0.0)
                if p == 0.0:
                    ok = False
                    break
                logp += math.log(p)
            if not ok:
                continue
            logp += math.log(table[prefix][EOS])
            length = d + 1
            lp = 1.0 if penalty == "none" else ((5 + length) / 6) ** alpha
            out.append(((*prefix, EOS), logp, logp / lp))
    return sorted(out, key=lambda h: -h[2])


@pytest.mark.parametrize("penalty,alpha", [("none", 0.0), ("gnmt", 0.6), ("gnmt", 3.0)])
def test_wide_beam_equals_exhaustive_search_in_a_batch(penalty, alpha):
    """With a beam as wide as the tree (12 = the most candidates of any step), beam search is
    exact: its 3-best
    lists equal those of enumerating every hypothesis, for several sentences decoded together,
    and early termination loses nothing."""
    rng = random.Random(1)
    max_len = 3
    tables = [random_table(rng, max_len) for _ in range(4)]
    out, _ = run(tables, beam=12, nbest=3, length_penalty=penalty, alpha=alpha, max_len=max_len)
    for i, table in enumerate(tables):
        expected = exhaustive(table, max_len, penalty, alpha)[:3]
        got = hyps(out, i)
        assert [h[0] for h in got] == [h[0] for h in expected]
        for g, e in zip(got, expected):
            assert g[1] == pytest.approx(e[1], abs=1e-5)
            assert g[2] == pytest.approx(e[2], abs=1e-5)


def test_nbest_is_sorted_and_scores_are_consistent():
    rng = random.Random(2)
    tables = [random_table(rng, 4) for _ in range(3)]
    out, _ = run(tables, beam=4, nbest=4, max_len=4, alpha=0.6)
    assert torch.all(out.score[:, :-1] >= out.score[:, 1:])
    expected = out.log_prob.double() / (((5 + out.lengths.double()) / 6) ** 0.6)
    torch.testing.assert_close(out.score.double(), expected, rtol=1e-5, atol=1e-6)
    tokens = out.tokens.gather(2, (out.lengths - 1)[:, :, None])
    assert torch.all(tokens == EOS)  # every hypothesis ends in EOS, and only there


@pytest.mark.parametrize("method", ["beam", "greedy"])
def test_maximum_length_forces_eos_with_its_real_probability(method):
    never_stops = {(): {A: 0.9, EOS: 0.1}, (A,): {A: 0.8, EOS: 0.2}, (A, A): {A: 0.7, EOS: 0.3}}
    out, _ = run([never_stops], method=method, beam=2, max_len=2, length_penalty="none")
    tokens, log_prob, _ = hyps(out)[0]
    assert tokens == (A, A, EOS)
    assert log_prob == pytest.approx(math.log(0.9 * 0.8 * 0.3), abs=1e-6)


def test_eos_first_gives_an_empty_hypothesis():
    out, _ = run([{(): {EOS: 0.9, A: 0.1}}], beam=2, length_penalty="none")
    assert hyps(out)[0][0] == (EOS,)
    assert hyps(out)[0][1] == pytest.approx(math.log(0.9), abs=1e-6)


@pytest.mark.parametrize("method", ["beam", "greedy"])
def test_min_len_forbids_an_early_eos(method):
    table = {(): {EOS: 0.9, A: 0.1}, (A,): {EOS: 0.6, B: 0.4}, (A, B): {EOS: 1.0}}
    out, _ = run([table], method=method, beam=2, min_len=2, length_penalty="none")
    assert hyps(out)[0][0] == (A, B, EOS)


def test_finished_sentences_leave_the_batch():
    short = {(): {EOS: 1.0}}
    long = {(): {A: 1.0}, (A,): {A: 1.0}, (A, A): {EOS: 1.0}}
    _, model = run([short, long, short], method="greedy", max_len=5)
    assert model.calls == [3, 1, 1]
    _, model = run([short, long, short], beam=2, max_len=5)
    assert model.calls[0] == 3  # the first step runs one row per sentence
    assert model.calls[1:] == [2, 2]  # then only the open sentence's 2 beams


def test_beam_step_returns_2k_candidates_best_first():
    log_probs = torch.tensor([[[-1.0, -2.0, -3.0], [-0.5, -4.0, -0.7]]])  # (N 1, K 2, V 3)
    step = BeamSearch(2).step(log_probs, torch.tensor([[-1.0, -2.0]]))
    assert step.scores[0].tolist() == pytest.approx([-2.0, -2.5, -2.7, -3.0])
    assert step.tokens.tolist() == [[0, 0, 2, 1]]
    assert step.origins.tolist() == [[0, 1, 1, 0]]
    # The decoding loop lets the step overwrite its scratch block: the same candidates.
    scratch = log_probs.clone()
    same = BeamSearch(2).step(scratch, torch.tensor([[-1.0, -2.0]]), overwrite=True)
    for name in ("scores", "tokens", "origins"):
        assert torch.equal(getattr(same, name), getattr(step, name))
    assert torch.equal(scratch, log_probs + torch.tensor([[[-1.0], [-2.0]]]))


@pytest.mark.parametrize("columns", [32000, 8000, 4 * 37000, 640, 100, 30])
def test_row_top_k_gives_topks_values_and_columns_holding_them(columns):
    """Against torch.topk, the independent reference: the same values, best first, on rows with
    distinct values, with many ties (bf16-like scores) and with -inf; every returned column
    holds its value, no column twice. 640 and fewer columns take topk itself (too few groups),
    as do 100 and 30 (no group size divides them)."""
    generator = torch.Generator().manual_seed(columns)
    distinct = torch.randn(9, columns, generator=generator)
    ties = torch.randint(-40, 0, (9, columns), generator=generator).float() / 8
    masked = ties.clone()
    masked[:, : columns - 3] = -math.inf  # fewer finite values than k in every row
    masked[0] = -math.inf
    for x in (distinct, ties, masked):
        for k in (1, 8):
            values, index = row_top_k(x, k)
            assert torch.equal(values, x.topk(k, dim=-1).values)
            assert torch.equal(x.gather(1, index), values)
            assert all(len(set(row)) == k for row in index.tolist())


def test_ban_repeated_ngrams():
    history = torch.tensor([[4, 5, 4, 6, 4], [7, 7, 7, 7, 8]])
    lp = torch.zeros(2, 10)
    ban_repeated_ngrams(lp, history, 2)  # row 0 ends in 4: "4 5" and "4 6" exist
    assert torch.isinf(lp[0]).nonzero().flatten().tolist() == [5, 6]
    assert not torch.isinf(lp[1]).any()  # row 1 ends in 8: no bigram starts with 8
    lp = torch.zeros(2, 10)
    ban_repeated_ngrams(lp, history, 3)  # row 0: "6 4" seen before? no; row 1: "7 8" no
    assert not torch.isinf(lp).any()
    lp = torch.zeros(1, 10)
    ban_repeated_ngrams(lp, torch.tensor([[7, 7, 7]]), 3)
    assert torch.isinf(lp[0]).nonzero().flatten().tolist() == [7]


def test_no_repeat_ngram_in_search():
    loops = {}
    for d in range(6):
        loops[(A,) * d] = {A: 0.9, B: 0.06, EOS: 0.04}
    out, _ = run([loops], method="greedy", max_len=5)
    assert hyps(out)[0][0] == (A, A, A, A, A, EOS)
    out, _ = run([loops], method="greedy", max_len=5, no_repeat_ngram=2)
    assert hyps(out)[0][0] == (A, A, B, EOS)  # a third "a" would repeat the bigram "a a"
    out, _ = run([loops], beam=4, nbest=4, max_len=5, no_repeat_ngram=2)
    for tokens, _, _ in hyps(out):
        bigrams = list(itertools.pairwise(tokens[:-1]))  # EOS aside
        assert len(bigrams) == len(set(bigrams)), tokens


def test_sampling_is_seeded_and_truncations_reduce_to_greedy():
    torch.manual_seed(0)
    log_probs = torch.randn(50, 30).log_softmax(-1)
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    a, la = sample_step(log_probs, 1.0, 0, 1.0, g1)
    b, lb = sample_step(log_probs, 1.0, 0, 1.0, g2)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(la, log_probs.gather(1, a[:, None]).squeeze(1))
    greedy = log_probs.argmax(-1)
    assert torch.equal(sample_step(log_probs, 1.0, 1, 1.0, g1)[0], greedy)
    assert torch.equal(sample_step(log_probs, 1.0, 0, 1e-6, g1)[0], greedy)
    assert torch.equal(sample_step(log_probs, 1e-4, 0, 1.0, g1)[0], greedy)
    top3 = log_probs.topk(3, dim=-1).indices
    for _ in range(5):
        t = sample_step(log_probs, 2.0, 3, 1.0, g1)[0]
        assert (top3 == t[:, None]).any(dim=1).all()


def test_sampled_nbest_is_sorted_and_reproducible():
    rng = random.Random(3)
    tables = [random_table(rng, 3) for _ in range(2)]
    out1, _ = run(tables, method="sample", nbest=5, seed=11, max_len=3)
    out2, _ = run(tables, method="sample", nbest=5, seed=11, max_len=3)
    assert torch.equal(out1.tokens, out2.tokens)
    assert torch.all(out1.score[:, :-1] >= out1.score[:, 1:])


def test_length_batches_respect_the_budget_and_cover_every_input():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(500)]
    batches = length_batches(lengths, max_tokens=300, max_sentences=40)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) <= 40
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 300
    assert length_batches([500, 3], max_tokens=100) == [[1], [0]]  # too long: a batch alone
