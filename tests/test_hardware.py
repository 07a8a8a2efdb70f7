"""`precision: auto`: bf16 exactly where the hardware multiplies bf16 natively (AMX-bf16 or
AVX512-BF16 on a CPU, compute capability 8.0 or more on a GPU)."""

from __future__ import annotations

import contextlib
import hashlib
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformer import hardware
from transformer.hardware import (
    cpu_bf16_units,
    cpu_flags,
    fast_bf16,
    resolve_inference_precision,
    resolve_precision,
)

SAPPHIRE_RAPIDS = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor	: 1
flags		: fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ICE_LAKE = """processor	: 0
model name	: Intel(R) Xeon(R) Gold 6338
flags		: fpu vme sse2 avx2 avx512f avx512_vnni
"""
ZEN_5 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC
flags		: fpu vme sse2 avx2 avx512f avx512_vnni avx_vnni avx512_bf16 avx512_vp2intersect
"""


def write(tmp_path: Path, text: str) -> Path:
    """A cpuinfo file named after its text (hardware reads each path once per process)."""
    path = tmp_path / f"cpuinfo-{hashlib.sha1(text.encode()).hexdigest()[:12]}"
    path.write_text(text, encoding="utf-8")
    return path


def test_flags_of_the_first_cpu(tmp_path: Path) -> None:
    flags = cpu_flags(write(tmp_path, SAPPHIRE_RAPIDS))
    assert {"amx_bf16", "amx_tile", "avx512_bf16"} <= flags
    assert "avx512_vnni" in cpu_flags(write(tmp_path, ICE_LAKE))
    assert cpu_flags(tmp_path / "missing") == set()


def test_bf16_units_from_the_flags(tmp_path: Path) -> None:
    assert cpu_bf16_units(write(tmp_path, SAPPHIRE_RAPIDS)) == "AMX-bf16"  # AMX wins over AVX512
    assert cpu_bf16_units(write(tmp_path, ZEN_5)) == "AVX512-BF16"
    assert cpu_bf16_units(write(tmp_path, ICE_LAKE)) is None


def test_auto_follows_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for text, expected, units in (
        (SAPPHIRE_RAPIDS, "bf16", "AMX-bf16"),
        (ZEN_5, "bf16", "AVX512-BF16"),
        (ICE_LAKE, "fp32", "neither AMX-bf16 nor AVX512-BF16"),
    ):
        monkeypatch.setattr(hardware, "CPUINFO", write(tmp_path, text))
        chosen, why = resolve_precision("auto", "cpu")
        assert chosen == expected
        assert why.startswith(f"auto: the CPU has {units}")
        assert fast_bf16(torch.device("cpu"))[0] == (expected == "bf16")


def test_without_flags_pytorchs_amx_check_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "missing")  # no /proc/cpuinfo
    for has_amx, expected in ((True, "AMX-bf16"), (False, None)):
        monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda answer=has_amx: answer)
        assert cpu_bf16_units() == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept(precision: str) -> None:
    assert resolve_precision(precision, "cpu") == (precision, "as configured")


def test_the_flags_agree_with_pytorchs_own_amx_check() -> None:
    """Two independent answers on this machine: the kernel's flag list (what we read) and
    PyTorch's request for the AMX tile permission (False on a CPU without AMX)."""
    init_amx = torch._C._cpu._init_amx  # private, but the one other source of the answer
    assert (cpu_bf16_units() == "AMX-bf16") == bool(init_amx())


