import math

import pytest
import torch

from tests.conftest import tiny_config
from transformer import Transformer
from transformer.model.embeddings import SinusoidalPositionalEncoding, sinusoid_table


@pytest.mark.parametrize("d_model", [16, 512, 15])
def test_sinusoids_follow_the_papers_formula(d_model):
    table = sinusoid_table(2100, d_model)
    for pos in (0, 1, 7, 100, 2099):
        for dim in sorted({0, 1, 2, 3, 6, 7, d_model - 2, d_model - 1}):
            i = dim // 2
            angle = pos / 10000 ** (2 * i / d_model)
            expected = math.sin(angle) if dim % 2 == 0 else math.cos(angle)  # interleaved
            assert table[pos, dim].item() == pytest.approx(expected, abs=1e-6), (pos, dim)


def test_sinusoids_extend_beyond_max_positions():
    pe = SinusoidalPositionalEncoding(8, max_positions=4)
    out = pe(length=3, offset=10)
    torch.testing.assert_close(out, sinusoid_table(13, 8)[10:13])


def test_model_runs_on_inputs_longer_than_max_positions():
    model = Transformer(tiny_config(max_positions=4)).eval()
    logits = model(torch.randint(4, 37, (2, 9)), torch.randint(4, 37, (2, 11)))
    assert logits.shape == (2, 11, 37) and torch.isfinite(logits).all()


def test_learned_positions_refuse_too_long_inputs_clearly():
    model = Transformer(tiny_config(positional="learned", max_positions=4))
    with pytest.raises(ValueError, match="max_positions=4"):
        model(torch.randint(4, 37, (2, 9)), torch.randint(4, 37, (2, 3)))


def test_embeddings_are_scaled_by_sqrt_d_model():
    model = Transformer(tiny_config())
    ids = torch.tensor([[5, 6]])
    emb = model.encoder.embed.token(ids)
    torch.testing.assert_close(emb, model.encoder.embed.token.weight[ids] * 4.0)
