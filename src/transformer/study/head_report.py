"""The report of `transformer study heads`: heads.csv, heads.md and the PNG plots.

Layers and heads are numbered from 1 here, as in `transformer visualize`. Shares are fractions in
the CSV and percentages in the Markdown. Plots are drawn on `matplotlib.figure.Figure` objects
directly (never through pyplot), so that no backend is switched.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transformer.study.head_stats import (
    KIND_TITLES,
    KINDS,
    STATISTIC,
    STATISTICS,
    Statistic,
    statistics_of,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from transformer.translator import AttentionMaps

DPI = 110
DOMINANT = 0.5  # a share at least this large is "what the head does"
DOMINANT_PUNCTUATION = 0.4  # punctuation is rarer than a neighbour: a lower bar
NEAR_DIAGONAL = 1.5  # cross attention: mean distance from the diagonal, in source tokens
BROAD, SHARP = 0.75, 0.25  # entropy as a fraction of the uniform yardstick
PLOT_SHARES = {
    "previous": "the previous token",
    "same": "its own token",
    "next": "the next token",
    "punctuation": "punctuation",
    "eos": "{eos}",
}
PICK = 0.2  # the least share of a pattern worth drawing as an example
TOP = 5  # heads listed as costing the most and the least BLEU
HEAD_NAMES = {
    "encoder_self": "encoder layer {l} head {h}",
    "decoder_self": "decoder self-attention layer {l} head {h}",
    "cross": "cross-attention layer {l} head {h}",
}
SHORT_NAMES = {
    "encoder_self": "enc L{l} H{h}",
    "decoder_self": "dec L{l} H{h}",
    "cross": "x L{l} H{h}",
}


@dataclass
class HeadRow:
    """One head: kind, layer and head (1-based), its statistics (NaN where not defined for its
    kind) and, after the ablation, the corpus BLEU without it and the change from the whole
    model's (negative: the head helps)."""

    kind: str
    layer: int
    head: int
    stats: dict[str, float]
    bleu_without: float | None = None
    delta: float | None = None

    @property
    def name(self) -> str:
        return HEAD_NAMES[self.kind].format(l=self.layer, h=self.head)

    @property
    def short(self) -> str:
        return SHORT_NAMES[self.kind].format(l=self.layer, h=self.head)


@dataclass
class ReportContext:
    """What the numbers were measured on, for the report's header."""

    model: str
    src: str
    ref: str
    sentences: int
    decoding: str  # e.g. "beam 4, alpha 0.6"
    bleu: float
    bleu_signature: str
    layers: dict[str, int]
    heads: int
    uniform_entropy: dict[str, float]  # kind -> mean ln(visible keys), the entropy yardstick
    ablation: bool
    seconds: float = 0.0
    example: str = ""  # the source sentence of the example attention maps
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- the CSV


def heads_csv(rows: Sequence[HeadRow]) -> str:
    """One line per head: kind, layer, head, every statistic, BLEU without it and the change."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["kind", "layer", "head", *(s.name for s in STATISTICS), "bleu_without", "bleu_delta"]
    )
    for r in rows:
        values = [_csv_number(r.stats.get(s.name)) for s in STATISTICS]
        writer.writerow(
            [r.kind, r.layer, r.head, *values, _csv_number(r.bleu_without), _csv_number(r.delta)]
        )
    return buffer.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


# ------------------------------------------------------------------------------ plain words


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%"


def dominant_pattern(row: HeadRow) -> tuple[str, float] | None:
    """(statistic, share) of the positional or token pattern that holds most of the head's
    attention, if one holds at least half of it (punctuation: 40%); else None."""
    found = []
    for name in ("previous", "same", "next", "eos", "punctuation"):
        value = row.stats.get(name, math.nan)
        bar = DOMINANT_PUNCTUATION if name == "punctuation" else DOMINANT
        if not math.isnan(value) and value >= bar:
            found.append((value, name))
    if not found:
        return None
    value, name = max(found)
    return name, value


def describe(row: HeadRow, uniform_entropy: float) -> str:
    """What a head does, in words (its dominant pattern, else its spread), without its name."""
    pattern = dominant_pattern(row)
    entropy, distance = row.stats["entropy"], row.stats["distance"]
    if pattern is not None:
        name, share = pattern
        what = {
            "previous": f"attends to the previous token {_percent(share)} of the time",
            "same": f"attends to its own token {_percent(share)} of the time",
            "next": f"attends to the next token {_percent(share)} of the time",
            "punctuation": f"puts {_percent(share)} of its attention on punctuation",
            "eos": f"puts {_percent(share)} of its attention on "
            + ("BOS" if row.kind == "decoder_self" else "the end-of-sentence token (EOS)"),
        }[name]
    elif row.kind == "cross" and distance <= NEAR_DIAGONAL:
        what = (
            f"stays near the diagonal: on average {distance:.1f} source tokens from the "
            "position proportional to the target's (a roughly monotone alignment)"
        )
    elif not math.isnan(uniform_entropy) and entropy >= BROAD * uniform_entropy:
        what = (
            f"spreads its attention widely (entropy {entropy:.2f} nats; even spreading: "
            f"{uniform_entropy:.2f})"
        )
    elif not math.isnan(uniform_entropy) and entropy <= SHARP * uniform_entropy:
        what = (
            f"focuses sharply (entropy {entropy:.2f} nats), but on none of the positions or "
            f"token types measured here (mean distance {distance:.1f} tokens)"
        )
    else:
        what = (
            f"shows no single pattern (mean distance {distance:.1f} tokens, entropy "
            f"{entropy:.2f} nats)"
        )
    return what


def _boundary(kind: str) -> str:
    return "BOS" if kind == "decoder_self" else "EOS"


def reading(row: HeadRow, uniform_entropy: float) -> str:
    """One sentence on what a head does, e.g. "encoder layer 1 head 2 attends to the previous
    token 71% of the time", and what removing it costs when measured."""
    text = f"{row.name} {describe(row, uniform_entropy)}"
    if row.delta is not None:
        text += f"; without it BLEU changes by {row.delta:+.2f}"
    return text


