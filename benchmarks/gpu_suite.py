"""Every GPU measurement of the project in one command, for one NVIDIA H100/H200 (under 8 minutes).

Steps, run in this order in one process, each timed and written as soon as it finishes (a run
killed by a time limit keeps what was done; a step cut off mid-way stays "running"):

1. ``gpu_tests``: ``pytest -m gpu -q tests`` in a subprocess (``--continue-on-collection-errors``,
   so a test module that cannot be imported there does not hide the gpu tests); counts of passed,
   skipped, failed and errors. Without CUDA every gpu test is skipped.
2. ``train_speed``: the real Trainer (`transformer.training.Trainer`) on configs/base.yaml in
   bf16 over Multi30k (work/multi30k-de-en, prepared from data/multi30k if missing, as
   benchmarks/train_speed.py does), ``update_freq`` chosen so that an update holds about 25,000
   target tokens as in the paper. Target tokens/s over ``--updates`` timed updates after
   ``--warmup`` untimed ones (wall clock from the start of the first timed update to the end of the
   last, the device synchronized, data loading included, the checkpoint that `Trainer.train` writes
   at its end excluded). MFU: matmul FLOPs counted on the padded batch shapes
   (`model_speed.forward_matmul_flops`, x3 for forward + backward) per second, over the GPU's bf16
   dense datasheet peak (`BF16_DENSE_PEAKS`; the measured matmul peak where the device is not in
   the table, e.g. a CPU) and over a large bf16 matmul measured in the same run. Projection: the
   paper's base run, 100,000 updates of 25,000 target tokens, takes 100000 * 25000 / tokens_per_s
   seconds at the measured speed (which assumes the speed does not depend on the batch size near
   25,000 tokens). Multi30k's BPE has 8,000 tokens, not the paper's ~37,000: a second estimate
   scales the time by the FLOPs of the same batches with a 37,000-token softmax, at the same
   achieved FLOP/s.
3. ``train_compile``: step 2 again with ``train.compile=true`` (`torch.compile` of the model),
   after ``Sizes.compile_warmup`` untimed updates (compilation, and the recompilations that new
   batch shapes cause until the compiled graph takes dynamic shapes, fall there); the same timed
   updates; tokens/s against step 2's eager figure, the graphs compiled, and the untimed seconds.
   It tells whether ``train.compile`` pays on the device: a long run amortizes compilation, so the
   comparison is of the speed after it.
4. ``model``: the model that ``decode_speed`` and ``engine_speed`` decode with: ``--model DIR``, or
   else configs/multi30k.yaml trained for ``--train-minutes`` (bf16 on CUDA) and saved.
5. ``decode_speed``: benchmarks/decode_speed.py's comparison (our cached decoder, the same without
   the cache, Hugging Face Marian when ``transformers`` is installed), greedy and beam 4, on the
   device (its CLI decodes on the CPU only, so its functions are called here with the model and the
   batches on the device, each batch synchronized before the clock is read).
6. ``engine_speed``: benchmarks/engine_speed.py's comparison on the device: torch fp32, torch bf16
   (autocast), and CTranslate2 at float16 and int8_float16 on CUDA (float32 and int8 on a CPU),
   each decoder in a fresh process, BLEU on Multi30k test2016. engine_speed.py's CLI runs on the
   CPU with CTranslate2's "default" compute type only, so this step reimplements its loop: the
   exports are float16/int8 (float32/int8 on a CPU) and the CTranslate2 translator is reloaded with
   the compute type asked for when it differs (`CTranslate2Engine` always asks for "default").

``--tiny`` (automatic without CUDA) shrinks everything so that the suite itself can be tested on a
CPU in a few minutes (mostly torch.compile's): configs/tiny.yaml on a 1,000-pair slice of
Multi30k, a handful of updates, a few sentences. ``--minutes`` is a soft total budget: a step not
started when it is used up is recorded as skipped.

Writes, into ``--out`` (default benchmarks/results/gpu_suite/): one JSON per step (``STEP.json``),
``suite.json`` (the run and every step's record) and ``summary.md`` (a table naming every step,
then each step's details): eight files, what a device call brings back. The exit
status is 1 when a step failed, else 0.

Run (from the repository root)::

    .venv/bin/python benchmarks/gpu_suite.py                       # CUDA if present, else --tiny
    .venv/bin/python benchmarks/gpu_suite.py --tiny --threads 1    # the CPU smoke run
    PYTHONPATH=src python3 benchmarks/gpu_suite.py --device cuda --out $OUT/gpu_suite
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Runs without the package installed too (the GPU machine's python3): src and benchmarks first.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from transformer.data import prepare
from transformer.data.textfiles import read_lines
from transformer.training.config import load_config
from transformer.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
STEPS = ("gpu_tests", "train_speed", "train_compile", "model", "decode_speed", "engine_speed")
MULTI30K = REPO / "data" / "multi30k"
FULL_DATA = REPO / "work" / "multi30k-de-en"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu_suite"

# The paper's base run (section 5.2): 100,000 updates of ~25,000 target tokens (12 h on 8 P100s).
BASE_UPDATES = 100_000
BASE_TOKENS_PER_UPDATE = 25_000
PAPER_VOCAB = 37_000  # the paper's shared source-target BPE vocabulary for WMT 2014 en-de

# bf16 dense (no sparsity) datasheet peaks, FLOP/s, by substrings of the lower-cased
# torch.cuda.get_device_name(); the first row whose substrings all occur wins.
BF16_DENSE_PEAKS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("h100", "pcie"), 756e12, "H100 PCIe"),
    (("h100", "nvl"), 835e12, "H100 NVL"),
    (("h100",), 989e12, "H100 SXM"),
    (("h200", "nvl"), 835e12, "H200 NVL"),
    (("h200",), 989e12, "H200 SXM"),
    (("a100",), 312e12, "A100"),
)


# ------------------------------------------------------------------------------------ sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big every step is: the GPU run, or the tiny CPU run that tests this script."""

    train_config: Path
    warmup: int
    updates: int
    compile_warmup: int  # untimed updates of train_compile (compilation falls there)
    matmul_size: int
    matmul_reps: int
    model_config: Path
    model_updates: int  # 0: no limit (train_minutes decides)
    train_minutes: float
    sentences: int | None  # None: the whole test set (1,000 sentences)
    repeat: int
    minutes: float
    threads: int


