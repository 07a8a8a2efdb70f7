"""Where a bf16 training update of configs/base.yaml spends its time on a CUDA GPU.

Run from the repository root on a machine with a GPU and Multi30k prepared in
work/multi30k-de-en (benchmarks/train_speed.py and benchmarks/gpu_suite.py prepare it):

    python3 benchmarks/gpu_profile.py

It prints (1) the wall time of each of 14 updates (2 batches each, about 22,000 target tokens),
(2) torch.profiler tables of those updates sorted by CPU and by GPU self time, with the GPU's
busy share of the wall time, and (3) target tokens/s of eager training at three batch sizes
(12,500 padded tokens per batch x 2 batches per update, as configs/base.yaml; 25,000 x 1;
50,000 x 1), through gpu_suite.measure_training: if the speed grows with the batch, an update is
bound by the CPU that launches its kernels, not by the GPU's arithmetic, and (4) the CPU cost of
one bf16 linear map (forward and backward, autocast, the feed-forward's 512 -> 2048) when its row
count is the same at every call, new at every call, or cycles through 40 counts already seen:
token batches give every batch its own row count, and a matmul library that chooses its kernel
per shape pays that choice again for every shape it has not seen. (torch.compile's comparison is
the gpu_suite step train_compile.) `--parts` picks among profile, batches and shapes (default
all three).

benchmarks/results/gpu_profile_base_bf16.txt is its output on an H200 (torch 2.11), with the
loss in large blocks on the GPU; benchmarks/results/gpu_suite_compile/ holds the one before that
change (README, section "Speed on a GPU").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from gpu_suite import measure_training, timing_overrides
from transformer.training.config import load_config
from transformer.training.trainer import Trainer

CONFIG = Path("configs/base.yaml")


def overrides(extra: list[str], updates: int, update_freq: int = 2) -> list[str]:
    data, cuda = Path("work/multi30k-de-en"), torch.device("cuda")
    return [*timing_overrides(data, cuda, "bf16", update_freq, updates), *extra]


def profile_updates(updates: int = 14) -> None:
    trainer = Trainer(load_config(CONFIG, overrides([], updates)), Path(tempfile.mkdtemp()))
    trainer.validator.data = None
    trainer.save = lambda: None
    step, times = trainer.train_step, []

    def timed(group):
        start = time.perf_counter()
        out = step(group)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        return out

    trainer.train_step = timed
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.train()
    print("per-update seconds", [round(t, 3) for t in times])
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(table.table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60))
    kernels = [e for e in table if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    gpu = sum(e.self_device_time_total for e in kernels) / 1e6  # as the tables' "CUDA total"
    print(f"GPU busy {gpu:.3f} s of {sum(times):.3f} s of updates ({100 * gpu / sum(times):.0f}%)")


def batch_sizes() -> None:
    for max_tokens, update_freq in ((12500, 2), (25000, 1), (50000, 1)):
        extra = [f"data.max_tokens={max_tokens}"]
        r = measure_training(
            CONFIG,
            overrides(extra, 30, update_freq),
            5,
            25,
            torch.device("cuda"),
            Path(tempfile.mkdtemp()),
        )
        print(
            f"max_tokens {max_tokens} x update_freq {update_freq}: "
            f"{r['target_tokens_per_update']:,.0f} target tokens/update, "
            f"{r['tokens_per_s']:,.0f} tokens/s, {r['flops_per_s'] / 1e12:.1f} TFLOP/s, "
            f"median update {r['update_seconds_median']:.3f} s",
            flush=True,
        )


def linear_shapes(calls: int = 200, rows: int = 20000) -> None:
    cuda = torch.device("cuda")
    linear = nn.Linear(512, 2048, device=cuda)
    inputs = torch.randn(rows + calls, 512, device=cuda)
    regimes = {
        "same rows at every call": [rows] * calls,
        "new rows at every call": [rows + 1 + i for i in range(calls)],
        "40 row counts, cycled": [rows - 1 - i % 40 for i in range(calls)],
    }
    run_linear(linear, inputs[:rows])  # the same-rows regime's shape is seen before it
    for m in regimes["40 row counts, cycled"][:40]:  # and so are the cycle's
        run_linear(linear, inputs[:m])
    for name, counts in regimes.items():
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for m in counts:
                run_linear(linear, inputs[:m])
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
        per_op = {e.key: e.cpu_time_total / e.count for e in prof.key_averages()}
        print(
            f"{name}: {1e6 * wall / calls:.0f} us per forward + backward (under the profiler); "
            f"CPU per call: aten::addmm {per_op.get('aten::addmm', 0):.0f} us, "
            f"aten::mm {per_op.get('aten::mm', 0):.0f} us",
            flush=True,
        )


def run_linear(linear: nn.Module, x: torch.Tensor) -> None:
    with torch.autocast("cuda", torch.bfloat16):
        y = linear(x)
    y.backward(torch.ones_like(y))


PARTS = {"profile": profile_updates, "batches": batch_sizes, "shapes": linear_shapes}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS)
    )
    for part in parser.parse_args().parts.split(","):
        PARTS[part.strip()]()
