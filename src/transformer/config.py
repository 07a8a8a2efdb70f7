"""Configuration as frozen dataclasses, validated at construction.

Every invalid value is reported at once, each with its field name, so that a user fixes a config
in one round instead of one error at a time. `from_dict` turns a plain mapping (JSON, YAML) into a
dataclass and rejects unknown keys and wrong types, again listing every offender.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration is invalid; `problems` lists every offending field with what is wrong."""

    def __init__(self, where: str, problems: list[str]):
        self.where = where
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {where} ({len(self.problems)} problem(s)):\n{lines}")


def _type_matches(value: Any, annotation: Any) -> bool:
    """Whether `value` fits a (simple) type annotation: int, float, str, bool, Literal, Optional, list."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(_type_matches(v, item) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:  # an int is an acceptable float (YAML writes 1 for 1.0)
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


# ----------------------------------------------------------------------- declared field limits


def format_number(value: float) -> str:
    """A bound or value as a user reads it: an int in full (2**63 - 1 stays exact), a float
    in its shortest form (10.0 -> "10", 0.6 -> "0.6")."""
    return str(value) if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class Limits:
    """The bounds of one numeric field (any of >=, >, <=, <); None values are not checked."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        """The allowed range in words: "in [0, 1)", ">= 1", "> 0"."""
        lo = (
            f"[{format_number(self.ge)}"
            if self.ge is not None
            else f"({format_number(self.gt)}"
            if self.gt is not None
            else None
        )
        hi = (
            f"{format_number(self.le)}]"
            if self.le is not None
            else f"{format_number(self.lt)})"
            if self.lt is not None
            else None
        )
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            if self.ge is not None:
                return f">= {format_number(self.ge)}"
            return f"> {format_number(self.gt)}"
        if hi:
            if self.le is not None:
                return f"<= {format_number(self.le)}"
            return f"< {format_number(self.lt)}"
        return "any value"

    def allows(self, value: float) -> bool:
        return not (
            (self.ge is not None and not value >= self.ge)
            or (self.gt is not None and not value > self.gt)
            or (self.le is not None and not value <= self.le)
            or (self.lt is not None and not value < self.lt)
        )


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    default_factory: Any = dataclasses.MISSING,
    **metadata: Any,
) -> Any:
    """A dataclass field with its help text and declared limits (checked by `field_problems`).

    `check(value)` is a rule of this one field that bounds cannot say (a required string): it
    returns what is wrong, or None; it runs only on a value of the right type within its limits.
    Extra keyword metadata is kept for whoever derives something from the field (a CLI flag, a
    request model).
    """
    limits = Limits(ge, gt, le, lt) if (ge, gt, le, lt) != (None, None, None, None) else None
    if check is not None:
        metadata["check"] = check
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        metadata={"help": help, "limits": limits, **metadata},
    )


def field_limits(f: dataclasses.Field) -> Limits | None:
    return f.metadata.get("limits")


def field_problems(instance: Any) -> list[str]:
    """Every field of a dataclass instance whose value has the wrong type, is out of its
    declared limits or fails its own `check`, as "name: what is wrong" (the form ConfigError
    lists)."""
    hints = typing.get_type_hints(type(instance))
    problems = []
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if not _type_matches(value, hints[f.name]):
            problems.append(
                f"{f.name}: expected {_describe(hints[f.name])}, got {value!r} "
                f"({type(value).__name__})"
            )
            continue
        limits = field_limits(f)
        if limits is not None and value is not None and not limits.allows(value):
            problems.append(f"{f.name}: must be {limits.describe()}, got {value!r}")
            continue
        check = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:
            problems.append(f"{f.name}: {problem}")
    return problems


def check_fields(instance: Any, where: str, more: Callable[[], list[str]] | None = None) -> None:
    """Raise one ConfigError listing every field problem of `instance`; `more()` adds the checks
    that relate several fields (run only once every field is individually valid)."""
    problems = field_problems(instance)
    if not problems and more is not None:
        problems = more()
    if problems:
        raise ConfigError(where, problems)


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build dataclass `cls` from `data`; unknown keys and wrong types are all reported together.

    Field-level validation (ranges, consistency) then runs in the dataclass's `__post_init__`.
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(where, [f"expected a mapping of fields, got {type(data).__name__}"])
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems = []
    for key in data:
        if key not in fields:
            problems.append(f"{key}: unknown field (known: {', '.join(sorted(fields))})")
    for name, value in data.items():
        if name in fields and not _type_matches(value, hints[name]):
            problems.append(
                f"{name}: expected {_describe(hints[name])}, got {value!r} ({type(value).__name__})"
            )
    if problems:
        raise ConfigError(where, problems)
    hinted = {
        k: (float(v) if hints[k] is float and isinstance(v, int) else v) for k, v in data.items()
    }
    return cls(**hinted)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-serialisable mapping of a config dataclass."""
    return dataclasses.asdict(config)


