import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import B, D, H, S, T
from transformer.model import attention
from transformer.model.attention import (
    KEY_BLOCK,
    MultiHeadAttention,
    causal_mask,
    fused_attention,
    inference_attention,
    inference_faster,
    key_mask,
    pad_keys,
    padding_mask,
    reference_attention,
    written_out_is_faster,
)


def explicit_attention(q, k, v, allowed):
    """The five lines of the paper, independent of the code under test."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_reference_attention_equals_explicit_formula():
    q, k, v = torch.randn(B, H, T, 6), torch.randn(B, H, S, 6), torch.randn(B, H, S, 9)
    lengths = torch.tensor([7, 4, 1])
    allowed = (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]
    out, weights = reference_attention(q, k, v, allowed)
    torch.testing.assert_close(out, explicit_attention(q, k, v, allowed), rtol=0, atol=1e-6)
    assert torch.all(weights.masked_select(~allowed.expand_as(weights)) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T))


@pytest.mark.parametrize("d_k,d_v", [(4, 4), (3, 5)])  # d_k != d_model / n_heads too
def test_fast_path_equals_reference_with_padding(d_k, d_v):
    mha = MultiHeadAttention(D, H, d_k, d_v).eval()
    query, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    ids = torch.tensor([[5] * 7, [5] * 4 + [0] * 3, [5] + [0] * 6])
    mask = padding_mask(ids)[:, None, None, :]
    fast, none = mha(query, memory, mask)
    ref, weights = mha(query, memory, mask, need_weights=True)
    assert none is None and weights.shape == (B, H, T, S)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("d_k,d_v", [(4, 4), (3, 5)])
def test_fast_path_equals_reference_causal(d_k, d_v):
    mha = MultiHeadAttention(D, H, d_k, d_v).eval()
    x = torch.randn(B, T, D)
    fast, _ = mha(x, is_causal=True)
    ref, weights = mha(x, is_causal=True, need_weights=True)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    assert torch.all(weights.triu(diagonal=1) == 0)


def test_causal_mask_with_offset():
    m = causal_mask(2, 5)  # the last two of five positions
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_the_written_out_path_is_taken_only_for_reduced_precision_training_on_cpu() -> None:
    x = torch.randn(2, 3, 4, 8)
    assert not written_out_is_faster(x.requires_grad_())  # float32: the fused kernel
    assert not written_out_is_faster(x.bfloat16().detach())  # no gradient: inference
    assert written_out_is_faster(x.bfloat16())  # bf16 with a gradient: training
    with torch.no_grad():
        assert not written_out_is_faster(x.bfloat16())


def test_inference_writes_attention_out_in_bf16_and_for_few_float32_queries() -> None:
    x = torch.randn(2, 3, KEY_BLOCK + 1, 8)
    with torch.no_grad():
        assert inference_faster(x.bfloat16())  # bf16: at any length
        assert inference_faster(x[:, :, :1])  # float32: a decoding step
        assert inference_faster(x[:, :, :KEY_BLOCK])
        assert not inference_faster(x)  # float32, more queries (an encoder): fused
    assert not inference_faster(x[:, :, :1].bfloat16().requires_grad_())  # training: never


def test_pad_keys_pads_values_with_zeros_and_the_mask_with_forbidden_keys() -> None:
    x = torch.randn(2, 3, 5, 4)  # keys on dim 2
    allowed = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask, padded = pad_keys(allowed, x, dim=2)
    assert padded.shape == (2, 3, KEY_BLOCK, 4) and mask.shape == (2, 1, 1, KEY_BLOCK)
    assert torch.equal(padded[:, :, :5], x) and not padded[:, :, 5:].any()
    assert mask[..., :5].all() and not mask[..., 5:].any()
    bias = torch.zeros(2, 1, 1, 5)  # a float mask: the lowest finite value where not allowed
    (bias,) = pad_keys(bias, dim=-2)
    assert torch.all(bias[..., 5:] == torch.finfo(bias.dtype).min)
    memory = torch.randn(2, 2 * KEY_BLOCK, 4)  # (B, S, D): already a multiple
    src_mask = torch.ones(2, 2 * KEY_BLOCK, dtype=torch.bool)
    same_mask, same = pad_keys(src_mask, memory, dim=1)
    assert same is memory and same_mask is src_mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_inference_attention_equals_the_explicit_formula(dtype: torch.dtype, masked: bool) -> None:
    """Against the paper's formula in float64; in bf16 about as close as the fused kernel."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, n, 16, generator=g) for n in (4, 9, 9))
    allowed = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    if masked:
        allowed[0, ..., 6:] = False
        allowed[2, ..., 1:] = False
    expected = explicit_attention(q.double(), k.double(), v.double(), allowed)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    with torch.no_grad():
        got = inference_attention(q, k, v, allowed if masked else None)
        fused = fused_attention(q, k, v, allowed if masked else None)
    assert got.dtype == dtype
    error = (got.double() - expected).abs().max()
    fused_error = (fused.double() - expected).abs().max()
    bound = 1e-6 if dtype == torch.float32 else max(2 * fused_error.item(), 1e-2)
    assert error <= bound, (error, fused_error)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("queries", [1, 4, 40])
