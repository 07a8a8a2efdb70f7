"""Our layers against torch.nn's, with weights copied over (dropout 0, batch_first)."""

import pytest
import torch
from torch import nn

from tests.conftest import D_FF, B, D, H, S, T
from transformer.model.attention import key_mask, padding_mask
from transformer.model.layers import DecoderLayer, EncoderLayer


def copy_attention(ours, theirs: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        w = torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        b = torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias])
        theirs.in_proj_weight.copy_(w)
        theirs.in_proj_bias.copy_(b)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)


def copy_common(ours, theirs, norms) -> None:
    with torch.no_grad():
        theirs.linear1.load_state_dict(ours.feed_forward.linear1.state_dict())
        theirs.linear2.load_state_dict(ours.feed_forward.linear2.state_dict())
        for our_sub, their_norm in norms:
            their_norm.load_state_dict(our_sub.norm.state_dict())


def randomize(module: nn.Module) -> None:
    with torch.no_grad():  # non-trivial LayerNorm affine parameters and biases
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


SRC_IDS = torch.tensor([[5] * S, [5] * 4 + [0] * 3, [5] * 2 + [0] * 5])


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_layer_equals_torch(norm):
    ours = EncoderLayer(D, H, D // H, D // H, D_FF, dropout=0.0, norm_position=norm)
    randomize(ours)
    theirs = nn.TransformerEncoderLayer(
        D, H, D_FF, dropout=0.0, batch_first=True, norm_first=norm == "pre"
    )
    copy_attention(ours.self_attn, theirs.self_attn)
    copy_common(
        ours,
        theirs,
        [(ours.self_attn_sublayer, theirs.norm1), (ours.feed_forward_sublayer, theirs.norm2)],
    )
    ours.eval(), theirs.eval()
    x = torch.randn(B, S, D)
    mask = padding_mask(SRC_IDS)
    expected = theirs(x, src_key_padding_mask=~mask)
    got = ours(x, key_mask(mask))
    real = mask[:, :, None].expand_as(
        got
    )  # torch's fast path zeroes padded rows; compare real ones
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_decoder_layer_equals_torch(norm):
    ours = DecoderLayer(D, H, D // H, D // H, D_FF, dropout=0.0, norm_position=norm)
    randomize(ours)
    theirs = nn.TransformerDecoderLayer(
        D, H, D_FF, dropout=0.0, batch_first=True, norm_first=norm == "pre"
    )
    copy_attention(ours.self_attn, theirs.self_attn)
    copy_attention(ours.cross_attn, theirs.multihead_attn)
    copy_common(
        ours,
        theirs,
        [
            (ours.self_attn_sublayer, theirs.norm1),
            (ours.cross_attn_sublayer, theirs.norm2),
            (ours.feed_forward_sublayer, theirs.norm3),
        ],
    )
    ours.eval(), theirs.eval()
    x, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    mask = padding_mask(SRC_IDS)
    causal = nn.Transformer.generate_square_subsequent_mask(T)
    expected = theirs(x, memory, tgt_mask=causal, memory_key_padding_mask=~mask)
    got = ours(x, memory, key_mask(mask))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
