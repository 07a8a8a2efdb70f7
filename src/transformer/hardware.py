"""What the hardware offers: whether bfloat16 arithmetic is faster than float32 on a device, and
which float32 matmul to use on a CPU.

bf16 pays where the hardware multiplies bf16 matrices natively:

- a CPU with AMX-bf16 tiles (Intel Sapphire Rapids and later: about 2.5 times its float32 matrix
  rate under PyTorch's oneDNN kernels);
- a CPU with the AVX512-BF16 dot-product instructions (Intel Cooper Lake, AMD Zen 4 and later):
  two bf16 products per float32 lane. Measured on a 2-core AMD EPYC (Zen 5) with torch 2.13:
  a 4096x256 by 256x1024 matmul at 837 GFLOP/s in bf16 against 195 in float32 (MKL's), and
  `transformer train` on configs/multi30k.yaml at 2.47 times the float32 tokens/s of MKL and
  1.6 times those of oneDNN (`OneDNNLinear`, which fp32 takes there);
- a CUDA GPU of compute capability 8.0 or more (A100, H100, ...).

Elsewhere PyTorch emulates bf16 and it is slower than float32, so `auto` precision means float32
there.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def _cpuinfo_lines(path: Path) -> tuple[str, ...]:
    """The lines of a cpuinfo file, read once per path: the CPU does not change while a process
    runs, and `inference_context` asks for its vendor at every batch. Empty where unreadable."""
    try:
        return tuple(path.read_text(encoding="utf-8", errors="replace").splitlines())
    except OSError:
        return ()


def _cpuinfo_field(key: str, cpuinfo: Path | None) -> str | None:
    """The value of the first `key` line in `cpuinfo` (default: /proc/cpuinfo, Linux); None where
    unreadable or absent."""
    for line in _cpuinfo_lines(Path(cpuinfo or CPUINFO)):
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path | None = None) -> set[str]:
    """The feature flags of the first CPU listed in `cpuinfo` (default: /proc/cpuinfo, Linux);
    empty where unreadable."""
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_vendor(cpuinfo: Path | None = None) -> str:
    """The CPU's vendor_id ("GenuineIntel", "AuthenticAMD", ...); "" where unreadable."""
    return _cpuinfo_field("vendor_id", cpuinfo) or ""


def cpu_bf16_units(cpuinfo: Path | None = None) -> str | None:
    """The CPU's native bf16 matrix arithmetic: "AMX-bf16" (tiles), "AVX512-BF16" (dot-product
    instructions) or None. From its flags where `cpuinfo` lists them (Linux), else PyTorch's own
    check, which asks the kernel for the AMX tile permission (and knows nothing of AVX512-BF16)."""
    flags = cpu_flags(cpuinfo)
    if flags:
        for flag, units in (("amx_bf16", "AMX-bf16"), ("avx512_bf16", "AVX512-BF16")):
            if flag in flags:
                return units
        return None
    init_amx = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    return "AMX-bf16" if init_amx is not None and init_amx() else None


def fast_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether bf16 autocast is faster than float32 on `device`, and why (for the log)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return True, f"{name} (compute capability {major}.{minor}) has bf16 tensor cores"
        return False, f"{name} (compute capability {major}.{minor}) has no bf16 tensor cores"
    if device.type == "cpu":
        units = cpu_bf16_units()
        if units is not None:
            return True, f"the CPU has {units}"
        return (
            False,
            "the CPU has neither AMX-bf16 nor AVX512-BF16 (bf16 would be slower than fp32)",
        )
    return False, f"no bf16 speed-up known for {device.type} devices"


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """The precision to train or run in: `precision` itself unless it is "auto", in which case
    "bf16" where `fast_bf16(device)` and "fp32" elsewhere; with the reason, for the log."""
    if precision != "auto":
        return precision, "as configured"
    fast, why = fast_bf16(device)
    return ("bf16" if fast else "fp32"), f"auto: {why}"


