"""Where a bf16 training update of configs/base.yaml spends its time on a CUDA GPU.

Run from the repository root on a machine with a GPU and Multi30k prepared in
work/multi30k-de-en (benchmarks/train_speed.py prepares it):

    python3 benchmarks/gpu_profile.py

It prints (1) the wall time of each of 14 updates (2 batches each, about 22,000 target tokens),
(2) torch.profiler tables of those updates sorted by CPU and by GPU self time, and (3) target
tokens/s of 20 updates after 5 untimed ones, with `train.compile=true` and without, through
gpu_suite.measure_training. The compiled figure includes compilation: the batches come in many
lengths, so the compiled model keeps recompiling within such a short window.

benchmarks/results/gpu_profile_base_bf16.txt is the output of this script's first revision (the
same steps, written as one flat script) on an H200 (torch 2.11), before the
model's attention left out cuDNN's backend: cuDNN built an execution plan for every new shape.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from torch.profiler import ProfilerActivity, profile

from gpu_suite import measure_training, timing_overrides
from transformer.training.config import load_config
from transformer.training.trainer import Trainer

CONFIG = Path("configs/base.yaml")


def overrides(extra: list[str], updates: int) -> list[str]:
    data, cuda = Path("work/multi30k-de-en"), torch.device("cuda")
    return [*timing_overrides(data, cuda, "bf16", 2, updates), *extra]


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


def compare_compile() -> None:
    for name, extra in (("compile", ["train.compile=true"]), ("nocompile", [])):
        start = time.perf_counter()
        try:
            r = measure_training(
                CONFIG, overrides(extra, 25), 5, 20, torch.device("cuda"), Path(tempfile.mkdtemp())
            )
        except Exception as e:  # report and go on to the next variant
            print(name, "failed", repr(e)[:500])
            continue
        print(
            name, "tokens/s", round(r["tokens_per_s"]), "TFLOP/s", r["flops_per_s"] / 1e12,
            "wall", round(time.perf_counter() - start, 1), flush=True,
        )  # fmt: skip


if __name__ == "__main__":
    profile_updates()
    compare_compile()
