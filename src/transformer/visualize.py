"""`transformer visualize`: attention heat maps and positional encodings as PNG files.

    transformer visualize --model MODEL_DIR --text "Ein Hund rennt." --out viz/ [--beam 4 ...]

translates the text (a classification model classifies it and writes only the encoder's maps and
the positional plot), then writes into the output directory, for every layer l (1-based):

    encoder_self_layer{l}.png   encoder self-attention: source tokens x source tokens
    decoder_self_layer{l}.png   decoder self-attention: decoder inputs x decoder inputs (causal)
    cross_layer{l}.png          encoder-decoder attention: predicted tokens x source tokens
    positional_encoding.png     the positional table the model adds to its embeddings

Each attention PNG has one panel per head and a last panel with the mean over heads, all on one
colour scale from 0 to 1 (every row of weights sums to 1). Positions a query may not see (the
future, in decoder self-attention) are grey. Byte-level BPE tokens are shown as text: `▁` marks a
space (the `Ġ` of the tokenizer's alphabet), and a piece of a multi-byte character that a token
splits is shown as `\\xNN`. With several `--model` (an ensemble), the translation is the
ensemble's, and the maps and the positional table are the first model's.

The same functions work from Python or a notebook. They build `matplotlib.figure.Figure` objects
directly rather than through pyplot, so they never switch the caller's matplotlib backend:

    from transformer import Translator
    from transformer.visualize import plot_attention, plot_positional_encoding

    translator = Translator.from_pretrained("MODEL_DIR")
    result = translator.translate_nbest(["Ein Hund rennt."], attention=True)[0]
    plot_attention(result.attention_maps, "viz/", source=result.source, translation=result.text)
    plot_positional_encoding(translator.models[0], "viz/positional_encoding.png")
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from transformer.config import ConfigError, ModelConfig
from transformer.io import atomic_write
from transformer.model import Transformer, TransformerClassifier
from transformer.model.embeddings import SinusoidalPositionalEncoding
from transformer.model.positions import IN_ATTENTION

if TYPE_CHECKING:
    from transformer.classifier import Classifier, Prediction
    from transformer.translator import AttentionMaps, Translation, Translator

DPI = 110
SPACE_MARK = "▁"  # shown for a space inside a token (the tokenizer's `Ġ`)
DEFAULT_POSITIONS = 128  # positions drawn in the positional-encoding plot

# kind -> (file stem, title, row axis label, column axis label)
ATTENTION_KINDS = {
    "encoder_self": (
        "encoder_self",
        "Encoder self-attention",
        "query: source token",
        "key: source token",
    ),
    "decoder_self": (
        "decoder_self",
        "Decoder self-attention",
        "query: decoder input",
        "key: decoder input",
    ),
    "cross": (
        "cross",
        "Encoder-decoder (cross) attention",
        "query: predicted token",
        "key: source token",
    ),
}


# ------------------------------------------------------------------------------------- tokens


@cache
def _byte_of_symbol() -> dict[str, int]:
    """The inverse of the byte-level BPE alphabet: one printable character per byte value.

    Bytes that are printable Latin-1 characters (other than the space and soft hyphen) stand for
    themselves; the 68 others (controls, space, ...) are given the characters U+0100 onwards, in
    byte order, which is why a space shows up as `Ġ` (U+0120).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols = {chr(b): b for b in printable}
    taken = set(printable)
    others = [b for b in range(256) if b not in taken]
    symbols.update({chr(256 + k): b for k, b in enumerate(others)})
    return symbols


def readable_token(token: str) -> str:
    """A byte-level BPE token as readable text for a tick label.

    The token's symbols are turned back into bytes and decoded as UTF-8, so `ĠHund` becomes
    `▁Hund` and `Ã¼` becomes `ü`. Spaces show as `▁`, other invisible characters as escapes
    (`\\n`), and bytes of a multi-byte character that the token holds only part of as `\\xNN`.
    Special tokens (`<s>`, `</s>`) and anything outside the alphabet are kept as they are.
    """
    table = _byte_of_symbol()
    if not all(ch in table for ch in token):
        return token
    text = bytes(table[ch] for ch in token).decode("utf-8", errors="backslashreplace")
    return printable(text).replace(" ", SPACE_MARK)


