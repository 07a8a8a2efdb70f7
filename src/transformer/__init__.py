"""transformer: the system of "Attention Is All You Need" (Vaswani et al., 2017) on PyTorch."""

from transformer.config import ConfigError, ModelConfig
from transformer.model import DecoderCache, Transformer

__version__ = "0.1.0"

__all__ = ["ConfigError", "DecoderCache", "ModelConfig", "Transformer", "__version__"]