Activation = Literal["relu", "gelu"]
Norm = Literal["layer", "rms", "batch"]
NormPosition = Literal["post", "pre"]
Pooling = Literal["mean", "cls"]
Positional = Literal["sinusoidal", "learned", "none", "relative", "rotary", "alibi"]
Scoring = Literal["dot", "additive"]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of the Transformer. Defaults are the paper's base model (Table 3, "base").

    `d_k` and `d_v` default to `d_model // n_heads` but may be set independently (Table 3 rows A-C).
    """

    vocab_size: int = setting(ge=1)
    d_model: int = setting(512, ge=1)
    n_heads: int = setting(8, ge=1)
    d_k: int | None = setting(None, ge=1)
    d_v: int | None = setting(None, ge=1)
    d_ff: int = setting(2048, ge=1)
    n_encoder_layers: int = setting(6, ge=1)
    n_decoder_layers: int = setting(6, ge=1)
    dropout: float = setting(0.1, ge=0.0, lt=1.0)
    # Dropout on the attention weights. Not in the paper (0 keeps it paper-exact); offered because
    # later recipes (tensor2tensor v2, fairseq) use it on small data sets.
    attention_dropout: float = setting(0.0, ge=0.0, lt=1.0)
    norm_position: NormPosition = "post"
    positional: Positional = "sinusoidal"
    # One matrix for source embedding, target embedding and pre-softmax projection (the paper).
    share_embeddings: bool = True
    # Sinusoids: initial table size (extended on demand). Learned: the hard maximum length.
    max_positions: int = setting(1024, ge=1)
    layer_norm_eps: float = setting(1e-5, gt=0.0)
    # Ablations for `transformer study questions` ("why is it built this way?"). Off by default,
    # and free when off: each is one branch taken at construction or a constant passed to the
    # attention kernel. scale_attention=False drops the 1/sqrt(d_k) of scaled dot-product
    # attention; shared_query_key=True uses one projection for queries and keys (W^Q = W^K, as in
    # the Reformer); positional: none gives the model no position information at all.
    scale_attention: bool = True
    shared_query_key: bool = False
    # More of the learners' questions, each off by default (the paper's model). norm: "layer"
    # (LayerNorm, the paper), "rms" (RMSNorm: no mean subtraction, no bias) or "batch" (BatchNorm
    # over the real tokens of the batch, running statistics at inference). activation of the
    # feed-forward network: "relu" (the paper) or "gelu". scale_embedding: the sqrt(d_model)
    # factor on token embeddings (section 3.4). residual: the residual connections around every
    # sub-layer (False: x -> Norm(Sublayer(x)), a plain deep stack).
    norm: Norm = "layer"
    activation: Activation = "relu"
    scale_embedding: bool = True
    residual: bool = True
    # Positions inside attention instead of added to the embeddings (positional: relative,
    # rotary, alibi; not the paper, transformer.model.positions): no position vector is added to
    # the token embeddings, and a position term enters the self-attention of the encoder and of
    # the decoder only. Cross-attention gets none: its queries carry their positions through the
    # decoder's self-attention, its keys through the encoder's. "relative": Shaw et al. (2018),
    # learned key and value vectors per clipped distance j - i, per layer, shared by the heads;
    # relative_clip is that clipping distance k (distances beyond +-k share a vector). "rotary":
    # RoPE (Su et al. 2021), queries and keys rotated by their position (d_k must be even).
    # "alibi": Press et al. (2022), a fixed penalty -m_h |i - j| on the logits of head h.
    relative_clip: int = setting(16, ge=1)
    # attention: how queries score keys, in every attention. "dot": scaled dot-product (the
    # paper); "additive": w_h^T tanh(q_i + k_j) per head (Bahdanau et al. 2015), a learned w_h,
    # no scale (so scale_attention must stay true); d_k times the memory of dot products.
    attention: Scoring = "dot"
    # Classification only (TransformerClassifier; a translation model ignores it): how the
    # encoder's outputs become one vector: "mean" over the real tokens, or "cls", the output at a
    # classification token (<s>) put in front of every text (as BERT's [CLS]).
    pooling: Pooling = "mean"

    def __post_init__(self) -> None:
        check_fields(self, "ModelConfig", self._head_problems)
        # Resolve the per-head sizes so that every consumer sees concrete numbers.
        if self.d_k is None:
            object.__setattr__(self, "d_k", self.d_model // self.n_heads)
        if self.d_v is None:
            object.__setattr__(self, "d_v", self.d_model // self.n_heads)

    def _head_problems(self) -> list[str]:
        if (self.d_k is None or self.d_v is None) and self.d_model % self.n_heads != 0:
            return [
                f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads}; "
                "set d_k and d_v explicitly or choose a divisible d_model"
            ]
        problems = []
        d_k = self.d_model // self.n_heads if self.d_k is None else self.d_k
        if self.positional == "rotary" and d_k % 2 != 0:
            given = (
                ""
                if self.d_k is not None
                else f" (d_model {self.d_model} / n_heads {self.n_heads})"
            )
            problems.append(
                f"d_k: positional: rotary rotates pairs of dimensions, so d_k must be even, "
                f"got {d_k}{given}"
            )
        if self.attention == "additive" and not self.scale_attention:
            problems.append(
                "scale_attention: false drops the 1/sqrt(d_k) of dot-product attention; "
                "attention: additive has no such scale (leave scale_attention true)"
            )
        return problems

    @classmethod
    def base(cls, vocab_size: int, **overrides: Any) -> ModelConfig:
        """The paper's Transformer base: N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1."""
        return cls(vocab_size=vocab_size, **overrides)

    @classmethod
    def big(cls, vocab_size: int, **overrides: Any) -> ModelConfig:
        """The paper's Transformer big (EN-DE): d_model=1024, d_ff=4096, h=16, P_drop=0.3."""
        values: dict[str, Any] = dict(d_model=1024, d_ff=4096, n_heads=16, dropout=0.3)
        values.update(overrides)
        return cls(vocab_size=vocab_size, **values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data, "model config")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
