"""Measurements behind `transformer study complexity`: time, peak memory, counted FLOPs, the
critical path of dependent kernels, and the number of stacked layers that connect two positions.

Shapes: B batch, n sequence length, d width. Layers come from `transformer.study.table1_layers`.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

from transformer.study.table1_layers import (
    DilatedCausalConvolution,
    LayerSizes,
    build_layer,
)


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent a of y = c * x^a."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a slope needs at least 2 (x, y) pairs, got {len(xs)} x and {len(ys)} y")
    if any(v <= 0 for v in (*xs, *ys)):
        raise ValueError("a log-log slope needs positive x and y values")
    lx = [math.log(v) for v in xs]
    ly = [math.log(v) for v in ys]
    slope, _ = fit_line(lx, ly)
    return slope


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y against x."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a line needs at least 2 (x, y) pairs, got {len(xs)} x and {len(ys)} y")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a line needs at least 2 distinct x values")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


# ----------------------------------------------------------------------------- time and memory


@dataclass(frozen=True)
class Timing:
    """Wall times of repeated calls, after one warm-up call (seconds)."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], repeats: int, device: torch.device) -> Timing:
    """Time `fn` `repeats` times after one untimed warm-up call."""
    fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(tuple(times))


def forward_backward(layer: nn.Module, x: Tensor) -> Callable[[], None]:
    """One training step's worth of a layer: forward, then backward of a fixed output gradient."""
    grad = torch.randn(x.shape, device=x.device, dtype=x.dtype)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)

    return step


def forward_only(layer: nn.Module, x: Tensor) -> Callable[[], None]:
    """Inference: one forward pass without autograd."""

    def step() -> None:
        with torch.no_grad():
            layer(x)

    return step


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null (the profiler's start and
    stop lines); Python errors are raised after it is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during one call of `fn`, above what was allocated before it.

    CUDA: the caching allocator's `max_memory_allocated`. CPU: PyTorch's profiler records every
    allocation and free of the CPU allocator (kernel workspaces included); the peak is the highest
    running total of those, in the order they happened.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with (
        _native_stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())  # stable: simultaneous events keep their order
    total = peak = 0
    for e in events:
        total += e.nbytes()
        peak = max(peak, total)
    return peak


# ----------------------------------------------------------------------------- FLOPs


@contextlib.contextmanager
def onednn_off() -> Iterator[None]:
    """Run without oneDNN, whose LSTM kernel runs all n steps inside one opaque call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def counted_flops(key: str, n: int, d: int, sizes: LayerSizes, batch: int) -> int:
    """Forward FLOPs of one layer on a (batch, n, d) input, counted by `FlopCounterMode`.

    The counter knows matmuls and convolutions by their shapes. It has no formula for the fused
    CPU attention kernel nor for the oneDNN LSTM kernel (each a single opaque call), so the layers
    run where PyTorch executes their reference decompositions instead: on the meta device (shapes
    only, no data), and for the LSTM, whose n steps would be slow to dispatch on meta, on the CPU
    with oneDNN off, where it issues the recurrence step by step. Same functions, same shapes.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if key == "recurrent":
        device, context = torch.device("cpu"), onednn_off()
    else:
        device, context = torch.device("meta"), contextlib.nullcontext()
    with torch.device(device):
        layer = build_layer(key, d, sizes)
        x = torch.zeros(batch, n, d)
    with context, torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x)
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- sequential steps


