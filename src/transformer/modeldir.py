"""The model directory: everything needed to translate, and nothing else.

    MODEL_DIR/
      config.json        # the ModelConfig fields
      model.safetensors  # the unwrapped Transformer's weights (a shared embedding stored once)
      tokenizer.json     # the joint subword tokenizer (Hugging Face `tokenizers` format)
      task.json          # only for tasks other than translation: e.g. {"name": "parsing",
                         # "decoding": {...}}, copied from the data directory's manifest

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

from transformer.config import ConfigError, ModelConfig
from transformer.data.tokenizer import SubwordTokenizer
from transformer.io import atomic_directory
from transformer.model import Transformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
TASK_FILE = "task.json"  # optional: absent for translation


class ModelDirError(ValueError):
    """A model directory is missing a file, holds a corrupt one, or its parts do not match."""


def write_model_files(
    directory: Path,
    model: Transformer,
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
    model: Transformer,
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
    return task


def load_model_dir(
    directory: Path | str, device: torch.device | str = "cpu"
) -> tuple[Transformer, SubwordTokenizer]:
    """Load (model in eval mode, tokenizer) from a model directory, checking that they match."""
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
    model = Transformer(config)
    path = directory / WEIGHTS_FILE
    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise ModelDirError(
            f"{path}: cannot load the weights ({e}); the file is corrupt, truncated or belongs "
            "to a model of another shape"
        ) from e
    return model.to(device).eval(), tokenizer


def _what_is_a_model_dir(directory: Path | str) -> str:
    return (
        f"a model directory holds {', '.join(MODEL_FILES)} (write one with "
        f"`transformer average RUN_DIR --out {directory}`)"
    )