def printable(text: str) -> str:
    """`text` with every invisible character but the space escaped (`\\n`, `\\x06`), so that a
    control character in a token or a translation shows instead of drawing as a missing glyph."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


# ---------------------------------------------------------------------------------- attention


def attention_figure(
    weights: Tensor,
    row_tokens: Sequence[str],
    col_tokens: Sequence[str],
    *,
    title: str = "",
    row_label: str = "query",
    col_label: str = "key",
    causal: bool = False,
) -> Figure:
    """Heat maps of one layer's attention: one panel per head, then the mean over heads.

    weights: (H, Q, K), row i over `row_tokens[i]`, column j over `col_tokens[j]` (tokens are
    made readable here). causal: grey out the cells above the diagonal, which a query cannot see.
    """
    heads, n_rows, n_cols = weights.shape
    if (n_rows, n_cols) != (len(row_tokens), len(col_tokens)):
        raise ValueError(
            f"weights of shape {tuple(weights.shape)} do not match {len(row_tokens)} row and "
            f"{len(col_tokens)} column tokens"
        )
    values = weights.detach().float().cpu().numpy()  # (H, Q, K)
    panels = [*values, values.mean(axis=0)]
    names = [f"head {h + 1}" for h in range(heads)] + [f"mean of {heads} heads"]
    rows_text = [readable_token(t) for t in row_tokens]
    cols_text = [readable_token(t) for t in col_tokens]

    # Size: square cells large enough for a tick label each, plus room for the labels themselves.
    n_max = max(n_rows, n_cols)
    font = 8 if n_max <= 30 else 6 if n_max <= 60 else 4
    cell = font / 72 * 1.8  # inches per token
    label = max(len(t) for t in [*rows_text, *cols_text]) * font / 72 * 0.62 + 0.5
    ncols = math.ceil(math.sqrt(len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    panel_w, panel_h = max(1.5, cell * n_cols), max(1.5, cell * n_rows)
    width = ncols * (panel_w + label) + 1.2  # + colorbar
    title_lines = title.count("\n") + 1 if title else 0
    height = nrows * (panel_h + label) + 0.25 * title_lines + 0.3

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    hidden = np.triu(np.ones((n_rows, n_cols), dtype=bool), k=1) if causal else None
    image = None
    for ax, panel, name in zip(axes, panels, names):
        data = np.ma.masked_array(panel, mask=hidden) if hidden is not None else panel
        image = ax.imshow(data, cmap=_attention_cmap(), vmin=0.0, vmax=1.0, aspect="equal")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(n_cols), cols_text, rotation=90, fontsize=font, parse_math=False)
        ax.set_yticks(range(n_rows), rows_text, fontsize=font, parse_math=False)
        ax.tick_params(length=0)
        ax.set_xlabel(col_label, fontsize=8)
        ax.set_ylabel(row_label, fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    fig.colorbar(
        image, ax=axes[: len(panels)], shrink=0.8, label="attention weight (each row sums to 1)"
    )
    if title:
        fig.suptitle(title, fontsize=10, parse_math=False)
    return fig


def _attention_cmap():
    """viridis, with masked (unseeable) cells in light grey."""
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#d9d9d9")


def attention_figures(
    maps: AttentionMaps, *, source: str = "", translation: str = ""
) -> dict[str, Figure]:
    """Every figure of `plot_attention`, by file name (without writing anything)."""
    n_layers = {
        "encoder_self": maps.encoder_self.size(0),
        "decoder_self": maps.decoder_self.size(0),
        "cross": maps.cross.size(0),
    }
    axes_tokens = {  # kind -> (row tokens, column tokens); see AttentionMaps
        "encoder_self": (maps.source_tokens, maps.source_tokens),
        "decoder_self": (maps.decoder_tokens, maps.decoder_tokens),
        "cross": (maps.target_tokens, maps.source_tokens),
    }
    figures = {}
    for kind, (stem, kind_title, row_label, col_label) in ATTENTION_KINDS.items():
        weights = getattr(maps, kind)  # (layers, H, Q, K)
        rows, cols = axes_tokens[kind]
        for layer in range(n_layers[kind]):
            title = f"{kind_title}, layer {layer + 1} of {n_layers[kind]}"
            title += _caption(source, translation)
            figures[f"{stem}_layer{layer + 1}.png"] = attention_figure(
                weights[layer],
                rows,
                cols,
                title=title,
                row_label=row_label,
                col_label=col_label,
                causal=kind == "decoder_self",
            )
    return figures


def plot_attention(
    maps: AttentionMaps,
    out_dir: Path | str,
    *,
    source: str = "",
    translation: str = "",
    dpi: int = DPI,
) -> list[Path]:
    """Write one PNG per attention kind per layer into `out_dir`; returns their paths.

    `maps` is `Translation.attention_maps` (from `translate_nbest(..., attention=True)`); the
    source text and translation, when given, are printed under the title.
    """
    out = Path(out_dir)
    written = []
    for name, fig in attention_figures(maps, source=source, translation=translation).items():
        written.append(_save(fig, out / name, dpi))
    return written


def _caption(source: str, translation: str, width: int = 110) -> str:
    """Title lines for the source and its translation, wrapped so that a long one stays inside."""
    lines = []
    for label, text in (("source", source), ("translation", translation)):
        if text:
            line = f"{label}: {printable(text)}"
            lines.append(textwrap.fill(line, width, subsequent_indent="    "))
    return "".join("\n" + line for line in lines)


# -------------------------------------------------------------------------- positional encoding


@dataclass
class PositionalTable:
    """The positional vectors a model adds to its embeddings: values (positions, d_model).

    learned: True for a learned table (`positional: learned`), False for the sinusoids. stack:
    "encoder", "decoder", or "encoder and decoder" where both stacks share the same table.
    """

    values: Tensor
    learned: bool
    stack: str


def positional_encoding_tables(
    model_or_config: Transformer | TransformerClassifier | ModelConfig,
    n_positions: int | None = None,
) -> list[PositionalTable]:
    """The positional table(s) a model uses, for positions 0 .. n_positions-1.

    From a Transformer, the table is read from its own positional modules (so it is exactly what
    the model adds): one table when both stacks use sinusoids (they are the same function), one
    per stack when the positions are learned. From a ModelConfig, only sinusoids can be computed
    (a learned table exists only in trained weights). n_positions defaults to 128, and is capped
    at `max_positions` for learned tables. Raises ValueError for a model without
    a positional table (none, or positions inside attention: relative, rotary, ALiBi).
    """
    config = model_or_config if isinstance(model_or_config, ModelConfig) else model_or_config.config
    if config.positional == "none":
        raise ValueError(
            "this model has no positional encoding (positional: none): nothing to plot"
        )
    if config.positional in IN_ATTENTION:
        raise ValueError(
            f"this model's positions live inside its self-attention (positional: "
            f"{config.positional}), not in a table added to the embeddings: nothing to plot"
        )
    n = DEFAULT_POSITIONS if n_positions is None else n_positions
    if n < 1:
        raise ValueError(f"n_positions must be at least 1, got {n}")
    if isinstance(model_or_config, ModelConfig):
        if config.positional == "learned":
            raise ValueError(
                "a config alone has no learned positional table (it lives in the trained "
                "weights); pass the model instead"
            )
        table = SinusoidalPositionalEncoding(config.d_model, n)(n)  # (P, D)
        return [PositionalTable(table, learned=False, stack="encoder and decoder")]

    model = model_or_config
    learned = config.positional == "learned"
    if learned:
        n = min(n, config.max_positions)
    with torch.no_grad():
        tables = {
            stack: getattr(model, stack).embed.positional(n).detach().float().cpu()  # (P, D)
            for stack in ("encoder", "decoder")
            if hasattr(model, stack)  # a classifier has only the encoder
        }
    if "decoder" not in tables:
        return [PositionalTable(tables["encoder"], learned, "encoder")]
    if torch.equal(tables["encoder"], tables["decoder"]):
        return [PositionalTable(tables["encoder"], learned, "encoder and decoder")]
    return [PositionalTable(values, learned, stack) for stack, values in tables.items()]


def _wavelength(i: int, d_model: int) -> float:
    """The period, in positions, of the sinusoid pair 2i, 2i+1: 2 pi 10000^(2i/d_model)."""
    return 2 * math.pi * 10000 ** (2 * i / d_model)


def _line_dimensions(d_model: int, n_positions: int) -> list[int]:
    """A few dimensions to draw as curves over `n_positions`: the sin/cos pair whose wavelength is
    nearest an eighth of the range (several full waves), then the sines nearest half the range
    and twice it (one wave, then part of one). The fastest pairs are left to the heat map: with
    a wavelength of about 6 positions, their curves would be a zigzag at integer positions."""

    def nearest(target: float) -> int:  # the i whose wavelength is closest, on a log scale
        return min(
            range(max(1, d_model // 2)),
            key=lambda i: abs(math.log(_wavelength(i, d_model) / target)),
        )

    fast = nearest(n_positions / 8)
    dims = [2 * fast, 2 * fast + 1, 2 * nearest(n_positions / 2), 2 * nearest(2 * n_positions)]
    return sorted({d for d in dims if d < d_model})


def positional_encoding_figure(
    model_or_config: Transformer | ModelConfig, n_positions: int | None = None
) -> Figure:
    """Per table (see `positional_encoding_tables`): a heat map of positions x dimensions and
    the curves of a few dimensions over the positions."""
    tables = positional_encoding_tables(model_or_config, n_positions)
    config = model_or_config if isinstance(model_or_config, ModelConfig) else model_or_config.config
    d_model = config.d_model
    fig = Figure(figsize=(12, 4.2 * len(tables) + 0.6), layout="constrained")
    axes = fig.subplots(len(tables), 2, squeeze=False, width_ratios=[1, 1.15])
    for (heat, lines), table in zip(axes, tables):
        values = table.values.numpy()  # (P, D)
        dims = _line_dimensions(d_model, values.shape[0])
        limit = 1.0 if not table.learned else float(np.abs(values).max()) or 1.0
        image = heat.imshow(
            values,
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            aspect="auto",
            interpolation="nearest",
        )
        heat.set_xlabel("dimension")
        heat.set_ylabel("position")
        heat.set_title(f"{table.stack}: {values.shape[0]} positions x {d_model} dimensions")
        fig.colorbar(image, ax=heat, label="value")
        for d in dims:
            lines.plot(values[:, d], label=_dimension_label(d, d_model, table.learned), lw=1.2)
        lines.set_xlabel("position")
        lines.set_ylabel("value")
        lines.set_title(f"{table.stack}: dimensions {', '.join(map(str, dims))}")
        lines.grid(alpha=0.3)
        lines.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if tables[0].learned:
        title = (
            f"Learned positional embeddings (positional: learned; not sinusoids), "
            f"d_model = {d_model}: the model's trained tables"
        )
    else:
        title = (
            f"Sinusoidal positional encoding, d_model = {d_model} (the table the model adds): "
            "PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model))"
        )
    fig.suptitle(title, fontsize=10, parse_math=False)
    return fig


def _dimension_label(dim: int, d_model: int, learned: bool) -> str:
    """Legend text of one curve: for sinusoids, its function and wavelength in positions."""
    if learned:
        return f"dim {dim}"
    i = dim // 2
    wavelength = _wavelength(i, d_model)
    return f"dim {dim}: {'sin' if dim % 2 == 0 else 'cos'}, i={i},\nwavelength {wavelength:,.0f}"


def plot_positional_encoding(
    model_or_config: Transformer | TransformerClassifier | ModelConfig,
    path: Path | str,
    n_positions: int | None = None,
    dpi: int = DPI,
) -> Path:
    """Write the positional-encoding plot (see `positional_encoding_figure`) to `path`."""
    return _save(positional_encoding_figure(model_or_config, n_positions), Path(path), dpi)


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    """Write a figure as PNG atomically (a temporary sibling renamed into place)."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path


