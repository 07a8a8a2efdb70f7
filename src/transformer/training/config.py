"""The training configuration: a YAML file with four sections mapped onto frozen dataclasses.

    model:  the ModelConfig fields (vocab_size comes from the prepared data's tokenizer)
    data:   DataConfig  -- where the prepared data lives and how it is batched
    optim:  OptimConfig -- Adam, the paper's learning-rate schedule, label smoothing, accumulation
    train:  TrainConfig -- how long, on what, in which precision, how often to validate and save

Every unknown key and every wrongly typed value is reported at once (`ConfigError`), whether it
comes from the file or from `--set section.key=value`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from transformer.config import (
    ConfigError,
    ModelConfig,
    check_fields,
    from_dict,
    setting,
    to_dict,
)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
BestMetric = Literal["bleu", "accuracy", "loss"]
Task = Literal["auto", "translation", "classification"]


def _required_data_dir(value: str) -> str | None:
    return None if value else "required (a directory written by `transformer prepare`)"


@dataclass(frozen=True)
class DataConfig:
    # Directory written by `transformer prepare` (manifest.json, tokenizer.json, binarized splits).
    dir: str = setting("", check=_required_data_dir)
    # What the model learns: "translation" (any sequence-to-sequence data: an encoder-decoder
    # Transformer), "classification" (labelled texts: a TransformerClassifier), or "auto": what
    # the prepared data is for. A named task must agree with the data.
    task: Task = "auto"
    # Padded tokens per batch and side, per process (the paper: ~25,000 per update in total).
    max_tokens: int = setting(4096, ge=1)
    # Split used for validation loss, perplexity and BLEU.
    valid_split: str = "valid"
    # Padded tokens per validation batch (no gradients, so larger batches fit).
    valid_max_tokens: int = setting(8192, ge=1)
    # DataLoader worker processes (0 = collate in the training process; best on few CPU cores).
    num_workers: int = setting(0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "data config")


@dataclass(frozen=True)
class OptimConfig:
    # Adam (paper §5.3): beta1 0.9, beta2 0.98, epsilon 1e-9.
    beta1: float = setting(0.9, ge=0.0, lt=1.0)
    beta2: float = setting(0.98, ge=0.0, lt=1.0)
    eps: float = setting(1e-9, gt=0.0)
    weight_decay: float = setting(0.0, ge=0.0)
    # lr = lr_factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), step = optimizer updates.
    lr_factor: float = setting(1.0, gt=0.0)
    warmup: int = setting(4000, ge=1)
    # Not in the paper: lower the rate linearly to ~0 over the last `cooldown` updates before
    # train.max_updates (0 = off). A run that ends at its update budget ends annealed.
    cooldown: int = setting(0, ge=0)
    # The same over the last `cooldown_minutes` of train.max_minutes (0 = off): a run that ends
    # at its time budget ends annealed, whatever the machine's speed (the rate then depends on
    # the training time measured, so two runs differ). At most one of the two cooldowns.
    cooldown_minutes: float = setting(0.0, ge=0.0)
    # Label smoothing epsilon_ls (paper §5.4).
    label_smoothing: float = setting(0.1, ge=0.0, lt=1.0)
    # Accumulate gradients over this many batches per update (reach ~25k tokens on small hardware).
    update_freq: int = setting(1, ge=1)
    # Clip the gradient norm to this value; 0 turns clipping off (the paper does not clip).
    clip_norm: float = setting(0.0, ge=0.0)

    def __post_init__(self) -> None:
        check_fields(self, "optim config")


@dataclass(frozen=True)
class TrainConfig:
    # Stop after this many optimizer updates (the paper: 100,000 base, 300,000 big).
    max_updates: int = setting(100_000, ge=1)
    # Also stop after this many epochs (0 = no limit).
    max_epochs: int = setting(0, ge=0)
    # Also stop after this many minutes of training, summed over resumed runs (0 = no limit).
    max_minutes: float = setting(0.0, ge=0.0)
    seed: int = 1
    device: Device = "auto"
    # auto: bf16 where the device computes it natively (a CPU with AMX-bf16 or AVX512-BF16, a GPU of
    # compute capability >= 8.0), else fp32; fp32; bf16 autocast (CPU and CUDA); fp16 autocast
    # with a gradient scaler (CUDA only). The log states the choice and why.
    precision: Precision = "auto"
    # torch.compile the model (the checkpoint always holds the plain, unwrapped module).
    compile: bool = False
    # Start from the weights of this model directory wherever names and shapes match (e.g. a
    # classifier's encoder from a translation or masked-LM model trained with the same
    # tokenizer); the rest (a classifier's head) starts fresh. Used only when the run starts.
    init_from: str = ""
    # Validate every N updates (and at the end); 0 = only at the end.
    valid_every: int = setting(1000, ge=0)
    # Compute validation BLEU besides loss and perplexity ...
    valid_bleu: bool = True
    # ... decoding with this beam size (GNMT length penalty, alpha 0.6); 1 = greedy (cheaper).
    valid_beam: int = setting(4, ge=1)
    # Decode at most this many validation sentences for BLEU (0 = all).
    valid_bleu_sentences: int = setting(0, ge=0)
    # Keep the best model (by this metric) in RUN_DIR/best/. A metric the task does not report
    # falls back to the task's own: accuracy for classification, loss for translation without
    # BLEU.
    best_metric: BestMetric = "bleu"
    # Stop when the best metric has not improved for this many validations (0 = never).
    patience: int = setting(0, ge=0)
    # Save a checkpoint every N updates and every M minutes (the paper: every 10 minutes).
    save_every: int = setting(1000, ge=0)
    save_every_minutes: float = setting(10.0, ge=0.0)
    # Keep only the last K checkpoints (average them with `transformer average`).
    keep_last: int = setting(5, ge=1)
    # Log training loss to the progress bar and metrics.jsonl every N updates.
    log_every: int = setting(100, ge=1)
    # Also write TensorBoard event files to RUN_DIR/tensorboard (needs the tensorboard package).
    tensorboard: bool = False
    # Show progress: a bar when stderr is a terminal, else a log line every log_every updates.
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "train config")


@dataclass(frozen=True)
class RunConfig:
    """A whole training run. `model` holds ModelConfig fields except vocab_size."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig.from_dict({**self.model, "vocab_size": vocab_size})

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": dict(self.model),
            "data": to_dict(self.data),
            "optim": to_dict(self.optim),
            "train": to_dict(self.train),
        }

    def replace(self, section: str, **changes: Any) -> RunConfig:
        return dataclasses.replace(
            self, **{section: dataclasses.replace(getattr(self, section), **changes)}
        )


