"""transformer: the system of "Attention Is All You Need" (Vaswani et al., 2017) on PyTorch."""

from transformer.config import ConfigError, ModelConfig
from transformer.model import DecoderCache, Transformer
from transformer.version import __version__

__all__ = [
    "ConfigError",
    "DecoderCache",
    "ModelConfig",
    "Transformer",
    "Translator",
    "__version__",
]


def __getattr__(name: str):
    # Imported on first use: the facade pulls in the tokenizer and decoding, which
    # `transformer --help` and training do not need.
    if name == "Translator":
        from transformer.translator import Translator

        return Translator
    raise AttributeError(f"module 'transformer' has no attribute {name!r}")
