"""The training loop: the paper's recipe (section 5) on one CPU, one GPU or many processes,
resumable exactly.

One optimizer update = `update_freq` batches of at most `max_tokens` padded tokens per side on each
of the W processes. The loss of the update is the label-smoothed cross-entropy (section 5.4)
summed over all its target tokens and divided by their number (all-reduced across processes), so
the gradient is the same whether the tokens come in one batch, in several accumulated batches, or
from several processes. Adam follows the paper's learning-rate schedule in optimizer updates
(section 5.3).

The loop's neighbours: `distributed` (the processes and the decisions they take together),
`state` (the run's counters and random states), `checkpoint` (files on disk), `metrics`
(metrics.jsonl, TensorBoard), `validation` (loss, perplexity, BLEU). Everything that decides the
future of a run is in its checkpoint, so re-running the same command after a crash continues bit
for bit (on CPU in fp32) where the last checkpoint left off.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from transformer.data.batching import TokenBatchSampler
from transformer.data.dataset import load_split, load_tokenizer, read_manifest
from transformer.data.errors import DataError
from transformer.hardware import (
    autocast,
    keep_freed_memory,
    resolve_precision,
    training_context,
)
from transformer.modeldir import copy_matching_weights, save_model_dir
from transformer.training.checkpoint import (
    latest_checkpoint,
    remove_unfinished_checkpoints,
    save_checkpoint,
)
from transformer.training.config import RunConfig
from transformer.training.distributed import init_distributed
from transformer.training.errors import TrainingError
from transformer.training.metrics import METRICS, LossWindow, MetricsLog
from transformer.training.objective import objective_for
from transformer.training.schedule import cooldown_factor, noam_learning_rate
from transformer.training.state import Progress, rng_state, set_rng_state
from transformer.training.validation import HIGHER_IS_BETTER, describe, validator_for

__all__ = ["BEST", "METRICS", "Trainer", "TrainingError"]

BEST = "best"
MAX_NONFINITE_IN_A_ROW = 10


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
        self.dist = init_distributed(config.train.device)
        self.device = self.dist.device
        self._log = log or (lambda message: tqdm.write(message, file=sys.stderr))
        self.precision, self.precision_reason = resolve_precision(
            config.train.precision, self.device
        )
        if self.precision == "fp16" and self.device.type != "cuda":
            raise TrainingError(
                "train.precision fp16 is for CUDA devices (a CPU computes fp16 slowly); "
                "use bf16 on CPU"
            )
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults for the largest tensors at every update
        self.metrics = MetricsLog(self.run_dir, enabled=self.dist.is_main)

        # Data: the tokenizer fixes the vocabulary, hence the model's size.
        data_dir = Path(config.data.dir)
        self.tokenizer = load_tokenizer(data_dir)  # also checks the manifest
        # A task other than translation (e.g. parsing) travels with every model written; it
        # chooses what is trained (the objective: model, batching, loss, validation).
        self.task: dict[str, Any] | None = read_manifest(data_dir).get("task")
        self.objective = objective_for(self.task, config.data.task)
        self.train_data = load_split(data_dir, "train")
        if len(self.train_data) == 0:
            raise DataError(f"{data_dir}: the training split is empty")
        self.validator = validator_for(config, self.task)
        self.model_config = config.model_config(self.tokenizer.vocab_size)
        torch.manual_seed(config.train.seed)  # every rank builds the same initial weights
        self.model = self.objective.build(self.model_config).to(self.device)
        self.initialised_from: tuple[list[str], list[str]] | None = None
        if config.train.init_from:
            self.initialised_from = copy_matching_weights(
                self.model, config.train.init_from, self.tokenizer
            )
        self.sampler = TokenBatchSampler(
            *self.objective.lengths(self.train_data),
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

        o = config.optim
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=self.learning_rate(1, minutes=0.0),  # set again at every update
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
            # One fused kernel for all parameters (the same update to rounding): on a CPU the
            # step is 3-4x faster than PyTorch's default loop over the parameters.
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if config.train.compile:
            self.net = torch.compile(self.net)
        # Dropout differs between ranks (as if they were parts of one big batch).
        torch.manual_seed(config.train.seed + self.dist.rank)

        self.progress = Progress()  # restored by `resume()`
        self.best_metric_name = config.train.best_metric
        self.last_save_step = -1
        self._saved_epoch = -1  # the epoch count of the last checkpoint written or loaded
        self.nonfinite_in_a_row = 0
        self.stop_reason: str | None = None
        self.stopped_by: str | None = None  # the signal all processes agreed to stop on
        self._signal: int | None = None  # a signal this process received (not yet agreed on)
        self._last_save_time = time.monotonic()

    # The counters most callers want, read from `progress`.
    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    @property
    def batches_done(self) -> int:
        return self.progress.batches_done

    @property
    def train_seconds(self) -> float:
        return self.progress.train_seconds

    @property
    def interrupted(self) -> bool:
        """Whether the last `train()` stopped on SIGINT or SIGTERM (a checkpoint was saved)."""
        return self.stopped_by is not None

    def learning_rate(self, step: int, minutes: float | None = None) -> float:
        """The paper's schedule (section 5.3) at optimizer update `step` (1-based), with the
        optional cooldown before train.max_updates, or before train.max_minutes when `minutes`
        of training are done (default: this run's so far; with several processes, the mean of
        their clocks: an all-reduce, so every process must ask at the same update)."""
        o, t = self.config.optim, self.config.train
        rate = noam_learning_rate(step, self.model_config.d_model, o.warmup, o.lr_factor)
        if o.cooldown_minutes:
            if minutes is None:  # the processes' mean, so that they all take the same rate
                minutes = self.dist.sum([self.train_seconds])[0] / self.dist.world_size / 60
            return rate * cooldown_factor(t.max_minutes - minutes, o.cooldown_minutes)
        return rate * cooldown_factor(t.max_updates + 1 - step, o.cooldown)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: autocast in bf16/fp16; in fp32 on an AMD CPU, the linear
        maps in oneDNN (`hardware.training_context`), except under torch.compile, which traces
        the model's own operations."""
        if self.config.train.compile:
            return autocast(self.device, self.precision)
        return training_context(self.device, self.precision)

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self._log(message)

    # ------------------------------------------------------------------ the loop

    def train(self) -> int:
        """Train until a limit is reached, a signal arrives or training fails. Returns 0."""
        t = self.config.train
        resumed = self.resume()
        if resumed is not None:
            self.log(f"resuming from {resumed} (update {self.step}, epoch {self.epoch + 1})")
        elif self.initialised_from is not None:
            copied, kept = self.initialised_from
            self.log(
                f"initialised {len(copied)} weight tensors from {t.init_from}; "
                f"{len(kept)} start fresh" + (f" ({', '.join(kept)})" if len(kept) <= 4 else "")
            )
        # Right after a resume every process has the checkpoint's counters: they agree.
        already = self._limit_reached(out_of_time=self._out_of_time())
        if already is not None:
            self.log(
                f"{self.run_dir}: nothing to do, the run already {already} (update {self.step}); "
                "raise the limit with --set to train further"
            )
            return 0
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if t.tensorboard:
            self.metrics.open_tensorboard()
        self.log(
            f"training {self.model.num_parameters():,} parameters on {self.device} "
            f"({self.dist.world_size} process(es), {self.precision}: {self.precision_reason}); "
            f"{len(self.sampler)} batches per epoch and process, "
            f"update_freq {self.config.optim.update_freq}; run directory {self.run_dir}"
        )
        bar = tqdm(
            total=t.max_updates,
            initial=self.step,
            desc="train",
            unit="upd",
            dynamic_ncols=True,
            disable=not (self.dist.is_main and t.progress and sys.stderr.isatty()),
            file=sys.stderr,
        )
        window = LossWindow()
        self._last_save_time = time.monotonic()
        try:
            with self._catch_stop_signals():
                while self.stop_reason is None:
                    self._train_epoch(window, bar)
        finally:
            bar.close()
        self._finish()
        return 0

    def _train_epoch(self, window: LossWindow, bar: tqdm) -> None:
        """The rest of the current epoch, or less if a limit is reached or a signal arrives."""
        t = self.config.train
        if self.progress.batches_done == 0:
            self.sampler.set_epoch(self.epoch)
        tick = time.monotonic()
        for group in self._groups():
            stats = self.train_step(group)
            now = time.monotonic()
            self.progress.train_seconds += now - tick
            tick = now
            if stats is None:
                self._on_nonfinite()
            elif stats:  # an update was made (an fp16 overflow skips it: empty stats)
                self.nonfinite_in_a_row = 0
                window.add(stats["loss"], stats["nll_loss"], stats["tokens"])
                bar.update(1)
                if self.step % t.log_every == 0:
                    self._log_window(window, stats["lr"], bar)
                if t.valid_every and self.step % t.valid_every == 0:
                    self.run_validation()
            # What this process alone sees (its clock, a signal) decides nothing by itself.
            agreed = self.dist.agree(
                signal=self._signal is not None,
                out_of_time=self._out_of_time(),
                save_due=bool(t.save_every_minutes)
                and now - self._last_save_time >= t.save_every_minutes * 60,
            )
            if self.stop_reason is None:
                self.stop_reason = self._limit_reached(out_of_time=agreed["out_of_time"])
            if agreed["signal"] and self.stop_reason is None:
                self.stopped_by = signal.Signals(self._signal or signal.SIGTERM).name
                self.stop_reason = f"stopped by {self.stopped_by}"
            if self.stop_reason is not None:
                return
            due = agreed["save_due"] or (t.save_every and self.step % t.save_every == 0)
            if due and self.step != self.last_save_step:
                self.save()
        # the epoch is complete
        self.progress.epoch += 1
        self.progress.batches_done = 0
        if self.stop_reason is None:  # (time was agreed on after the last update)
            self.stop_reason = self._limit_reached(out_of_time=False)

    def _finish(self) -> None:
        """Validate and save the last update (unless done already), say why training ended."""
        if self.step != self.progress.last_valid_step and not self.interrupted:
            self.run_validation()
        # Saved again when only the epoch count moved since the last save (an epoch ended
        # right after a checkpoint): the checkpoint then says the run reached its epoch limit.
        if self.step != self.last_save_step or self._saved_epoch != self.epoch:
            path = self.save()
            if path is not None:
                self.log(f"saved {path}")
        best = self.progress.best
        at_boundary = self.progress.batches_done == 0 and self.epoch > 0
        epoch = f"{self.epoch} epoch(s) done" if at_boundary else f"epoch {self.epoch + 1}"
        self.log(
            f"{self.stop_reason} at update {self.step} ({epoch}, "
            f"{self.train_seconds / 60:.1f} min of training)"
            + (f"; best valid {self.best_metric_name}: {best:.4g}" if best is not None else "")
            + ("; re-run the same command to resume" if self.interrupted else "")
        )
        self.metrics.close()
        self.dist.barrier()

    def _out_of_time(self) -> bool:
        """Whether train.max_minutes is used up by this process's count (decide only after
        `agree`: the processes' clocks differ)."""
        minutes = self.config.train.max_minutes
        return bool(minutes) and self.train_seconds >= minutes * 60

    def _limit_reached(self, out_of_time: bool) -> str | None:
        """Why the run is finished, if it is (`out_of_time`: agreed by the processes)."""
        t = self.config.train
        if self.step >= t.max_updates:
            return f"reached train.max_updates = {t.max_updates}"
        if t.max_epochs and self.epoch >= t.max_epochs:
            return f"reached train.max_epochs = {t.max_epochs}"
        if out_of_time:
            return f"reached train.max_minutes = {t.max_minutes:g}"
        return None

    @contextlib.contextmanager
    def _catch_stop_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM only note the signal: training stops after the current update,
        with a checkpoint. A second Ctrl-C interrupts at once."""

        def handler(signum: int, frame: Any) -> None:
            self._signal = signum
            signal.signal(
                signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            )

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    # ------------------------------------------------------------------ batches

    def _batches(self) -> Iterator[Any]:
        """This epoch's remaining batches for this rank, collated (in workers if configured)."""
        workers = self.config.data.num_workers
        if workers == 0:
            for indices in self.sampler:
                yield self.objective.collate([self.train_data[i] for i in indices])
            return
        loader = torch.utils.data.DataLoader(
            self.train_data,
            batch_sampler=self.sampler,
            collate_fn=self.objective.collate,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        yield from loader

    def _groups(self) -> Iterator[list[Any]]:
        """Groups of `update_freq` batches (the last group of an epoch may be smaller)."""
        n = len(self.sampler)
        group: list[Any] = []
        for batch in self._batches():
            group.append(batch)
            if (
                len(group) == self.config.optim.update_freq
                or self.progress.batches_done + len(group) == n
            ):
                # Counted before the update runs: a checkpoint is only ever written after it.
                self.progress.batches_done += len(group)
                yield group
                group = []

    # ------------------------------------------------------------------ one update

    def forward_backward(self, group: list[Any]) -> tuple[float, float, float]:
        """Accumulate the gradient of one update's token-mean loss over a group of batches.

        Returns (smoothed loss sum, NLL sum, target tokens), summed over all processes (for
        classification: texts instead of target tokens).
        """
        n_tokens = sum(self.objective.count(b) for b in group)
        (global_tokens,) = self.dist.sum([float(n_tokens)])
        # DDP averages gradients over processes; scale so that the result is the token mean.
        scale = self.dist.world_size / global_tokens
        self.net.train()
        # The sums stay on the device until the group is done: one host sync per update, so
        # that on a GPU the next batch's kernels are queued while the last ones still run.
        sums: list[torch.Tensor] = []
        for i, batch in enumerate(group):
            batch = batch.to(self.device, non_blocking=True)
            last = i == len(group) - 1
            sync = (
                self.net.no_sync()
                if self.dist.enabled and not last and hasattr(self.net, "no_sync")
                else contextlib.nullcontext()
            )
            with sync:
                loss, nll = self.objective.loss(
                    self.net, batch, self.config.optim.label_smoothing, self.autocast
                )
                self.scaler.scale(loss * scale).backward()
            sums.append(torch.stack([loss.detach(), nll.detach()]).double())
        loss_sum, nll_sum = self.dist.sum(torch.stack(sums).sum(0).tolist())
        return loss_sum, nll_sum, global_tokens

    def train_step(self, group: list[Any]) -> dict[str, float] | None:
        """One optimizer update on a group of batches.

        Returns its statistics; None if the loss was not finite (nothing changes); {} if fp16's
        gradient scaler found an overflow in the gradient and skipped the update: then neither
        the weights nor the update count nor the learning-rate schedule advance (as in fairseq),
        so that the schedule counts real updates; the scaler lowers its scale and the next group
        of batches is tried.
        """
        lr = self.learning_rate(self.step + 1)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_sum, nll_sum, tokens = self.forward_backward(group)
        if not (math.isfinite(loss_sum) and math.isfinite(nll_sum)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        clip = self.config.optim.clip_norm
        if clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # skips the step if the gradient overflowed
        self.scaler.update()  # ... and then lowers the scale
        self.optimizer.zero_grad(set_to_none=True)
        if scale is not None and self.scaler.get_scale() < scale:
            self._on_overflow(scale)
            return {}
        self.progress.step += 1
        return {"loss": loss_sum / tokens, "nll_loss": nll_sum / tokens, "tokens": tokens, "lr": lr}

    def _on_overflow(self, scale: float) -> None:
        self.metrics.write(
            {
                "kind": "overflow",
                "step": self.step,
                "epoch": self.epoch + 1,
                "scale": scale,
                "new_scale": self.scaler.get_scale(),
            }
        )

    def _on_nonfinite(self) -> None:
        self.nonfinite_in_a_row += 1
        self.log(
            f"warning: non-finite loss at update {self.step + 1}; update skipped "
            f"({self.nonfinite_in_a_row} in a row)"
        )
        self.metrics.write(
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

    def _log_window(self, window: LossWindow, lr: float, bar: tqdm) -> None:
        row = {
            "kind": "train",
            "step": self.step,
            "epoch": self.epoch + 1,
            **window.row(),
            "lr": lr,
            "train_minutes": self.train_seconds / 60,
        }
        self.metrics.write(row)
        bar.set_postfix(
            loss=f"{row['loss']:.3f}",
            ppl=f"{row['ppl']:.1f}",
            lr=f"{lr:.2e}",
            tok_s=f"{row['tokens_per_s']:.0f}",
            ep=self.epoch + 1,
        )
        if bar.disable and self.config.train.progress:  # no bar (not a terminal): log a line
            self.log(
                f"update {self.step}: loss {row['loss']:.4f}, ppl {row['ppl']:.2f}, lr {lr:.3e}, "
                f"{row['tokens_per_s']:.0f} {self.objective.unit}/s"
            )

    # ------------------------------------------------------------------ validation

    def run_validation(self) -> dict[str, Any]:
        """Validation loss, perplexity and BLEU on rank 0 (the others wait for its result);
        keeps the best model in RUN_DIR/best and decides early stopping."""
        t = self.config.train
        result: dict[str, Any] = {}
        if self.dist.is_main:
            result = self.validator(self.model, self.tokenizer, self.device, self.autocast)
        result = self.dist.broadcast(result)
        p = self.progress
        p.last_valid_step = self.step
        if not result:
            return result
        metric = self.best_metric_name = (
            t.best_metric if t.best_metric in result else self.validator.primary_metric
        )
        value = result[metric]
        higher = metric in HIGHER_IS_BETTER
        improved = p.best is None or (value > p.best if higher else value < p.best)
        if improved:
            p.best = value
            p.bad_validations = 0
            if self.dist.is_main:
                save_model_dir(self.run_dir / BEST, self.model, self.tokenizer, self.task)
        else:
            p.bad_validations += 1
        result["best"] = p.best
        self.metrics.write(
            {
                "kind": "valid",
                "step": self.step,
                "epoch": self.epoch + 1,  # 1-based, as in every metrics row
                "train_minutes": self.train_seconds / 60,
                **result,
            }
        )
        self.log(f"update {self.step}: valid {describe(result)}{' (best)' if improved else ''}")
        if t.patience and p.bad_validations >= t.patience:
            self.stop_reason = (
                f"early stopping: no improvement of valid {metric} in {t.patience} validations"
            )
        return result

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The trainer's part of a checkpoint (every process's random states: collective)."""
        return {
            **self.progress.state_dict(),
            "sampler": self.sampler.state_dict(batches_done=self.progress.batches_done),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": self.dist.gather(rng_state(self.device)),
            "world_size": self.dist.world_size,
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current update (rank 0 writes; every rank takes part)."""
        state = self.state_dict()
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
                task=self.task,
            )
        self.last_save_step = self.step
        self._saved_epoch = self.epoch
        self._last_save_time = time.monotonic()
        return path

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
        self.progress.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        self.last_save_step = self.step
        self._saved_epoch = self.epoch
        if state["world_size"] == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank], self.device)
        else:
            self.log(
                f"warning: the checkpoint was written by {state['world_size']} process(es), this "
                f"run has {self.dist.world_size}: random states are re-seeded, so dropout masks "
                "differ from an uninterrupted run"
            )
            torch.manual_seed(self.config.train.seed + 7919 * self.step + self.dist.rank)
        self.metrics.truncate(self.step)
        return path