# Precisions of inference (translation, classification): fp32 is exact; bf16 autocast is faster
# on a CPU with native bf16 units, with outputs that may differ slightly from fp32's; "auto"
# chooses between them (`resolve_inference_precision`).
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_INFERENCE_PRECISION = "auto"  # of the Translator, the Classifier and the commands


def resolve_inference_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """The precision to decode or classify in: `precision` itself unless it is "auto", with the
    reason (for the log). ValueError for an unknown one.

    "auto" means bf16 on a CPU where `fast_bf16`: on a 2-core AMD EPYC (Zen 5, AVX512-BF16), one
    thread, beam 4 on test2016 ran 1.48 times as fast as fp32, at BLEU 40.96 against 40.99
    (benchmarks/engine_speed.py), and a sentence's translation is the same alone and in a batch
    in both precisions. Elsewhere fp32: on an H200, decoding a small model in bf16 was slower
    than in fp32 (0.49x greedy, 0.90x at beam 4: kernel launches, not arithmetic, bound it
    there, and autocast adds casts)."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}"
        )
    if precision != "auto":
        return precision, "as asked"
    device = torch.device(device)
    if device.type != "cpu":
        return "fp32", f"auto: on {device.type}, bf16 decoding measured no faster than fp32"
    fast, why = fast_bf16(device)
    return ("bf16" if fast else "fp32"), f"auto: {why}"


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of `precision` on `device`: none for "fp32"; bf16 or fp16 autocast
    (weights stay float32) otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])


# fp32 on an AMD CPU: PyTorch multiplies fp32 matrices with MKL, which there runs at an AVX2 rate
# (105 GFLOP/s on one Zen 5 core, where bf16 reaches 454); oneDNN, which PyTorch also carries,
# reports AVX-512 on that CPU (ONEDNN_VERBOSE=1). On a 2-core AMD EPYC (Zen 5): one thread,
# beam-4 decoding of test2016 took 6.35 s with every linear map in oneDNN against 9.55 s in MKL
# (1.50x), with the same translations (1,000 of 1,000, greedy and beam 4); two threads,
# `transformer train` in fp32 (configs/multi30k.yaml) ran at 5,144 target tokens/s with its
# linear maps in oneDNN, forward and backward, against 3,520 in MKL (1.46x). Intel CPUs keep MKL
# (not measured with oneDNN).
ONEDNN_FP32_VENDORS = ("AuthenticAMD",)


def onednn_fp32_linear(device: torch.device | str) -> bool:
    """Whether fp32 inference and training on `device` should run their linear maps in oneDNN
    (`OneDNNLinear`): a CPU of a vendor in ONEDNN_FP32_VENDORS, with PyTorch built with
    oneDNN."""
    return (
        torch.device(device).type == "cpu"
        and cpu_vendor() in ONEDNN_FP32_VENDORS
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


_ONEDNN = threading.local()  # depth: how many `OneDNNLinear` this thread is in, like the modes


class OneDNNLinear(TorchFunctionMode):
    """Inside it, `F.linear` on float32 CPU tensors runs oneDNN's fp32 matmul (the kernel behind
    PyTorch's own CPU inference compiler) instead of MKL's: calls that need no gradient always,
    and with `train=True` also those that do (`OneDNNLinearFunction`, whose backward multiplies in
    oneDNN too). Every other call, and every call under CPU autocast, is untouched. Results agree
    with F.linear to float32 rounding (a different summation order), not bit for bit."""

    def __init__(self, train: bool = False):
        super().__init__()
        self.train = train

    def __enter__(self):
        _ONEDNN.depth = getattr(_ONEDNN, "depth", 0) + 1
        return super().__enter__()

    def __exit__(self, *exc):
        _ONEDNN.depth -= 1
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            tensors = (x, weight) if bias is None else (x, weight, bias)
            if (
                x.dim() >= 2
                and not torch.is_autocast_enabled("cpu")  # autocast's casts come first
                and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            ):
                if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
                    return onednn_linear(x, weight, bias)
                if self.train:
                    return OneDNNLinearFunction.apply(x, weight, bias)
        return func(*args, **kwargs)


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x W^T + b by oneDNN's fp32 matmul (no autograd): what `OneDNNLinear` calls."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


Linear = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]  # (x, W, b) -> x W^T + b


def current_linear() -> Linear:
    """The fp32 linear map of the context: `onednn_linear` inside a `OneDNNLinear`, else
    F.linear; for code that multiplies in its own autograd function, where the mode does not
    reach (the training loss)."""
    return onednn_linear if getattr(_ONEDNN, "depth", 0) else F.linear


def weight_gradient(linear: Linear, dy: Tensor, x: Tensor) -> Tensor:
    """dW = dy^T x over the rows of dy (N, out) and x (N, in), with the products of `linear`.

    oneDNN's linear copies a transposed first operand into a contiguous one and takes a
    transposed second one as it is, so with `onednn_linear` dW is (dy^T) (x^T)^T when dy is the
    narrower of the two and ((x^T) (dy^T)^T)^T otherwise: the copy is of the narrower one. For
    the output projection of configs/multi30k.yaml (4,092 rows of 256 inputs, 8,000 outputs) the
    copy of dy had taken as long as the product. Otherwise torch.mm, which takes transposed
    operands as they are."""
    if linear is not onednn_linear:
        return torch.mm(dy.t(), x)
    if dy.size(1) <= x.size(1):
        return onednn_linear(dy.t(), x.t(), None)
    return onednn_linear(x.t(), dy.t(), None).t()


class OneDNNLinearFunction(torch.autograd.Function):
    """F.linear(x, W, b) with its three products in oneDNN: y = x W^T + b forward; backward
    dx = dy W (W^T, a transposed second operand, read as it is) and dW = dy^T x over all rows
    (`weight_gradient`), with db the column sums of dy."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        rows = grad.reshape(-1, grad.size(-1))  # (N, out)
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad, weight.t(), None)  # (..., in)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(onednn_linear, rows, x.reshape(-1, x.size(-1)))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        return grad_x, grad_weight, grad_bias


