"""The rows of a study: Table 3 of the paper, and the learners' "why" questions, derived from a base.

Each row changes a few fields of the user's base config. Table 3's rows scale with that base rather
than copying the paper's absolute numbers: row (A) "h = 1, 4, 16, 32 with d_k = d_v = d_model / h"
becomes h = 1, h/2, 2h, 4h of the base (the paper's base has h = 8); row (B) takes d_k / 4 and
d_k / 2; row (C) halves and doubles d_model and d_ff and scales N by 2/6, 4/6 and 8/6 (at least
N + 1 for the last). Rows (D) keep the paper's absolute dropout and label-smoothing values, which
do not depend on the model's size. A derived row that cannot exist (a head count that does not
divide d_model, a size below 1) or that equals the base or an earlier row is left out, with the
reason kept for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformer.config import ModelConfig
from transformer.training.config import RunConfig

STUDIES = ("table3", "questions")
TABLE3_GROUPS = ("A", "B", "C", "D", "E")


@dataclass(frozen=True)
class Row:
    """One variation: `key` is unique within all studies (it names the row's directory)."""

    key: str
    group: str  # "base", "A".."E" for Table 3, "Q" for the questions
    description: str
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields that change
    optim: dict[str, Any] = field(default_factory=dict)  # OptimConfig fields that change

    def apply(self, base: RunConfig) -> RunConfig:
        """The base run config with this row's changes."""
        config = RunConfig(
            model={**base.model, **self.model},
            data=base.data,
            optim=base.optim,
            train=base.train,
        )
        return config.replace("optim", **self.optim) if self.optim else config


BASE_ROW = Row("base", "base", "the base config, unchanged")


def base_sizes(base: RunConfig) -> ModelConfig:
    """The base model with every size resolved (vocab_size is a placeholder: sizes only)."""
    return ModelConfig.from_dict({**base.model, "vocab_size": 1})


def _heads(key: str, description: str, d_model: int, h: int) -> Row | None:
    if h < 1 or d_model % h:
        return None
    d = d_model // h
    return Row(key, "A", description, {"n_heads": h, "d_k": d, "d_v": d})


def table3_rows(base: RunConfig) -> tuple[list[Row], list[str]]:
    """Rows (A) to (E) derived from `base`, and notes on the variations that were left out."""
    m = base_sizes(base)
    d, h, d_k, d_v = m.d_model, m.n_heads, m.d_k, m.d_v
    candidates: list[tuple[str, str, Row | None]] = [
        ("A1", "(A) one head, d_k = d_v = d_model", _heads("A1", f"h=1, d_k=d_v={d}", d, 1)),
    ]
    for key, factor, label in (("A2", 0.5, "h/2"), ("A3", 2, "2h"), ("A4", 4, "4h")):
        heads = int(h * factor)
        row = None
        if heads * 1.0 == h * factor and heads >= 1 and d % heads == 0:
            row = _heads(key, f"h={heads}, d_k=d_v={d // heads}", d, heads)
        candidates.append((key, f"(A) {label} heads, d_k = d_v = d_model / h", row))
    for key, divisor in (("B1", 4), ("B2", 2)):
        size = d_k // divisor
        row = None
        if size >= 1 and size * divisor == d_k:
            row = Row(key, "B", f"d_k={size}", {"d_k": size})
        candidates.append((key, f"(B) d_k / {divisor}", row))
    for i, (num, den) in enumerate(((2, 6), (4, 6), (8, 6)), start=1):
        # The paper's N = 2, 4, 8 around 6; "more layers" stays more even for a 1-layer base.
        least = (lambda n: n + 1) if num > den else (lambda n: 1)
        enc = max(least(m.n_encoder_layers), round(m.n_encoder_layers * num / den))
        dec = max(least(m.n_decoder_layers), round(m.n_decoder_layers * num / den))
        label = f"N={enc}" if enc == dec else f"N={enc}+{dec}"
        row = Row(f"C{i}", "C", label, {"n_encoder_layers": enc, "n_decoder_layers": dec})
        candidates.append((f"C{i}", f"(C) N x {num}/{den}", row))
    for key, factor in (("C4", 0.5), ("C5", 2)):
        width, dk, dv = int(d * factor), int(d_k * factor), int(d_v * factor)
        row = None
        if min(width, dk, dv) >= 1 and width == d * factor and dk == d_k * factor:
            row = Row(
                key,
                "C",
                f"d_model={width}, d_k=d_v={dk}" if dk == dv else f"d_model={width}, d_k={dk}",
                {"d_model": width, "d_k": dk, "d_v": dv},
            )
        candidates.append((key, f"(C) d_model x {factor}", row))
    for key, factor in (("C6", 0.5), ("C7", 2)):
        width = int(m.d_ff * factor)
        row = Row(key, "C", f"d_ff={width}", {"d_ff": width}) if width >= 1 else None
        candidates.append((key, f"(C) d_ff x {factor}", row))
    for key, p in (("D1", 0.0), ("D2", 0.2)):
        candidates.append((key, "(D) dropout", Row(key, "D", f"P_drop={p}", {"dropout": p})))
    for key, eps in (("D3", 0.0), ("D4", 0.2)):
        row = Row(key, "D", f"eps_ls={eps}", optim={"label_smoothing": eps})
        candidates.append((key, "(D) label smoothing", row))
    learned = Row(
        "E1", "E", "learned positional embedding instead of sinusoids", {"positional": "learned"}
    )
    if m.positional == "learned":
        learned = Row(
            "E1", "E", "sinusoids instead of learned positions", {"positional": "sinusoidal"}
        )
    candidates.append(("E1", "(E) positional encoding", learned))
    return _keep_distinct(base, candidates)


def question_rows(base: RunConfig) -> tuple[list[Row], list[str]]:
    """The "why" rows the paper does not have; each reverses one design decision of the base."""
    m = base_sizes(base)
    other_norm = "pre" if m.norm_position == "post" else "post"
    candidates: list[tuple[str, str, Row | None]] = [
        (
            "Q1",
            "why divide by sqrt(d_k)?",
            Row("Q1", "Q", "unscaled dot products (no 1/sqrt(d_k))", {"scale_attention": False}),
        ),
        (
            "Q2",
            "why separate W^Q and W^K?",
            Row(
                "Q2", "Q", "one shared projection for queries and keys", {"shared_query_key": True}
            ),
        ),
        (
            "Q3",
            "why LayerNorm after the residual?",
            Row(
                "Q3",
                "Q",
                f"{other_norm}-norm instead of {m.norm_position}-norm",
                {"norm_position": other_norm},
            ),
        ),
        (
            "Q4",
            "why label smoothing?",
            Row("Q4", "Q", "no label smoothing (eps_ls=0)", optim={"label_smoothing": 0.0}),
        ),
        (
            "Q5",
            "why positional encodings?",
            Row("Q5", "Q", "no positional encoding at all", {"positional": "none"}),
        ),
    ]
    return _keep_distinct(base, candidates)


def _keep_distinct(
    base: RunConfig, candidates: list[tuple[str, str, Row | None]]
) -> tuple[list[Row], list[str]]:
    """Drop rows that cannot exist or repeat the base or an earlier row; say why."""
    rows: list[Row] = []
    notes: list[str] = []
    seen = {_signature(base)}
    for key, what, row in candidates:
        if row is None:
            notes.append(f"{key} {what}: not possible with this base config, left out")
            continue
        try:
            signature = _signature(row.apply(base))
            base_sizes(row.apply(base))
        except ValueError as e:  # ConfigError: an invalid derived model
            notes.append(f"{key} {what}: invalid with this base config ({e}), left out")
            continue
        if signature in seen:
            notes.append(f"{key} {what}: identical to the base or an earlier row, left out")
            continue
        seen.add(signature)
        rows.append(row)
    return rows, notes


def _signature(config: RunConfig) -> str:
    sizes = base_sizes(config).to_dict()
    return repr((sorted(sizes.items()), config.optim))


def study_rows(
    study: str, base: RunConfig, groups: list[str] | None = None
) -> tuple[list[Row], list[str]]:
    """The base row and the rows of `study` ("table3" or "questions"), optionally only `groups`.

    For table3, groups are letters A-E; for questions, row keys Q1-Q5; "base" alone gives only
    the base row (e.g. to measure its spread over seeds).
    """
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; choose one of {', '.join(STUDIES)}")
    rows, notes = table3_rows(base) if study == "table3" else question_rows(base)
    if groups:
        wanted = {g.strip().upper() for g in groups if g.strip()}
        known = {r.group for r in rows} | {r.key for r in rows} | {"BASE"}
        if study == "table3":
            known |= set(TABLE3_GROUPS)
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(
                f"--rows: unknown {', '.join(unknown)} (this study has base, "
                f"{', '.join(sorted(TABLE3_GROUPS if study == 'table3' else {r.key for r in rows}))})"
            )
        rows = [r for r in rows if r.group in wanted or r.key in wanted]
    return [BASE_ROW, *rows], notes
