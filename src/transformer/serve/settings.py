"""The server's knobs: batching and the limits on what one request may ask for."""

from __future__ import annotations

from dataclasses import dataclass

from transformer.config import check_fields, setting


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
    max_batch_tokens: int = setting(4096, ge=0)
    max_wait_ms: float = setting(5.0, ge=0.0)
    max_texts: int = setting(64, ge=1)
    max_chars: int = setting(1000, ge=1)
    max_beam: int = setting(16, ge=1)
    max_pending: int = setting(1024, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "server settings", self._batching_problems)

    def _batching_problems(self) -> list[str]:
        if self.batching and self.max_batch_tokens < 1:
            return [
                "max_batch_tokens: must be at least 1 with batching on (0 turns it off), "
                f"got {self.max_batch_tokens}"
            ]
        return []

    @property
    def max_body_bytes(self) -> int:
        """The largest request body accepted: every text at its longest (at most 12 bytes per
        character, a JSON-escaped surrogate pair) plus room for the options."""
        return self.max_texts * (self.max_chars * 12 + 16) + 64 * 1024
