"""`transformer study complexity`: counted FLOPs equal the closed forms; restricted attention is
the banded attention it stands for; the probes find the known path lengths and the recurrent
chain; the slope fit recovers known exponents; the command writes every output file."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from transformer.cli import main
from transformer.model.attention import reference_attention
from transformer.study import complexity
from transformer.study.table1_layers import (
    LAYER_KEYS,
    LayerSizes,
    build_layer,
    closed_form_flops,
    window_mask,
)
from transformer.study.table1_probes import (
    CriticalPath,
    counted_flops,
    critical_path,
    expected_layers,
    fit_line,
    fit_slope,
    layers_to_connect,
    recurrence_carries_the_path,
)


@pytest.mark.parametrize("key", LAYER_KEYS)
@pytest.mark.parametrize(("n", "d", "kernel", "window"), [(13, 8, 3, 4), (6, 12, 5, 3)])
def test_counted_flops_equal_the_closed_forms(key, n, d, kernel, window):
    sizes = LayerSizes(n_heads=2, kernel=kernel, window=window)
    assert counted_flops(key, n, d, sizes, batch=3) == closed_form_flops(key, n, d, sizes, batch=3)


def test_closed_forms_by_hand():
    # n = 10, d = 4, k = 3, r = 4, batch 2: numbers worked out term by term.
    sizes = LayerSizes(n_heads=2, kernel=3, window=4)
    n, d = 10, 4
    assert closed_form_flops("self_attention", n, d, sizes, 2) == 2 * (
        4 * 2 * n * d * d + 2 * 2 * n * n * d
    )
    assert closed_form_flops("recurrent", n, d, sizes, 2) == 2 * n * (4 * 2 * d * d + 4 * 2 * d * d)
    assert closed_form_flops("convolutional", n, d, sizes, 2) == 2 * n * 2 * d * d * 3
    assert closed_form_flops("separable", n, d, sizes, 2) == 2 * n * (2 * d * 3 + 2 * d * d)
    # 3 blocks of 4 queries (12 >= 10), each against 12 keys: QK^T and AV.
    assert closed_form_flops("restricted", n, d, sizes, 2) == 2 * (
        8 * n * d * d + 2 * 2 * 12 * 12 * d
    )


def test_restricted_attention_is_banded_attention_at_linear_cost():
    sizes = LayerSizes(n_heads=2, kernel=3, window=3)
    b, n, d = 2, 11, 8  # n not a multiple of r: the last block is padded
    layer = build_layer("restricted", d, sizes).double()
    x = torch.randn(b, n, d, dtype=torch.float64)
    q, k, v = layer.attention.project_qkv(x)
    i = torch.arange(n)
    band = (i[:, None] - i[None, :]).abs() <= 3
    expected, _ = reference_attention(q, k, v, band)
    expected = layer.attention.out_proj(expected.transpose(1, 2).reshape(b, n, d))
    torch.testing.assert_close(layer(x), expected)
    real_queries = window_mask(n, 3).reshape(-1, 9)[:n]  # (n, 3r): the last block is padded
    assert real_queries.sum() == band.sum()  # every allowed pair exactly once
    # The attention part grows linearly in n (projections removed), not quadratically.
    attn = [
        counted_flops("restricted", m, d, sizes, 1)
        - closed_form_flops("recurrent", m, d, sizes) // 2
        for m in (48, 96)
    ]
    assert attn[1] == 2 * attn[0]


def test_critical_path_counts_dependent_kernels():
    x = torch.randn(4)
    with CriticalPath() as trace:
        chain = ((x + 1) * 2).exp()  # three kernels, each waiting for the last
        y, z = x.sin(), x.cos()
        fan = y + z  # sin and cos can run side by side
        view = chain.view(2, 2)  # a view is free
    assert trace.depth(chain) == 3
    assert trace.depth(fan) == 2
    assert trace.depth(view) == 3
    assert trace.kernels == 6


def test_sequential_operations_constant_except_recurrence():
    sizes = LayerSizes(n_heads=2, kernel=3, window=4)
    for key in ("self_attention", "convolutional", "separable", "restricted"):
        assert critical_path(key, 8, 8, sizes)[0] == critical_path(key, 32, 8, sizes)[0], key
    depths = [critical_path("recurrent", n, 8, sizes)[0] for n in (8, 16, 32)]
    per_step = (depths[1] - depths[0]) / 8
    assert per_step >= 1
    assert depths[2] - depths[1] == 16 * per_step  # grows by the same chain at every position


@pytest.mark.parametrize(
    ("key", "n", "kernel", "window", "layers"),
    [
        ("self_attention", 16, 3, 4, 1),
        ("recurrent", 16, 3, 4, 1),
        ("convolutional", 9, 3, 4, 8),  # a centred width-3 kernel moves 1 position per layer
        ("convolutional", 9, 5, 4, 4),  # width 5: 2 per layer
        ("separable", 10, 5, 4, 5),
        ("restricted", 10, 3, 3, 3),  # the window moves 3 positions per layer
        ("restricted", 10, 3, 4, 3),
        ("restricted", 9, 3, 4, 2),
        ("dilated", 9, 3, 4, 2),  # dilations 1, 3 reach 8 back
        ("dilated", 10, 3, 4, 3),
    ],
)
def test_path_length_probe(key, n, kernel, window, layers):
    sizes = LayerSizes(n_heads=2, kernel=kernel, window=window)
    assert layers_to_connect(key, n, 4, sizes, max_layers=n) == layers
    assert expected_layers(key, n, sizes) == layers


def test_path_probe_reports_no_connection_within_the_limit():
    sizes = LayerSizes(n_heads=2, kernel=3, window=4)
    assert layers_to_connect("convolutional", 9, 4, sizes, max_layers=7) is None


def test_the_lstm_path_runs_through_its_recurrence():
    assert recurrence_carries_the_path(24, 4)


def test_fit_slope_recovers_exponents():
    xs = [16.0, 32.0, 64.0, 128.0]
    assert fit_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0, abs=1e-12)
    noisy = [x**1.5 * f for x, f in zip(xs, (1.02, 0.98, 1.01, 0.99))]
    assert fit_slope(xs, noisy) == pytest.approx(1.5, abs=0.03)
    assert fit_line([1.0, 2.0, 3.0], [5.0, 7.0, 9.0]) == pytest.approx((2.0, 3.0))
    with pytest.raises(ValueError, match="at least 2"):
        fit_slope([1.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        fit_slope([1.0, 2.0], [0.0, 1.0])


def test_crossover_and_fit_range():
    assert complexity.first_at_least(lambda n: n * n * 64, lambda n: n * 64 * 64) == 64
    sizes = LayerSizes()
    for d in (32, 256):
        closed = complexity.first_at_least(
            lambda n, d=d: closed_form_flops("self_attention", n, d, sizes),
            lambda n, d=d: closed_form_flops("recurrent", n, d, sizes),
        )
        assert closed == 2 * d
    assert complexity.upper_half((16, 32, 64, 128, 256)) == (64, 128, 256)
    assert complexity.upper_half((8, 16)) == (8, 16)


def test_quick_study_writes_every_file(tmp_path, capsys):
    out = tmp_path / "complexity"
    assert main(["study", "complexity", "--quick", "--out", str(out)]) == 0
    for name in complexity.FILES:
        assert (out / name).stat().st_size > 0, name
    for name in ("scaling.png", "sequential.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kinds = {r["measurement"] for r in rows}
    assert {
        "forward_backward_time",
        "peak_memory",
        "forward_flops",
        "batch1_forward_time",
        "critical_path",
        "path_layers",
        "crossover_n_measured",
    } <= kinds
    for r in rows:
        if r["measurement"] == "forward_flops":
            twin = next(
                s["value"]
                for s in rows
                if s["measurement"] == "forward_flops_closed_form"
                and (s["layer"], s["n"], s["d"]) == (r["layer"], r["n"], r["d"])
            )
            assert r["value"] == twin
        if r["measurement"] == "forward_backward_time":
            assert math.isfinite(float(r["value"])) and float(r["value"]) > 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Table 1, measured")
    assert "| recurrent (LSTM) | O(n·d²) |" in printed
    assert "| 8 | 8 | 16 |" in printed  # crossover at d = 8: paper n = d, these layers n = 2d


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kernel", "4"], "--kernel"),
        (["--widths", "8,12", "--heads", "8"], "--widths"),
        (["--lengths", "16"], "--lengths"),
        (["--threads", "-1"], "--threads"),
    ],
)
def test_bad_options_are_named(tmp_path, capsys, argv, message):
    code = main(["study", "complexity", "--quick", "--out", str(tmp_path / "x"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_list_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["study", "complexity", "--out", str(tmp_path), "--lengths", "16,abc"])
    assert "--lengths: 'abc' is not a positive integer" in capsys.readouterr().err


def test_cuda_without_a_device_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["study", "complexity", "--quick", "--device", "cuda", "--out", str(tmp_path)])
    assert code == 2
    assert "--device cuda" in capsys.readouterr().err
