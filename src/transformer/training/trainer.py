"""The training loop: the paper's recipe on one CPU, one GPU or many processes, resumable exactly.

One optimizer update = `update_freq` batches of at most `max_tokens` padded tokens per side on each
of the W processes. The loss of the update is the label-smoothed cross-entropy summed over all its
target tokens and divided by their number (all-reduced across processes), so the gradient is the
same whether the tokens come in one batch, in several accumulated batches, or from several
processes. The learning rate follows the paper's schedule in optimizer updates.

Everything that decides the future of a run is in its checkpoint (weights, Adam moments, scaler,
every RNG state, the batch sampler's position, step, epoch, best score), so re-running the same
command after a crash continues bit for bit (on CPU in fp32) where the last checkpoint left off.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from transformer.data.batching import Batch, TokenBatchSampler, collate
from transformer.data.dataset import ParallelDataset, load_split, load_tokenizer
from transformer.data.errors import DataError
from transformer.io import atomic_write_text
from transformer.model import Transformer
from transformer.modeldir import save_model_dir
from transformer.training.checkpoint import (
    latest_checkpoint,
    remove_unfinished_checkpoints,
    save_checkpoint,
)
from transformer.training.config import RunConfig
from transformer.training.loss import label_smoothed_nll_loss
from transformer.training.schedule import noam_learning_rate
from transformer.training.validation import validate

METRICS = "metrics.jsonl"
BEST = "best"
MAX_NONFINITE_IN_A_ROW = 10


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Distributed:
    """This process's place among the processes started by torchrun (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Distributed(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("train.device is cuda but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# ----------------------------------------------------------------------------- RNG states


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random state that training consumes (dropout, and anything built on numpy/random)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# Checkpoints are loaded with torch.load(weights_only=True), which accepts tensors and plain
# containers only: numpy's and Python's RNG states are converted to that form.
def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """Trains `config` in `run_dir` (resuming from its newest intact checkpoint, if any)."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path | str,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        device_type = config.train.device
        if device_type == "auto":
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        self.dist = init_distributed(device_type)
        self.device = resolve_device(device_type, self.dist.local_rank)
        self._log = log or (lambda message: tqdm.write(message, file=sys.stderr))
        self._check_precision()

        # Data: the tokenizer fixes the vocabulary, hence the model's size.
        data_dir = Path(config.data.dir)
        self.tokenizer = load_tokenizer(data_dir)  # also checks the manifest
        self.train_data = load_split(data_dir, "train")
        if len(self.train_data) == 0:
            raise DataError(f"{data_dir}: the training split is empty")
        self.valid_data: ParallelDataset | None = None
        if (data_dir / f"{config.data.valid_split}.src.idx").is_file():
            self.valid_data = load_split(data_dir, config.data.valid_split)
        # Raw validation text for BLEU (prepare keeps it for every split but train).
        valid_src = _read_text(data_dir / f"{config.data.valid_split}.src.txt")
        valid_ref = _read_text(data_dir / f"{config.data.valid_split}.tgt.txt")
        self.valid_texts = (valid_src, valid_ref) if valid_src and valid_ref else None
        self.sampler = TokenBatchSampler(
            self.train_data.src_lengths,
            self.train_data.tgt_lengths,
            config.data.max_tokens,
            shuffle=True,
            seed=config.train.seed,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
        )
        if len(self.sampler) == 0:
            raise DataError(
                f"{data_dir}: the training split gives no batch for each of "
                f"{self.dist.world_size} processes; use fewer processes or more data"
            )

        # Model and optimizer. Every rank builds the same initial weights from the seed.
        torch.manual_seed(config.train.seed)
        self.model_config = config.model_config(self.tokenizer.vocab_size)
        self.model = Transformer(self.model_config).to(self.device)
        o = config.optim
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=noam_learning_rate(1, self.model_config.d_model, o.warmup, o.lr_factor),
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.train.precision == "fp16")
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if config.train.compile:
            self.net = torch.compile(self.net)
        # Dropout differs between ranks (as if they were parts of one big batch).
        torch.manual_seed(config.train.seed + self.dist.rank)

        # Progress, restored from a checkpoint by `resume()`.
        self.step = 0
        self.epoch = 0
        self.batches_done = 0  # of this rank's batches in the current epoch
        self.train_seconds = 0.0
        self.best: float | None = None
        self.bad_validations = 0
        self.last_valid_step = -1
        self.best_metric_name = config.train.best_metric
        self.last_save_step = -1
        self.nonfinite_in_a_row = 0
        self.stop_reason: str | None = None
        self._signal: int | None = None

    @property
    def interrupted(self) -> bool:
        """Whether the last `train()` stopped on SIGINT or SIGTERM (a checkpoint was saved)."""
        return self._signal is not None

    # ------------------------------------------------------------------ set-up helpers

    def _check_precision(self) -> None:
        precision = self.config.train.precision
        if precision == "fp16" and self.device.type != "cuda":
            raise TrainingError(
                "train.precision fp16 needs a CUDA device (its gradient scaler is CUDA-only); "
                "use bf16 on CPU"
            )

    def autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self._log(message)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        rng = rng_state(self.device)
        rngs = [rng]
        if self.dist.enabled:
            rngs = [None] * self.dist.world_size
            dist.all_gather_object(rngs, rng)
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "sampler": self.sampler.state_dict(batches_done=self.batches_done),
            "train_seconds": self.train_seconds,
            "best": self.best,
            "bad_validations": self.bad_validations,
            "last_valid_step": self.last_valid_step,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "world_size": self.dist.world_size,
        }

    def resume(self) -> Path | None:
        """Load the newest intact checkpoint of the run, if there is one; returns its path."""
        if self.dist.is_main:
            remove_unfinished_checkpoints(self.run_dir)
        found = latest_checkpoint(self.run_dir, warn=lambda m: self.log(f"warning: {m}"))
        if found is None:
            return None
        path, state = found
        load_model(self.model, str(path / "model.safetensors"), strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.epoch = state["epoch"]
        self.batches_done = state["batches_done"]
        self.sampler.load_state_dict(state["sampler"])
        self.train_seconds = state["train_seconds"]
        self.best = state["best"]
        self.bad_validations = state["bad_validations"]
        self.last_valid_step = state["last_valid_step"]
        self.last_save_step = self.step
        rngs = state["rng"]
        if state["world_size"] == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank], self.device)
        else:
            self.log(
                f"warning: the checkpoint was written by {state['world_size']} process(es), this "
                f"run has {self.dist.world_size}: random states are re-seeded, so dropout masks "
                "differ from an uninterrupted run"
            )
            torch.manual_seed(self.config.train.seed + 7919 * self.step + self.dist.rank)
        self._truncate_metrics(self.step)
        return path

    def save(self) -> Path | None:
        """Write a checkpoint of the current update (rank 0 writes; every rank takes part)."""
        state = self.state_dict()  # collective under DDP
        path = None
        if self.dist.is_main:
            path = save_checkpoint(
                self.run_dir,
                self.step,
                self.model,
                self.tokenizer,
                state,
                self.config.to_dict(),
                keep_last=self.config.train.keep_last,
            )
        self.last_save_step = self.step
        self._last_save_time = time.monotonic()
        return path

    # ------------------------------------------------------------------ metrics

    def _write_metrics(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tensorboard is not None:
            kind = row["kind"]
            for key, value in row.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, int | float):
                    self._tensorboard.add_scalar(f"{kind}/{key}", value, row["step"])

    def _truncate_metrics(self, step: int) -> None:
        """Forget rows logged after the checkpoint we resume from (they will be logged again)."""
        path = self.run_dir / METRICS
        if not self.dist.is_main or not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ batches

    def _batches(self) -> Iterator[Batch]:
        """This epoch's remaining batches for this rank, collated (in workers if configured)."""
        workers = self.config.data.num_workers
        if workers == 0:
            for indices in self.sampler:
                yield collate([self.train_data[i] for i in indices])
            return
        loader = torch.utils.data.DataLoader(
            self.train_data,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        yield from loader

    def _groups(self) -> Iterator[list[Batch]]:
        """Groups of `update_freq` batches (the last group of an epoch may be smaller)."""
        n = len(self.sampler)
        group: list[Batch] = []
        for batch in self._batches():
            group.append(batch)
            if len(group) == self.config.optim.update_freq or self.batches_done + len(group) == n:
                # Counted before the update runs: a checkpoint is only ever written after it.
                self.batches_done += len(group)
                yield group
                group = []

    # ------------------------------------------------------------------ one update

    def _all_reduce(self, values: list[float]) -> list[float]:
        if not self.dist.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def forward_backward(self, group: list[Batch]) -> tuple[float, float, float]:
        """Accumulate the gradient of one update's token-mean loss over a group of batches.

        Returns (smoothed loss sum, NLL sum, target tokens), summed over all processes.
        """
        n_tokens = sum(b.n_tgt_tokens for b in group)
        (global_tokens,) = self._all_reduce([float(n_tokens)])
        # DDP averages gradients over processes; scale so that the result is the token mean.
        scale = self.dist.world_size / global_tokens
        self.net.train()
        loss_sum = nll_sum = 0.0
        for i, batch in enumerate(group):
            batch = batch.to(self.device, non_blocking=True)
            last = i == len(group) - 1
            sync = (
                self.net.no_sync()
                if self.dist.enabled and not last and hasattr(self.net, "no_sync")
                else contextlib.nullcontext()
            )
            with sync:
                with self.autocast():
                    logits = self.net(batch.src, batch.tgt_in)  # (B, T, V)
                loss, nll = label_smoothed_nll_loss(
                    logits, batch.tgt_out, self.config.optim.label_smoothing
                )
                self.scaler.scale(loss * scale).backward()
            loss_sum += loss.item()
            nll_sum += nll.item()
        stop = 1.0 if self._signal is not None else 0.0
        loss_sum, nll_sum, stop = self._all_reduce([loss_sum, nll_sum, stop])
        if stop and self._signal is None:  # another process was signalled: stop together
            self._signal = signal.SIGTERM
        return loss_sum, nll_sum, global_tokens

    def train_step(self, group: list[Batch]) -> dict[str, float] | None:
        """One optimizer update on a group of batches; None if its loss was not finite."""
        o = self.config.optim
        lr = noam_learning_rate(self.step + 1, self.model_config.d_model, o.warmup, o.lr_factor)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_sum, nll_sum, tokens = self.forward_backward(group)
        if not (math.isfinite(loss_sum) and math.isfinite(nll_sum)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if o.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
            nn.utils.clip_grad_norm_(self.model.parameters(), o.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": loss_sum / tokens, "nll_loss": nll_sum / tokens, "tokens": tokens, "lr": lr}

    # ------------------------------------------------------------------ validation

    def run_validation(self) -> dict[str, Any]:
        """Validation loss, perplexity and BLEU on rank 0 (the others wait); keeps the best model."""
        t = self.config.train
        result: dict[str, Any] = {}
        if self.dist.is_main and self.valid_data is not None:
            result = validate(
                self.model,
                self.valid_data,
                self.tokenizer,
                self.valid_texts if t.valid_bleu else None,
                device=self.device,
                max_tokens=self.config.data.valid_max_tokens,
                label_smoothing=self.config.optim.label_smoothing,
                max_sentences=t.valid_bleu_sentences,
                beam=t.valid_beam,
                autocast=self.autocast,
            )
        if self.dist.enabled:
            box = [result]
            dist.broadcast_object_list(box, src=0)
            result = box[0]
        self.last_valid_step = self.step
        if not result:
            return result
        metric = self.best_metric_name = (
            "bleu" if t.best_metric == "bleu" and "bleu" in result else "loss"
        )
        value = result[metric]
        improved = self.best is None or (
            value > self.best if metric == "bleu" else value < self.best
        )
        if improved:
            self.best = value
            self.bad_validations = 0
            if self.dist.is_main:
                save_model_dir(self.run_dir / BEST, self.model, self.tokenizer)
        else:
            self.bad_validations += 1
        result["best"] = self.best
        self._write_metrics(
            {
                "kind": "valid",
                "step": self.step,
                "epoch": self.epoch + 1,  # 1-based, as in every metrics row
                "train_minutes": self.train_seconds / 60,
                **result,
            }
        )
        bleu = f", BLEU {result['bleu']:.2f}" if "bleu" in result else ""
        self.log(
            f"update {self.step}: valid loss {result['loss']:.4f}, ppl {result['ppl']:.2f}{bleu}"
            f"{' (best)' if improved else ''}"
        )
        if t.patience and self.bad_validations >= t.patience:
            self.stop_reason = (
                f"early stopping: no improvement of valid {metric} in {t.patience} validations"
            )
        return result

    # ------------------------------------------------------------------ the loop

    def _finished_reason(self) -> str | None:
        t = self.config.train
        if self.step >= t.max_updates:
            return f"reached train.max_updates = {t.max_updates}"
        if t.max_epochs and self.epoch >= t.max_epochs:
            return f"reached train.max_epochs = {t.max_epochs}"
        if t.max_minutes and self.train_seconds >= t.max_minutes * 60:
            return f"reached train.max_minutes = {t.max_minutes:g}"
        return None

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handler(signum: int, frame: Any) -> None:
            self._signal = signum
            # A second Ctrl-C interrupts at once.
            signal.signal(
                signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            )

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, handler)
        return previous

    def train(self) -> int:
        """Train until a limit is reached, a signal arrives or training fails. Returns 0."""
        t = self.config.train
        self._tensorboard = None
        resumed = self.resume()
        if resumed is not None:
            self.log(f"resuming from {resumed} (update {self.step}, epoch {self.epoch + 1})")
        already = self._finished_reason()
        if already is not None:
            self.log(
                f"{self.run_dir}: nothing to do, the run already {already} (update {self.step}); "
                "raise the limit with --set to train further"
            )
            return 0
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if t.tensorboard:
                self._tensorboard = _tensorboard_writer(self.run_dir)
        self.log(
            f"training {self.model.num_parameters():,} parameters on {self.device} "
            f"({self.dist.world_size} process(es), {t.precision}); "
            f"{len(self.sampler)} batches per epoch and process, "
            f"update_freq {self.config.optim.update_freq}; run directory {self.run_dir}"
        )
        previous_handlers = self._install_signal_handlers()
        bar = tqdm(
            total=t.max_updates,
            initial=self.step,
            desc="train",
            unit="upd",
            dynamic_ncols=True,
            disable=not (self.dist.is_main and t.progress and sys.stderr.isatty()),
            file=sys.stderr,
        )
        self._last_save_time = time.monotonic()
        window = {"loss": 0.0, "nll": 0.0, "tokens": 0.0, "updates": 0, "start": time.monotonic()}
        try:
            while self.stop_reason is None:
                if self.batches_done == 0:
                    self.sampler.set_epoch(self.epoch)
                tick = time.monotonic()
                for group in self._groups():
                    stats = self.train_step(group)
                    now = time.monotonic()
                    self.train_seconds += now - tick
                    tick = now
                    if stats is None:
                        self._on_nonfinite()
                    else:
                        self.nonfinite_in_a_row = 0
                        window["loss"] += stats["loss"] * stats["tokens"]
                        window["nll"] += stats["nll_loss"] * stats["tokens"]
                        window["tokens"] += stats["tokens"]
                        window["updates"] += 1
                        bar.update(1)
                        if self.step % t.log_every == 0:
                            self._log_window(window, stats["lr"], bar)
                        if t.valid_every and self.step % t.valid_every == 0:
                            self.run_validation()
                    if self.stop_reason is None:
                        self.stop_reason = self._finished_reason()
                    if self._signal is not None and self.stop_reason is None:
                        name = signal.Signals(self._signal).name
                        self.stop_reason = f"stopped by {name}"
                    if self.stop_reason is not None:
                        break
                    due = (t.save_every and self.step % t.save_every == 0) or (
                        t.save_every_minutes
                        and now - self._last_save_time >= t.save_every_minutes * 60
                    )
                    if due and self.step != self.last_save_step:
                        self.save()
                else:  # the epoch is complete
                    self.epoch += 1
                    self.batches_done = 0
                    if self.stop_reason is None:
                        self.stop_reason = self._finished_reason()
        finally:
            bar.close()
            for sig, h in previous_handlers.items():
                signal.signal(sig, h)
        if self.step != self.last_valid_step and self._signal is None:
            self.run_validation()
        if self.step != self.last_save_step:
            path = self.save()
            if path is not None:
                self.log(f"saved {path}")
        self.log(
            f"{self.stop_reason} at update {self.step} (epoch {self.epoch + 1}, "
            f"{self.train_seconds / 60:.1f} min of training)"
            + (
                f"; best valid {self.best_metric_name}: {self.best:.4g}"
                if self.best is not None
                else ""
            )
            + ("; re-run the same command to resume" if self._signal is not None else "")
        )
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self.dist.enabled:
            dist.barrier()
        return 0

    def _on_nonfinite(self) -> None:
        self.nonfinite_in_a_row += 1
        self.log(
            f"warning: non-finite loss at update {self.step + 1}; update skipped "
            f"({self.nonfinite_in_a_row} in a row)"
        )
        self._write_metrics(
            {
                "kind": "nonfinite",
                "step": self.step,
                "epoch": self.epoch + 1,
                "in_a_row": self.nonfinite_in_a_row,
            }
        )
        if self.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            last = f"update {self.last_save_step}" if self.last_save_step >= 0 else "none yet"
            raise TrainingError(
                f"{MAX_NONFINITE_IN_A_ROW} non-finite losses in a row at update {self.step}: "
                f"training diverged. The last good checkpoint ({last}) is intact in "
                f"{self.run_dir}; lower optim.lr_factor, raise optim.warmup, set optim.clip_norm, "
                "or use fp32/bf16 instead of fp16"
            )

    def _log_window(self, window: dict[str, Any], lr: float, bar: tqdm) -> None:
        elapsed = max(time.monotonic() - window["start"], 1e-9)
        loss = window["loss"] / window["tokens"]
        nll = window["nll"] / window["tokens"]
        row = {
            "kind": "train",
            "step": self.step,
            "epoch": self.epoch + 1,
            "loss": loss,
            "nll_loss": nll,
            "ppl": math.exp(min(nll, 50.0)),
            "lr": lr,
            "tokens_per_s": window["tokens"] / elapsed,
            "updates_per_s": window["updates"] / elapsed,
            "train_minutes": self.train_seconds / 60,
        }
        self._write_metrics(row)
        bar.set_postfix(
            loss=f"{loss:.3f}",
            ppl=f"{row['ppl']:.1f}",
            lr=f"{lr:.2e}",
            tok_s=f"{row['tokens_per_s']:.0f}",
            ep=self.epoch + 1,
        )
        if bar.disable and self.config.train.progress:  # no bar (not a terminal): log a line
            self.log(
                f"update {self.step}: loss {loss:.4f}, ppl {row['ppl']:.2f}, lr {lr:.3e}, "
                f"{row['tokens_per_s']:.0f} tok/s"
            )
        window.update(loss=0.0, nll=0.0, tokens=0.0, updates=0, start=time.monotonic())


def _read_text(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").splitlines()


def _tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TrainingError(
            "train.tensorboard is true but the tensorboard package is not installed "
            "(pip install tensorboard)"
        ) from e
    return SummaryWriter(str(run_dir / "tensorboard"))