FULL = Sizes(
    train_config=REPO / "configs" / "base.yaml",
    warmup=5,
    updates=30,
    compile_warmup=40,
    matmul_size=8192,
    matmul_reps=10,
    model_config=REPO / "configs" / "multi30k.yaml",
    model_updates=0,
    train_minutes=1.0,
    sentences=None,
    repeat=2,
    minutes=8.0,
    threads=min(8, os.cpu_count() or 1),
)
TINY = Sizes(
    train_config=REPO / "configs" / "tiny.yaml",
    warmup=1,
    updates=4,
    compile_warmup=2,
    matmul_size=512,
    matmul_reps=5,
    model_config=REPO / "configs" / "tiny.yaml",
    model_updates=20,
    train_minutes=0.0,
    sentences=12,
    repeat=1,
    minutes=6.0,  # torch.compile of the tiny model takes about a minute on 2 cores
    threads=1,
)


# ------------------------------------------------------------------------------------ helpers


class SkipStep(Exception):
    """A step that cannot run here (its reason is recorded)."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def datasheet_peak(name: str) -> tuple[float, str] | None:
    """(bf16 dense FLOP/s, which part) for a CUDA device name, or None if not in the table."""
    lower = name.lower()
    for keys, peak, part in BF16_DENSE_PEAKS:
        if all(k in lower for k in keys):
            return peak, part
    return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def fmt_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


# ------------------------------------------------------------------------------------ suite


class Suite:
    """The run: arguments, device, sizes, working directory, and every step's record."""

    def __init__(self, args: argparse.Namespace, device: torch.device, sizes: Sizes):
        self.args = args
        self.device = device
        self.sizes = sizes
        self.tiny = args.tiny
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.threads = args.threads or sizes.threads
        self.minutes = args.minutes if args.minutes is not None else sizes.minutes
        self.start = time.monotonic()
        self.started = now_iso()
        self._tmp = None if args.work else tempfile.TemporaryDirectory(prefix="gpu-suite-")
        self.work = Path(args.work) if args.work else Path(self._tmp.name)
        self.work.mkdir(parents=True, exist_ok=True)
        self.model_dir: Path | None = None  # set by the model step
        self.records: dict[str, dict[str, Any]] = {}
        self._data_dir: Path | None = Path(args.data) if args.data else None
        self.data_seconds = 0.0

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def minutes_left(self) -> float:
        return self.minutes - (time.monotonic() - self.start) / 60

    def data_dir(self) -> Path:
        """The prepared Multi30k (full, or a slice with --tiny), prepared once if missing."""
        if self._data_dir is None:
            start = time.perf_counter()
            self._data_dir = prepare_slice(self.work) if self.tiny else prepare_full()
            self.data_seconds = time.perf_counter() - start
        return self._data_dir

    # ---------------------------------------------------------------------------- records

    def meta(self) -> dict[str, Any]:
        cuda = torch.version.cuda if torch.cuda.is_available() else None
        return {
            "started": self.started,
            "seconds": time.monotonic() - self.start,
            "mode": "tiny" if self.tiny else "full",
            "device": self.device.type,
            "device_name": device_name(self.device),
            "cuda": cuda,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": self.threads,
            "minutes_budget": self.minutes,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
        }

    def record(self, name: str, record: dict[str, Any]) -> None:
        self.records[name] = record
        write_json(self.out / f"{name}.json", record)
        self.write_summary()

    def write_summary(self) -> None:
        meta = self.meta()
        write_json(self.out / "suite.json", {**meta, "steps": self.records})
        (self.out / "summary.md").write_text(summary_markdown(meta, self.records), "utf-8")

    def run_step(self, name: str, fn: Callable[[Suite], dict[str, Any]]) -> dict[str, Any]:
        base = {"step": name, "started": now_iso()}
        if name not in self.args.steps:
            record = {**base, "status": "skipped", "seconds": 0.0, "reason": "not in --steps"}
        elif self.minutes_left() <= 0:
            reason = f"not started: the --minutes budget ({self.minutes:g} min) was used up"
            record = {**base, "status": "skipped", "seconds": 0.0, "reason": reason}
        else:
            self.record(name, {**base, "status": "running", "seconds": 0.0})
            print(f"[{name}] ...", flush=True)
            start = time.perf_counter()
            try:
                result = fn(self)
                status = result.pop("status", "ok")
                record = {**base, "status": status, "result": result}
                if "reason" in result:
                    record["reason"] = result.pop("reason")
            except SkipStep as e:
                record = {**base, "status": "skipped", "reason": str(e)}
            except Exception as e:
                record = {
                    **base,
                    "status": "failed",
                    "reason": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(),
                }
            record["seconds"] = time.perf_counter() - start
        record["summary"] = step_summary(record)
        self.record(name, record)
        print(f"[{name}] {record['status']} ({record['seconds']:.1f} s): {record['summary']}")
        if record["status"] == "failed" and "traceback" in record:
            print(record["traceback"], file=sys.stderr)
        sys.stdout.flush()
        return record