def inference_context(
    device: torch.device | str, precision: str
) -> contextlib.AbstractContextManager:
    """The context to run a model for inference in `precision` on `device`: bf16 (or fp16)
    autocast; for fp32, `OneDNNLinear` where `onednn_fp32_linear(device)`, else nothing."""
    return _precision_context(device, precision, train=False)


def training_context(
    device: torch.device | str, precision: str
) -> contextlib.AbstractContextManager:
    """The context of a training forward pass: as `inference_context`, with the linear maps
    that need a gradient in oneDNN too (`OneDNNLinear(train=True)`; the backward needs no
    context: the products are in the autograd graph)."""
    return _precision_context(device, precision, train=True)


def _precision_context(
    device: torch.device | str, precision: str, train: bool
) -> contextlib.AbstractContextManager:
    if precision == "fp32" and onednn_fp32_linear(device):
        return OneDNNLinear(train=train)
    return autocast(device, precision)


# mallopt(3) parameters of glibc's malloc.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory this process frees for its next allocations, as
    jemalloc and tcmalloc (which PyTorch's CPU tuning guide suggests preloading) also do; returns
    whether it applies (False with another C library). Once per process; it lasts as long.

    By default glibc serves every block over 32 MB (the logits of a training batch: 4,092 x 8,000
    bf16 values are 65 MB) with a fresh mapping and unmaps it when freed, and returns the top of
    its heap to the system above a threshold, so a training step page-faults its largest
    tensors back in, zero-filled by the kernel, at every update: about 28,000 faults per bf16
    update of configs/multi30k.yaml and 80,000 in fp32. Without mappings (M_MMAP_MAX 0) and
    trimming (M_TRIM_THRESHOLD 2 GiB) it is 7,600 and 19,000, and an update took 3% less time
    in bf16 and 7% less in fp32 on a 2-core AMD EPYC. The process keeps its peak memory."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
