"""`transformer average` (identity on equal checkpoints, the mean of two) and `transformer plot`."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.training.conftest import run_cli, run_config
from transformer.data.dataset import load_tokenizer
from transformer.model import Transformer
from transformer.modeldir import load_model_dir
from transformer.training.checkpoint import save_checkpoint
from transformer.training.trainer import Trainer


def _checkpoint(run_dir: Path, step: int, model: Transformer, data: Path) -> None:
    save_checkpoint(run_dir, step, model, load_tokenizer(data), {"step": step}, {}, keep_last=10)


def _model(data: Path, seed: int) -> Transformer:
    torch.manual_seed(seed)
    config = run_config(data).model_config(load_tokenizer(data).vocab_size)
    return Transformer(config)


def test_averaging_identical_checkpoints_is_the_identity(small_data: Path, tmp_path: Path) -> None:
    model = _model(small_data, 1)
    for step in (1, 2, 3):
        _checkpoint(tmp_path / "run", step, model, small_data)
    run_cli("average", str(tmp_path / "run"), "--last", "3", "--out", str(tmp_path / "avg"))
    averaged, _ = load_model_dir(tmp_path / "avg")
    for (name, a), b in zip(model.state_dict().items(), averaged.state_dict().values()):
        assert torch.equal(a, b), name


def test_averaging_two_checkpoints_is_their_mean(small_data: Path, tmp_path: Path) -> None:
    a, b, c = _model(small_data, 1), _model(small_data, 2), _model(small_data, 3)
    for step, model in ((1, c), (2, a), (3, b)):  # the oldest (c) is left out by --last 2
        _checkpoint(tmp_path / "run", step, model, small_data)
    result = run_cli(
        "average", str(tmp_path / "run"), "--last", "2", "--out", str(tmp_path / "avg")
    )
    assert "updates 2, 3" in result.stdout
    averaged, tokenizer = load_model_dir(tmp_path / "avg")
    assert tokenizer.sha256 == load_tokenizer(small_data).sha256
    sa, sb = a.state_dict(), b.state_dict()
    for name, value in averaged.state_dict().items():
        expected = ((sa[name].double() + sb[name].double()) / 2).float()
        assert torch.equal(value, expected), name
    # the shared embedding is stored once and stays shared
    assert averaged.encoder.embed.token.weight is averaged.decoder.embed.token.weight
    stored = load_file(str(tmp_path / "avg" / "model.safetensors"))
    assert len({"encoder.embed.token.weight", "decoder.embed.token.weight"} & stored.keys()) == 1


def test_average_of_a_directory_without_checkpoints_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("average", str(tmp_path), "--out", str(tmp_path / "m"), check=False)
    assert result.returncode == 2 and "no checkpoints" in result.stderr
    assert not (tmp_path / "m").exists()


def test_plot_writes_png_curves(small_data: Path, tmp_path: Path) -> None:
    config = run_config(small_data, train={"max_updates": 4, "valid_every": 2, "valid_bleu": True})
    Trainer(config, tmp_path / "run", log=lambda m: None).train()
    result = run_cli("plot", str(tmp_path / "run"))
    names = {Path(line).name for line in result.stdout.split()}
    assert names == {"loss.png", "perplexity.png", "bleu.png", "learning_rate.png", "curves.png"}
    for name in names:
        assert (tmp_path / "run" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
