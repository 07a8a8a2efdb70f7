"""Speed of `transformer train` itself: target tokens/s and model FLOPs utilisation (MFU).

What is measured
----------------
The real training loop (`transformer.training.Trainer`: batches from the token-budget sampler,
collation, forward, label-smoothed loss, backward, Adam with the paper's schedule) on
configs/multi30k.yaml, with validation and checkpointing switched off. For each precision the
trainer runs `--warmup` untimed updates and then `--updates` timed ones. Throughput counts real
(non-pad) target tokens per second of wall clock between the start of the first timed update and
the end of the last one, so data loading is included.

MFU: each update's matmul FLOPs are counted analytically on its padded batch shapes
(`model_speed.forward_matmul_flops`, times 3 for forward + backward) and divided by the FLOP/s of a
large square matmul measured in the same run and precision: the share of this machine's attainable
matmul speed that training reaches.

Run (from the repository root, after `make setup`; prepares work/multi30k-de-en if missing)::

    .venv/bin/python benchmarks/train_speed.py
    .venv/bin/python benchmarks/train_speed.py --precisions fp32 --updates 10 --warmup 2
    .venv/bin/python benchmarks/train_speed.py --precisions bf16,bf16+compile   # torch.compile

Writes benchmarks/results/train_speed.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import forward_matmul_flops, matmul_flops_per_s
from transformer.data import prepare
from transformer.training.config import load_config
from transformer.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def ensure_data(data_dir: Path) -> None:
    if (data_dir / "manifest.json").is_file():
        return
    m = REPO / "data" / "multi30k"
    prepare(
        src_lang="de",
        tgt_lang="en",
        train=m / "train",
        valid=m / "val",
        tests=[m / "test_2016_flickr"],
        out=data_dir,
        vocab_size=8000,
    )


def measure(
    config_path: Path,
    data_dir: Path,
    precision: str,
    warmup: int,
    updates: int,
    compile: bool = False,
) -> dict:
    overrides = [
        f"data.dir={data_dir}",
        f"train.precision={precision}",
        f"train.compile={str(compile).lower()}",
        f"train.max_updates={warmup + updates}",
        "train.valid_every=0",
        "train.valid_bleu=false",
        "train.save_every=0",
        "train.save_every_minutes=0",
        "train.progress=false",
    ]
    config = load_config(config_path, overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir, log=lambda message: None)
        trainer.validator.data = None  # no validation at the end either
        starts: list[float] = []
        tokens: list[float] = []
        flops: list[int] = []
        step = trainer.train_step

        def timed_step(group):  # record each update's start, tokens and padded-shape FLOPs
            starts.append(time.perf_counter())
            tokens.append(sum(b.n_tgt_tokens for b in group))
            flops.append(
                sum(
                    3
                    * forward_matmul_flops(
                        trainer.model_config, b.size, b.src.shape[1], b.tgt_in.shape[1]
                    )
                    for b in group
                )
            )
            return step(group)

        trainer.train_step = timed_step
        trainer.train()
        starts.append(time.perf_counter())
    seconds = starts[-1] - starts[warmup]
    return {
        "precision": precision,
        "compile": compile,
        "warmup": warmup,
        "updates": updates,
        "seconds": seconds,
        "tokens_per_s": sum(tokens[warmup:]) / seconds,
        "flops_per_s": sum(flops[warmup:]) / seconds,
        "parameters": trainer.model.num_parameters(),
        "device": str(trainer.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "multi30k.yaml")
    parser.add_argument("--data", type=Path, default=REPO / "work" / "multi30k-de-en")
    parser.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma-separated variants: fp32, bf16, and either with +compile (train.compile)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--compile-warmup",
        type=int,
        default=12,
        help="untimed updates of a +compile variant (compilation and recompilations for new "
        "batch shapes happen there)",
    )
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument(
        "--json", type=Path, default=REPO / "benchmarks" / "results" / "train_speed.json"
    )
    args = parser.parse_args()
    ensure_data(args.data)
    precisions = args.precisions.split(",")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = []
    for variant in precisions:
        p, _, extra = variant.partition("+")
        if p not in dtypes or extra not in ("", "compile"):
            parser.error(f"--precisions: unknown variant {variant!r}")
        compiled = extra == "compile"
        warmup = args.compile_warmup if compiled else args.warmup
        r = measure(args.config, args.data, p, warmup, args.updates, compiled)
        r["variant"] = variant
        # the peak of the device the trainer ran on (train.device auto: CUDA where there is one)
        peak = matmul_flops_per_s(torch.device(r["device"]), dtypes[p], 2048, reps=5)
        r["matmul_peak_flops_per_s"] = peak
        r["mfu"] = r["flops_per_s"] / peak
        results.append(r)
        print(f"  {variant}: {r['tokens_per_s']:,.0f} target tok/s, MFU {r['mfu']:.0%}", flush=True)
    base = results[0]["tokens_per_s"]
    print()
    print("| variant | target tokens/s | vs first | achieved GFLOP/s | matmul peak GFLOP/s | MFU |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x "
            f"| {r['flops_per_s'] / 1e9:,.1f} | {r['matmul_peak_flops_per_s'] / 1e9:,.1f} "
            f"| {r['mfu']:.0%} |"
        )
    report = {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": str(args.config.relative_to(REPO))
        if args.config.is_relative_to(REPO)
        else str(args.config),
        "warmup": args.warmup,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