# ------------------------------------------------------------------------------ the pipeline


@dataclass
class Visualization:
    """What `visualize` did: the translation (with its attention maps) and the files written."""

    translation: Translation
    files: list[Path]
    notes: list[str]


def visualize(
    translator: Translator,
    text: str,
    out_dir: Path | str,
    *,
    n_positions: int | None = None,
    dpi: int = DPI,
    **options,
) -> Visualization:
    """Translate `text` and write its attention maps and the positional-encoding plot.

    Options are `DecodeOptions` (beam, greedy, ...). With an ensemble, the maps and the positional
    table are the first model's. Raises ValueError for an empty text.
    """
    if not text.strip():
        raise ValueError("the text is empty: give a sentence to translate and visualize")
    result = translator.translate_nbest([text], attention=True, **options)[0]
    maps = result.attention_maps
    assert maps is not None  # a non-empty text is always run through the model
    out = Path(out_dir)
    files = plot_attention(maps, out, source=text, translation=result.text, dpi=dpi)
    notes = []
    if result.truncated:
        notes.append(
            f"the text is longer than the model's {translator.max_positions} positions: only "
            f"its first {translator.max_source_subwords} subwords were translated"
        )
    try:
        files.append(
            plot_positional_encoding(
                translator.models[0], out / "positional_encoding.png", n_positions, dpi
            )
        )
    except ValueError as e:  # a model without positions
        notes.append(f"no positional_encoding.png: {e}")
    return Visualization(result, files, notes)


