import time

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import B, S, T, V, tiny_config
from transformer import DecoderCache, Transformer
from transformer.model.attention import padding_mask
from transformer.model.layers import AttentionRecord
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID


def batch_with_padding():
    src = torch.randint(4, V, (B, S))
    src[1, 5:] = PAD_ID  # different source lengths
    src[2, 2:] = PAD_ID
    tgt = torch.randint(4, V, (B, T))
    return src, tgt


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_causality(norm):
    model = Transformer(tiny_config(norm_position=norm)).eval()
    src, tgt = batch_with_padding()
    before = model(src, tgt)
    for t in range(T - 1):
        changed = tgt.clone()
        changed[:, t + 1 :] = torch.randint(4, V, (B, T - t - 1))
        after = model(src, changed)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])


def test_padding_invariance():
    model = Transformer(tiny_config()).eval()
    src, tgt = batch_with_padding()
    padded = torch.cat([src, torch.full((B, 4), PAD_ID)], dim=1)
    torch.testing.assert_close(model(padded, tgt), model(src, tgt), rtol=0, atol=1e-5)


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize(
    "overrides",
    [
        {"positional": "sinusoidal"},
        {"positional": "learned"},
        {"positional": "none"},
        {"shared_query_key": True, "scale_attention": False},
    ],
)
def test_cached_step_by_step_equals_full_pass(norm, overrides):
    model = Transformer(tiny_config(norm_position=norm, **overrides)).eval()
    src, tgt = batch_with_padding()
    with torch.no_grad():
        full = model(src, tgt)
        mask = padding_mask(src)
        memory = model.encode(src, mask)
        cache = DecoderCache()
        steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache) for t in range(T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    assert cache.length == T


def test_cached_prefix_then_steps_equals_full_pass():
    model = Transformer(tiny_config()).eval()
    src, tgt = batch_with_padding()
    with torch.no_grad():
        full = model(src, tgt)
        mask = padding_mask(src)
        memory = model.encode(src, mask)
        cache = DecoderCache()
        first = model.decode(tgt[:, :3], memory, mask, cache)  # several new positions at once
        rest = model.decode(tgt[:, 3:], memory, mask, cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=0, atol=1e-5)


def test_cross_attention_keys_are_computed_once():
    model = Transformer(tiny_config()).eval()
    src, tgt = batch_with_padding()
    calls = []
    layer = model.decoder.layers[0].cross_attn
    original = layer.project_kv
    layer.project_kv = lambda m: calls.append(1) or original(m)
    with torch.no_grad():
        mask = padding_mask(src)
        memory = model.encode(src, mask)
        cache = DecoderCache()
        for t in range(T):
            model.decode(tgt[:, t : t + 1], memory, mask, cache)
    assert len(calls) == 1
    # kept contiguous, so that each step's products read them without a copy
    assert all(c.cross_k.is_contiguous() and c.cross_v.is_contiguous() for c in cache.layers)


def test_reorder_then_continue_equals_recomputing_reordered_input():
    model = Transformer(tiny_config()).eval()
    src, tgt = batch_with_padding()
    order = torch.tensor([2, 0, 0])  # beam-search style: duplicate one row, drop another
    with torch.no_grad():
        mask = padding_mask(src)
        memory = model.encode(src, mask)
        cache = DecoderCache()
        model.decode(tgt[:, :2], memory, mask, cache)
        cache.reorder(order)
        continued = model.decode(tgt[order, 2:], memory[order], mask[order], cache)
        expected = model(src[order], tgt[order])[:, 2:]
    torch.testing.assert_close(continued, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_beams_sharing_one_source_row_equal_a_source_row_per_beam(cached):
    # Beam search passes each source once for its g beams (target rows i*g .. i*g + g - 1).
    model = Transformer(tiny_config()).eval()
    src, tgt = batch_with_padding()
    g = 3
    tgt = tgt.repeat_interleave(g, dim=0)
    tgt[1::g, 2:] = tgt.flip(0)[1::g, 2:]  # beams of one source differ after two tokens
    with torch.no_grad():
        mask = padding_mask(src)
        memory = model.encode(src, mask)
        rows = torch.arange(src.size(0)).repeat_interleave(g)
        if cached:
            shared, per_row = DecoderCache(), DecoderCache()
            steps = [(0, 2), (2, tgt.size(1))]
            for a, b in steps:
                grouped = model.decode(tgt[:, a:b], memory, mask, shared)
                expected = model.decode(tgt[:, a:b], memory[rows], mask[rows], per_row)
                torch.testing.assert_close(grouped, expected, rtol=0, atol=1e-5)
            assert shared.layers[0].cross_k.size(0) == src.size(0)  # one row per source
            assert per_row.layers[0].cross_k.size(0) == src.size(0) * g
        else:
            grouped = model.decode(tgt, memory, mask)
            torch.testing.assert_close(grouped, model(src[rows], tgt), rtol=0, atol=1e-5)
            record = AttentionRecord()
            model.decode(tgt, memory, mask, record=record)
            expected = model.attention_weights(src[rows], tgt)
            torch.testing.assert_close(record.cross[0], expected.cross[0], rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="do not share 2 sources evenly"):
            model.decode(tgt[:5], memory[:2], mask[:2])


def test_shared_embeddings_are_one_parameter():
    model = Transformer(tiny_config())
    enc, dec = model.encoder.embed.token.weight, model.decoder.embed.token.weight
    assert enc is dec and model.output_weight is enc
    names = [n for n, p in model.named_parameters() if p is enc]
    assert len(names) == 1  # counted once


def test_separate_embeddings_when_not_shared():
    model = Transformer(tiny_config(share_embeddings=False))
    weights = {
        id(model.encoder.embed.token.weight),
        id(model.decoder.embed.token.weight),
        id(model.output_weight),
    }
    assert len(weights) == 3
    shared = Transformer(tiny_config())
    assert model.num_parameters() - shared.num_parameters() == 2 * V * 16


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm_position": "pre", "positional": "learned"},
        {"shared_query_key": True, "scale_attention": False, "positional": "none"},
    ],
)
def test_every_parameter_gets_a_gradient(overrides):
    model = Transformer(tiny_config(**overrides))
    src, tgt = batch_with_padding()
    logits = model(src, tgt)
    F.cross_entropy(logits.reshape(-1, V), torch.randint(4, V, (B * T,))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_parameter_counts_of_the_paper_presets():
    from transformer import ModelConfig

    assert Transformer(ModelConfig.base(vocab_size=37000)).num_parameters() == 63_082_496
    assert Transformer(ModelConfig.big(vocab_size=37000)).num_parameters() == 214_245_376


def greedy(model, src, max_len):
    mask = padding_mask(src)
    memory = model.encode(src, mask)
    cache = DecoderCache()
    token = torch.full((src.size(0), 1), BOS_ID)
    out = []
    for _ in range(max_len):
        token = model.decode(token, memory, mask, cache)[:, -1:].argmax(-1)
        out.append(token)
    return torch.cat(out, dim=1)


def test_learns_the_copy_task():
    """2 layers, d_model 32: copy random sequences of 10 symbols, >= 99% greedy token accuracy."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = tiny_config(vocab_size=14, d_model=32, n_heads=4, d_ff=64)
    model = Transformer(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)

    def sample(n):
        seq = torch.randint(4, 14, (n, 10))
        eos = torch.full((n, 1), EOS_ID)
        src = torch.cat([seq, eos], 1)
        return src, torch.cat([torch.full((n, 1), BOS_ID), seq], 1), torch.cat([seq, eos], 1)

    start = time.perf_counter()
    model.train()
    for step in range(1, 1501):
        src, tgt_in, tgt_out = sample(64)
        for group in optimizer.param_groups:  # the paper's schedule, short warmup
            group["lr"] = 3e-3 * min(1.0, step / 100) * min(1.0, (300 / step) ** 0.5)
        loss = F.cross_entropy(model(src, tgt_in).reshape(-1, 14), tgt_out.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            model.eval()
            with torch.no_grad():
                src, _, tgt_out = sample(200)
                accuracy = (greedy(model, src, 11) == tgt_out).float().mean().item()
            model.train()
            if accuracy >= 0.99:
                break
    elapsed = time.perf_counter() - start
    assert accuracy >= 0.99, f"accuracy {accuracy:.3f} after {step} steps"
    assert elapsed < 60, f"took {elapsed:.1f} s"


@pytest.mark.gpu
def test_cuda_forward_and_cached_decoding_match_cpu():
    model = Transformer(tiny_config()).eval()
    src, tgt = batch_with_padding()
    with torch.no_grad():
        expected = model(src, tgt)
        model.cuda()
        got = model(src.cuda(), tgt.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