def test_cuda_by_compute_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU")
    for capability, expected in (((9, 0), True), ((8, 0), True), ((7, 5), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        assert fast_bf16(torch.device("cuda", 0))[0] is expected
        assert resolve_precision("auto", "cuda:0")[0] == ("bf16" if expected else "fp32")


def test_inference_auto_is_bf16_on_cpus_with_bf16_units_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for text, expected in ((SAPPHIRE_RAPIDS, "bf16"), (ZEN_5, "bf16"), (ICE_LAKE, "fp32")):
        monkeypatch.setattr(hardware, "CPUINFO", write(tmp_path, text))
        chosen, why = resolve_inference_precision("auto", "cpu")
        assert chosen == expected and why.startswith("auto: the CPU has")
    # On a GPU decoding in bf16 measured slower than fp32: auto keeps fp32 whatever it has.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert resolve_inference_precision("auto", "cuda:0")[0] == "fp32"
    for precision in ("fp32", "bf16"):
        assert resolve_inference_precision(precision, "cpu") == (precision, "as asked")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        resolve_inference_precision("fp16", "cpu")


def test_vendor_from_the_cpuinfo(tmp_path: Path) -> None:
    assert hardware.cpu_vendor(write(tmp_path, SAPPHIRE_RAPIDS)) == "GenuineIntel"
    assert hardware.cpu_vendor(write(tmp_path, ZEN_5)) == "AuthenticAMD"
    assert hardware.cpu_vendor(tmp_path / "missing") == ""


def test_fp32_inference_uses_onednn_on_amd_cpus_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for text, expected in ((ZEN_5, True), (SAPPHIRE_RAPIDS, False), (ICE_LAKE, False)):
        monkeypatch.setattr(hardware, "CPUINFO", write(tmp_path, text))
        assert hardware.onednn_fp32_linear("cpu") is expected
        context = hardware.inference_context("cpu", "fp32")
        assert isinstance(context, hardware.OneDNNLinear) is expected
        assert isinstance(hardware.inference_context("cpu", "bf16"), torch.autocast)
        training = hardware.training_context("cpu", "fp32")
        assert isinstance(training, hardware.OneDNNLinear) is expected
        assert not expected or training.train
        assert isinstance(hardware.training_context("cpu", "bf16"), torch.autocast)
    assert not hardware.onednn_fp32_linear("cuda")


def count_onednn_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make `OneDNNLinear` count its calls of oneDNN (the list's length)."""
    calls: list[int] = []
    real = hardware.onednn_linear

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(hardware, "onednn_linear", counted)
    return calls


@pytest.mark.parametrize("shape", [(7, 32), (3, 5, 32)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_the_written_out_map(shape: tuple[int, ...], bias: bool) -> None:
    """oneDNN gives x W^T + b to float32 rounding (against float64)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(48, 32, generator=g)
    b = torch.randn(48, generator=g) if bias else None
    expected = torch.einsum("...i,oi->...o", x.double(), w.double())
    if b is not None:
        expected = expected + b.double()
    got = hardware.onednn_linear(x, w, b)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_the_mode_sends_fp32_inference_to_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_onednn_calls(monkeypatch)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 2, 8)
    with torch.no_grad(), hardware.OneDNNLinear():
        got = layer(x)  # bias positional
        got_kw = torch.nn.functional.linear(x, layer.weight, bias=layer.bias)
    assert len(calls) == 2
    with torch.no_grad():
        torch.testing.assert_close(got, layer(x))
    assert torch.equal(got_kw, got)


def test_the_mode_leaves_training_other_dtypes_and_autocast_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_onednn_calls(monkeypatch)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with hardware.OneDNNLinear():
        layer(x).sum().backward()  # a gradient to compute
        half = torch.nn.functional.linear(x.bfloat16(), layer.weight.bfloat16())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            cast = layer(x)  # autocast still casts to bf16 inside the mode
        with torch.no_grad():
            vector = layer(x[0])  # 1-D input
    assert calls == []
    assert layer.weight.grad is not None
    assert half.dtype == torch.bfloat16 and cast.dtype == torch.bfloat16
    assert vector.shape == (4,)


@pytest.mark.parametrize("shape", [(7, 32), (3, 5, 32)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("outputs", [48, 16])  # dW's two orders of the operands
def test_training_through_onednn_gives_the_gradients_of_f_linear(
    shape: tuple[int, ...], bias: bool, outputs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With train=True the mode takes calls that need a gradient too: the output and all three
    gradients equal F.linear's to float32 rounding, and the products ran in oneDNN."""
    calls = count_onednn_calls(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(outputs, 32, generator=g)
    b = torch.randn(outputs, generator=g) if bias else None
    upstream = torch.randn(*shape[:-1], outputs, generator=g)

    def run(mode: bool) -> tuple[torch.Tensor, ...]:
        leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
        with hardware.OneDNNLinear(train=True) if mode else contextlib.nullcontext():
            y = torch.nn.functional.linear(*leaves)
        y.backward(upstream)
        return (y.detach(), *(t.grad for t in leaves))

    expected = run(mode=False)
    assert calls == []
    got = run(mode=True)
    assert len(calls) == 3  # forward, dx, dW
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_training_through_onednn_skips_gradients_nobody_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_onednn_calls(monkeypatch)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)  # an input that needs no gradient: no dx product
    with hardware.OneDNNLinear(train=True):
        layer(x).sum().backward()
    assert len(calls) == 2 and layer.weight.grad is not None and layer.bias.grad is not None
    torch.testing.assert_close(layer.bias.grad, torch.full((4,), 3.0))


_FAULTS = """
import resource, sys, torch
from transformer.hardware import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():  # minor page faults of writing a fresh 100 MB tensor
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(25_000_000).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(6):  # where the block lands settles after a few rounds
    faults()
print(kept, max(faults() for _ in range(3)))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_kept_memory_is_reused_without_page_faults() -> None:
    """A 100 MB block freed and asked for again is served from memory the process kept, not
    from a fresh mapping that faults in its 24,000 pages again (each case in its own process:
    the setting lasts as long as the process)."""

    def run(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[0], int(out[1])

    kept, with_keep = run("keep")
    _, without = run("default")
    assert kept == "True"
    assert without > 20_000  # glibc maps blocks this large afresh, and unmaps them when freed
    assert with_keep < 1_000
