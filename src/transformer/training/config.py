"""The training configuration: a YAML file with four sections mapped onto frozen dataclasses.

    model:  the ModelConfig fields (vocab_size comes from the prepared data's tokenizer)
    data:   DataConfig  -- where the prepared data lives and how it is batched
    optim:  OptimConfig -- Adam, the paper's learning-rate schedule, label smoothing, accumulation
    train:  TrainConfig -- how long, on what, in which precision, how often to validate and save

Every unknown key and every wrongly typed value is reported at once (`ConfigError`), whether it
comes from the file or from `--set section.key=value`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from transformer.config import ConfigError, ModelConfig, from_dict, to_dict

Precision = Literal["fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
BestMetric = Literal["bleu", "loss"]


@dataclass(frozen=True)
class DataConfig:
    # Directory written by `transformer prepare` (manifest.json, tokenizer.json, binarized splits).
    dir: str = ""
    # Padded tokens per batch and side, per process (the paper: ~25,000 per update in total).
    max_tokens: int = 4096
    # Split used for validation loss, perplexity and BLEU.
    valid_split: str = "valid"
    # Padded tokens per validation batch (no gradients, so larger batches fit).
    valid_max_tokens: int = 8192
    # DataLoader worker processes (0 = collate in the training process; best on few CPU cores).
    num_workers: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not self.dir:
            problems.append("dir: required (a directory written by `transformer prepare`)")
        for name in ("max_tokens", "valid_max_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            problems.append(f"num_workers: must be >= 0, got {self.num_workers}")
        if problems:
            raise ConfigError("data config", problems)


@dataclass(frozen=True)
class OptimConfig:
    # Adam (paper §5.3): beta1 0.9, beta2 0.98, epsilon 1e-9.
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.0
    # lr = lr_factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), step = optimizer updates.
    lr_factor: float = 1.0
    warmup: int = 4000
    # Label smoothing epsilon_ls (paper §5.4).
    label_smoothing: float = 0.1
    # Accumulate gradients over this many batches per update (reach ~25k tokens on small hardware).
    update_freq: int = 1
    # Clip the gradient norm to this value; 0 turns clipping off (the paper does not clip).
    clip_norm: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.eps <= 0:
            problems.append(f"eps: must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.lr_factor <= 0:
            problems.append(f"lr_factor: must be > 0, got {self.lr_factor}")
        if self.warmup < 1:
            problems.append(f"warmup: must be >= 1, got {self.warmup}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.update_freq < 1:
            problems.append(f"update_freq: must be >= 1, got {self.update_freq}")
        if self.clip_norm < 0:
            problems.append(f"clip_norm: must be >= 0, got {self.clip_norm}")
        if problems:
            raise ConfigError("optim config", problems)


@dataclass(frozen=True)
class TrainConfig:
    # Stop after this many optimizer updates (the paper: 100,000 base, 300,000 big).
    max_updates: int = 100_000
    # Also stop after this many epochs (0 = no limit).
    max_epochs: int = 0
    # Also stop after this many minutes of training, summed over resumed runs (0 = no limit).
    max_minutes: float = 0.0
    seed: int = 1
    device: Device = "auto"
    # fp32; bf16 autocast (CPU and CUDA); fp16 autocast with a gradient scaler (CUDA only).
    precision: Precision = "fp32"
    # torch.compile the model (the checkpoint always holds the plain, unwrapped module).
    compile: bool = False
    # Validate every N updates (and at the end); 0 = only at the end.
    valid_every: int = 1000
    # Compute validation BLEU besides loss and perplexity ...
    valid_bleu: bool = True
    # ... decoding with this beam size (GNMT length penalty, alpha 0.6); 1 = greedy (cheaper).
    valid_beam: int = 4
    # Decode at most this many validation sentences for BLEU (0 = all).
    valid_bleu_sentences: int = 0
    # Keep the best model (by this metric) in RUN_DIR/best/.
    best_metric: BestMetric = "bleu"
    # Stop when the best metric has not improved for this many validations (0 = never).
    patience: int = 0
    # Save a checkpoint every N updates and every M minutes (the paper: every 10 minutes).
    save_every: int = 1000
    save_every_minutes: float = 10.0
    # Keep only the last K checkpoints (average them with `transformer average`).
    keep_last: int = 5
    # Log training loss to the progress bar and metrics.jsonl every N updates.
    log_every: int = 100
    # Also write TensorBoard event files to RUN_DIR/tensorboard (needs the tensorboard package).
    tensorboard: bool = False
    # Show progress: a bar when stderr is a terminal, else a log line every log_every updates.
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_updates", "keep_last", "log_every", "valid_beam"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in (
            "max_epochs",
            "max_minutes",
            "valid_every",
            "valid_bleu_sentences",
            "patience",
            "save_every",
            "save_every_minutes",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ConfigError("train config", problems)


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