SECTIONS: dict[str, type] = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig}
# Keys that may differ when a run is resumed: they extend or watch the run, not change its math.
RESUMABLE_CHANGES = {
    "train.max_updates",
    "train.max_epochs",
    "train.max_minutes",
    "train.patience",
    "train.valid_every",
    "train.valid_bleu",
    "train.valid_bleu_sentences",
    "train.valid_beam",
    "train.save_every",
    "train.save_every_minutes",
    "train.keep_last",
    "train.log_every",
    "train.tensorboard",
    "train.progress",
    "train.device",
    "train.compile",
    "data.num_workers",
    "data.valid_max_tokens",
}


def parse_config(data: Any, where: str) -> RunConfig:
    """Build a RunConfig from a parsed mapping, reporting every problem in every section at once."""
    if not isinstance(data, dict):
        raise ConfigError(
            where,
            [
                f"expected a mapping with sections model, data, optim, train, got {type(data).__name__}"
            ],
        )
    problems: list[str] = []
    known = {"model", *SECTIONS}
    problems += [
        f"{key}: unknown section (known: {', '.join(sorted(known))})"
        for key in data
        if key not in known
    ]
    built: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = data.get(name) or {}
        try:
            built[name] = from_dict(cls, section, where=f"{name} section")
        except ConfigError as e:
            problems += [f"{name}.{p}" for p in e.problems]
    if "optim" in built and "train" in built:
        optim, train = built["optim"], built["train"]
        if optim.cooldown > train.max_updates:
            problems.append(
                f"optim.cooldown: {optim.cooldown} updates is more than train.max_updates "
                f"({train.max_updates})"
            )
        if optim.cooldown_minutes > train.max_minutes:
            problems.append(
                f"optim.cooldown_minutes: {optim.cooldown_minutes:g} minutes needs a "
                f"train.max_minutes at least as long (it is {train.max_minutes:g})"
            )
        if optim.cooldown and optim.cooldown_minutes:
            problems.append(
                "optim.cooldown_minutes: set either it or optim.cooldown (updates), not both"
            )
    model = data.get("model") or {}
    if not isinstance(model, dict):
        problems.append(f"model: expected a mapping, got {type(model).__name__}")
    elif "vocab_size" in model:
        problems.append("model.vocab_size: set by the prepared data's tokenizer; remove it")
    else:
        try:  # check the model section now with a placeholder vocabulary size
            ModelConfig.from_dict({**model, "vocab_size": 8})
        except ConfigError as e:
            problems += [f"model.{p}" for p in e.problems]
    if problems:
        raise ConfigError(where, problems)
    return RunConfig(model=dict(model), **built)


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    """--set SECTION.KEY=VALUE (repeatable): override one value of a YAML config (`load_config`
    applies them)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.max_updates=500 (repeatable)",
    )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML: 3, 0.5, true, fp16) to `data`."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            problems.append(
                f"--set {item!r}: expected section.key=value, e.g. train.max_updates=500"
            )
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            problems.append(f"--set {item!r}: cannot parse the value ({e})")
            continue
        if not isinstance(data.get(section), dict):
            data[section] = {}
        data[section][name] = value
    if problems:
        raise ConfigError("--set options", problems)
    return data


def load_config(path: Path | str, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML training config and apply `--set` overrides; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), [f"cannot read the file: {e}"]) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from None
    if isinstance(data, dict):
        data = apply_overrides(data, overrides or [])
    return parse_config(data, where=str(path))


def config_changes(old: RunConfig, new: RunConfig) -> list[str]:
    """`section.key: old -> new` for every field that differs between two run configs."""
    a, b = old.to_dict(), new.to_dict()
    changes = []
    for section in a.keys() | b.keys():
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(sa.keys() | sb.keys()):
            if sa.get(key) != sb.get(key):
                changes.append(f"{section}.{key}: {sa.get(key)!r} -> {sb.get(key)!r}")
    return sorted(changes)
