"""A study's outputs: results.csv, a Markdown table laid out like the paper's Table 3, and a plot.

Written atomically into the study's output directory: results.csv, results.md, results.png.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from transformer.io import atomic_write_bytes, atomic_write_text
from transformer.study.runner import Budget, RowOutcome

CSV_FIELDS = [
    "key", "group", "description", "status",
    "n_encoder_layers", "n_decoder_layers", "d_model", "d_ff", "n_heads", "d_k", "d_v",
    "dropout", "label_smoothing", "positional", "norm_position", "scale_attention",
    "shared_query_key", "updates", "epochs", "train_minutes", "parameters",
    "valid_loss", "valid_ppl", "valid_bleu", "error",
]  # fmt: skip

TITLES = {
    "table3": "Variations on the Transformer architecture (the paper's Table 3)",
    "questions": "Why is the Transformer built this way? One design decision reversed per row",
}


def _flat(outcome: RowOutcome) -> dict[str, Any]:
    """One CSV row: the model sizes, label smoothing, budget used and the results."""
    row = outcome.row
    flat: dict[str, Any] = {"key": row.key, "group": row.group, "description": row.description}
    if outcome.result is None:
        return {**flat, "status": "failed", "error": outcome.error}
    r = outcome.result
    flat.update({k: r["model"].get(k) for k in CSV_FIELDS if k in r["model"]})
    flat["label_smoothing"] = r["config"]["optim"]["label_smoothing"]
    for k in ("updates", "epochs", "train_minutes", "parameters", "valid_loss", "valid_ppl"):
        flat[k] = r[k]
    flat["valid_bleu"] = r.get("valid_bleu")
    flat["status"] = "kept" if outcome.skipped else "trained"
    return flat


def results_csv(outcomes: list[RowOutcome]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for outcome in outcomes:
        flat = _flat(outcome)
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


def markdown_table(
    study: str, outcomes: list[RowOutcome], budget: Budget, notes: list[str], context: str = ""
) -> str:
    """The paper's layout: a blank cell means "as in the base row"; then the results."""
    flats = [_flat(o) for o in outcomes]
    base = next((f for f in flats if f["key"] == "base" and f["status"] != "failed"), None)
    header = [
        "row", *(c for c, _ in _COLUMNS), "change", "updates", "dev PPL", "dev BLEU",
        "params ×10⁶",
    ]  # fmt: skip
    lines = [
        f"## {TITLES[study]}",
        "",
        f"Budget: {budget} per row. {context}".strip(),
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
        if f["status"] == "failed":
            cells = [label, *[""] * len(_COLUMNS), f["description"], "", "failed", "failed", ""]
        else:
            sizes = []
            for _, get in _COLUMNS:
                value = str(get(f))
                same = base is not None and f is not base and value == str(get(base))
                sizes.append("" if same else value)
            bleu = f["valid_bleu"]
            cells = [
                label,
                *sizes,
                "" if f["group"] == "base" else f["description"],
                str(f["updates"]),
                f"{f['valid_ppl']:.2f}",
                "" if bleu is None else f"{bleu:.1f}",
                _millions(f["parameters"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [f for f in flats if f["status"] == "failed"]
    if failed:
        lines += ["", "Failed rows:", ""]
        lines += [f"- {f['key']} ({f['description']}): {f['error']}" for f in failed]
    if notes:
        lines += ["", "Left out:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_png(study: str, outcomes: list[RowOutcome], budget: Budget) -> bytes:
    """Horizontal bars of dev BLEU and dev perplexity per row, the base row marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [o for o in outcomes if o.result is not None]
    labels = [
        "base" if o.row.group == "base" else f"{o.row.key}: {o.row.description}" for o in done
    ]
    bleu = [o.result.get("valid_bleu") or 0.0 for o in done]  # type: ignore[union-attr]
    ppl = [o.result["valid_ppl"] for o in done]  # type: ignore[index]
    colors = ["tab:red" if o.row.group == "base" else "tab:blue" for o in done]
    height = max(2.5, 0.38 * len(done) + 1.2)
    fig, axes = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    y = list(range(len(done)))[::-1]
    for ax, values, name in ((axes[0], bleu, "dev BLEU (beam 4)"), (axes[1], ppl, "dev PPL")):
        ax.barh(y, values, color=colors)
        for yi, v in zip(y, values):
            ax.text(v, yi, f" {v:.1f}" if name.startswith("dev BLEU") else f" {v:.2f}",
                    va="center", fontsize=8)  # fmt: skip
        base = next((v for o, v in zip(done, values) if o.row.group == "base"), None)
        if base is not None:
            ax.axvline(base, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xlabel(name + (" (higher is better)" if "BLEU" in name else " (lower is better)"))
        ax.grid(axis="x", alpha=0.3)
    if ppl and max(ppl) > 4 * min(ppl):  # a diverged row would squash the others
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        axes[1].set_xscale("log")
        axes[1].set_xlim(left=min(ppl) / 1.5)
        axes[1].xaxis.set_major_formatter(ScalarFormatter())
        axes[1].xaxis.set_minor_formatter(NullFormatter())
        axes[1].set_xlabel("dev PPL, log scale (lower is better)")
    axes[0].set_yticks(y)

    axes[0].set_yticklabels(labels, fontsize=8)
    fig.suptitle(f"{TITLES[study]}\n{budget} per row; base in red", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_report(
    out: Path,
    study: str,
    outcomes: list[RowOutcome],
    budget: Budget,
    notes: list[str],
    context: str = "",
) -> list[Path]:
    """Write OUT/results.csv, results.md and results.png; returns their paths."""
    paths = [out / "results.csv", out / "results.md", out / "results.png"]
    atomic_write_text(paths[0], results_csv(outcomes))
    atomic_write_text(paths[1], markdown_table(study, outcomes, budget, notes, context))
    atomic_write_bytes(paths[2], plot_png(study, outcomes, budget))
    return paths