# ------------------------------------------------------------------------------------ data


def prepare_full() -> Path:
    """work/multi30k-de-en (8,000 BPE tokens), as benchmarks/train_speed.py prepares it."""
    from train_speed import ensure_data

    ensure_data(FULL_DATA)
    return FULL_DATA


def prepare_slice(work: Path, train_pairs: int = 1000, valid_pairs: int = 50) -> Path:
    """The first `train_pairs` pairs of Multi30k (a 500-token BPE): the tiny run's data."""
    out = work / "multi30k-slice"
    if (out / "manifest.json").is_file():
        return out
    text = work / "multi30k-slice-text"
    text.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train_pairs), ("val", valid_pairs)):
        for lang in ("de", "en"):
            lines = []
            for line in read_lines(MULTI30K / f"{split}.{lang}.gz"):
                lines.append(line)
                if len(lines) == n:
                    break
            (text / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(
        src_lang="de",
        tgt_lang="en",
        train=text / "train",
        valid=text / "val",
        tests=[],
        out=out,
        vocab_size=500,
        progress=False,
        log=None,
    )
    return out


def mean_target_tokens_per_batch(data_dir: Path, max_tokens: int) -> tuple[float, int]:
    """(real target tokens per batch, batches per epoch) of the training split at `max_tokens`."""
    from transformer.data.batching import TokenBatchSampler
    from transformer.data.dataset import load_split

    data = load_split(data_dir, "train")
    sampler = TokenBatchSampler(data.src_lengths, data.tgt_lengths, max_tokens, shuffle=False)
    total = int(data.tgt_lengths.sum()) + len(data)  # each target and its EOS
    return total / len(sampler), len(sampler)


# ------------------------------------------------------------------------------ 1. gpu tests


def step_gpu_tests(suite: Suite) -> dict[str, Any]:
    xml = suite.work / "gpu-tests.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        f"--junitxml={xml}",
        "tests",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    timeout = max(60.0, suite.minutes_left() * 60)
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = proc.stdout + proc.stderr
    counts = {"passed": 0, "skipped": 0, "failed": 0, "errors": 0, "deselected": 0}
    not_collected: list[str] = []  # modules that could not be imported (errors while collecting)
    skipped_modules: list[str] = []  # modules skipped while collecting (e.g. require())
    if xml.is_file():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
            message = "" if outcome is None else outcome.get("message", "")
            where = f"{case.get('classname')}::{case.get('name')}".strip(":")
            if outcome is None:
                counts["passed"] += 1
            elif message == "collection failure":
                not_collected.append(where)
            elif message == "collection skipped":
                skipped_modules.append(where)
            elif outcome.tag == "skipped":
                counts["skipped"] += 1
            elif outcome.tag == "failure":
                counts["failed"] += 1
            else:  # an error in a test's setup or teardown
                counts["errors"] += 1
    match = re.search(r"(\d+) deselected", output)
    counts["deselected"] = int(match.group(1)) if match else 0
    result: dict[str, Any] = {
        "command": " ".join(command[2:]),
        "returncode": proc.returncode,
        **counts,
        "not_collected": not_collected,
        "skipped_modules": skipped_modules,
        "output_tail": output[-3000:],
    }
    # pytest exits 0 (all passed or skipped), 1 (failures, or modules not collected) or 5 (no
    # test collected); anything else is an internal, usage or interruption error.
    if (
        not xml.is_file()
        or proc.returncode not in (0, 1, 5)
        or counts["failed"]
        or counts["errors"]
        or (proc.returncode == 1 and not not_collected)
    ):
        result["status"] = "failed"
        result["reason"] = (
            f"pytest exit status {proc.returncode}: {counts['failed']} failed, "
            f"{counts['errors']} error(s)"
        )
    elif not_collected:
        result["status"] = "partial"
        result["reason"] = (
            f"{len(not_collected)} test module(s) could not be imported here, so any gpu test in "
            f"them did not run: {', '.join(not_collected)}"
        )
    return result


# ---------------------------------------------------------------------------- 2. train speed


def measure_training(
    config_path: Path,
    overrides: list[str],
    warmup: int,
    updates: int,
    device: torch.device,
    run_dir: Path,
) -> dict[str, Any]:
    """train_speed.measure through the real Trainer, with the device synchronized after each
    update and without the final checkpoint in the clock; also the FLOPs at the paper's vocab."""
    from model_speed import forward_matmul_flops

    config = load_config(config_path, overrides)
    logs: list[str] = []
    trainer = Trainer(config, run_dir, log=logs.append)
    trainer.validator.data = None  # no validation at the end either
    trainer.save = lambda: None  # no checkpoint at the end (it would be timed otherwise)
    paper_config = dataclasses.replace(trainer.model_config, vocab_size=PAPER_VOCAB)
    starts: list[float] = []
    ends: list[float] = []
    tokens: list[int] = []
    flops: list[int] = []
    paper_flops: list[int] = []
    step = trainer.train_step

    def timed_step(group):
        starts.append(time.perf_counter())
        tokens.append(sum(b.n_tgt_tokens for b in group))
        shapes = [(b.size, b.src.shape[1], b.tgt_in.shape[1]) for b in group]
        flops.append(sum(3 * forward_matmul_flops(trainer.model_config, *s) for s in shapes))
        paper_flops.append(sum(3 * forward_matmul_flops(paper_config, *s) for s in shapes))
        out = step(group)
        synchronize(device)
        ends.append(time.perf_counter())
        return out

    trainer.train_step = timed_step
    trainer.train()
    if len(starts) < warmup + updates:
        raise RuntimeError(f"only {len(starts)} updates ran, {warmup + updates} were asked for")
    seconds = ends[-1] - starts[warmup]
    counters = torch._dynamo.utils.counters
    graphs = counters["stats"]["unique_graphs"] if config.train.compile else 0
    breaks = {  # the five most frequent reasons (their first lines), with their counts
        reason.strip().splitlines()[0][:200]: n
        for reason, n in (counters["graph_break"].most_common(5) if config.train.compile else [])
    }
    timed_tokens = sum(tokens[warmup:])
    durations = [e - s for s, e in zip(starts[warmup:], ends[warmup:])]
    return {
        "config": str(config_path.relative_to(REPO))
        if config_path.is_relative_to(REPO)
        else str(config_path),
        "overrides": overrides,
        "device": str(trainer.device),
        "parameters": trainer.model.num_parameters(),
        "vocab_size": trainer.model_config.vocab_size,
        "warmup": warmup,
        "updates": updates,
        "epochs_started": trainer.epoch + 1,
        # fp16: updates the gradient scaler skipped on an overflow (they are timed too)
        "skipped_updates": len(starts) - trainer.step,
        "seconds": seconds,
        "target_tokens": timed_tokens,
        "target_tokens_per_update": timed_tokens / updates,
        "tokens_per_s": timed_tokens / seconds,
        "tokens_per_s_in_updates_only": timed_tokens / sum(durations),
        "update_seconds_median": statistics.median(durations),
        "warmup_seconds": starts[warmup] - starts[0],
        "compiled_graphs": graphs,
        "graph_breaks": breaks,
        "flops_per_s": sum(flops[warmup:]) / seconds,
        "flops_ratio_at_paper_vocab": sum(paper_flops[warmup:]) / sum(flops[warmup:]),
        "log": logs[-5:],
    }


def timing_overrides(
    data_dir: Path, device: torch.device, precision: str, update_freq: int, updates: int
) -> list[str]:
    """Config overrides for timing `updates` training updates: no validation, no checkpoints."""
    return [
        f"data.dir={data_dir}",
        f"train.device={device.type}",
        f"train.precision={precision}",
        f"optim.update_freq={update_freq}",
        f"train.max_updates={updates}",
        "train.max_epochs=0",
        "train.max_minutes=0",
        "train.valid_every=0",
        "train.valid_bleu=false",
        "train.save_every=0",
        "train.save_every_minutes=0",
        "train.progress=false",
    ]


def step_train_speed(suite: Suite) -> dict[str, Any]:
    return training_speed(suite, [], suite.args.warmup)


def step_train_compile(suite: Suite) -> dict[str, Any]:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    r = training_speed(suite, ["train.compile=true"], suite.sizes.compile_warmup)
    eager = (suite.records.get("train_speed") or {}).get("result")
    if eager:
        r["eager_tokens_per_s"] = eager["tokens_per_s"]
        r["speedup_over_eager"] = r["tokens_per_s"] / eager["tokens_per_s"]
    return r


def training_speed(suite: Suite, extra: list[str], warmup: int | None) -> dict[str, Any]:
    """train_speed's measurement with `extra` config overrides and `warmup` untimed updates
    (None: the size's default), MFU and the projected base run included."""
    from model_speed import matmul_flops_per_s

    sizes, device, args = suite.sizes, suite.device, suite.args
    config_path = Path(args.config) if args.config else sizes.train_config
    data_dir = suite.data_dir()
    base = load_config(config_path, [f"data.dir={data_dir}"])
    per_batch, batches_per_epoch = mean_target_tokens_per_batch(data_dir, base.data.max_tokens)
    if suite.tiny:  # the tiny config's own update size: 25,000 tokens would be many batches
        update_freq = base.optim.update_freq
    else:  # about 25,000 target tokens per update, as in the paper
        update_freq = max(1, round(BASE_TOKENS_PER_UPDATE / per_batch))
    warmup = warmup if warmup is not None else sizes.warmup
    updates = args.updates if args.updates is not None else sizes.updates
    overrides = timing_overrides(data_dir, device, args.precision, update_freq, warmup + updates)
    overrides += extra
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.precision]
    measured_peak = matmul_flops_per_s(device, dtype, sizes.matmul_size, reps=sizes.matmul_reps)
    with tempfile.TemporaryDirectory(dir=suite.work, prefix="train-speed-") as run_dir:
        r = measure_training(config_path, overrides, warmup, updates, device, Path(run_dir))

    name = device_name(device)
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, f"--peak-tflops {args.peak_tflops:g}"
    elif device.type == "cuda" and args.precision == "bf16" and datasheet_peak(name):
        value, part = datasheet_peak(name)  # type: ignore[misc]
        peak, peak_source = value, f"datasheet bf16 dense peak of the {part}"
    else:
        peak, peak_source = measured_peak, f"measured {args.precision} matmul (no datasheet peak)"
    tps = r["tokens_per_s"]
    projected = BASE_UPDATES * BASE_TOKENS_PER_UPDATE / tps
    projection = {
        "updates": BASE_UPDATES,
        "target_tokens_per_update": BASE_TOKENS_PER_UPDATE,
        "seconds": projected,
        "hours": projected / 3600,
        "formula": "updates * target_tokens_per_update / tokens_per_s",
        "at_measured_update_size_seconds": BASE_UPDATES * r["target_tokens_per_update"] / tps,
        "at_paper_vocab_seconds": projected * r["flops_ratio_at_paper_vocab"],
        "note": (
            f"measured on {name} with a vocabulary of {r['vocab_size']:,} tokens (Multi30k"
            f"{' slice' if suite.tiny else ''}); the time scales as total target tokens over "
            "tokens/s. at_paper_vocab_seconds: the same batches with the paper's "
            f"{PAPER_VOCAB:,}-token softmax (x{r['flops_ratio_at_paper_vocab']:.2f} FLOPs) at "
            "the same achieved FLOP/s"
        ),
    }
    return {
        **r,
        "precision": args.precision,
        "data": str(data_dir),
        "data_prepare_seconds": suite.data_seconds,
        "target_tokens_per_batch": per_batch,
        "batches_per_epoch": batches_per_epoch,
        "update_freq": update_freq,
        "device_name": name,
        "matmul_size": sizes.matmul_size,
        "matmul_peak_flops_per_s": measured_peak,
        "peak_flops_per_s": peak,
        "peak_source": peak_source,
        "mfu": r["flops_per_s"] / peak,
        "mfu_vs_measured_matmul": r["flops_per_s"] / measured_peak,
        "projected_base_run": projection,
    }


