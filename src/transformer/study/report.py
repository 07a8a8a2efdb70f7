"""A study's outputs: results.csv, a Markdown table laid out like the paper's Table 3, a bar plot
of the results and a plot of the learning curves.

Written atomically into the study's output directory: results.csv, results.md, results.png and
curves.png, and for the questions by_question.md with one learning-curve plot per question. Every number is the mean over a row's finished seeds; the spread over seeds (min, max,
and the sample standard deviation from 3 seeds on) is given beside it, and `verdict` compares each
row with the base and with what the paper leads one to expect.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformer.io import atomic_write_bytes, atomic_write_text
from transformer.study.rows import PAPER_TABLE3_PPL, QUESTIONS
from transformer.study.runner import Budget, RowOutcome, Spread, spread

CSV_FIELDS = [
    "key", "group", "description", "question", "expect", "verdict", "status", "seeds",
    "n_encoder_layers", "n_decoder_layers", "d_model", "d_ff", "n_heads", "d_k", "d_v",
    "dropout", "label_smoothing", "positional", "norm_position", "norm", "activation",
    "attention", "scale_attention", "shared_query_key", "scale_embedding", "residual",
    "updates", "epochs", "train_minutes", "parameters", "valid_loss",
    "valid_ppl", "valid_ppl_min", "valid_ppl_max", "valid_ppl_std",
    "valid_bleu", "valid_bleu_min", "valid_bleu_max", "valid_bleu_std", "error",
]  # fmt: skip

TITLES = {
    "table3": "Variations on the Transformer architecture (the paper's Table 3)",
    "questions": "Why is the Transformer built this way? One design decision reversed per row",
}

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
WITHIN_NOISE = "within noise"
NOT_MEASURED = "noise not measured"


def verdict(row_ppl: Sequence[float], base_ppl: Sequence[float], expect: str) -> str:
    """What a row's dev perplexities over seeds say about its expectation, against the base's.

    The rule: with fewer than two base seeds no spread is measured: "noise not measured".
    Otherwise d = mean(row) - mean(base) and noise = the larger range (max - min) over seeds of
    the base and of the row (a row with one seed: the base's range). A row expected "similar" is
    "reproduced" if |d| <= noise, else "contradicted". Any other row is "within noise" if
    |d| <= noise; else the observed direction, "base better" if d > 0 (the base has the lower
    perplexity) or "row better" if d < 0, is "reproduced" when it is the expected one and
    "contradicted" when not. A row without a result has no verdict ("").
    """
    if not row_ppl:
        return ""
    if len(base_ppl) < 2:
        return NOT_MEASURED
    row, base = spread(row_ppl), spread(base_ppl)
    assert row is not None and base is not None
    d = row.mean - base.mean
    noise = max(base.range, row.range)
    if expect == "similar":
        return REPRODUCED if abs(d) <= noise else CONTRADICTED
    if abs(d) <= noise:
        return WITHIN_NOISE
    observed = "base better" if d > 0 else "row better"
    return REPRODUCED if observed == expect else CONTRADICTED


def verdicts(outcomes: list[RowOutcome]) -> dict[str, str]:
    """Every row's `verdict` against the row keyed "base" ("" for the base itself)."""
    base = next((o for o in outcomes if o.row.key == "base"), None)
    base_ppl = [r["valid_ppl"] for r in base.results] if base is not None else []
    return {
        o.row.key: (
            ""
            if o.row.key == "base"
            else verdict([r["valid_ppl"] for r in o.results], base_ppl, o.row.expect)
        )
        for o in outcomes
    }


def training_time(outcomes: list[RowOutcome]) -> str:
    """The training time of every finished run of the study, in words (reused runs count where
    they were trained, not here)."""
    results = [r for o in outcomes for r in o.results]
    own = [r for r in results if "reused_from" not in r]
    hours = sum(r["train_minutes"] for r in own) / 60
    text = f"Training time: {hours:.2f} hours over {len(own)} run(s)"
    if len(own) < len(results):
        text += f", and {len(results) - len(own)} reused from another study"
    return text + " (the processes' wall-clock, validation and BLEU excluded)."


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _flat(outcome: RowOutcome, verdict_text: str = "") -> dict[str, Any]:
    """One CSV row: the model sizes and switches, label smoothing, budget used and the results
    (means over the finished seeds, with their spread)."""
    row = outcome.row
    flat: dict[str, Any] = {
        "key": row.key,
        "group": row.group,
        "description": row.description,
        "question": row.question,
        "expect": "" if row.key == "base" else row.expect,
        "verdict": verdict_text,
        "seeds": len(outcome.results),
        "error": outcome.error,
    }
    r = outcome.result
    if r is None:  # no seed finished: failed, or not trained yet (--report-only)
        return {**flat, "status": "failed" if outcome.error is not None else "not trained"}
    flat.update({k: r["model"].get(k) for k in CSV_FIELDS if k in r["model"]})
    flat["label_smoothing"] = r["config"]["optim"]["label_smoothing"]
    for k in ("updates", "epochs", "parameters"):
        flat[k] = r[k]
    results = outcome.results
    flat["train_minutes"] = _mean([x["train_minutes"] for x in results])
    flat["valid_loss"] = _mean([x["valid_loss"] for x in results])
    for name, s in (("valid_ppl", outcome.ppl), ("valid_bleu", outcome.bleu)):
        flat[name] = None if s is None else s.mean
        flat[f"{name}_spread"] = s
        if s is not None and s.n >= 2:
            flat[f"{name}_min"], flat[f"{name}_max"], flat[f"{name}_std"] = s.min, s.max, s.std
    if outcome.error is not None:
        flat["status"] = "failed"
    else:
        flat["status"] = "kept" if outcome.skipped else "trained"
    return flat


def results_csv(outcomes: list[RowOutcome]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    found = verdicts(outcomes)
    for outcome in outcomes:
        flat = _flat(outcome, found[outcome.row.key])
        writer.writerow({k: _csv_value(flat.get(k)) for k in CSV_FIELDS})
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


# The paper's columns: (heading, how to read it from a flattened row).
_COLUMNS: list[tuple[str, Any]] = [
    (
        "N",
        lambda f: (
            f"{f['n_encoder_layers']}"
            if f["n_encoder_layers"] == f["n_decoder_layers"]
            else f"{f['n_encoder_layers']}+{f['n_decoder_layers']}"
        ),
    ),
    ("d_model", lambda f: f["d_model"]),
    ("d_ff", lambda f: f["d_ff"]),
    ("h", lambda f: f["n_heads"]),
    ("d_k", lambda f: f["d_k"]),
    ("d_v", lambda f: f["d_v"]),
    ("P_drop", lambda f: f"{f['dropout']:.1f}"),
    ("ε_ls", lambda f: f"{f['label_smoothing']:.1f}"),
]


def _millions(parameters: int) -> str:
    """Parameters in millions with the paper's precision: 2.41, 36.0, 213."""
    value = parameters / 1e6
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def format_spread(s: Spread | None, digits: int) -> str:
    """A spread in words: "4.92" (one seed), "4.92 [4.90–4.95]" (two), "4.92 ± 0.03 [4.90–4.95]"
    (three or more)."""
    if s is None:
        return ""
    text = f"{s.mean:.{digits}f}"
    if s.std is not None:
        text += f" ± {s.std:.{digits}f}"
    if s.n >= 2:
        text += f" [{s.min:.{digits}f}–{s.max:.{digits}f}]"
    return text


def _result_cells(f: dict[str, Any]) -> list[str]:
    """A finished row's result columns: dev PPL, dev BLEU, parameters, seeds, expected, verdict."""
    return [
        format_spread(f["valid_ppl_spread"], 2),
        format_spread(f["valid_bleu_spread"], 1),
        _millions(f["parameters"]),
        str(f["seeds"]),
        f["expect"],
        f["verdict"],
    ]


def markdown_table(
    study: str, outcomes: list[RowOutcome], budget: Budget, notes: list[str], context: str = ""
) -> str:
    """The paper's layout: a blank cell means "as in the base row"; then the results over seeds,
    the expectation and the verdict."""
    found = verdicts(outcomes)
    flats = [_flat(o, found[o.row.key]) for o in outcomes]
    base = next((f for f in flats if f["key"] == "base" and f.get("updates") is not None), None)
    questions = study == "questions"
    header = [
        "row", *(c for c, _ in _COLUMNS), *(["question"] if questions else []), "change",
        "updates", "dev PPL", "dev BLEU", "params ×10⁶", "seeds", "expected", "verdict",
        *(["paper PPL"] if not questions else []),
    ]  # fmt: skip
    lines = [
        f"## {TITLES[study]}",
        "",
        f"Budget: {budget} per row. {context}".strip(),
        "",
        training_time(outcomes),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for f in flats:
        label = (
            "base"
            if f["group"] == "base"
            else (f"({f['group']})" if study == "table3" else f["key"])
        )
        change = "" if f["group"] == "base" else f["description"]
        asked = [f["question"]] if questions else []
        if f.get("updates") is None:  # no seed finished
            cells = [label, *[""] * len(_COLUMNS), *asked, change, "", f["status"], f["status"]]
            cells += ["", "0", f["expect"], ""]
        else:
            sizes = []
            for _, get in _COLUMNS:
                value = str(get(f))
                same = base is not None and f is not base and value == str(get(base))
                sizes.append("" if same else value)
            cells = [label, *sizes, *asked, change, str(f["updates"]), *_result_cells(f)]
        if not questions:  # the paper's own number for the same change
            paper = PAPER_TABLE3_PPL.get(f["key"])
            cells.append("" if paper is None else f"{paper:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "dev PPL and dev BLEU (beam 4, final weights): the mean over the row's seeds, ± the "
        "sample standard deviation (3 seeds or more), [min–max] (2 or more). expected: what the "
        "paper (or the literature) leads one to expect of the row's perplexity against the base. "
        "verdict: the difference of mean perplexities d = row - base against the noise, the "
        "larger range over seeds of the base and of the row: within it, a 'similar' row is "
        "reproduced and any other is within noise; beyond it, the direction observed ('base "
        "better' if d > 0) either reproduces or contradicts the expectation ('similar' rows: "
        "contradicts)."
        + (
            " paper PPL: the dev perplexity (newstest2013, per word-piece) of the paper's row that "
            "makes the same change to its base (4.92)."
            if not questions
            else ""
        )
        + (
            " With one base seed the noise is not measured (run with --seeds 3)."
            if base is not None and base["seeds"] < 2
            else ""
        ),
    ]
    if not budget.updates:
        lines += [
            "",
            "Learning curves (curves.png) need an update budget: a time budget is validated "
            "only at its end.",
        ]
    failed = [f for f in flats if f["status"] == "failed"]
    if failed:
        lines += ["", "Failed rows:", ""]
        lines += [f"- {f['key']} ({f['description']}): {f['error']}" for f in failed]
    if notes:
        lines += ["", "Left out:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _row_label(outcome: RowOutcome) -> str:
    return (
        "base" if outcome.row.group == "base" else f"{outcome.row.key}: {outcome.row.description}"
    )


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _log_axis(ax: Any, which: str, values: list[float]) -> None:
    """A log scale on `ax`'s `which` ("x" or "y") axis, labelled with plain numbers
    (perplexities read as 5.3, not 10^0.72); within a decade the minor ticks get labels
    too (else a span of less than a decade may show none)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    small = bool(values) and max(values) <= 10 * min(values)
    axis.set_minor_formatter(plain if small else NullFormatter())


def plot_png(study: str, outcomes: list[RowOutcome], budget: Budget) -> bytes:
    """Horizontal bars of dev BLEU and dev perplexity per row (means over seeds, whiskers from
    min to max), the base row marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [o for o in outcomes if o.result is not None]
    labels = [_row_label(o) for o in done]
    none = Spread(1, 0.0, 0.0, 0.0)  # a row without BLEU (no raw validation text)
    spreads: dict[str, list[Spread]] = {
        "bleu": [o.bleu or none for o in done],
        "ppl": [o.ppl or none for o in done],  # a finished row has one
    }
    colors = ["tab:red" if o.row.group == "base" else "tab:blue" for o in done]
    height = max(2.5, 0.38 * len(done) + 1.2)
    fig, axes = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    y = list(range(len(done)))[::-1]
    ppl = [s.mean for s in spreads["ppl"]]
    for ax, key, name in ((axes[0], "bleu", "dev BLEU (beam 4)"), (axes[1], "ppl", "dev PPL")):
        values = [s.mean for s in spreads[key]]
        errors = [[s.mean - s.min for s in spreads[key]], [s.max - s.mean for s in spreads[key]]]
        ax.barh(y, values, color=colors, xerr=errors if any(map(any, errors)) else None)
        for yi, s in zip(y, spreads[key]):  # beside the bar, past its whisker
            text = f" {s.mean:.1f}" if key == "bleu" else f" {s.mean:.2f}"
            ax.text(s.max, yi, text, va="center", fontsize=8)
        base = next((v for o, v in zip(done, values) if o.row.group == "base"), None)
        if base is not None:
            ax.axvline(base, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xlabel(name + (" (higher is better)" if key == "bleu" else " (lower is better)"))
        ax.grid(axis="x", alpha=0.3)
    if ppl and max(ppl) > 4 * min(ppl):  # a diverged row would squash the others
        _log_axis(axes[1], "x", ppl)
        axes[1].set_xlim(left=min(ppl) / 1.5)
        axes[1].set_xlabel("dev PPL, log scale (lower is better)")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=8)
    seeds = max((len(o.results) for o in done), default=1)
    over = f"; mean over up to {seeds} seeds, whiskers min-max" if seeds > 1 else ""
    fig.suptitle(f"{TITLES[study]}\n{budget} per row; base in red{over}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _draw_curves(ax: Any, outcomes: list[RowOutcome], bands: bool = False) -> bool:
    """Each finished row's learning curve on `ax` (mean over seeds; the base in black; with
    `bands`, the min-max range over seeds shaded); whether any was drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [(o, o.curve_spread()) for o in outcomes if o.result is not None]
    done = [(o, c) for o, c in done if c]
    colors = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]
    styles = ("-", "--", ":", "-.")
    others = 0
    for outcome, curve in done:
        steps, ppl = [u for u, _ in curve], [s.mean for _, s in curve]
        marker = "o" if len(curve) == 1 else None
        if outcome.row.key == "base":
            color, style, width, label, order = "black", "-", 2.5, "base", 3
        else:
            color = colors[(2 * others if bands else others) % len(colors)]
            style = styles[(others // len(colors)) % len(styles)]
            width, label, order = 1.2, _row_label(outcome), 2
            others += 1
        ax.plot(steps, ppl, color=color, linestyle=style, linewidth=width, marker=marker,
                label=label, zorder=order)  # fmt: skip
        if bands and max(s.n for _, s in curve) > 1:
            low, high = [s.min for _, s in curve], [s.max for _, s in curve]
            ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
    if done:
        _log_axis(ax, "y", [s.mean for _, c in done for _, s in c])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("updates")
    ax.set_ylabel("dev PPL, log scale (lower is better)")
    ax.grid(alpha=0.3, which="both")
    return bool(done)


def _seeds_note(outcomes: list[RowOutcome], budget: Budget) -> str:
    seeds = max((len(o.results) for o in outcomes), default=1)
    note = f"mean over up to {seeds} seeds; " if seeds > 1 else ""
    return note + ("" if budget.updates else "a time budget is validated only at its end; ")


def curves_png(study: str, outcomes: list[RowOutcome], budget: Budget) -> bytes:
    """Learning curves: dev perplexity against updates (log scale), the mean over each row's
    seeds; the base in black, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6))
    if _draw_curves(ax, outcomes):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"{TITLES[study]}\nlearning curves, {budget} per row; "
                 f"{_seeds_note(outcomes, budget)}base in black", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return _png(fig)


BY_QUESTION = "by_question"  # OUT/by_question.md and OUT/by_question/NAME.png


def question_groups(outcomes: list[RowOutcome]) -> list[tuple[str, str, list[RowOutcome]]]:
    """(name, question, [base, its rows]) for every question some row answers, in the order of
    `QUESTIONS` (name: its key there, e.g. "scale")."""
    base = [o for o in outcomes if o.row.key == "base"]
    groups = []
    for name, question in QUESTIONS.items():
        rows = [o for o in outcomes if o.row.question == question]
        if rows:
            groups.append((name, question, base + rows))
    return groups


def question_curves_png(question: str, outcomes: list[RowOutcome], budget: Budget) -> bytes:
    """One question's learning curves: the base and the rows that answer it, seeds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if _draw_curves(ax, outcomes, bands=True):
        ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{question}\n{budget} per row; {_seeds_note(outcomes, budget)}"
                 "shaded: min-max over seeds", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return _png(fig)


def by_question_markdown(
    outcomes: list[RowOutcome],
    budget: Budget,
    context: str = "",
    padding: dict[str, Any] | None = None,
) -> str:
    """A section per question: its rows against the base and its learning-curve plot; for the
    padding question, which has no row, the padding probe's table and plot (when measured)."""
    found = verdicts(outcomes)
    lines = [f"# {TITLES['questions']}: by question", "", f"Budget: {budget} per row. {context}"]
    header = ["row", "change", "dev PPL", "dev BLEU", "params ×10⁶", "seeds", "expected", "verdict"]
    groups = {name: group for name, _, group in question_groups(outcomes)}
    for name, question in QUESTIONS.items():
        if name == "padding" and padding is not None:
            lines += ["", f"## {question[0].upper()}{question[1:]}", ""]
            lines += padding_markdown(padding, f"{BY_QUESTION}/{name}.png")
            continue
        if name not in groups:
            continue
        lines += ["", f"## {question[0].upper()}{question[1:]}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for o in groups[name]:
            f = _flat(o, found[o.row.key])
            change = "the paper's choice" if o.row.key == "base" else f["description"]
            if f.get("updates") is None:
                cells = [o.row.key, change, f["status"], f["status"], "", "0", f["expect"], ""]
            else:
                cells = [o.row.key, change, *_result_cells(f)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![{question}]({BY_QUESTION}/{name}.png)"]
    return "\n".join(lines) + "\n"


def padding_markdown(result: dict[str, Any], image: str) -> list[str]:
    """The padding probe's table (and its plot) as Markdown lines."""
    from transformer.study.padding import CHANGED_NATS

    lines = [
        f"The base row's final weights (fp32) on the {result['sentences']} validation sentences: "
        "each target sentence's log-probability computed alone, then in padded batches with the "
        "key padding mask and without it. 'moved' is how far a sentence's log-probability "
        f"(nats) is from its value alone; 'changed': the share of sentences moved by more than "
        f"{CHANGED_NATS}.",
        "",
        "| batches | padding mask | padding share | dev PPL | largest move | mean move | changed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        mask = "" if r["masked"] is None else "yes" if r["masked"] else "**no**"
        lines.append(
            f"| {r['batches']} | {mask} | {100 * r['padding']:.0f}% | {r['ppl']:.3f} | "
            f"{r['max_change']:.2g} | {r['mean_change']:.2g} | {100 * r['changed']:.0f}% |"
        )
    return [*lines, "", f"![how is padding masked?]({image})"]


def padding_png(result: dict[str, Any]) -> bytes:
    """Each sentence's change of log-probability per token (batched minus alone) against the
    padding its source row carried, random-order batches, with and without the mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, color in (("unmasked", "tab:red"), ("masked", "tab:blue")):
        points = result["scatter"].get(name, [])
        ax.scatter(
            [p for p, _ in points], [c for _, c in points], s=6, alpha=0.5, color=color,
            label=f"{name}" + (" (the mask on: every point at 0)" if name == "masked" else ""),
        )  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("padding tokens in the sentence's source row")
    ax.set_ylabel("NLL per token, batched - alone (nats)")
    ax.set_title(
        f"how is padding masked? {result['sentences']} validation sentences in random batches "
        f"of {result['batch_size']}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _png(fig)


def write_report(
    out: Path,
    study: str,
    outcomes: list[RowOutcome],
    budget: Budget,
    notes: list[str],
    context: str = "",
    padding: dict[str, Any] | None = None,
) -> list[Path]:
    """Write OUT/results.csv, results.md, results.png and curves.png, and for the questions
    OUT/by_question.md with a plot per question in OUT/by_question/ (`padding`: the padding
    probe's result, for that question's section); returns their paths."""
    paths = [out / "results.csv", out / "results.md", out / "results.png", out / "curves.png"]
    atomic_write_text(paths[0], results_csv(outcomes))
    atomic_write_text(paths[1], markdown_table(study, outcomes, budget, notes, context))
    atomic_write_bytes(paths[2], plot_png(study, outcomes, budget))
    atomic_write_bytes(paths[3], curves_png(study, outcomes, budget))
    if study == "questions":
        paths.append(out / f"{BY_QUESTION}.md")
        atomic_write_text(paths[-1], by_question_markdown(outcomes, budget, context, padding))
        (out / BY_QUESTION).mkdir(exist_ok=True)
        for name, question, group in question_groups(outcomes):
            paths.append(out / BY_QUESTION / f"{name}.png")
            atomic_write_bytes(paths[-1], question_curves_png(question, group, budget))
        if padding is not None:
            paths.append(out / BY_QUESTION / "padding.png")
            atomic_write_bytes(paths[-1], padding_png(padding))
    return paths