@dataclass
class ClassifierVisualization:
    """What `visualize_classifier` did: the prediction and the files written."""

    prediction: Prediction
    files: list[Path]
    notes: list[str]


def visualize_classifier(
    classifier: Classifier,
    text: str,
    out_dir: Path | str,
    *,
    n_positions: int | None = None,
    dpi: int = DPI,
) -> ClassifierVisualization:
    """Classify `text` and write its encoder self-attention maps (one PNG per layer) and the
    positional-encoding plot. Raises ValueError for an empty text."""
    if not text.strip():
        raise ValueError("the text is empty: give a text to classify and visualize")
    prediction = classifier.classify([text], top_k=len(classifier.labels))[0]
    attention = classifier.attention(text)
    out = Path(out_dir)
    stem, kind_title, row_label, col_label = ATTENTION_KINDS["encoder_self"]
    caption = f"{prediction.label} ({100 * prediction.probability:.1f}%)"
    files = []
    for layer, weights in enumerate(attention.layers):  # (H, S, S) each
        title = f"{kind_title}, layer {layer + 1} of {len(attention.layers)}"
        title += _caption(text, caption)
        fig = attention_figure(
            weights,
            attention.tokens,
            attention.tokens,
            title=title,
            row_label=row_label.replace("source", "text"),
            col_label=col_label.replace("source", "text"),
        )
        files.append(_save(fig, out / f"{stem}_layer{layer + 1}.png", dpi))
    notes = []
    if prediction.truncated:
        notes.append(
            f"the text is longer than the model can take: only its first "
            f"{classifier.max_text_subwords} subwords were read"
        )
    try:
        files.append(
            plot_positional_encoding(
                classifier.model, out / "positional_encoding.png", n_positions, dpi
            )
        )
    except ValueError as e:  # a model without positions
        notes.append(f"no positional_encoding.png: {e}")
    return ClassifierVisualization(prediction, files, notes)


