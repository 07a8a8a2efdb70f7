"""Decoding options, declared once: every other form of them is derived from `DecodeOptions`.

- the decoding loop (`generate`) and the engines read a `DecodeOptions` itself;
- `Translator.translate(texts, **options)` builds one from its keyword options;
- `transformer translate`, `evaluate` and `visualize` offer one flag per field
  (`add_option_flags`, used by `decoding.cli.add_decode_arguments`): `--max-len-a` for `max_len_a`, with the field's default
  and help;
- the server's request model (`serve.schemas.DecodeParams`) has one JSON field per field, with
  the field's name, type and default, and applies the field's limits and the server's own.

So a new option is one field here. Each is declared with `config.setting`: its default, its
limits (checked at construction, every problem named), its command-line help (argparse's
`%(default)s` stands for the default), and these metadata keys for the derived forms:

    cli=False       no command-line flag
    metavar         the flag's metavar
    choice_flags    {choice: help}: the field is set by one switch per non-default choice
                    (--greedy, --sample) instead of by an option taking a value
    api=False       not in the server's request model (a knob of the library or of the server)
    doc             the request model's description; {ge} {gt} {le} {lt} {range} {default} stand
                    for the bounds the server applies and the default
    server          `Limits` the server puts on the field instead of the field's own on the same
                    side (upper or lower): they bound the work one request can cause
    server_max      the name of a server setting that bounds the field from above (max_beam)
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from transformer.config import ConfigError, Limits, check_fields, field_problems, setting
from transformer.decoding.search import LENGTH_PENALTIES, LengthPenalty

Method = Literal["beam", "greedy", "sample"]
METHODS: tuple[str, ...] = typing.get_args(Method)
# The names of search.LENGTH_PENALTIES, so that a penalty added there is a valid choice here.
LengthPenaltyName = Literal[tuple(LENGTH_PENALTIES)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode; the defaults are the paper's (beam 4, GNMT alpha 0.6, input + 50).

    method: "beam", "greedy" or "sample". nbest: hypotheses returned per input (<= beam; for
    sampling, the number of samples; greedy gives one). length_penalty: "gnmt" ((5+|Y|)/6)^alpha,
    "power" |Y|^alpha or "none". A hypothesis holds at most max_len_a * |source subwords| +
    max_len_b tokens before its EOS. max_tokens / max_sentences: batch budget in padded source
    tokens / sentences. use_cache=False recomputes the decoder over the whole prefix at every
    step (for comparison). Invalid values raise ConfigError naming every offending field.
    """

    method: Method = setting(  # noqa: RUF009 (a Field with metadata, as dataclasses.field)
        "beam",
        help="the search",
        choice_flags={"greedy": "greedy decoding", "sample": "sampling (see --temperature...)"},
        doc="Search: beam search, greedy decoding, or sampling.",
    )
    beam: int = setting(
        4,
        ge=1,
        help="beam size (default %(default)s)",
        server_max="max_beam",
        doc="Beam size, {ge} to the server's max_beam ({le} by default).",
    )
    alpha: float = setting(
        0.6,
        help="length penalty alpha (default %(default)s)",
        server=Limits(ge=0, le=10.0),
        doc="Length penalty exponent, {ge} to {le} (the paper: {default}).",
    )
    length_penalty: LengthPenaltyName = setting(  # noqa: RUF009
        "gnmt",
        help="gnmt: ((5+|Y|)/6)^alpha (the paper's); power: |Y|^alpha (fairseq/HF); none",
        doc="gnmt: ((5+|Y|)/6)^alpha (the paper's); power: |Y|^alpha; none.",
    )
    nbest: int = setting(
        1,
        ge=1,
        help="hypotheses per input (<= beam)",
        server_max="max_beam",
        doc="Hypotheses returned per text, best first: at most beam for beam search "
        "(the number of samples for sampling; greedy always gives 1).",
    )
    max_len_a: float = setting(
        1.0,
        ge=0,
        help="max length = a * source + b",
        server=Limits(le=4.0),
        doc="Output length limit a * source subwords + b: a, {ge} to {le}.",
    )
    max_len_b: int = setting(
        50,
        ge=0,
        help="max length = a * source + b",
        server=Limits(le=1024),
        doc="Output length limit a * source subwords + b: b, {ge} to {le}.",
    )
    min_len: int = setting(
        0,
        ge=0,
        help="no EOS before this many tokens",
        server=Limits(le=1024),
        doc="No end of sentence before this many tokens ({ge} to {le}).",
    )
    no_repeat_ngram: int = setting(
        0,
        ge=0,
        help="never repeat an N-gram",
        metavar="N",
        server=Limits(le=64),
        doc="Never repeat an n-gram of this size (0: off; at most {le}).",
    )
    temperature: float = setting(
        1.0, gt=0, help="sampling temperature", doc="Sampling temperature, {range}."
    )
    top_k: int = setting(
        0,
        ge=0,
        help="sample from the k best tokens (0: all)",
        doc="Sample from the k most likely tokens only (0: all).",
    )
    top_p: float = setting(
        1.0,
        gt=0,
        le=1,
        help="nucleus sampling mass (1: all)",
        doc="Nucleus sampling: the smallest set with this mass, {range}.",
    )
    seed: int | None = setting(
        None,
        help="seed for sampling",
        server=Limits(ge=0, le=2**63 - 1),
        doc="Seed for sampling ({ge} to {le}); none: a random one.",
    )
    max_tokens: int = setting(
        4096, ge=1, help="padded source tokens per batch (%(default)s)", api=False
    )
    max_sentences: int = setting(256, ge=1, help="sentences per batch", cli=False, api=False)
    use_cache: bool = setting(
        True,
        help="reuse the decoder's keys and values from step to step (false: recompute them)",
        cli=False,
        api=False,
    )

    def __post_init__(self) -> None:
        check_fields(self, "decoding options", self._relations)

    def _relations(self) -> list[str]:
        """The rules between fields (checked once each field is valid on its own)."""
        if self.method == "beam" and self.nbest > self.beam:
            return [f"nbest: must be <= beam ({self.beam}) for beam search, got {self.nbest}"]
        return []

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> DecodeOptions:
        """Build from keyword options, naming any unknown one."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                "decoding options",
                [f"{name}: unknown option (known: {', '.join(sorted(known))})" for name in unknown],
            )
        return cls(**options)

    @classmethod
    def check_given(cls, options: Mapping[str, Any]) -> None:
        """Check some options on their own (unknown names, types, limits), and the rules between
        fields where all of them are given; the rest waits for the complete options (a model's
        defaults may fill the others)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        problems = [f"{name}: unknown option" for name in unknown]
        if not problems:
            probe = object.__new__(cls)
            for f in dataclasses.fields(cls):
                object.__setattr__(probe, f.name, options.get(f.name, f.default))
            problems = field_problems(probe)
        if not problems and {"beam", "nbest"} <= set(options):  # a rule no default can change
            problems = probe._relations()
        if problems:
            raise ConfigError("decoding options", problems)

    @property
    def penalty(self) -> LengthPenalty:
        """The length penalty function lp(|Y|, alpha) that `length_penalty` names."""
        return LENGTH_PENALTIES[self.length_penalty]

    @property
    def n_hypotheses(self) -> int:
        """Hypotheses returned per input: `nbest`, but one for greedy decoding."""
        return 1 if self.method == "greedy" else self.nbest


