"""The JSON API's requests and responses (pydantic models: they make the OpenAPI schema) and the
checks that turn a request into `DecodeOptions` or a list of problems, each naming its field.

The texts of a request are declared once (`TextsRequest`, `TextRequest`) and shared by the
translation and classification requests; a classification request adds only `top_k`. The
attention responses share their encoder part (`EncoderAttentionOut`): a translation's adds the
decoder and cross-attention, a classifier's its classes.

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
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class TextsRequest(BaseModel):
    """The texts of a request, for every task: how many and how long are the server's limits
    (`check_texts`)."""

    model_config = STRICT

    texts: list[str] = Field(
        description="The texts (one sentence each is best for translation), at most the "
        "server's max_texts (64 by default), each at most max_chars characters (1000 by "
        "default)."
    )


class TextRequest(BaseModel):
    """The one text of an attention request, for every task."""

    model_config = STRICT

    text: str = Field(description="The text, at most the server's max_chars characters.")


class TranslateRequest(DecodeParams, TextsRequest):
    """Texts to translate, and how."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"texts": ["Ein Hund läuft über eine Wiese."]}]}
    )


class AttentionRequest(DecodeParams, TextRequest):
    """One text whose attention weights are wanted: a translation model translates it (the
    decoding fields apply), a classification model classifies it (they must not be set)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Ein Hund läuft über eine Wiese."}]}
    )


class ClassifyRequest(TextsRequest):
    """Texts to classify (a classification model only)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"texts": ["Stocks rally as oil prices fall"]}]}
    )

    top_k: int = Field(
        1,
        ge=1,
        description="How many classes to return per text, most probable first: from 1 to the "
        "model's number of classes (`labels` in /health).",
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


class EncoderAttentionOut(BaseModel):
    """The encoder's self-attention over one text, shared by both attention responses. Tokens
    come raw (the tokenizer's byte-level strings, `Ġ` = space) and readable (`▁` marks a leading
    space)."""

    source_tokens: list[str] = Field(
        description="What the encoder read: the text's subwords + </s> (a classifier with "
        '"cls" pooling puts <s> first): S positions.'
    )
    source_display: list[str] = Field(description="source_tokens, readable.")
    encoder_layers: int
    heads: int
    encoder_self: list[list[list[list[float]]]] = Field(
        description="Encoder self-attention (encoder_layers, heads, S queries, S keys)."
    )


class AttentionResponse(EncoderAttentionOut):
    """The best translation of one sentence and every attention weight of a teacher-forced pass
    over it."""

    source: str = Field(description="The input sentence.")
    translation: str = Field(description="The best translation.")
    score: float = Field(description="The best hypothesis' score.")
    truncated: bool = Field(description="The input was cut to the model's positions.")
    decoder_tokens: list[str] = Field(description="<s> + translation subwords: T decoder inputs.")
    target_tokens: list[str] = Field(
        description="Translation subwords + </s>: what decoder position i predicts (T of them)."
    )
    decoder_display: list[str] = Field(description="decoder_tokens, readable.")
    target_display: list[str] = Field(description="target_tokens, readable.")
    decoder_layers: int
    decoder_self: list[list[list[list[float]]]] = Field(
        description="Decoder self-attention (decoder_layers, heads, T queries, T keys), causal."
    )
    cross: list[list[list[list[float]]]] = Field(
        description="Cross-attention (decoder_layers, heads, T queries, S keys): row i while "
        "predicting target_tokens[i]."
    )


class ClassOut(BaseModel):
    label: str = Field(description="A class name (one of /health's labels).")
    probability: float = Field(description="Its probability (all classes sum to 1).")


class ClassificationOut(BaseModel):
    source: str = Field(description="The input text.")
    label: str = Field(description="The most probable class.")
    probability: float = Field(description="Its probability.")
    top: list[ClassOut] = Field(description="The top_k most probable classes, best first.")
    truncated: bool = Field(
        description="The input was longer than the model can take and was classified from its "
        "beginning (learned positions)."
    )


class ClassifyResponse(BaseModel):
    classifications: list[ClassificationOut] = Field(
        description="One per input text, in input order."
    )


class ClassifierAttentionResponse(ClassificationOut, EncoderAttentionOut):
    """The classes of one text (`top`: every class, best first) and its encoder self-attention:
    a classifier has no decoder, so no decoder or cross-attention."""


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
        None,
        description="translation, or the task the model records (parsing, classification); "
        "none: not loaded.",
    )
    labels: list[str] | None = Field(
        None, description="A classification model's classes, in index order; none otherwise."
    )
    decoding: dict[str, Any] | None = Field(
        None,
        description="The decoding a request gets for the fields it does not set: the model's "
        "own defaults (a parser's beam 21), else the paper's; none for a classifier.",
    )
    precision: str | None = Field(
        None,
        description="What the model computes in, fp32 or bf16 (--precision; auto chooses bf16 "
        "on a CPU with bf16 units); none for CTranslate2, which computes in the type of its "
        "export, and before the model is loaded.",
    )


# ---------------------------------------------------------------------------------- validation


@dataclass
class RequestError(Exception):
    """A request that parsed but asks for something not allowed: (field, message) pairs."""

    problems: list[tuple[str, str]]

    def __str__(self) -> str:
        return "; ".join(f"{field}: {message}" for field, message in self.problems)


def check_texts(
    texts: list[str], settings: ServeSettings, field: str, allow_empty: bool = True
) -> list[tuple[str, str]]:
    """Problems with the texts of a request: how many, how long, valid Unicode; and, unless
    `allow_empty`, empty (a classifier has nothing to read in one: its answer would be the
    model's bias alone, while an empty translation keeps outputs aligned with inputs)."""
    problems = []
    if not texts:
        problems.append((field, "must hold at least one text"))
    if len(texts) > settings.max_texts:
        problems.append(
            (field, f"at most {settings.max_texts} texts per request, got {len(texts)}")
        )
    for i, text in enumerate(texts):
        where = f"{field}.{i}" if field == "texts" else field
        if not allow_empty and not text.strip():
            problems.append((where, "empty (or only spaces): there is nothing to read"))
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
