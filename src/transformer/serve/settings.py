"""The server's knobs: batching and the limits on what one request may ask for."""

from __future__ import annotations

from dataclasses import dataclass

from transformer.config import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and what it accepts.

    Batching: requests arriving within `max_wait_ms` of the first waiting one are decoded together
    while their source tokens (subwords + EOS, summed) stay within `max_batch_tokens`. `batching`
    False decodes one request per `generate` call (the baseline of benchmarks/serve_load.py).

    Limits (a request over one gets a 4xx naming the field): `max_texts` per request,
    `max_chars` per text, `max_beam` for beam and nbest, `max_pending` requests waiting for the
    decoder (more get 503, so a flood cannot grow memory without bound).
    """

    batching: bool = True
    max_batch_tokens: int = 4096
    max_wait_ms: float = 5.0
    max_texts: int = 64
    max_chars: int = 1000
    max_beam: int = 16
    max_pending: int = 1024

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_texts", "max_chars", "max_beam", "max_pending"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_batch_tokens < (1 if self.batching else 0):
            problems.append(
                f"max_batch_tokens: must be at least 1 with batching on (0 turns it off), "
                f"got {self.max_batch_tokens}"
            )
        if not self.max_wait_ms >= 0:
            problems.append(f"max_wait_ms: must be >= 0, got {self.max_wait_ms}")
        if problems:
            raise ConfigError("server settings", problems)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body accepted: every text at its longest (at most 12 bytes per
        character, a JSON-escaped surrogate pair) plus room for the options."""
        return self.max_texts * (self.max_chars * 12 + 16) + 64 * 1024