def distinctive_heads(
    rows: Sequence[HeadRow], uniform_entropy: dict[str, float], limit: int = 8
) -> list[tuple[HeadRow, str]]:
    """A few heads worth drawing, each with why: the strongest of each pattern (previous, own,
    next token, boundary, punctuation; at least 20%), the one whose removal costs most BLEU, the
    cross-attention head closest to the diagonal (within 1.5 tokens), the sharpest and the
    broadest."""
    picks: list[tuple[HeadRow, str]] = []

    def pick(candidates: list[HeadRow], key, why) -> None:
        candidates = [r for r in candidates if not math.isnan(key(r))]
        if candidates:
            best = max(candidates, key=key)
            if all(best is not r for r, _ in picks):
                picks.append((best, why(best)))

    for name, words in (
        ("previous", "previous token"),
        ("same", "own token"),
        ("next", "next token"),
        ("eos", "{eos}"),
        ("punctuation", "punctuation"),
    ):
        defined = [r for r in rows if r.kind in STATISTIC[name].kinds and r.stats[name] >= PICK]
        pick(
            defined,
            lambda r, n=name: r.stats[n],
            lambda r, n=name, w=words: f"{w.format(eos=_boundary(r.kind))} {_percent(r.stats[n])}",
        )

    def ratio(r: HeadRow) -> float:
        u = uniform_entropy.get(r.kind, math.nan)
        return r.stats["entropy"] / u if u and not math.isnan(u) else math.nan

    ablated = [r for r in rows if r.delta is not None]
    pick(ablated, lambda r: -r.delta, lambda r: f"costliest, BLEU {r.delta:+.2f}")  # type: ignore[operator]
    cross = [r for r in rows if r.kind == "cross" and r.stats["distance"] <= NEAR_DIAGONAL]
    pick(
        cross,
        lambda r: -r.stats["distance"],
        lambda r: f"diagonal, {r.stats['distance']:.1f} tokens off",
    )
    pick(list(rows), lambda r: -ratio(r), lambda r: f"sharpest, entropy {r.stats['entropy']:.2f}")
    pick(list(rows), ratio, lambda r: f"broadest, entropy {r.stats['entropy']:.2f}")
    return picks[:limit]


# ------------------------------------------------------------------------------- Markdown


def _cell(stat: Statistic, value: float) -> str:
    if math.isnan(value):
        return "–"
    if stat.unit == "share":
        return _percent(value)
    return f"{value:+.2f}" if stat.name == "offset" else f"{value:.2f}"


