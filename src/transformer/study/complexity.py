"""`transformer study complexity --out DIR`: the paper's Table 1, measured on your machine.

Five layer types of the same width d (self-attention, restricted self-attention, an LSTM, a
convolution and a separable convolution) are measured as n and d grow: forward+backward time,
peak memory and counted FLOPs, with fitted log-log exponents next to the paper's; the longest
chain of dependent kernels (sequential operations) and the batch-1 time; the number of stacked
layers that connect the first position to the last (maximum path length); and the length n at
which self-attention starts to cost more than the recurrent layer, for each width.

Writes DIR/results.csv (one row per measurement), DIR/results.md (laid out like Table 1, printed
too), DIR/scaling.png and DIR/sequential.png. The default takes a few minutes on 2 CPU cores;
`--quick` is a small smoke run of a few seconds.

Only light modules are imported here: this module is loaded for `transformer study --help`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "lengths": (16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
    "width": 256,
    "widths": (32, 64, 128, 256, 512),
    "length": 512,
    "batch": 4,
    "heads": 8,
    "kernel": 3,
    "window": 16,
    "repeats": 5,
    "threads": 1,
    "path_lengths": (8, 16, 32, 64, 128),
}
QUICK: dict[str, Any] = {
    "lengths": (8, 16, 32),
    "width": 16,
    "widths": (8, 16),
    "length": 16,
    "batch": 2,
    "heads": 2,
    "kernel": 3,
    "window": 4,
    "repeats": 1,
    "threads": 1,
    "path_lengths": (8, 12),
}
FILES = ("results.csv", "results.md", "scaling.png", "sequential.png")


def _int_list(option: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part.isdigit() or int(part) < 1:
                raise argparse.ArgumentTypeError(
                    f"{option}: {part!r} is not a positive integer (give e.g. 16,64,256)"
                )
            values.append(int(part))
        return tuple(sorted(set(values)))

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `transformer study complexity`."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where time and memory are measured",
    )
    parser.add_argument(
        "--lengths",
        type=_int_list("--lengths"),
        metavar="N,N,...",
        help="sequence lengths n of the n sweep (default 16,32,...,4096)",
    )
    parser.add_argument(
        "--width", type=int, metavar="D", help="the fixed width d of the n sweep (default 256)"
    )
    parser.add_argument(
        "--widths",
        type=_int_list("--widths"),
        metavar="D,D,...",
        help="widths d of the d sweep and of the crossover table (default 32,64,128,256,512)",
    )
    parser.add_argument(
        "--length", type=int, metavar="N", help="the fixed length n of the d sweep (default 512)"
    )
    parser.add_argument("--batch", type=int, help="batch size of the time sweeps (default 4)")
    parser.add_argument("--heads", type=int, help="attention heads (default 8, the paper's)")
    parser.add_argument("--kernel", type=int, help="convolution width k, odd (default 3)")
    parser.add_argument(
        "--window",
        type=int,
        help="restricted self-attention: each query sees the keys within distance r (default 16)",
    )
    parser.add_argument(
        "--repeats", type=int, help="timed calls per point, after one warm-up; median (default 5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default 1: the work itself, free of how well each size parallelises "
        "and of other processes taking a core; 0 = PyTorch's default)",
    )
    parser.add_argument(
        "--path-lengths",
        type=_int_list("--path-lengths"),
        metavar="N,N,...",
        help="lengths at which the path length is probed (default 8,16,...,128)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (n 8-32, d 8-16, one repeat): a smoke run of a few seconds; options "
        "given explicitly still apply",
    )


@dataclass(frozen=True)
class Options:
    """The validated options of one study run."""

    out: Path
    device: str
    lengths: tuple[int, ...]
    width: int
    widths: tuple[int, ...]
    length: int
    batch: int
    heads: int
    kernel: int
    window: int
    repeats: int
    threads: int
    path_lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("width", "length", "batch", "heads", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0 (0: PyTorch's default), got {self.threads}")
        if len(self.lengths) < 2:
            raise ValueError(
                f"--lengths needs at least 2 lengths to fit a slope, got {self.lengths}"
            )
        if len(self.widths) < 2:
            raise ValueError(f"--widths needs at least 2 widths to fit a slope, got {self.widths}")
        if min(self.path_lengths) < 2:
            raise ValueError(f"--path-lengths must all be >= 2, got {self.path_lengths}")
        for option, widths in (("--width", (self.width,)), ("--widths", self.widths)):
            for d in widths:
                if d % self.heads:
                    raise ValueError(
                        f"{option}: width {d} is not a multiple of --heads {self.heads}"
                    )
        _sizes(self)  # checks --kernel and --window

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        base = QUICK if args.quick else DEFAULTS
        values = {k: (base[k] if getattr(args, k) is None else getattr(args, k)) for k in base}
        return cls(out=Path(args.out), device=args.device, **values)


# ----------------------------------------------------------------------------- measuring


@dataclass
class Results:
    """Everything measured in one run, keyed by (layer, n, d) or (layer, n)."""

    options: Options
    context: str = ""
    time: dict[tuple[str, int, int], Any] = field(default_factory=dict)  # Timing, fwd+bwd
    memory: dict[tuple[str, int, int], int] = field(default_factory=dict)  # bytes
    flops: dict[tuple[str, int, int], int] = field(default_factory=dict)  # counted, forward
    closed: dict[tuple[str, int, int], int] = field(default_factory=dict)  # closed form, forward
    latency: dict[tuple[str, int], Any] = field(default_factory=dict)  # Timing, batch 1 forward
    depth: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # (chain, kernels)
    path: dict[tuple[str, int], int | None] = field(default_factory=dict)  # layers to connect
    recurrence: dict[int, bool] = field(default_factory=dict)  # n -> the path runs through it
    crossover_lengths: dict[int, list[int]] = field(default_factory=dict)  # d -> n measured
    trace_width: int = 16


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_point(results: Results, key: str, n: int, d: int) -> None:
    """Forward+backward time, peak memory and FLOPs of one layer at (batch, n, d), once."""
    if (key, n, d) in results.time:
        return
    import torch

    from transformer.study.table1_layers import LayerSizes, build_layer, closed_form_flops
    from transformer.study.table1_probes import (
        counted_flops,
        forward_backward,
        peak_memory,
        time_calls,
    )

    o = results.options
    sizes = LayerSizes(o.heads, o.kernel, o.window)
    device = torch.device(o.device)
    torch.manual_seed(0)
    with torch.device(device):
        layer = build_layer(key, d, sizes)
        x = torch.randn(o.batch, n, d, requires_grad=True)
    step = forward_backward(layer, x)
    timing = time_calls(step, o.repeats, device)
    memory = peak_memory(step, device)
    del layer, x, step
    results.time[key, n, d] = timing
    results.memory[key, n, d] = memory
    results.flops[key, n, d] = counted_flops(key, n, d, sizes, o.batch)
    results.closed[key, n, d] = closed_form_flops(key, n, d, sizes, o.batch)
    _log(
        f"  {key:15s} n={n:<5d} d={d:<5d} {timing.median * 1e3:9.2f} ms  "
        f"{memory / 2**20:8.1f} MiB  {results.flops[key, n, d] / 1e9:8.3f} GFLOP"
    )


def measure_latency(results: Results, key: str, n: int) -> None:
    """Forward time at batch 1 (inference, no autograd) at the n sweep's width."""
    import torch

    from transformer.study.table1_layers import LayerSizes, build_layer
    from transformer.study.table1_probes import forward_only, time_calls

    o = results.options
    device = torch.device(o.device)
    torch.manual_seed(0)
    with torch.device(device):
        layer = build_layer(key, o.width, LayerSizes(o.heads, o.kernel, o.window))
        x = torch.randn(1, n, o.width)
    results.latency[key, n] = time_calls(forward_only(layer, x), max(o.repeats, 3), device)


