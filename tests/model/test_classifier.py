"""TransformerClassifier: the translation Encoder itself, pooling that ignores padding, a head."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import B, S, V, tiny_config
from transformer import TransformerClassifier
from transformer.data.batching import LabelledBatch
from transformer.model import Encoder
from transformer.model.attention import padding_mask
from transformer.training.objective import ClassificationObjective
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID

C = 5  # classes: distinct from every other tiny size


def texts_with_padding() -> torch.Tensor:
    src = torch.randint(4, V, (B, S))
    src[:, -1] = EOS_ID
    src[1, 4] = EOS_ID
    src[1, 5:] = PAD_ID
    src[2, 1] = EOS_ID
    src[2, 2:] = PAD_ID
    return src


def test_the_encoder_is_the_translation_encoder():
    model = TransformerClassifier(tiny_config(), C)
    assert type(model.encoder) is Encoder
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"encoder", "head"}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_logits_ignore_padding(pooling, norm):
    model = TransformerClassifier(tiny_config(pooling=pooling, norm_position=norm), C).eval()
    src = texts_with_padding()
    logits = model(src)
    assert logits.shape == (B, C)
    padded = torch.cat([src, torch.full((B, 4), PAD_ID)], dim=1)
    torch.testing.assert_close(model(padded), logits, rtol=0, atol=1e-5)
    for i in range(B):  # alone, without any padding, each text gets the same logits
        n = int(padding_mask(src[i : i + 1]).sum())
        torch.testing.assert_close(model(src[i : i + 1, :n]), logits[i : i + 1], atol=1e-5, rtol=0)


def test_mean_pooling_is_the_mean_over_real_tokens():
    model = TransformerClassifier(tiny_config(pooling="mean"), C).eval()
    src = texts_with_padding()
    memory = model.encoder(src, padding_mask(src))  # (B, S, D)
    expected = torch.stack(
        [memory[i, padding_mask(src)[i]].mean(dim=0) for i in range(B)]
    )  # an explicit loop over texts
    torch.testing.assert_close(model.features(src), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        model(src), expected @ model.head.weight.T + model.head.bias, atol=1e-6, rtol=0
    )


def test_cls_pooling_reads_the_output_at_a_prepended_bos():
    model = TransformerClassifier(tiny_config(pooling="cls"), C).eval()
    src = texts_with_padding()
    with_bos = torch.cat([torch.full((B, 1), BOS_ID), src], dim=1)
    memory = model.encoder(with_bos, padding_mask(with_bos))  # (B, 1 + S, D)
    torch.testing.assert_close(model.features(src), memory[:, 0], atol=0, rtol=0)
    assert len(model.attention_weights(src).encoder_self) == tiny_config().n_encoder_layers
    assert model.attention_weights(src).encoder_self[0].shape[-1] == S + 1


def test_every_encoder_option_applies():
    config = tiny_config(positional="learned", norm_position="pre", scale_attention=False)
    model = TransformerClassifier(config, C)
    assert model.encoder.final_norm is not None
    assert type(model.encoder.embed.positional).__name__ == "LearnedPositionalEmbedding"


def test_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        TransformerClassifier(tiny_config(), 1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_cross_entropy_summed_over_texts(smoothing):
    objective = ClassificationObjective({"name": "classification", "labels": list("abcde")})
    model = objective.build(tiny_config())
    src = texts_with_padding()
    labels = torch.tensor([0, 4, 2])
    batch = LabelledBatch(src=src, labels=labels, n_src_tokens=int(padding_mask(src).sum()))
    torch.manual_seed(3)
    loss, nll = objective.loss(
        model, batch, smoothing, lambda: torch.autocast("cpu", enabled=False)
    )
    torch.manual_seed(3)  # the same dropout masks
    logits = model(src)
    expected = F.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="sum")
    torch.testing.assert_close(loss, expected)
    torch.manual_seed(3)
    torch.testing.assert_close(nll, F.cross_entropy(model(src), labels, reduction="sum"))
    assert objective.count(batch) == B
