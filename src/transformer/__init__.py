"""transformer: the system of "Attention Is All You Need" (Vaswani et al., 2017) on PyTorch."""

from transformer.config import ConfigError, ModelConfig
from transformer.model import DecoderCache, Transformer, TransformerClassifier
from transformer.version import __version__

__all__ = [
    "Classifier",
    "ConfigError",
    "DecoderCache",
    "ModelConfig",
    "Transformer",
    "TransformerClassifier",
    "Translator",
    "__version__",
]


def __getattr__(name: str):
    # Imported on first use: the facades pull in the tokenizer and decoding, which
    # `transformer --help` and training do not need.
    if name == "Translator":
        from transformer.translator import Translator

        return Translator
    if name == "Classifier":
        from transformer.classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'transformer' has no attribute {name!r}")