def measure(options: Options) -> Results:
    """Run every measurement of the study."""
    import os

    import torch

    from transformer.study.table1_layers import LAYER_KEYS, LayerSizes
    from transformer.study.table1_probes import (
        critical_path,
        layers_to_connect,
        recurrence_carries_the_path,
    )

    if options.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
    if options.threads:
        torch.set_num_threads(options.threads)
    results = Results(options)
    o = options

    def load() -> str:
        return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"

    load_at_start = load()
    where = (
        torch.cuda.get_device_name(0)
        if o.device == "cuda"
        else f"CPU, {torch.get_num_threads()} thread(s)"
    )
    results.context = (
        f"{where}; PyTorch {torch.__version__}, float32; batch {o.batch}; heads {o.heads}, "
        f"kernel k = {o.kernel}, window r = {o.window}; each time is the median of {o.repeats} "
        "call(s) after one warm-up."
    )
    _log(f"complexity: {results.context} Load average {load_at_start}.")

    _log(f"forward+backward as n grows (d = {o.width}):")
    for key in LAYER_KEYS:
        for n in o.lengths:
            measure_point(results, key, n, o.width)
    _log(f"forward+backward as d grows (n = {o.length}):")
    for key in LAYER_KEYS:
        for d in o.widths:
            measure_point(results, key, o.length, d)
    _log("crossover of self-attention and the recurrent layer, per width:")
    for d in o.widths:
        seen = results.crossover_lengths.setdefault(d, [])
        for n in o.lengths:
            measure_point(results, "self_attention", n, d)
            measure_point(results, "recurrent", n, d)
            seen.append(n)
            if (
                results.time["self_attention", n, d].median
                >= results.time["recurrent", n, d].median
            ):
                break

    _log(f"batch-1 forward time as n grows (d = {o.width}):")
    for key in LAYER_KEYS:
        for n in o.lengths:
            measure_latency(results, key, n)
        _log(
            f"  {key:15s} "
            + " ".join(f"{results.latency[key, n].median * 1e3:.2f}" for n in o.lengths)
            + " ms"
        )

    trace_sizes = LayerSizes(o.heads, o.kernel, o.window)
    results.trace_width = 2 * o.heads
    _log(f"critical path of dependent kernels (batch 1, d = {results.trace_width}):")
    for key in LAYER_KEYS:
        for n in o.lengths:
            results.depth[key, n] = critical_path(key, n, results.trace_width, trace_sizes)
        _log(f"  {key:15s} " + " ".join(str(results.depth[key, n][0]) for n in o.lengths))

    _log(f"layers needed for output n-1 to depend on input 0 (float64, d = {results.trace_width}):")
    for key in (*LAYER_KEYS, "dilated"):
        for n in o.path_lengths:
            results.path[key, n] = layers_to_connect(
                key, n, results.trace_width, trace_sizes, max_layers=n
            )
        _log(f"  {key:15s} " + " ".join(str(results.path[key, n]) for n in o.path_lengths))
    for n in o.path_lengths:
        results.recurrence[n] = recurrence_carries_the_path(n, results.trace_width)
    results.context += (
        f" Load average (processes wanting a core) {load_at_start} at the start, {load()} at the "
        "end."
    )
    return results