def heads_markdown(rows: Sequence[HeadRow], context: ReportContext) -> str:
    """The report: header, one table per attention kind, the heads that matter most and least,
    and a plain-words reading of every head."""
    n_heads = len(rows)
    layers = context.layers
    lines = [
        "# What each attention head does",
        "",
        f"Model `{context.model}`: {layers['encoder_self']} encoder and "
        f"{layers['decoder_self']} decoder layers of {context.heads} heads, "
        f"{n_heads} heads in all (encoder self-, decoder self- and cross attention). "
        f"{context.sentences} sentences of `{context.src}`, references `{context.ref}`, "
        f"decoded with {context.decoding}.",
        "",
        f"Corpus BLEU of the whole model: **{context.bleu:.2f}** (sacreBLEU "
        f"`{context.bleu_signature}`).",
        "",
        "Statistics come from teacher-forced passes over the model's own best translations, "
        "as means over query tokens (every query position weighs the same, so a sentence "
        "counts in proportion to its length). Source positions are the subwords + EOS; decoder "
        "positions are BOS + the translation; the BOS query of decoder self-attention, which "
        "can see only itself, is left out. Layers and heads are numbered from 1.",
        "",
    ]
    lines += [f"- **{s.heading}**: {s.meaning}." for s in STATISTICS]
    if context.ablation:
        lines += [
            "- **BLEU without**: corpus BLEU with that head alone masked at inference (its "
            "output zeroed before W^O, every other head intact); **Δ BLEU**: that minus the "
            "whole model's BLEU (negative: the head helps).",
        ]
    for kind in KINDS:
        stats = statistics_of(kind)
        kind_rows = [r for r in rows if r.kind == kind]
        lines += ["", f"## {KIND_TITLES[kind]}", ""]
        header = ["layer", "head", *(_heading(s) for s in stats)]
        if context.ablation:
            header += ["BLEU without", "Δ BLEU"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join("---:" for _ in header) + " |")
        for r in kind_rows:
            cells = [str(r.layer), str(r.head), *(_cell(s, r.stats[s.name]) for s in stats)]
            if context.ablation:
                cells += [_number(r.bleu_without), _number(r.delta, signed=True)]
            lines.append("| " + " | ".join(cells) + " |")
        uniform = context.uniform_entropy.get(kind, math.nan)
        if not math.isnan(uniform):
            lines += [
                "",
                f"A head spreading its attention evenly over the keys it can see would have an "
                f"entropy of {uniform:.2f} nats here.",
            ]
    if context.ablation:
        ranked = sorted(rows, key=lambda r: r.delta)  # type: ignore[arg-type, return-value]
        top = min(TOP, len(ranked))
        lines += ["", "## The heads that matter most and least", ""]
        lines += [f"Removing one of these {top} heads costs the most BLEU:", ""]
        lines += _ranking(ranked[:top], context)
        lines += ["", f"Removing one of these {top} costs the least (or even helps):", ""]
        lines += _ranking(ranked[::-1][:top], context)
    lines += ["", "## In plain words", ""]
    lines += [f"- {reading(r, context.uniform_entropy.get(r.kind, math.nan))}." for r in rows]
    patterned = sum(1 for r in rows if dominant_pattern(r) is not None)
    lines += [
        "",
        f"{patterned} of {n_heads} heads put at least half of their attention on one "
        "position or token type (previous, own or next token, EOS/BOS) or 40% on punctuation.",
    ]
    if context.example:
        lines += ["", f"Example attention maps (heads_examples.png) are of: {context.example}"]
    if context.files:
        lines += ["", "Files: " + ", ".join(f"`{f}`" for f in context.files) + "."]
    if context.seconds:
        took = context.seconds
        lines += [
            "",
            f"Measured in {took / 60:.1f} min." if took >= 60 else f"Measured in {took:.0f} s.",
        ]
    return "\n".join(lines) + "\n"


def _heading(stat: Statistic) -> str:
    unit = {"tokens": " (tokens)", "nats": " (nats)", "share": ""}[stat.unit]
    return stat.heading + unit


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _ranking(rows: Sequence[HeadRow], context: ReportContext) -> list[str]:
    lines = ["| head | Δ BLEU | BLEU without | what it does |", "| --- | ---: | ---: | --- |"]
    for r in rows:
        words = describe(r, context.uniform_entropy.get(r.kind, math.nan))
        lines.append(f"| {r.name} | {r.delta:+.2f} | {r.bleu_without:.2f} | {words} |")
    return lines


# ---------------------------------------------------------------------------------- plots