# --------------------------------------------------------------------------------- 3. model


def step_model(suite: Suite) -> dict[str, Any]:
    from transformer.modeldir import load_model_config, save_model_dir

    if suite.args.model:
        config = load_model_config(suite.args.model)  # a clear error if it is no model directory
        suite.model_dir = Path(suite.args.model)
        return {"model": str(suite.model_dir), "trained": False, "model_config": config.to_dict()}
    sizes, device = suite.sizes, suite.device
    minutes = sizes.train_minutes
    if suite.args.train_minutes is not None:
        minutes = suite.args.train_minutes
    if minutes:  # leave most of the budget to the steps after this one
        minutes = max(0.1, min(minutes, suite.minutes_left() / 3))
    precision = "bf16" if device.type == "cuda" else "fp32"
    overrides = [
        f"data.dir={suite.data_dir()}",
        f"train.device={device.type}",
        f"train.precision={precision}",
        f"train.max_updates={sizes.model_updates or 1_000_000}",
        f"train.max_minutes={minutes:g}",
        "train.max_epochs=0",
        "train.valid_every=0",
        "train.valid_bleu=false",
        "train.save_every=0",
        "train.save_every_minutes=0",
        "train.progress=false",
    ]
    logs: list[str] = []
    config = load_config(sizes.model_config, overrides)
    start = time.perf_counter()
    trainer = Trainer(config, suite.work / "model-run", log=logs.append)
    trainer.train()
    seconds = time.perf_counter() - start
    out = save_model_dir(suite.work / "model", trainer.model, trainer.tokenizer, trainer.task)
    suite.model_dir = out
    return {
        "model": str(out),
        "trained": True,
        "config": str(sizes.model_config.relative_to(REPO)),
        "overrides": overrides,
        "updates": trainer.step,
        "seconds": seconds,
        "parameters": trainer.model.num_parameters(),
        "model_config": trainer.model_config.to_dict(),
        "log": logs[-4:],
    }


