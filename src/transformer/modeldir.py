"""The model directory: everything needed to translate, and nothing else.

    MODEL_DIR/
      config.json        # the ModelConfig fields
      model.safetensors  # the unwrapped Transformer's weights (a shared embedding stored once)
      tokenizer.json     # the joint subword tokenizer (Hugging Face `tokenizers` format)
      task.json          # only for tasks other than translation: e.g. {"name": "parsing",
                         # "decoding": {...}} or {"name": "classification", "labels": [...]},
                         # copied from the data directory's manifest

A classification model (`TransformerClassifier`) has the same files: config.json is its encoder's
ModelConfig (with `pooling`) and task.json names its classes in index order.

`transformer average` writes one; every training checkpoint is one too (with extra files beside),
so `Translator.from_pretrained` accepts either. Directories are written to a temporary sibling and
renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from transformer.config import ConfigError, ModelConfig
from transformer.data.classification import TASK_NAME as CLASSIFICATION
from transformer.data.tokenizer import SubwordTokenizer
from transformer.io import atomic_directory
from transformer.model import Transformer, TransformerClassifier

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
TASK_FILE = "task.json"  # optional: absent for translation


def is_classification(task: dict[str, Any] | None) -> bool:
    """Whether a task record (task.json, a data manifest's "task") is text classification."""
    return task is not None and task.get("name") == CLASSIFICATION


def build_model(config: ModelConfig, task: dict[str, Any] | None) -> nn.Module:
    """The model a task trains: a TransformerClassifier over the task's labels for
    classification, else the encoder-decoder Transformer (translation, parsing, ...)."""
    if is_classification(task):
        assert task is not None
        return TransformerClassifier(config, len(task["labels"]))
    return Transformer(config)


class ModelDirError(ValueError):
    """A model directory is missing a file, holds a corrupt one, or its parts do not match."""


def write_model_files(
    directory: Path,
    model: nn.Module,
    tokenizer: SubwordTokenizer,
    task: dict[str, Any] | None = None,
) -> None:
    """Write the model files into an existing (temporary) directory, without renaming anything;
    `task` (the data manifest's record of a task other than translation) goes to task.json."""
    (directory / CONFIG_FILE).write_text(
        json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8"
    )
    save_model(
        model,
        str(directory / WEIGHTS_FILE),
        metadata={"format": "pt", "tokenizer_sha256": tokenizer.sha256},
    )
    tokenizer.save(directory / TOKENIZER_FILE)
    if task is not None:
        (directory / TASK_FILE).write_text(json.dumps(task, indent=2) + "\n", encoding="utf-8")


def save_model_dir(
    directory: Path | str,
    model: nn.Module,
    tokenizer: SubwordTokenizer,
    task: dict[str, Any] | None = None,
) -> Path:
    """Write a model directory atomically (an existing one is replaced only once complete)."""
    out = Path(directory)
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ModelDirError(
            f"the model's vocab_size {model.config.vocab_size} differs from the tokenizer's "
            f"{tokenizer.vocab_size}"
        )
    with atomic_directory(out) as tmp:
        write_model_files(tmp, model, tokenizer, task)
    return out


def load_model_config(directory: Path | str) -> ModelConfig:
    """The ModelConfig of a model directory, with errors naming the file."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; {_what_is_a_model_dir(directory)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelConfig.from_dict(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from e
    except ConfigError as e:
        raise ModelDirError(f"{path}: {e}") from e


def load_task(directory: Path | str) -> dict[str, Any] | None:
    """The task record of a model directory (its task.json), or None for a translation model."""
    path = Path(directory) / TASK_FILE
    if not path.is_file():
        return None
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(task, dict) or not isinstance(task.get("name"), str):
        raise ModelDirError(f'{path}: expected an object with a "name" (e.g. "parsing")')
    if not isinstance(task.get("decoding", {}), dict):
        raise ModelDirError(f'{path}: "decoding" must be an object of decoding options')
    if is_classification(task):
        labels = task.get("labels")
        if (
            not isinstance(labels, list)
            or len(labels) < 2
            or not all(isinstance(x, str) and x for x in labels)
            or len(set(labels)) != len(labels)
        ):
            raise ModelDirError(
                f'{path}: a classification task needs "labels", a list of at least 2 distinct '
                "non-empty class names in index order"
            )
    return task


def load_model_dir(
    directory: Path | str, device: torch.device | str = "cpu"
) -> tuple[Transformer, SubwordTokenizer]:
    """Load (translation model in eval mode, tokenizer) from a model directory, checking that
    they match; a classifier's directory is refused with a pointer to `transformer classify`."""
    model, tokenizer = load_any_model_dir(directory, device)
    if not isinstance(model, Transformer):
        raise ModelDirError(
            f"{directory}: a classification model (task.json); it classifies texts, it does not "
            "translate: use `transformer classify` or transformer.Classifier"
        )
    return model, tokenizer


def load_classifier_dir(
    directory: Path | str, device: torch.device | str = "cpu"
) -> tuple[TransformerClassifier, SubwordTokenizer, list[str]]:
    """Load (classifier in eval mode, tokenizer, class names) from a classifier's directory."""
    model, tokenizer = load_any_model_dir(directory, device)
    if not isinstance(model, TransformerClassifier):
        raise ModelDirError(
            f"{directory}: not a classification model (its {TASK_FILE} does not name the task "
            f"{CLASSIFICATION!r}); train one on data prepared with `transformer prepare --classify`"
        )
    task = load_task(directory)
    assert task is not None
    return model, tokenizer, list(task["labels"])


def load_any_model_dir(
    directory: Path | str, device: torch.device | str = "cpu"
) -> tuple[nn.Module, SubwordTokenizer]:
    """Load (model of the directory's task in eval mode, tokenizer), checking that they match."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: not a directory; {_what_is_a_model_dir(directory)}")
    missing = [name for name in MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelDirError(
            f"{directory}: missing {', '.join(missing)}; {_what_is_a_model_dir(directory)}"
        )
    config = load_model_config(directory)
    try:
        tokenizer = SubwordTokenizer.from_file(directory / TOKENIZER_FILE)
    except Exception as e:
        raise ModelDirError(f"{directory / TOKENIZER_FILE}: cannot load the tokenizer ({e})") from e
    if tokenizer.vocab_size != config.vocab_size:
        raise ModelDirError(
            f"{directory}: {TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but {CONFIG_FILE} "
            f"says vocab_size {config.vocab_size}; the tokenizer does not belong to this model"
        )
    model = build_model(config, load_task(directory))
    path = directory / WEIGHTS_FILE
    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise ModelDirError(
            f"{path}: cannot load the weights ({e}); the file is corrupt, truncated or belongs "
            "to a model of another shape"
        ) from e
    return model.to(device).eval(), tokenizer


def copy_matching_weights(
    model: nn.Module, directory: Path | str, tokenizer: SubwordTokenizer
) -> tuple[list[str], list[str]]:
    """Copy into `model` every weight of the model directory `directory` whose name and shape
    match (a shared embedding under each of its names), e.g. a classifier's `encoder.*` from a
    translation model. The directory's tokenizer must be `tokenizer` (the same ids). Returns
    (names copied, names of `model` left as they were); ModelDirError if nothing matches."""
    source, source_tokenizer = load_any_model_dir(directory)
    if source_tokenizer.sha256 != tokenizer.sha256:
        raise ModelDirError(
            f"{directory}: its tokenizer is not the training data's, so its token ids mean "
            "other subwords; prepare the data with `--tokenizer "
            f"{Path(directory) / TOKENIZER_FILE}`"
        )
    theirs = source.state_dict()
    copied, kept = [], []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            other = theirs.get(name)
            if other is not None and other.shape == tensor.shape:
                tensor.copy_(other)
                copied.append(name)
            else:
                kept.append(name)
    if not copied:
        raise ModelDirError(f"{directory}: no weight has the name and shape of one of this model")
    return copied, kept


def _what_is_a_model_dir(directory: Path | str) -> str:
    return (
        f"a model directory holds {', '.join(MODEL_FILES)} (write one with "
        f"`transformer average RUN_DIR --out {directory}`)"
    )
