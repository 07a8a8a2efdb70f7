"""The rows of a study: Table 3 of the paper, and the learners' "why" questions, derived from a base.

Each row changes a few fields of the user's base config. Table 3's rows scale with that base rather
than copying the paper's absolute numbers: row (A) "h = 1, 4, 16, 32 with d_k = d_v = d_model / h"
becomes h = 1, h/2, 2h, 4h of the base (the paper's base has h = 8); row (B) takes d_k / 4 and
d_k / 2; row (C) halves and doubles d_model and d_ff and scales N by 2/6, 4/6 and 8/6 (at least
N + 1 for the last). Rows (D) keep the paper's absolute dropout and label-smoothing values, which
do not depend on the model's size. A derived row that cannot exist (a head count that does not
divide d_model, a size below 1) or that equals the base or an earlier row is left out, with the
reason kept for the report.

Every row records what the paper (or the literature, for the rows the paper does not have) leads
one to expect of it, measured in dev perplexity: "base better" (the paper's choice, the base, has
the lower perplexity), "row better", or "similar". Table 3's expectations are read off the paper's
own dev perplexities (`PAPER_TABLE3_PPL`, base 4.92): a row within 0.05 (1%) of the base is
"similar". They assume a base that makes the paper's choices; `transformer.study.report.verdict`
compares them with what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from transformer.config import ModelConfig
from transformer.training.config import RunConfig

STUDIES = ("table3", "questions")
TABLE3_GROUPS = ("A", "B", "C", "D", "E")

# What a row is expected to do to dev perplexity, against the base (the paper's choice).
Expect = Literal["base better", "similar", "row better"]
EXPECTATIONS: tuple[str, ...] = ("base better", "similar", "row better")

# The paper's Table 3 dev perplexities (EN-DE newstest2013), by the key of the row that scales
# the same variation to the base: A2/A3/A4 are h = 4/16/32 of the paper's 8, B1/B2 are d_k = 16/32
# of its 64, C1-C3 are N = 2/4/8 of its 6, C4/C5 d_model 256/1024, C6/C7 d_ff 1024/4096.
PAPER_TABLE3_PPL: dict[str, float] = {
    "base": 4.92,
    "A1": 5.29, "A2": 5.00, "A3": 4.91, "A4": 5.01,
    "B1": 5.16, "B2": 5.01,
    "C1": 6.11, "C2": 5.19, "C3": 4.88, "C4": 5.75, "C5": 4.66, "C6": 5.12, "C7": 4.75,
    "D1": 5.77, "D2": 4.95, "D3": 4.67, "D4": 5.47,
    "E1": 4.92,
}  # fmt: skip
SIMILAR_PPL = 0.05  # a Table 3 row within this of the paper's base is "similar"


def paper_expectation(key: str) -> Expect:
    """What the paper's Table 3 shows for row `key`'s perplexity against its base (4.92).

    Label smoothing is the case to read carefully: eps_ls = 0 (D3) has the *lower* perplexity,
    4.67 (smoothing makes the model less sure, which perplexity punishes) though the lower BLEU.
    """
    d = PAPER_TABLE3_PPL[key] - PAPER_TABLE3_PPL["base"]
    if abs(d) <= SIMILAR_PPL + 1e-9:
        return "similar"
    return "base better" if d > 0 else "row better"


@dataclass(frozen=True)
class Row:
    """One variation: `key` is unique within all studies (it names the row's directory)."""

    key: str
    group: str  # "base", "A".."E" for Table 3, "Q" for the questions
    description: str
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields that change
    optim: dict[str, Any] = field(default_factory=dict)  # OptimConfig fields that change
    expect: Expect = "base better"  # dev perplexity of the row against the base's
    question: str = ""  # the learners' question a "why" row answers

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
    candidates = [
        (key, what, None if row is None else replace(row, expect=paper_expectation(key)))
        for key, what, row in candidates
    ]
    return _keep_distinct(base, candidates)


# The learners' "why" questions, in the order of the rows (Q1-Q5 first, as they have always been).
QUESTIONS: dict[str, str] = {
    "scale": "why divide by sqrt(d_k)?",
    "qk": "why separate W^Q and W^K?",
    "norm_position": "why LayerNorm after the residual?",
    "smoothing": "why label smoothing?",
    "positions": "why positional encodings?",
    "other_positions": "what else than sinusoids can give positions?",
    "heads": "why several heads?",
    "scoring": "why dot-product rather than additive attention?",
    "head_size": "why does each head have a reduced dimension?",
    "embedding_scale": "why multiply the embeddings by sqrt(d_model)?",
    "residual": "why residual connections?",
    "norm": "why LayerNorm and not BatchNorm?",
    "ffn": "what do the feed-forward network and its activation do?",
    "padding": "how is padding masked?",
}

PADDING_NOTE = (
    f"padding ({QUESTIONS['padding']}): no row. The key padding mask is not a design decision "
    "that can be reversed: without it a sentence's representation would depend on how much "
    "padding its batch happened to have, so the model would compute a different function of the "
    "same sentence in every batch and at decoding time. Instead the base row's final weights "
    "are measured with and without the mask (by_question.md, transformer.study.padding)."
)


def question_rows(base: RunConfig) -> tuple[list[Row], list[str]]:
    """The "why" rows the paper does not have; each reverses one design decision of the base.

    Q1-Q5 keep their meaning (unscaled dot products, shared W^Q = W^K, the other norm position,
    no label smoothing, no positional encoding); Q6-Q20 follow. The notes say which questions
    have no row (padding) and which rows this base leaves out.
    """
    m = base_sizes(base)
    d, h = m.d_model, m.n_heads
    other_norm = "pre" if m.norm_position == "post" else "post"
    layers = {
        "n_encoder_layers": 2 * m.n_encoder_layers,
        "n_decoder_layers": 2 * m.n_decoder_layers,
    }
    deeper = f"N={2 * m.n_encoder_layers}" + (
        "" if m.n_encoder_layers == m.n_decoder_layers else f"+{2 * m.n_decoder_layers}"
    )
    Q = QUESTIONS
    specs: list[tuple[str, str, str, dict[str, Any], dict[str, Any], Expect]] = [
        # key, question, description, model changes, optim changes, expectation
        ("Q1", Q["scale"], "unscaled dot products (no 1/sqrt(d_k))",
         {"scale_attention": False}, {}, "base better"),
        # The paper gives no number. With W^Q = W^K a token's score for itself, |W x_i|^2, tends
        # to be its largest (the Reformer, which shares them, masks it; this model does not).
        ("Q2", Q["qk"], "one shared projection for queries and keys",
         {"shared_query_key": True}, {}, "base better"),
        # Pre-norm trains more easily, post-norm ends slightly better when it trains (Xiong et
        # al. 2020, Liu et al. 2020); with warmup and a few layers they come out close.
        ("Q3", Q["norm_position"], f"{other_norm}-norm instead of {m.norm_position}-norm",
         {"norm_position": other_norm}, {}, "similar"),
        # Table 3 (D): eps_ls = 0 has the lower perplexity (4.67 against 4.92), lower BLEU.
        ("Q4", Q["smoothing"], "no label smoothing (eps_ls=0)",
         {}, {"label_smoothing": 0.0}, "row better"),
        ("Q5", Q["positions"], "no positional encoding at all",
         {"positional": "none"}, {}, "base better"),
        # Table 3 (A): one head is the worst of the row (5.29).
        ("Q6", Q["heads"], f"one head of d_k=d_v={d} (the same cost)",
         {"n_heads": 1, "d_k": d, "d_v": d}, {}, "base better"),
        # Section 3.2.1: similar for small d_k; dot products are faster.
        ("Q7", Q["scoring"], "additive attention (w^T tanh(q + k))",
         {"attention": "additive"}, {}, "similar"),
        # The reduction keeps the cost of one full head; h full heads cost h times as much.
        ("Q8", Q["head_size"], f"{h} heads of d_k=d_v={d} ({h}x the attention cost)",
         {"d_k": d, "d_v": d}, {}, "similar"),
        # Embeddings start at std d_model^-0.5: unscaled, the sinusoids (amplitude 1) drown them.
        ("Q9", Q["embedding_scale"], "embeddings not multiplied by sqrt(d_model)",
         {"scale_embedding": False}, {}, "base better"),
        # Table 3 (E): learned positions give nearly identical results (4.92).
        ("Q10", Q["other_positions"], "learned positional embeddings",
         {"positional": "learned"}, {}, "similar"),
        # Shaw et al. 2018, Su et al. 2021, Press et al. 2022: as good or slightly better.
        ("Q11", Q["other_positions"], "relative positions in attention (Shaw et al.)",
         {"positional": "relative"}, {}, "similar"),
        ("Q12", Q["other_positions"], "rotary positions (RoPE)",
         {"positional": "rotary"}, {}, "similar"),
        ("Q13", Q["other_positions"], "ALiBi position penalties",
         {"positional": "alibi"}, {}, "similar"),
        ("Q14", Q["residual"], "no residual connections",
         {"residual": False}, {}, "base better"),
        # The ResNet argument: with residuals a deeper stack is better (Table 3 (C): more
        # layers, lower perplexity); without them the deeper stack is worse, not better.
        ("Q15", Q["residual"], f"twice as deep ({deeper}), with residuals",
         layers, {}, "row better"),
        ("Q16", Q["residual"], f"twice as deep ({deeper}), no residual connections",
         {**layers, "residual": False}, {}, "base better"),
        # BatchNorm statistics over a batch of padded sentences of varied lengths are noisy.
        ("Q17", Q["norm"], "BatchNorm instead of LayerNorm",
         {"norm": "batch"}, {}, "base better"),
        # Zhang & Sennrich 2019: RMSNorm matches LayerNorm.
        ("Q18", Q["norm"], "RMSNorm instead of LayerNorm",
         {"norm": "rms"}, {}, "similar"),
        ("Q19", Q["ffn"], "GELU instead of ReLU in the feed-forward network",
         {"activation": "gelu"}, {}, "similar"),
        # Table 3 (C): halving d_ff already costs perplexity (5.12).
        ("Q20", Q["ffn"], f"almost no feed-forward network (d_ff={max(1, d // 4)})",
         {"d_ff": max(1, d // 4)}, {}, "base better"),
    ]  # fmt: skip
    candidates: list[tuple[str, str, Row | None]] = [
        (key, question, Row(key, "Q", text, model, optim, expect, question))
        for key, question, text, model, optim, expect in specs
    ]
    rows, notes = _keep_distinct(base, candidates)
    return rows, [PADDING_NOTE, *notes]


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

    For table3, groups are letters A-E; for questions, row keys Q1-Q20; "base" alone gives only
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
