"""The JSON API's requests and responses (pydantic models: they make the OpenAPI schema) and the
checks that turn a request into `DecodeOptions` or a list of problems, each naming its field.

Validation happens in three layers, all reported with the JSON field a client sent:

1. pydantic, strict: JSON types (no "4" for 4, no true for 1), no NaN / Infinity, no unknown
   field (a misspelt option must not be silently ignored), `texts` present;
2. `DecodeOptions` itself (the same checks as `transformer translate`): its `ConfigError`
   problems start with the option's name, mapped onto the JSON field here;
3. the server's own limits, which bound the work one request can cause: texts per request,
   characters per text, beam and nbest, output length, and alpha >= 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from transformer.config import ConfigError
from transformer.decoding.search import LENGTH_PENALTIES
from transformer.serve.settings import ServeSettings
from transformer.translator import METHODS, DecodeOptions

# Bounds the server adds to DecodeOptions' own checks (beam and nbest come from ServeSettings).
ALPHA_MAX = 10.0
MAX_LEN_A_MAX = 4.0
MAX_LEN_B_MAX = 1024
MIN_LEN_MAX = 1024
NO_REPEAT_NGRAM_MAX = 64
SEED_MAX = 2**63 - 1

# DecodeOptions field -> JSON field. The API uses DecodeOptions' names, so this is the identity
# today; it is the one place to change if the two ever differ.
JSON_FIELDS = {
    name: name
    for name in (
        "method",
        "beam",
        "alpha",
        "length_penalty",
        "nbest",
        "max_len_a",
        "max_len_b",
        "min_len",
        "no_repeat_ngram",
        "temperature",
        "top_k",
        "top_p",
        "seed",
    )
}


# ------------------------------------------------------------------------------------ requests


class DecodeParams(BaseModel):
    """Decoding options shared by both endpoints; the defaults are the paper's."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    method: str = Field(
        "beam",
        description="Search: beam search, greedy decoding, or sampling.",
        json_schema_extra={"enum": list(METHODS)},
    )
    beam: int = Field(4, description="Beam size, 1 to the server's max_beam (16 by default).")
    alpha: float = Field(
        0.6, description=f"Length penalty exponent, 0 to {ALPHA_MAX:g} (the paper: 0.6)."
    )
    length_penalty: str = Field(
        "gnmt",
        description="gnmt: ((5+|Y|)/6)^alpha (the paper's); power: |Y|^alpha; none.",
        json_schema_extra={"enum": list(LENGTH_PENALTIES)},
    )
    nbest: int = Field(
        1,
        description="Hypotheses returned per text, best first: at most beam for beam search "
        "(the number of samples for sampling; greedy always gives 1).",
    )
    max_len_a: float = Field(
        1.0,
        description=f"Output length limit a * source subwords + b: a, 0 to {MAX_LEN_A_MAX:g}.",
    )
    max_len_b: int = Field(
        50, description=f"Output length limit a * source subwords + b: b, 0 to {MAX_LEN_B_MAX}."
    )
    min_len: int = Field(
        0, description=f"No end of sentence before this many tokens (0 to {MIN_LEN_MAX})."
    )
    no_repeat_ngram: int = Field(
        0,
        description=f"Never repeat an n-gram of this size (0: off; at most {NO_REPEAT_NGRAM_MAX}).",
    )
    temperature: float = Field(1.0, description="Sampling temperature, > 0.")
    top_k: int = Field(0, description="Sample from the k most likely tokens only (0: all).")
    top_p: float = Field(
        1.0, description="Nucleus sampling: the smallest set with this mass, in (0, 1]."
    )
    seed: int | None = Field(
        None, description=f"Seed for sampling (0 to {SEED_MAX}); none: a random one."
    )


class TranslateRequest(DecodeParams):
    """Texts to translate, and how."""

    texts: list[str] = Field(
        description="Texts to translate (one sentence each is best), at most the server's "
        "max_texts (64 by default), each at most max_chars characters (1000 by default).",
        examples=[["Ein Hund läuft über eine Wiese."]],
    )


class AttentionRequest(DecodeParams):
    """One sentence whose translation and attention weights are wanted."""

    text: str = Field(
        description="The sentence to translate, at most the server's max_chars characters.",
        examples=["Ein Hund läuft über eine Wiese."],
    )


# ----------------------------------------------------------------------------------- responses


class HypothesisOut(BaseModel):
    text: str = Field(description="The hypothesis as text.")
    score: float = Field(description="The ranking score: log_prob divided by the length penalty.")
    log_prob: float = Field(
        description="Sum of the token log-probabilities, end of sentence included."
    )
    length: int = Field(description="Number of subword tokens, end of sentence excluded.")


class TranslationOut(BaseModel):
    source: str = Field(description="The input text.")
    text: str = Field(description="The best translation.")
    score: float = Field(description="The best hypothesis' score.")
    truncated: bool = Field(
        description="The input was longer than the model can take and was cut (learned positions)."
    )
    hypotheses: list[HypothesisOut] = Field(description="The n-best hypotheses, best first.")