def cli_fields(options: type[DecodeOptions] = DecodeOptions) -> list[dataclasses.Field]:
    """The fields of `options` (DecodeOptions or a subclass) offered as command-line flags."""
    return [f for f in dataclasses.fields(options) if f.metadata.get("cli", True)]


def api_fields(options: type[DecodeOptions] = DecodeOptions) -> list[dataclasses.Field]:
    """The fields of `options` (DecodeOptions or a subclass) in the server's request model."""
    return [f for f in dataclasses.fields(options) if f.metadata.get("api", True)]


# ------------------------------------------------------------------------- command-line flags


def add_option_flags(
    parser: argparse.ArgumentParser, options: type[DecodeOptions] = DecodeOptions
) -> None:
    """One flag per field of `options` that has one (`cli_fields`): `--max-len-a` for
    `max_len_a`, with the field's default, type, choices and help; a field with `choice_flags`
    becomes mutually exclusive switches (--greedy, --sample)."""
    d = options()
    g = parser.add_argument_group(
        f"decoding (defaults: the paper's beam {d.beam}, GNMT alpha {d.alpha}, +{d.max_len_b})"
    )
    hints = typing.get_type_hints(options)
    for f in cli_fields(options):
        switches = f.metadata.get("choice_flags")
        if switches:
            choice = g.add_mutually_exclusive_group()
            for value, text in switches.items():
                choice.add_argument(f"--{_flag(value)}", action="store_true", help=text)
            continue
        kind, choices = _argument_type(hints[f.name])
        extra: dict[str, Any] = {}
        if kind is bool:
            extra["action"] = argparse.BooleanOptionalAction
        else:
            extra["type"] = kind
        if choices is not None:
            extra["choices"] = list(choices)
        if f.metadata.get("metavar"):
            extra["metavar"] = f.metadata["metavar"]
        g.add_argument(
            f"--{_flag(f.name)}",
            dest=f.name,
            default=_Default(f.default),
            help=f.metadata["help"],
            **extra,
        )


class _Default:
    """A flag's default, told apart from the same value given on the command line (a model
    directory's decoding defaults replace the former only); prints as the value in --help."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)

    __repr__ = __str__


def options_from_flags(
    args: argparse.Namespace,
    options: type[DecodeOptions] = DecodeOptions,
    given_only: bool = False,
) -> dict[str, Any]:
    """Keyword options (the fields of `options` that have a flag) from arguments parsed after
    `add_option_flags`: every such field, or with `given_only` those given on the command line
    (the others are then left to the model's defaults, see `Translator.options`)."""
    values: dict[str, Any] = {}
    for f in cli_fields(options):
        switches = f.metadata.get("choice_flags")
        if switches:
            chosen = [value for value in switches if getattr(args, _flag(value).replace("-", "_"))]
            if chosen or not given_only:
                values[f.name] = chosen[0] if chosen else f.default
            continue
        value = getattr(args, f.name)
        if isinstance(value, _Default):
            if given_only:
                continue
            value = value.value
        values[f.name] = value
    return values


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _argument_type(annotation: Any) -> tuple[type, tuple | None]:
    """(argparse type, choices or None) of a field annotation: int, float, str, bool, a Literal
    of strings, or one of these | None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return type(args[0]), tuple(args)
    if args:  # X | None
        return _argument_type(args[0])
    return annotation, None