class CriticalPath(TorchDispatchMode):
    """Traces the kernels a computation dispatches and the longest chain of dependent ones.

    Each tensor gets a depth: 1 + the largest depth among the inputs of the kernel that wrote it
    (views cost nothing: a view has its base's depth; an in-place kernel deepens the tensor it
    writes). `depth(t)` is then the number of kernels that must run one after another to produce t,
    however many processors are available.
    """

    def __init__(self) -> None:
        super().__init__()
        self._depth: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.kernels = 0

    def depth(self, t: Tensor) -> int:
        return self._depth.get(t, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        start = max((self.depth(t) for t in inputs), default=0)
        if func.is_view:
            new = start
        else:
            new = start + 1
            self.kernels += 1
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                self._depth[t] = new
        return out


def critical_path(key: str, n: int, d: int, sizes: LayerSizes) -> tuple[int, int]:
    """(longest chain of dependent kernels, kernels in all) of one forward pass at batch 1, CPU.

    oneDNN is off: its LSTM runs all n steps inside one call, which would hide the chain that its
    reference implementation issues step by step (and any parallel hardware must still follow).
    The pass is a training one (the parameters want gradients): inference on a CPU writes
    attention out for few queries (`attention.inference_faster`), and the chain would then
    change with n for a reason that has nothing to do with the layer type.
    """
    with torch.device("cpu"):
        layer = build_layer(key, d, sizes)
        x = torch.randn(1, n, d)
    with onednn_off(), torch.enable_grad():
        with CriticalPath() as trace:
            y = layer(x)
        return trace.depth(y), trace.kernels


# ----------------------------------------------------------------------------- path length


def stacked_layer(key: str, d: int, sizes: LayerSizes, index: int) -> nn.Module:
    """Layer `index` (0-based) of a stack; 'dilated' is a causal convolution of dilation k^index."""
    if key == "dilated":
        return DilatedCausalConvolution(d, sizes.kernel, dilation=sizes.kernel**index)
    return build_layer(key, d, sizes)


@contextlib.contextmanager
def _differentiable_attention() -> Iterator[None]:
    """PyTorch's math attention kernel, the one forward-mode differentiation supports."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def layers_to_connect(
    key: str, n: int, d: int, sizes: LayerSizes, max_layers: int, seed: int = 0
) -> int | None:
    """The fewest stacked layers (random weights) through which output n-1 depends on input 0.

    Forward-mode differentiation in float64: input position 0 carries a random tangent, every
    other position a zero one, and the tangent is pushed up the stack one layer at a time; output
    n-1 depends on input 0 once its tangent is not exactly zero. Where there is no dependency the
    zero is exact (masked attention weights are exactly 0, a convolution never reads beyond its
    kernel); a real one stays far above float64's underflow at the small n probed here.
    None when `max_layers` do not connect them (for 'dilated', also once a layer's dilation
    exceeds n: it and every layer above read nothing but the position itself).
    """
    import torch.autograd.forward_ad as fwad

    torch.manual_seed(seed)
    y = torch.randn(1, n, d, dtype=torch.float64)
    tangent = torch.zeros_like(y)
    tangent[0, 0] = torch.randn(d, dtype=torch.float64)
    with warnings.catch_warnings():  # PyTorch scripts its forward-mode rules on first use
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
        with _differentiable_attention(), fwad.dual_level():
            for count in range(1, max_layers + 1):
                if key == "dilated" and sizes.kernel ** (count - 1) > n:
                    return None
                layer = stacked_layer(key, d, sizes, count - 1).double()
                out = fwad.unpack_dual(layer(fwad.make_dual(y, tangent)))
                y, tangent = out.primal.detach(), out.tangent.detach()
                if not torch.isfinite(tangent).all():
                    raise FloatingPointError(
                        f"{key}: the path-length probe's tangent is not finite"
                    )
                if (tangent[0, n - 1] != 0).any():
                    return count
    return None


def recurrence_carries_the_path(n: int, d: int, seed: int = 0) -> bool:
    """True if one LSTM layer connects input 0 to output n-1, and only through its recurrence.

    Cut the recurrence (W_hh = 0, and the forget gate shut by a bias of -10^4, whose sigmoid is
    exactly 0 in float64) and each output reads its own input only: the dependency must vanish.
    The recurrence moves one position per step, so the path from 0 to n-1 is n-1 steps long.
    """
    sizes = LayerSizes()
    connected = layers_to_connect("recurrent", n, d, sizes, max_layers=1, seed=seed) == 1
    torch.manual_seed(seed)
    layer = build_layer("recurrent", d, sizes).double()
    lstm = layer.lstm
    with torch.no_grad():
        lstm.weight_hh_l0.zero_()
        lstm.bias_ih_l0[d : 2 * d] = -1e4  # gates in order input, forget, cell, output
        lstm.bias_hh_l0[d : 2 * d] = 0.0
    x = torch.randn(1, n, d, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x)[0, n - 1].sum(), x)
    return connected and not bool((grad[0, 0] != 0).any())


def expected_layers(key: str, n: int, sizes: LayerSizes) -> int:
    """The layer counts that connect position 0 to n-1 by construction (the report's check).

    A centred kernel of width k reaches (k-1)/2 positions per side per layer; causal dilations
    1, k, k^2, ... reach k^L - 1 positions back after L layers; the restricted window reaches r.
    """
    k, r = sizes.kernel, sizes.window
    if key in ("self_attention", "recurrent"):
        return 1
    if key in ("convolutional", "separable"):
        return math.ceil((n - 1) / ((k - 1) // 2))
    if key == "dilated":
        layers = 0
        while k**layers < n:  # ceil(log_k(n)) in integers
            layers += 1
        return layers
    if key == "restricted":
        return math.ceil((n - 1) / r)
    raise ValueError(f"unknown layer type {key!r}")