class TranslateResponse(BaseModel):
    translations: list[TranslationOut] = Field(description="One per input text, in input order.")


class AttentionResponse(BaseModel):
    """The best translation of one sentence and every attention weight of a teacher-forced pass
    over it. Tokens come raw (the tokenizer's byte-level strings, `Ġ` = space) and readable
    (`▁` marks a leading space)."""

    source: str = Field(description="The input sentence.")
    translation: str = Field(description="The best translation.")
    score: float = Field(description="The best hypothesis' score.")
    truncated: bool = Field(description="The input was cut to the model's positions.")
    source_tokens: list[str] = Field(description="Source subwords + </s>: S encoder positions.")
    decoder_tokens: list[str] = Field(description="<s> + translation subwords: T decoder inputs.")
    target_tokens: list[str] = Field(
        description="Translation subwords + </s>: what decoder position i predicts (T of them)."
    )
    source_display: list[str] = Field(description="source_tokens, readable.")
    decoder_display: list[str] = Field(description="decoder_tokens, readable.")
    target_display: list[str] = Field(description="target_tokens, readable.")
    encoder_layers: int
    decoder_layers: int
    heads: int
    encoder_self: list[list[list[list[float]]]] = Field(
        description="Encoder self-attention (encoder_layers, heads, S queries, S keys)."
    )
    decoder_self: list[list[list[list[float]]]] = Field(
        description="Decoder self-attention (decoder_layers, heads, T queries, T keys), causal."
    )
    cross: list[list[list[list[float]]]] = Field(
        description="Cross-attention (decoder_layers, heads, T queries, S keys): row i while "
        "predicting target_tokens[i]."
    )


class FieldError(BaseModel):
    field: str = Field(description="The JSON field at fault, e.g. `beam` or `texts.3`.")
    message: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong, in one line.")
    errors: list[FieldError] = Field(default_factory=list, description="One entry per field.")


class HealthResponse(BaseModel):
    status: str = Field(description="ready, loading, failed or stopping.")
    detail: str | None = None
    max_texts: int
    max_chars: int
    max_beam: int
    batching: bool


# ---------------------------------------------------------------------------------- validation


@dataclass
class RequestError(Exception):
    """A request that parsed but asks for something not allowed: (field, message) pairs."""

    problems: list[tuple[str, str]]

    def __str__(self) -> str:
        return "; ".join(f"{field}: {message}" for field, message in self.problems)


def check_texts(texts: list[str], settings: ServeSettings, field: str) -> list[tuple[str, str]]:
    """Problems with the texts of a request: how many, how long, valid Unicode."""
    problems = []
    if not texts:
        problems.append((field, "must hold at least one text"))
    if len(texts) > settings.max_texts:
        problems.append(
            (field, f"at most {settings.max_texts} texts per request, got {len(texts)}")
        )
    for i, text in enumerate(texts):
        where = f"{field}.{i}" if field == "texts" else field
        if len(text) > settings.max_chars:
            problems.append(
                (where, f"at most {settings.max_chars} characters per text, got {len(text)}")
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            problems.append((where, "not valid Unicode (a lone surrogate escape?)"))
    return problems


def decode_options(
    params: DecodeParams, settings: ServeSettings
) -> tuple[DecodeOptions | None, list[tuple[str, str]]]:
    """The DecodeOptions a request asks for, or the problems with it (field, message)."""
    values = {name: getattr(params, name) for name in JSON_FIELDS}
    problems = _server_limits(values, settings)
    # One `generate` call takes at most the batcher's token budget (without batching: the default).
    max_tokens = settings.max_batch_tokens if settings.batching else DecodeOptions().max_tokens
    try:
        options = DecodeOptions.from_kwargs(dict(values, max_tokens=max_tokens))
    except ConfigError as e:
        for problem in e.problems:
            name, _, message = problem.partition(": ")
            problems.append((JSON_FIELDS.get(name, name), message))
        return None, problems
    return (None if problems else options), problems


def _server_limits(values: dict, settings: ServeSettings) -> list[tuple[str, str]]:
    problems = []

    def bound(name: str, lo: float, hi: float, why: str = "") -> None:
        value = values[name]
        if value is not None and not lo <= value <= hi:
            problems.append((JSON_FIELDS[name], f"must be in [{lo}, {hi}]{why}, got {value}"))

    limit = " (the server's max_beam)"
    if values["beam"] >= 1:  # DecodeOptions reports values below 1
        bound("beam", 1, settings.max_beam, limit)
    if values["nbest"] >= 1:
        bound("nbest", 1, settings.max_beam, limit)
    bound("alpha", 0, ALPHA_MAX)
    if values["max_len_a"] >= 0:
        bound("max_len_a", 0, MAX_LEN_A_MAX)
    if values["max_len_b"] >= 0:
        bound("max_len_b", 0, MAX_LEN_B_MAX)
    if values["min_len"] >= 0:
        bound("min_len", 0, MIN_LEN_MAX)
    if values["no_repeat_ngram"] >= 0:
        bound("no_repeat_ngram", 0, NO_REPEAT_NGRAM_MAX)
    bound("seed", 0, SEED_MAX)
    return problems
