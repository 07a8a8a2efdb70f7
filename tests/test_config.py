import pytest

from transformer import ConfigError, ModelConfig
from transformer.config import from_dict


def test_defaults_are_the_papers_base():
    c = ModelConfig.base(vocab_size=37000)
    assert (c.d_model, c.n_heads, c.d_k, c.d_v, c.d_ff) == (512, 8, 64, 64, 2048)
    assert (c.n_encoder_layers, c.n_decoder_layers, c.dropout) == (6, 6, 0.1)
    assert (c.norm_position, c.positional, c.share_embeddings) == ("post", "sinusoidal", True)


def test_big_preset():
    c = ModelConfig.big(vocab_size=37000)
    assert (c.d_model, c.d_ff, c.n_heads, c.dropout, c.d_k) == (1024, 4096, 16, 0.3, 64)


def test_d_k_and_d_v_independent_of_d_model():
    c = ModelConfig.base(vocab_size=10, d_k=16)
    assert (c.d_k, c.d_v) == (16, 64)


def test_validation_names_every_offending_field():
    with pytest.raises(ConfigError) as info:
        ModelConfig(vocab_size=0, d_model=-1, dropout=1.5, norm_position="middle", positional="x")
    message = str(info.value)
    for name in ("vocab_size", "d_model", "dropout", "norm_position", "positional"):
        assert name in message
    assert len(info.value.problems) == 5


def test_indivisible_d_model_needs_explicit_head_sizes():
    with pytest.raises(ConfigError, match="d_model"):
        ModelConfig(vocab_size=10, d_model=10, n_heads=4)
    assert ModelConfig(vocab_size=10, d_model=10, n_heads=4, d_k=3, d_v=5).d_v == 5


def test_from_dict_reports_unknown_keys_and_wrong_types_together():
    with pytest.raises(ConfigError) as info:
        from_dict(ModelConfig, {"vocab_size": 10, "d_modle": 8, "n_heads": "four"})
    assert len(info.value.problems) == 2
    assert "d_modle" in str(info.value) and "n_heads" in str(info.value)


def test_dict_round_trip():
    c = ModelConfig.big(vocab_size=123, positional="learned")
    assert ModelConfig.from_dict(c.to_dict()) == c