def need_model(suite: Suite) -> Path:
    """The model to decode with; SkipStep ("no model ...") when there is none."""
    if suite.model_dir is not None:
        return suite.model_dir
    record = suite.records.get("model", {})
    if suite.args.model and record.get("reason") == "not in --steps":
        return Path(suite.args.model)
    what = "--model was given" if suite.args.model else "no --model was given"
    raise SkipStep(
        f"no model: {what}, and the model step is {record.get('status', 'not run')} "
        f"({record.get('reason', '')})"
    )


# --------------------------------------------------------------------------- 4. decode speed


@contextlib.contextmanager
def synchronized_timing(module: Any, device: torch.device) -> Iterator[None]:
    """decode_speed.timed, with the device synchronized after every batch (CUDA is async)."""
    original = module.timed

    def timed(fn, batches):
        def synced(batch):
            out = fn(batch)
            synchronize(device)
            return out

        return original(synced, batches)

    module.timed = timed
    try:
        yield
    finally:
        module.timed = original


def step_decode_speed(suite: Suite) -> dict[str, Any]:
    import decode_speed as ds
    from transformer.modeldir import load_model_dir

    model_dir, device = need_model(suite), suite.device
    torch.set_num_threads(suite.threads)
    model, tokenizer = load_model_dir(model_dir, device)
    sentences = suite.args.sentences or suite.sizes.sentences
    lines = list(read_lines(ds.DEFAULT_SRC))[:sentences]
    ids = [s if s else [tokenizer.encode(".")[0]] for s in tokenizer.encode_batch(lines)]
    batches = [
        ds.Batch(b.src.to(device), b.max_len.to(device))
        for b in ds.make_batches(ids, suite.args.max_tokens)
    ]
    marian, marian_note = None, None
    try:
        import transformers

        marian = ds.marian_like(model).to(device)
        hf_version: str | None = transformers.__version__
    except ImportError as e:
        hf_version = None
        marian_note = f"Hugging Face Marian skipped: transformers is not installed ({e})"
    except Exception as e:  # e.g. a transformers version whose Marian API differs
        hf_version = None
        marian_note = (
            f"Hugging Face Marian skipped: it could not be built ({type(e).__name__}: {e})"
        )
    rows: list[dict[str, Any]] = []
    with synchronized_timing(ds, device):
        for method, beam in (("greedy", 1), ("beam", suite.args.beam)):
            try:
                found = ds.bench_method(model, marian, batches, len(lines), method, beam, True)
            except Exception as e:
                if marian is None:
                    raise
                marian_note = f"Hugging Face Marian failed ({type(e).__name__}: {e}); left out"
                marian = None
                found = ds.bench_method(model, None, batches, len(lines), method, beam, True)
            rows += [dataclasses.asdict(r) for r in found]
    uncached_same = [r["same_tokens_as_ours"] for r in rows if r["decoder"] == "ours, no cache"]
    result: dict[str, Any] = {
        "model": str(model_dir),
        "device": str(device),
        "src": str(ds.DEFAULT_SRC),
        "sentences": len(lines),
        "batches": len(batches),
        "max_tokens": suite.args.max_tokens,
        "threads": suite.threads,
        "transformers": hf_version,
        "notes": [marian_note] if marian_note else [],
        "rows": rows,
    }
    if not all(uncached_same):
        result["status"] = "failed"
        result["reason"] = "the uncached decoder's tokens differ from the cached decoder's"
    return result