def heatmap_figure(kind: str, rows: Sequence[HeadRow], context: ReportContext) -> Figure:
    """One panel per statistic of `kind` (and the BLEU change): layers x heads, values written in."""
    import numpy as np
    from matplotlib.figure import Figure

    stats: list[Statistic | None] = list(statistics_of(kind))
    if context.ablation:
        stats.append(None)  # the BLEU change
    n_layers, n_heads = context.layers[kind], context.heads
    ncols = min(3, len(stats))
    nrows = math.ceil(len(stats) / ncols)
    panel_w, panel_h = 1.0 + 0.55 * n_heads, 0.9 + 0.45 * n_layers
    fig = Figure(figsize=(ncols * (panel_w + 1.4), nrows * (panel_h + 0.6) + 0.6))
    fig.set_layout_engine("constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    by_position = {(r.layer, r.head): r for r in rows if r.kind == kind}
    boundary = _boundary(kind)
    for ax, stat in zip(axes, stats):
        values = np.full((n_layers, n_heads), np.nan)
        for (layer, head), r in by_position.items():
            value = r.stats[stat.name] if stat is not None else r.delta
            values[layer - 1, head - 1] = np.nan if value is None else value
        finite = values[np.isfinite(values)]
        limit = float(np.abs(finite).max()) if finite.size else 1.0
        limit = limit or 1.0
        diverging = stat is None or stat.name == "offset"
        if stat is None:
            cmap, lo, hi, title, fmt = "RdBu", -limit, limit, "Δ BLEU without the head", "{:+.1f}"
        elif stat.unit == "share":
            cmap, lo, hi, fmt = "viridis", 0.0, 1.0, "{:.0%}"
            title = "share on " + PLOT_SHARES[stat.name].format(eos=boundary)
        elif stat.name == "offset":
            cmap, lo, hi, title, fmt = "RdBu_r", -limit, limit, "offset (tokens)", "{:+.1f}"
        else:
            cmap, lo, hi, fmt = "magma", 0.0, limit, "{:.2f}"
            title = f"{stat.heading} ({stat.unit})"
        image = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                shade = (v - lo) / (hi - lo) if hi > lo else 0.5
                dark = abs(shade - 0.5) > 0.3 if diverging else shade < 0.55
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(n_heads), [str(h + 1) for h in range(n_heads)], fontsize=7)
        ax.set_yticks(range(n_layers), [str(layer + 1) for layer in range(n_layers)], fontsize=7)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.85)
    for ax in axes[len(stats) :]:
        ax.set_axis_off()
    fig.suptitle(
        f"{KIND_TITLES[kind]}: every head, means over {context.sentences} sentences",
        fontsize=10,
    )
    return fig


def examples_figure(
    maps: AttentionMaps, picks: Sequence[tuple[HeadRow, str]], caption: str = ""
) -> Figure:
    """The attention maps of the picked heads on one sentence, one panel each (why in its
    title); decoder self-attention cells a query cannot see are grey."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from transformer.visualize import readable_token

    axes_tokens = {
        "encoder_self": (maps.source_tokens, maps.source_tokens, "source", "source"),
        "decoder_self": (
            maps.decoder_tokens,
            maps.decoder_tokens,
            "decoder input",
            "decoder input",
        ),
        "cross": (maps.target_tokens, maps.source_tokens, "predicted token", "source"),
    }
    n = max(1, len(picks))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    longest = max(len(maps.source_tokens), len(maps.decoder_tokens))
    font = 7 if longest <= 25 else 5
    size = max(2.5, longest * font / 72 * 1.7) + 1.2
    fig = Figure(figsize=(ncols * size, nrows * size + 0.4 + 0.2 * caption.count("\n")))
    fig.set_layout_engine("constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    image = None
    for ax, (row, why) in zip(axes, picks):
        weights = getattr(maps, row.kind)[row.layer - 1, row.head - 1].float().numpy()  # (Q, K)
        row_tokens, col_tokens, row_label, col_label = axes_tokens[row.kind]
        if row.kind == "decoder_self":
            hidden = np.triu(np.ones(weights.shape, dtype=bool), k=1)
            weights = np.ma.masked_array(weights, mask=hidden)
        image = ax.imshow(weights, cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal")
        ax.set_title(f"{row.short}: {why}", fontsize=8, parse_math=False)
        ax.set_xticks(range(len(col_tokens)), [readable_token(t) for t in col_tokens],
                      rotation=90, fontsize=font, parse_math=False)  # fmt: skip
        ax.set_yticks(range(len(row_tokens)), [readable_token(t) for t in row_tokens],
                      fontsize=font, parse_math=False)  # fmt: skip
        ax.tick_params(length=0)
        ax.set_xlabel(f"key: {col_label}", fontsize=7)
        ax.set_ylabel(f"query: {row_label}", fontsize=7)
    for ax in axes[len(picks) :]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes[: len(picks)], shrink=0.6, label="attention weight")
    fig.suptitle("Distinctive heads on one sentence" + caption, fontsize=9, parse_math=False)
    return fig


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """A figure as PNG bytes (to be written atomically)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