def test_a_row_attends_the_same_bit_for_bit_whatever_the_padding(dtype, queries) -> None:
    """The real keys of one row, padded to several lengths: the same output, bit for bit, in
    the written-out inference path and in the fused kernel (a sentence alone and in batches)."""
    g = torch.Generator().manual_seed(1)
    heads, d = 4, 64
    with torch.no_grad():
        for n in (1, 3, 7, 13, 16, 17, 24, 31, 33, 47, 64, 65, 90, 112):
            q, k, v = (torch.randn(1, heads, t, d, generator=g) for t in (queries, n, n))
            results = []
            for length in (n, n + 1, n + 9, n + 40, 2 * n + 30, 256):
                extra = length - n  # padding: random keys and values, masked
                k_pad = torch.cat([k, torch.randn(1, heads, extra, d, generator=g)], dim=2)
                v_pad = torch.cat([v, torch.randn(1, heads, extra, d, generator=g)], dim=2)
                allowed = torch.arange(length)[None, None, None, :] < n
                args = (q.to(dtype), k_pad.to(dtype), v_pad.to(dtype), allowed)
                results.append((inference_attention(*args), fused_attention(*args)))
            for written, fused in results[1:]:
                assert torch.equal(written, results[0][0]), (n, "written out")
                assert torch.equal(fused, results[0][1]), (n, "fused")


def test_decoding_on_cpu_takes_the_inference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = attention.inference_attention
    monkeypatch.setattr(
        attention, "inference_attention", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    mha = MultiHeadAttention(d_model=16, n_heads=4, d_k=4, d_v=4).eval()
    x = torch.randn(3, 1, 16)
    with torch.no_grad():
        one = mha(x)[0]  # one query per (row, head): written out
        mha(x, torch.randn(3, 5, 16), mask=torch.ones(3, 1, 1, 5, dtype=torch.bool))  # masked
        assert len(calls) == 2
        mha(torch.randn(3, KEY_BLOCK + 1, 16))  # more queries in float32 (an encoder): fused
        assert len(calls) == 2
        q, k, v = mha.project_qkv(x)
        fused = mha.out_proj(fused_attention(q, k, v).transpose(1, 2).reshape(3, 1, 16))
    torch.testing.assert_close(one, fused)


def test_bf16_training_attention_equals_the_fused_kernel_with_its_gradients() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, n_heads=4, d_k=4, d_v=4)
    x = torch.randn(3, 7, 16)
    mask = key_mask(torch.tensor([[True] * 7, [True] * 5 + [False] * 2, [True] * 3 + [False] * 4]))
    results = []
    for fused in (False, True):
        mha.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k, v = mha.project_qkv(x)
            if fused:  # the kernel itself, as every other device and precision uses it
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                out = mha.out_proj(out.transpose(1, 2).reshape(3, 7, 16))
            else:
                assert written_out_is_faster(q)
                out, weights = mha.attend(q, k, v, mask)
                assert weights is None
        out.float().square().sum().backward()
        results.append((out.float(), mha.q_proj.weight.grad.clone()))
    (out_a, grad_a), (out_b, grad_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad_a, grad_b, rtol=5e-2, atol=5e-2)


def test_fused_attention_equals_the_explicit_formula_on_cpu():
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = torch.tensor([True, True, True, False, False])[None, None, None, :]
    expected = explicit_attention(q, k, v, mask)
    torch.testing.assert_close(fused_attention(q, k, v, attn_mask=mask), expected)


@pytest.mark.gpu
def test_fused_attention_on_cuda_matches_the_written_out_attention():
    """Variable lengths and padding, bf16 as in training, forward and backward: the kernels
    chosen without cuDNN's agree with the written-out formula computed in float32."""
    torch.manual_seed(0)
    for t_q, t_k in ((7, 7), (13, 29), (1, 40)):
        q, k, v = (torch.randn(3, 4, n, 64, device="cuda") for n in (t_q, t_k, t_k))
        lengths = torch.tensor([t_k, t_k - 1, 1], device="cuda")
        mask = (torch.arange(t_k, device="cuda")[None, :] < lengths[:, None])[:, None, None, :]
        leaves = [x.bfloat16().requires_grad_() for x in (q, k, v)]
        out = fused_attention(*leaves, attn_mask=mask)
        out.float().square().sum().backward()
        ref_leaves = [x.detach().float().requires_grad_() for x in leaves]
        ref = explicit_attention(*ref_leaves, mask)
        ref.square().sum().backward()
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
        for got, want in zip(leaves, ref_leaves):
            torch.testing.assert_close(got.grad.float(), want.grad, rtol=5e-2, atol=5e-2)
