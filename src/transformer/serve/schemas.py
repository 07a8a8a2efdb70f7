"""The JSON API's requests and responses (pydantic models: they make the OpenAPI schema) and the
checks that turn a request into `DecodeOptions` or a list of problems, each naming its field.

The decoding fields of a request (`DecodeParams`) are derived from `DecodeOptions`
(transformer.decoding.options): one JSON field per option that has no `api=False`, with the
option's name, type and default, and its `doc` as description. Validation happens in three
layers, all reported with the JSON field a client sent:

1. pydantic, strict: JSON types (no "4" for 4, no true for 1), the choices of method and
   length_penalty, no NaN / Infinity, no unknown field (a misspelt option must not be silently
   ignored), `texts` present;
2. `DecodeOptions` itself (the same checks as `transformer translate`): its `ConfigError`
   problems start with the option's name, which is the JSON field's;
3. the server's own limits, declared on the options' fields (`server`, `server_max`), which bound
   the work one request can cause: output length, beam and nbest (the server's max_beam), alpha;
   and `check_texts`: texts per request, characters per text.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from transformer.config import ConfigError, Limits, field_limits, format_number
from transformer.decoding.options import DecodeOptions, api_fields
from transformer.serve.settings import ServeSettings

# ------------------------------------------------------------------------------------ requests


def server_limits(f: dataclasses.Field, settings: ServeSettings) -> Limits | None:
    """The bounds a server with `settings` puts on option field `f`: its `server` limits (and
    the `server_max` setting as upper bound), the field's own limits on a side they leave open;
    None when the server adds nothing to the field's own checks."""
    extra: Limits | None = f.metadata.get("server")
    setting_name = f.metadata.get("server_max")
    if setting_name is not None:
        extra = dataclasses.replace(extra or Limits(), le=getattr(settings, setting_name), lt=None)
    if extra is None:
        return None
    own = field_limits(f) or Limits()
    lower = (extra.ge, extra.gt) if (extra.ge, extra.gt) != (None, None) else (own.ge, own.gt)
    upper = (extra.le, extra.lt) if (extra.le, extra.lt) != (None, None) else (own.le, own.lt)
    return Limits(*lower, *upper)


def request_model(
    options: type[DecodeOptions] = DecodeOptions,
    name: str = "DecodeParams",
    settings: ServeSettings | None = None,
) -> type[BaseModel]:
    """The strict pydantic model of the API fields of `options` (DecodeOptions or a subclass).

    Each description is the field's `doc` with the bounds a server with `settings` (default: the
    default server) applies filled in.
    """
    settings = settings or ServeSettings()
    hints = typing.get_type_hints(options)
    fields: dict[str, Any] = {}
    for f in api_fields(options):
        limits = server_limits(f, settings) or field_limits(f) or Limits()
        words = {
            **{
                side: format_number(getattr(limits, side))
                for side in ("ge", "gt", "le", "lt")
                if getattr(limits, side) is not None
            },
            "range": limits.describe(),
            "default": f.default,
        }
        description = f.metadata["doc"].format(**words)
        fields[f.name] = (hints[f.name], Field(f.default, description=description))
    return create_model(
        name,
        __config__=ConfigDict(strict=True, extra="forbid", allow_inf_nan=False),
        __doc__="Decoding options shared by both endpoints; the defaults are the paper's.",
        __module__=__name__,
        **fields,
    )


DecodeParams = request_model()


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
    task: str | None = Field(
        None, description="translation, or the task the model records (parsing); none: not loaded."
    )
    decoding: dict[str, Any] | None = Field(
        None,
        description="The decoding a request gets for the fields it does not set: the model's "
        "own defaults (a parser's beam 21), else the paper's.",
    )


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
    params: BaseModel,
    settings: ServeSettings,
    options: type[DecodeOptions] = DecodeOptions,
    defaults: Mapping[str, Any] | None = None,
) -> tuple[DecodeOptions | None, list[tuple[str, str]]]:
    """The `options` a request asks for, or the problems with it (field, message): those of
    `options` itself, then the server's limits on every field that passed its own checks.

    `defaults`: the model directory's decoding defaults (a parser's beam 21), used for the fields
    the request does not set; the server's limits bound what clients ask for, not these."""
    fields = api_fields(options)
    defaults = {
        name: value
        for name, value in (defaults or {}).items()
        if name not in params.model_fields_set and name in {f.name for f in fields}
    }
    values = {f.name: defaults.get(f.name, getattr(params, f.name)) for f in fields}
    # One `generate` call takes at most the batcher's token budget (without batching: the default).
    max_tokens = settings.max_batch_tokens if settings.batching else options().max_tokens
    problems: list[tuple[str, str]] = []
    decoded: DecodeOptions | None = None
    try:
        decoded = options.from_kwargs(dict(values, max_tokens=max_tokens))
    except ConfigError as e:
        for problem in e.problems:
            name, _, message = problem.partition(": ")
            problems.append((name, message))
    reported = {name for name, _ in problems}
    for f in fields:
        limits = server_limits(f, settings)
        value = values[f.name]
        if f.name in defaults or limits is None or value is None or f.name in reported:
            continue
        if limits.allows(value):
            continue
        setting_name = f.metadata.get("server_max")
        why = f" (the server's {setting_name})" if setting_name else ""
        problems.append((f.name, f"must be {limits.describe()}{why}, got {value}"))
    return (None if problems else decoded), problems