# ----------------------------------------------------------------------------- analysis


def upper_half(values: tuple[int, ...]) -> tuple[int, ...]:
    """The larger half of a sweep (at least 2 points): where the leading term of a cost shows."""
    ordered = tuple(sorted(values))
    return ordered[min(len(ordered) // 2, len(ordered) - 2) :]


def exponent(series: dict[int, float], points: tuple[int, ...]) -> float:
    """The fitted log-log exponent of `series` over `points`."""
    from transformer.study.table1_probes import fit_slope

    return fit_slope([float(p) for p in points], [float(series[p]) for p in points])


def first_at_least(
    cost_a: Callable[[int], float], cost_b: Callable[[int], float], limit: int = 1 << 40
) -> int:
    """The smallest integer n >= 1 with cost_a(n) >= cost_b(n) (both grow; a crosses b once)."""
    hi = 1
    while cost_a(hi) < cost_b(hi):
        hi *= 2
        if hi > limit:
            raise ValueError("the two costs do not cross")
    lo = hi // 2
    while lo + 1 < hi:  # invariant: a < b at lo (or lo = 0), a >= b at hi
        mid = (lo + hi) // 2
        if cost_a(mid) >= cost_b(mid):
            hi = mid
        else:
            lo = mid
    return hi


def measured_crossover(results: Results, d: int) -> tuple[str, float | None]:
    """(text, n) where self-attention's measured time reaches the recurrent layer's at width d.

    Interpolated on log(t_attention / t_recurrent) against log n between the two lengths that
    bracket the sign change; open-ended when the sweep does not bracket it.
    """
    ns = results.crossover_lengths.get(d, [])
    if not ns:
        return "not measured", None

    def log_ratio(n: int) -> float:
        return math.log(
            results.time["self_attention", n, d].median / results.time["recurrent", n, d].median
        )

    if log_ratio(ns[0]) >= 0:
        return f"≤ {ns[0]}", None
    if log_ratio(ns[-1]) < 0:
        return f"> {ns[-1]}", None
    lo, hi = ns[-2], ns[-1]
    a, b = log_ratio(lo), log_ratio(hi)
    n = math.exp(math.log(lo) + (0 - a) / (b - a) * (math.log(hi) - math.log(lo)))
    return f"≈ {n:,.0f} (between {lo} and {hi})", n


def depth_formula(results: Results, key: str) -> tuple[str, float, float]:
    """A short formula for the critical path of `key` against n, with its fitted line."""
    from transformer.study.table1_probes import fit_line

    ns = results.options.lengths
    depths = [results.depth[key, n][0] for n in ns]
    slope, intercept = fit_line([float(n) for n in ns], [float(v) for v in depths])
    if min(depths) == max(depths):
        unit = "kernel" if depths[0] == 1 else "kernels"
        return f"{depths[0]} {unit} at every n", 0.0, float(depths[0])
    if abs(slope) < 0.01:
        return f"{min(depths)}–{max(depths)} kernels for every n", slope, intercept
    sign = "+" if intercept >= 0 else "−"
    return f"{slope:.2f}·n {sign} {abs(intercept):.0f} kernels", slope, intercept


# ----------------------------------------------------------------------------- output


def csv_rows(results: Results) -> list[list[Any]]:
    """One row per measurement: measurement, layer, n, d, batch, value, unit, method."""
    from transformer.study.table1_layers import LAYER_KEYS, LAYER_TYPES
    from transformer.study.table1_probes import expected_layers

    o = results.options
    sizes = _sizes(o)
    formulas = {t.key: t.implementation for t in LAYER_TYPES}
    rows: list[list[Any]] = []
    for (key, n, d), timing in sorted(results.time.items()):
        spread = ", ".join(f"{t:.6g}" for t in timing.times)
        rows.append(
            [
                "forward_backward_time",
                key,
                n,
                d,
                o.batch,
                f"{timing.median:.6g}",
                "s",
                f"median of {len(timing.times)} after a warm-up ({spread})",
            ]
        )
        rows.append(
            [
                "peak_memory",
                key,
                n,
                d,
                o.batch,
                results.memory[key, n, d],
                "bytes",
                "forward+backward, above what was allocated before",
            ]
        )
        rows.append(
            [
                "forward_flops",
                key,
                n,
                d,
                o.batch,
                results.flops[key, n, d],
                "FLOP",
                "FlopCounterMode",
            ]
        )
        rows.append(
            [
                "forward_flops_closed_form",
                key,
                n,
                d,
                o.batch,
                results.closed[key, n, d],
                "FLOP",
                formulas[key],
            ]
        )
    for (key, n), timing in sorted(results.latency.items()):
        rows.append(
            [
                "batch1_forward_time",
                key,
                n,
                o.width,
                1,
                f"{timing.median:.6g}",
                "s",
                f"median of {len(timing.times)} after a warm-up, no autograd",
            ]
        )
    for (key, n), (chain, kernels) in sorted(results.depth.items()):
        rows.append(
            [
                "critical_path",
                key,
                n,
                results.trace_width,
                1,
                chain,
                "kernels",
                f"longest chain of dependent kernels of {kernels} dispatched (oneDNN off)",
            ]
        )
    for (key, n), layers in sorted(results.path.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rows.append(
            [
                "path_layers",
                key,
                n,
                results.trace_width,
                1,
                "" if layers is None else layers,
                "layers",
                f"fewest stacked layers for output n-1 to depend on input 0 (by construction "
                f"{expected_layers(key, n, sizes)})",
            ]
        )
    for n, through in sorted(results.recurrence.items()):
        rows.append(
            [
                "path_through_recurrence",
                "recurrent",
                n,
                results.trace_width,
                1,
                int(through),
                "bool",
                "dependency present, and gone once the recurrence is cut",
            ]
        )
    for key in LAYER_KEYS:
        for quantity, series, points, dimension, fixed in _fits(results, key):
            rows.append(
                [
                    f"exponent_{dimension}_{quantity}",
                    key,
                    fixed if dimension == "d" else "",
                    fixed if dimension == "n" else "",
                    o.batch,
                    f"{exponent(series, points):.4f}",
                    "",
                    f"log-log least squares over {dimension} = {points[0]}..{points[-1]}",
                ]
            )
    for d in o.widths:
        paper, closed, (text, measured) = _crossovers(results, d)
        for method, value in (("paper", paper), ("closed_form", closed), ("measured", measured)):
            rows.append(
                [
                    f"crossover_n_{method}",
                    "self_attention_vs_recurrent",
                    "",
                    d,
                    o.batch if method == "measured" else "",
                    "" if value is None else f"{value:.6g}",
                    "n",
                    text if method == "measured" else _crossover_method(method),
                ]
            )
    return rows


def _crossover_method(method: str) -> str:
    return {
        "paper": "n²·d = n·d² (constants 1)",
        "closed_form": "8·n·d² + 4·n²·d = 16·n·d² (forward FLOPs of these layers)",
    }[method]


def _sizes(o: Options) -> Any:
    """The `LayerSizes` of the options (validated there: --heads, --kernel, --window)."""
    from transformer.study.table1_layers import LayerSizes

    return LayerSizes(o.heads, o.kernel, o.window)


def _series(results: Results, table: dict, key: str, dimension: str) -> dict[int, float]:
    o = results.options
    if dimension == "n":
        return {n: _value(table[key, n, o.width]) for n in o.lengths}
    return {d: _value(table[key, o.length, d]) for d in o.widths}


def _value(v: Any) -> float:
    return float(v.median) if hasattr(v, "median") else float(v)


def _fits(
    results: Results, key: str
) -> list[tuple[str, dict[int, float], tuple[int, ...], str, int]]:
    """(quantity, series, fitted points, dimension, the other dimension's fixed value)."""
    o = results.options
    fits = []
    for dimension, points, fixed in (
        ("n", upper_half(o.lengths), o.width),
        ("d", upper_half(o.widths), o.length),
    ):
        for quantity, table in (
            ("time", results.time),
            ("flops", results.flops),
            ("memory", results.memory),
        ):
            fits.append(
                (quantity, _series(results, table, key, dimension), points, dimension, fixed)
            )
    return fits


def _crossovers(results: Results, d: int) -> tuple[int, int, tuple[str, float | None]]:
    """(paper, closed form, measured) crossover lengths of self-attention and recurrence at d."""
    from transformer.study.table1_layers import closed_form_flops, paper_flops

    sizes = _sizes(results.options)
    paper = first_at_least(
        lambda n: paper_flops("self_attention", n, d, sizes),
        lambda n: paper_flops("recurrent", n, d, sizes),
    )
    closed = first_at_least(
        lambda n: closed_form_flops("self_attention", n, d, sizes),
        lambda n: closed_form_flops("recurrent", n, d, sizes),
    )
    return paper, closed, measured_crossover(results, d)


def _join(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _ms_table(
    title: str,
    axis: str,
    series: dict[str, dict[int, float]],
    exponent_points: tuple[int, ...] | None = None,
) -> list[str]:
    """A Markdown section: one row of times in ms per layer type (seconds in `series`), one
    column per size, and the fitted exponent over `exponent_points` if given."""
    sizes = list(next(iter(series.values())))
    extra = exponent_points is not None
    lines = [
        "",
        f"## {title}",
        "",
        "| layer type | "
        + " | ".join(f"{axis}={v}" for v in sizes)
        + (" | exponent in n |" if extra else " |"),
        "| --- |" + " --- |" * (len(sizes) + extra),
    ]
    for name, values in series.items():
        cells = [f"{values[v] * 1e3:.3g}" for v in sizes]
        tail = f" | {exponent(values, exponent_points):.2f} |" if extra else " |"
        lines.append(f"| {name} | " + " | ".join(cells) + tail)
    return lines


def markdown(results: Results) -> str:
    """results.md: the paper's Table 1 with measured columns, the crossover table and notes."""
    from transformer.study.table1_layers import LAYER_TYPES
    from transformer.study.table1_probes import expected_layers

    o = results.options
    sizes = _sizes(o)
    up_n, up_d = upper_half(o.lengths), upper_half(o.widths)
    lines = [
        "# Table 1, measured",
        "",
        f"{results.context} Exponents are least-squares slopes on log-log axes over the larger "
        f"half of each sweep: n = {_join(list(up_n))} at d = {o.width}, and d = "
        f"{_join(list(up_d))} at n = {o.length}; time is forward+backward, FLOPs forward. "
        "Paper exponents are read off its complexity column.",
        "",
        "| layer type | complexity per layer (paper) | FLOPs of this layer (forward, per "
        "sequence) | exponent in n: paper · time · FLOPs · memory | exponent in d: paper · time "
        "· FLOPs · memory | sequential operations: paper · measured (dependent kernels) | "
        "maximum path length: paper · measured (stacked layers) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    path_ns = o.path_lengths
    for t in LAYER_TYPES:
        fits = {(q, dim): exponent(s, p) for q, s, p, dim, _ in _fits(results, t.key)}
        ex = {
            dim: f"{t.paper_exponents[i]:g} · {fits['time', dim]:.2f} · {fits['flops', dim]:.2f}"
            f" · {fits['memory', dim]:.2f}"
            for i, dim in enumerate(("n", "d"))
        }
        depth_text = depth_formula(results, t.key)[0]
        measured = [results.path[t.key, n] for n in path_ns]
        expected = [expected_layers(t.key, n, sizes) for n in path_ns]
        layers = _join(["–" if v is None else v for v in measured])
        check = "" if measured == expected else f" (by construction: {_join(expected)})"
        at = f"at n = {_join(list(path_ns))}"
        if t.key == "self_attention":
            path = f"{layers} {at}"
        elif t.key == "recurrent":
            through = all(results.recurrence.values())
            path = f"{layers} {at}" + (
                "; the path runs through the recurrence (cut it and the dependency is gone): "
                "n−1 steps"
                if through
                else "; WARNING: the dependency did not vanish when the recurrence was cut"
            )
        elif t.key == "convolutional":
            dil = [results.path["dilated", n] for n in path_ns]
            dil_exp = [expected_layers("dilated", n, sizes) for n in path_ns]
            dil_check = "" if dil == dil_exp else f" (by construction: {_join(dil_exp)})"
            path = (
                f"contiguous: {layers} {at} = ⌈2(n−1)/(k−1)⌉{check}; dilated 1, k, k², …: "
                f"{_join(['–' if v is None else v for v in dil])} = ⌈log_k n⌉{dil_check}"
            )
            check = ""
        elif t.key == "separable":
            path = f"{layers} {at} = ⌈2(n−1)/(k−1)⌉"
        else:
            path = f"{layers} {at} = ⌈(n−1)/r⌉"
        path += check
        lines.append(
            f"| {t.name} | {t.paper_complexity} | {t.implementation} | {ex['n']} | {ex['d']} | "
            f"{t.paper_sequential} · {depth_text} | {t.paper_path} · {path} |"
        )

    lines += [
        "",
        "## Where self-attention starts to cost more than the recurrent layer",
        "",
        "The smallest n at which self-attention costs at least as much as the LSTM, at each width d.",
        "",
        "| d | paper (n²·d vs n·d²) | forward FLOPs of these layers | measured forward+backward "
        f"time (batch {o.batch}) |",
        "| --- | --- | --- | --- |",
    ]
    for d in o.widths:
        paper, closed, (text, _) = _crossovers(results, d)
        lines.append(f"| {d} | {paper} | {closed} | {text} |")

    n_sweep = {
        t.name: {n: results.time[t.key, n, o.width].median for n in o.lengths} for t in LAYER_TYPES
    }
    d_sweep = {
        t.name: {d: results.time[t.key, o.length, d].median for d in o.widths} for t in LAYER_TYPES
    }
    batch1 = {t.name: {n: results.latency[t.key, n].median for n in o.lengths} for t in LAYER_TYPES}
    lines += _ms_table(
        f"Forward+backward time (ms) as n grows, d = {o.width}, batch {o.batch}", "n", n_sweep
    )
    lines += _ms_table(
        f"Forward+backward time (ms) as d grows, n = {o.length}, batch {o.batch}", "d", d_sweep
    )
    lines += _ms_table(
        f"Forward time (ms) at batch 1, d = {o.width}",
        "n",
        batch1,
        exponent_points=up_n,
    )
    lstm_per_step = results.latency["recurrent", o.lengths[-1]].median / o.lengths[-1]

    lines += [
        "",
        "## Notes",
        "",
        "- **Self-attention's n²·d is the attention alone.** The layer also projects queries, "
        "keys, values and output (8·n·d² FLOPs), as much work per position as half an LSTM "
        "(16·n·d²). So the measured exponent in n lies between 1 and 2, nearing 2 only once "
        "n ≫ 2d, and the exponent in d between 1 and 2; and self-attention costs more than the "
        "recurrent layer from n = 2d, not the paper's n = d. The same projections give "
        "restricted attention its d² term.",
        "- **Restricted self-attention** lets query i see keys j with |i − j| ≤ r (2r + 1 keys). "
        "It is computed blockwise: queries in blocks of r, each block against the 3r keys around "
        "it (cut out with `unfold`, a view), masked to the exact window; its scores cost "
        "12·⌈n/r⌉·r²·d FLOPs, O(r·n·d). A banded n × n mask would give the same output at "
        "O(n²·d).",
        "- **FLOPs** (multiply-add = 2; biases, softmax and gates left out) are counted by "
        "`torch.utils.flop_counter.FlopCounterMode`. It has no formula for the fused CPU "
        "attention kernel nor for the oneDNN LSTM, each one opaque call, so the layers are "
        "counted where PyTorch runs their reference decompositions: on the meta device, and the "
        "LSTM on the CPU with oneDNN off (its n steps one by one). " + _flop_check(results),
        "- **Time** is the median wall time of forward and backward (a fixed output gradient), "
        "after one warm-up call; **memory** is the peak of bytes allocated during one forward and "
        "backward above what was allocated before (activations, gradients, workspaces), from "
        + (
            "`torch.cuda.max_memory_allocated`."
            if o.device == "cuda"
            else "the allocation and free events of PyTorch's profiler."
        )
        + " Self-attention's memory grows linearly in n: its fused kernel never stores the "
        "n × n weights (it keeps one number per query and recomputes them in the backward pass).",
        "- **Sequential operations** are measured as the longest chain of kernels that depend on "
        "each other in one forward pass (batch 1, d = "
        f"{results.trace_width}), traced by a dispatch mode that gives each tensor 1 + the "
        "depth of its inputs (views are free): the number of steps no amount of parallel "
        "hardware can overlap. Traced with oneDNN off, whose LSTM would run all n steps inside "
        "one call. At batch 1 the LSTM's forward time grows linearly in n, "
        f"{lstm_per_step * 1e6:.0f} µs per step at n = {o.lengths[-1]}, steps that cannot "
        "overlap; the other layers' time is their work alone, which "
        + (
            "a single CPU thread does not hide either."
            if o.device == "cpu"
            else "the GPU spreads over its cores."
        ),
        "- **Maximum path length** is measured, not assumed: layers with random weights are "
        "stacked one at a time until output n − 1 depends on input 0, found by forward-mode "
        "differentiation in float64 (input 0 carries a random tangent, the others zero; "
        "no dependency is an exact zero). One LSTM layer connects every pair, but only through "
        "its recurrence: with W_hh = 0 and the forget gate shut the dependency is gone, so the "
        "signal crosses n − 1 steps. The centred convolutions (zero 'same' padding) reach "
        "(k − 1)/2 positions per side per layer. The paper's O(log_k(n)) is for dilated "
        "convolutions (section 4: contiguous kernels need O(n/k) layers), measured here with "
        "causal dilations 1, k, k², … (as in ByteNet).",
        "- The paper's Table 1 has no separable-convolution row: its complexity O(k·n·d + n·d²) "
        "is from section 4's text, and its sequential operations and path length are those of "
        "the convolution it is made of.",
        f"- Layer sizes: {o.heads} heads; LSTM hidden size d; convolutions d → d channels.",
        "",
    ]
    return "\n".join(lines)


def _flop_check(results: Results) -> str:
    mismatches = [k for k in results.flops if results.flops[k] != results.closed[k]]
    if not mismatches:
        return (
            f"At all {len(results.flops)} measured points the counts equal the closed forms "
            "in the table exactly."
        )
    listed = ", ".join(f"{k} n={n} d={d}" for k, n, d in mismatches[:5])
    return f"WARNING: counted FLOPs differ from the closed forms at {listed}."


def plot(results: Results) -> dict[str, bytes]:
    """Two small figures as PNG bytes: scaling.png and sequential.png."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transformer.study.table1_layers import LAYER_TYPES

    o = results.options
    names = {t.key: t.name for t in LAYER_TYPES}
    names["dilated"] = "dilated convolution (causal)"

    styles = {  # marker, line style: lines that coincide (e.g. the two convolutions) stay visible
        "self_attention": ("o", "-"),
        "recurrent": ("s", "-"),
        "convolutional": ("^", "-"),
        "separable": ("v", "--"),
        "restricted": ("D", "-"),
        "dilated": ("x", ":"),
    }

    def panel(ax: Any, title: str, xlabel: str, ylabel: str, series: dict[str, dict]) -> None:
        for key, values in series.items():
            xs = sorted(x for x, v in values.items() if v is not None and v > 0)
            marker, line = styles[key]
            ax.plot(
                xs,
                [values[x] for x in xs],
                marker=marker,
                linestyle=line,
                markersize=3,
                label=names[key],
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)

    def png(fig: Any) -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        return small_png(buffer.getvalue())

    keys = [t.key for t in LAYER_TYPES]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.95, wspace=0.25, hspace=0.35)
    panel(
        axes[0, 0],
        f"forward+backward time, d = {o.width}",
        "n",
        "seconds",
        {k: {n: results.time[k, n, o.width].median for n in o.lengths} for k in keys},
    )
    panel(
        axes[0, 1],
        f"forward FLOPs (counted), d = {o.width}",
        "n",
        "FLOPs",
        {k: {n: results.flops[k, n, o.width] for n in o.lengths} for k in keys},
    )
    panel(
        axes[1, 0],
        f"peak memory, forward+backward, d = {o.width}",
        "n",
        "bytes",
        {k: {n: results.memory[k, n, o.width] for n in o.lengths} for k in keys},
    )
    panel(
        axes[1, 1],
        f"forward+backward time, n = {o.length}",
        "d",
        "seconds",
        {k: {d: results.time[k, o.length, d].median for d in o.widths} for k in keys},
    )
    axes[0, 0].legend(fontsize=7)
    scaling = png(fig)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.9, wspace=0.3)
    panel(
        axes[0],
        f"forward time at batch 1, d = {o.width}",
        "n",
        "seconds",
        {k: {n: results.latency[k, n].median for n in o.lengths} for k in keys},
    )
    panel(
        axes[1],
        "longest chain of dependent kernels",
        "n",
        "kernels",
        {k: {n: results.depth[k, n][0] for n in o.lengths} for k in keys},
    )
    panel(
        axes[2],
        "stacked layers to connect position 0 to n−1",
        "n",
        "layers",
        {k: {n: results.path[k, n] for n in o.path_lengths} for k in (*keys, "dilated")},
    )
    axes[2].legend(fontsize=7)
    return {"scaling.png": scaling, "sequential.png": png(fig)}


def small_png(data: bytes, colors: int = 64) -> bytes:
    """The same picture with a palette of `colors` colours: a third of the bytes for line plots."""
    import io

    from PIL import Image  # matplotlib's own dependency

    image = Image.open(io.BytesIO(data)).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(
        buffer, format="PNG", optimize=True
    )
    return buffer.getvalue()


def write_outputs(results: Results) -> list[Path]:
    """Write every output file of the study atomically; returns their paths."""
    import csv
    import io

    from transformer.io import atomic_write_bytes, atomic_write_text

    out = results.options.out
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["measurement", "layer", "n", "d", "batch", "value", "unit", "method"])
    writer.writerows(csv_rows(results))
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "results.md", markdown(results))
    for name, data in plot(results).items():
        atomic_write_bytes(out / name, data)
    return [out / name for name in FILES]


def run(args: argparse.Namespace) -> int:
    """`transformer study complexity`: measure, write DIR's files, print the Markdown."""
    try:
        options = Options.from_args(args)
        results = measure(options)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_outputs(results)
    print((options.out / "results.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0