# --------------------------------------------------------------------------- 5. engine speed


def engine_decoders(device: torch.device) -> list[dict[str, str]]:
    """The decoders compared: torch fp32 and bf16, CTranslate2 at two compute types."""
    if device.type == "cuda":
        ct2 = [("float16", "float16"), ("int8", "int8_float16")]
    else:
        ct2 = [("float32", "float32"), ("int8", "int8")]
    return [
        {"name": "torch fp32", "engine": "torch", "precision": "fp32"},
        {"name": "torch bf16", "engine": "torch", "precision": "bf16"},
        *(
            {"name": f"ct2 {compute}", "engine": "ct2", "export": q, "compute_type": compute}
            for q, compute in ct2
        ),
    ]


def measure_engine(
    decoder: dict[str, str],
    model_dir: str,
    export_dir: str | None,
    device: str,
    methods: list[dict],
    sources: list[str],
    repeat: int,
    threads: int,
) -> dict[str, Any]:
    """One decoder, in a fresh process (engine_speed.measure_decoder, on `device`):
    per method (best seconds, texts, best token ids)."""
    from transformer import Translator
    from transformer.decoding.ct2_engine import DEFAULT_PATIENCE, ct2_device, load_ctranslate2_dir

    torch.set_num_threads(threads)
    dev = torch.device(device)
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    if decoder["engine"] == "torch":
        translator = Translator.from_pretrained(model_dir, device=dev)
        compute_type = "float32"
        if decoder["precision"] == "bf16":
            compute_type = "bfloat16 autocast"

            def context():
                return torch.autocast(dev.type, dtype=torch.bfloat16)
    else:
        assert export_dir is not None
        engine, tokenizer = load_ctranslate2_dir(
            export_dir, device=dev, threads=threads, patience=DEFAULT_PATIENCE
        )
        wanted = decoder["compute_type"]
        # CTranslate2Engine asks for "default" (the export's type); int8 on a CPU is int8_float32.
        if engine.translator.compute_type not in (wanted, f"{wanted}_float32"):
            inter, intra = (threads, 1) if dev.type == "cpu" else (1, threads)  # as the engine
            ct2_type, ct2_index = ct2_device(dev)
            engine.translator = engine.ctranslate2.Translator(
                export_dir,
                device=ct2_type,
                device_index=ct2_index,
                compute_type=wanted,
                inter_threads=inter,
                intra_threads=intra,
            )
        compute_type = engine.translator.compute_type
        translator = Translator.from_engine(engine, tokenizer)

    def translate(texts: list[str], options: dict) -> list:
        with context(), torch.inference_mode():
            return translator.translate_nbest(texts, **options)

    runs = []
    for options in methods:
        translate(sources[:8], options)  # warm-up, untimed
        best, results = math.inf, []
        for _ in range(repeat):
            start = time.perf_counter()
            results = translate(sources, options)
            best = min(best, time.perf_counter() - start)
        runs.append((best, [r.text for r in results], [r.hypotheses[0].tokens for r in results]))
    return {"compute_type": compute_type, "runs": runs}