# ---------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from transformer.decoding.cli import add_decode_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1].split("\n\nThe same functions")[0]
    add_decode_arguments(parser)
    parser.add_argument("--text", required=True, help="the sentence to translate and visualize")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the PNGs")
    parser.add_argument(
        "--positions",
        type=int,
        default=DEFAULT_POSITIONS,
        metavar="N",
        help=f"positions in the positional-encoding plot (default {DEFAULT_POSITIONS})",
    )
    parser.add_argument("--dpi", type=int, default=DPI, help=f"PNG resolution (default {DPI})")


def run(args: argparse.Namespace) -> int:
    from transformer.decoding.cli import decode_options, load_translator
    from transformer.modeldir import ModelDirError, is_classification, load_task

    def fail(message: str) -> int:
        print(f"transformer visualize: {message}", file=sys.stderr)
        return 2

    if not args.text.strip():
        return fail("--text is empty: give a sentence to translate and visualize")
    if args.positions < 1:
        return fail(f"--positions must be at least 1, got {args.positions}")
    try:
        if len(args.model) == 1 and is_classification(load_task(args.model[0])):
            return _run_classifier(args, fail)
        options = decode_options(args)  # bad options are reported before loading anything
        translator = load_translator(args)
        done = visualize(
            translator, args.text, args.out, n_positions=args.positions, dpi=args.dpi, **options
        )
    except (ConfigError, ModelDirError) as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"cannot write into {args.out}: {e}")
    for note in done.notes:
        print(f"transformer visualize: {note}", file=sys.stderr)
    print(f"translation: {done.translation.text}")
    for path in done.files:
        print(path)
    return 0


def _run_classifier(args: argparse.Namespace, fail) -> int:
    from transformer.classifier import Classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    classifier = Classifier.from_pretrained(
        args.model[0], device=args.device, precision=args.precision
    )
    try:
        done = visualize_classifier(
            classifier, args.text, args.out, n_positions=args.positions, dpi=args.dpi
        )
    except OSError as e:
        return fail(f"cannot write into {args.out}: {e}")
    for note in done.notes:
        print(f"transformer visualize: {note}", file=sys.stderr)
    print("class: " + ", ".join(f"{label} {100 * p:.1f}%" for label, p in done.prediction.top))
    for path in done.files:
        print(path)
    return 0
