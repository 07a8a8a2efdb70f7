"""What the hardware offers: whether bfloat16 arithmetic is faster than float32 on a device.

bf16 pays where the hardware multiplies bf16 matrices natively:

- a CPU with AMX-bf16 tiles (Intel Sapphire Rapids and later: about 2.5 times its float32 matrix
  rate under PyTorch's oneDNN kernels);
- a CPU with the AVX512-BF16 dot-product instructions (Intel Cooper Lake, AMD Zen 4 and later):
  two bf16 products per float32 lane. Measured on a 2-core AMD EPYC (Zen 5) with torch 2.13:
  a 4096x256 by 256x1024 matmul at 837 GFLOP/s in bf16 against 195 in float32, and
  `transformer train` on configs/multi30k.yaml at 2.47 times the float32 tokens/s;
- a CUDA GPU of compute capability 8.0 or more (A100, H100, ...).

Elsewhere PyTorch emulates bf16 and it is slower than float32, so `auto` precision means float32
there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path | None = None) -> set[str]:
    """The feature flags of the first CPU listed in `cpuinfo` (default: /proc/cpuinfo, Linux);
    empty where unreadable."""
    try:
        with open(cpuinfo or CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


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
# where `fast_bf16`, with outputs that may differ slightly from fp32's.
INFERENCE_PRECISIONS = ("fp32", "bf16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of `precision` on `device`: none for "fp32"; bf16 or fp16 autocast
    (weights stay float32) otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])