def _engine_child(conn, *args) -> None:
    try:
        conn.send(("ok", measure_engine(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def in_fresh_process(args: tuple, timeout: float) -> tuple[str, Any]:
    """measure_engine(*args) in a spawned process: ("ok", result) or ("error", message); a
    process that dies or outlives `timeout` is reported, never waited on forever."""
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe(duplex=False)
    process = spawn.Process(target=_engine_child, args=(child, *args), daemon=True)
    process.start()
    child.close()
    try:
        if parent.poll(timeout):
            return parent.recv()
        return "error", f"no result within {timeout:.0f} s (the process was killed)"
    except EOFError:
        return "error", "the process died without a result"
    finally:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
        if process.exitcode not in (0, None) and process.exitcode < 0:
            print(f"decoder process ended by signal {-process.exitcode}", file=sys.stderr)


def step_engine_speed(suite: Suite) -> dict[str, Any]:
    from engine_speed import TEST, Row
    from transformer.evaluation.metrics import corpus_scores
    from transformer.export import export_ctranslate2

    model_dir, device = need_model(suite), suite.device
    sentences = suite.args.sentences or suite.sizes.sentences
    sources = list(read_lines(Path(f"{TEST}.de.gz")))[:sentences]
    references = list(read_lines(Path(f"{TEST}.en.gz")))[:sentences]
    beam = suite.args.beam
    labels = ["greedy", f"beam {beam}"]
    methods = [
        dict(method=method, beam=b, alpha=0.6, max_tokens=suite.args.max_tokens)
        for method, b in (("greedy", 1), ("beam", beam))
    ]
    decoders = engine_decoders(device)
    skipped: dict[str, str] = {}
    try:
        import ctranslate2

        ct2_version: str | None = ctranslate2.__version__
        if device.type == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            reason = (
                f"ctranslate2 {ct2_version} sees no CUDA device (a CPU-only build, or its CUDA "
                "libraries are missing)"
            )
            skipped.update({d["name"]: reason for d in decoders if d["engine"] == "ct2"})
    except ImportError as e:
        ct2_version = None
        reason = f"ctranslate2 is not installed ({e}); it is the `fast` extra"
        skipped.update({d["name"]: reason for d in decoders if d["engine"] == "ct2"})

    timeout = max(120.0, suite.minutes_left() * 60)
    measured: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=suite.work, prefix="engine-") as tmp:
        exports: dict[str, str] = {}
        for d in decoders:
            if d["engine"] != "ct2" or d["name"] in skipped:
                continue
            try:
                path = export_ctranslate2(model_dir, Path(tmp) / d["export"], d["export"])
                exports[d["name"]] = str(path)
                sizes[d["export"]] = (path / "model.bin").stat().st_size
            except Exception as e:
                errors[d["name"]] = f"export {d['export']}: {type(e).__name__}: {e}"
        for d in decoders:
            name = d["name"]
            if name in skipped or name in errors:
                continue
            args = (d, str(model_dir), exports.get(name), str(device), methods, sources)
            status, value = in_fresh_process(
                (*args, suite.sizes.repeat, suite.threads), timeout=timeout
            )
            if status == "ok":
                measured[name] = value
                print(f"  {name} ({value['compute_type']}) done", flush=True)
            else:
                errors[name] = value

    rows: list[dict[str, Any]] = []
    for m, label in enumerate(labels):
        reference: Row | None = None
        reference_tokens: list[list[int]] = []
        for d in decoders:
            name = d["name"]
            if name not in measured:
                continue
            seconds, texts, best = measured[name]["runs"][m]
            tokens = sum(len(t) + 1 for t, s in zip(best, sources) if s.strip())
            bleu = corpus_scores(texts, references).bleu
            row = Row(
                label,
                name,
                seconds,
                len(sources),
                tokens,
                len(sources) / seconds,
                tokens / seconds,
                bleu,
            )
            if reference is None and name == "torch fp32":
                reference, reference_tokens = row, best
            elif reference is not None:
                row.tokens_per_s_vs_torch_fp32 = row.tokens_per_s / reference.tokens_per_s
                row.bleu_minus_torch_fp32 = row.bleu - reference.bleu
                same = sum(a == b for a, b in zip(best, reference_tokens))
                row.same_output_as_torch_fp32 = same / max(len(best), 1)
            rows.append({**dataclasses.asdict(row), "compute_type": measured[name]["compute_type"]})

    result: dict[str, Any] = {
        "model": str(model_dir),
        "device": str(device),
        "src": f"{TEST}.de.gz",
        "sentences": len(sources),
        "threads": suite.threads,
        "max_tokens": suite.args.max_tokens,
        "repeat": suite.sizes.repeat,
        "ctranslate2": ct2_version,
        "model_bin_bytes": sizes,
        "decoders": [d["name"] for d in decoders],
        "skipped": skipped,
        "errors": errors,
        "rows": rows,
    }
    if errors:
        result["status"] = "failed"
        result["reason"] = "; ".join(
            f"{k}: {v.strip().splitlines()[-1]}" for k, v in errors.items()
        )
    elif skipped:
        result["status"] = "partial"
        result["reason"] = "; ".join(sorted({f"skipped: {v}" for v in skipped.values()}))
    return result


# ----------------------------------------------------------------------------- summary


def step_summary(record: dict[str, Any]) -> str:
    """One line: what the step found (or why it did not run)."""
    status, r = record["status"], record.get("result") or {}
    if status == "skipped" or (status == "failed" and not r):
        return f"{status}: {record.get('reason', '')}"
    if status == "running":
        return "running (not finished)"
    step = record["step"]
    text = ""
    if step == "gpu_tests":
        text = (
            f"{r['passed']} passed, {r['skipped']} skipped, {r['failed']} failed, "
            f"{r['errors']} error(s) ({r['deselected']} deselected, "
            f"{len(r['not_collected'])} module(s) not collected)"
        )
    elif step == "train_speed":
        p = r["projected_base_run"]
        text = (
            f"{r['tokens_per_s']:,.0f} target tok/s ({r['precision']}, "
            f"{r['target_tokens_per_update']:,.0f} tok/update), MFU {100 * r['mfu']:.1f}% of "
            f"{r['peak_flops_per_s'] / 1e12:,.1f} TFLOP/s ({r['peak_source']}), "
            f"{100 * r['mfu_vs_measured_matmul']:.1f}% of the measured matmul "
            f"({r['matmul_peak_flops_per_s'] / 1e12:,.2f} TFLOP/s); base run "
            f"(100,000 x 25,000 tok) projected {fmt_seconds(p['seconds'])} "
            f"({fmt_seconds(p['at_paper_vocab_seconds'])} at a {PAPER_VOCAB:,} vocab)"
        )
    elif step == "train_compile":
        versus = f", {r['speedup_over_eager']:.2f}x eager" if "speedup_over_eager" in r else ""
        text = (
            f"{r['tokens_per_s']:,.0f} target tok/s with torch.compile{versus}, MFU "
            f"{100 * r['mfu']:.1f}%; {r['compiled_graphs']} graph(s) compiled, "
            f"{sum(r['graph_breaks'].values())} graph break(s), in {r['warmup']} untimed "
            f"updates ({r['warmup_seconds']:.0f} s)"
        )
    elif step == "model":
        if r.get("trained"):
            text = f"trained {r['updates']} updates in {r['seconds']:.0f} s: {r['model']}"
        else:
            text = f"given: {r['model']}"
    elif step == "decode_speed":
        parts = [
            f"{row['method']} {row['decoder']} {row['tokens_per_s']:,.0f} tok/s"
            for row in r["rows"]
        ]
        text = "; ".join(parts) + "".join(f" ({n})" for n in r.get("notes", []))
    elif step == "engine_speed":
        beam = [row for row in r["rows"] if row["method"] != "greedy"]
        parts = [
            f"{row['decoder']} {row['tokens_per_s']:,.0f} tok/s "
            f"({row['tokens_per_s_vs_torch_fp32']:.2f}x, BLEU {row['bleu']:.1f})"
            for row in beam
        ]
        text = (f"{beam[0]['method']}: " if beam else "") + "; ".join(parts)
    if record.get("reason"):
        text = f"{text} [{status}: {record['reason']}]" if text else f"{status}: {record['reason']}"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(meta: dict[str, Any], records: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# GPU suite",
        "",
        f"{meta['started']}, {meta['mode']} run on {meta['device']} ({meta['device_name']}), "
        f"torch {meta['torch']}, CUDA {meta['cuda']}, {meta['threads']} threads, "
        f"{meta['seconds']:.0f} s of a {meta['minutes_budget']:g}-minute budget.",
        "",
        "| step | status | seconds | result |",
        "|---|---|---:|---|",
    ]
    for name in STEPS:
        rec = records.get(name)
        if rec is None:
            lines.append(f"| {name} | pending | | |")
            continue
        summary = rec.get("summary") or step_summary(rec)
        lines.append(f"| {name} | {rec['status']} | {rec['seconds']:.1f} | {_cell(summary)} |")
    train = (records.get("train_speed") or {}).get("result")
    if train:
        p = train["projected_base_run"]
        lines += [
            "",
            "## train_speed",
            "",
            f"{train['config']} in {train['precision']} on {train['device_name']}, "
            f"{train['parameters']:,} parameters, update_freq {train['update_freq']} "
            f"(~{train['target_tokens_per_batch']:,.0f} target tokens per batch), "
            f"{train['updates']} timed updates after {train['warmup']}.",
            "",
            "| target tokens/s | tokens/update | TFLOP/s | MFU (peak) | MFU (measured matmul) "
            "| base run, projected | at the paper's vocab |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {train['tokens_per_s']:,.0f} | {train['target_tokens_per_update']:,.0f} "
            f"| {train['flops_per_s'] / 1e12:,.3f} | {100 * train['mfu']:.1f}% "
            f"| {100 * train['mfu_vs_measured_matmul']:.1f}% | {p['hours']:,.2f} h "
            f"| {p['at_paper_vocab_seconds'] / 3600:,.2f} h |",
            "",
            f"Peak: {train['peak_source']}. Projection: {p['formula']}; {p['note']}.",
        ]
    for name, title in (("decode_speed", "decode_speed"), ("engine_speed", "engine_speed")):
        result = (records.get(name) or {}).get("result")
        if not result or not result.get("rows"):
            continue
        lines += [
            "",
            f"## {title}",
            "",
            f"{result['sentences']} sentences on {result['device']}.",
            "",
            "| decoding | decoder | compute | seconds | target tokens/s | vs first row | BLEU |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for row in result["rows"]:
            ratio = row.get("tokens_per_s_vs_torch_fp32")
            if ratio is None:
                ratio = 1 / row["speedup_of_ours"]
            bleu = f"{row['bleu']:.2f}" if "bleu" in row else "-"
            lines.append(
                f"| {row['method']} | {row['decoder']} | {row.get('compute_type', '-')} "
                f"| {row['seconds']:.2f} | {row['tokens_per_s']:,.0f} | {ratio:.2f}x | {bleu} |"
            )
        for note in [*result.get("notes", []), *result.get("skipped", {}).values()]:
            lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


STEP_FUNCTIONS: dict[str, Callable[[Suite], dict[str, Any]]] = {
    "gpu_tests": step_gpu_tests,
    "train_speed": step_train_speed,
    "train_compile": step_train_compile,
    "model": step_model,
    "decode_speed": step_decode_speed,
    "engine_speed": step_engine_speed,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--model", help="a trained model directory for decode/engine speed")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (automatic on a CPU)")
    parser.add_argument("--minutes", type=float, help="soft total budget (default 8; tiny 6)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--threads", type=int, help="torch/CTranslate2 threads (tiny: 1)")
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated steps to run (default all: {','.join(STEPS)})",
    )
    parser.add_argument("--data", help="a prepared data directory (default: Multi30k)")
    parser.add_argument("--work", help="working folder (default: a temporary one, removed)")
    parser.add_argument("--config", help="train_speed config (default configs/base.yaml)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32", "fp16"))
    parser.add_argument("--warmup", type=int, help="untimed updates (default 5; tiny 1)")
    parser.add_argument("--updates", type=int, help="timed updates (default 30; tiny 4)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, overriding the table")
    parser.add_argument("--train-minutes", type=float, help="model step training (default 1)")
    parser.add_argument("--sentences", type=int, help="sentences decoded (default all; tiny 12)")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown {', '.join(unknown)} (known: {', '.join(STEPS)})")
    args.steps = steps
    return args


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type != "cuda":
        args.tiny = True
    suite = Suite(args, device, TINY if args.tiny else FULL)
    torch.set_num_threads(suite.threads)
    print(
        f"gpu suite: {'tiny' if args.tiny else 'full'} run on {device} ({device_name(device)}), "
        f"torch {torch.__version__}, {suite.threads} threads, budget {suite.minutes:g} min, "
        f"results in {suite.out}",
        flush=True,
    )
    try:
        for name in STEPS:
            suite.run_step(name, STEP_FUNCTIONS[name])
    finally:
        suite.write_summary()
        suite.close()
    print()
    print((suite.out / "summary.md").read_text(encoding="utf-8"))
    failed = [n for n, r in suite.records.items() if r["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
