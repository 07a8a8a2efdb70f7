"""The trainer in-process: accumulation equals the big batch, the schedule steps per update,
damaged checkpoints are skipped, divergence stops cleanly, finished runs say so."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import run_config
from transformer import hardware
from transformer.data.batching import collate
from transformer.training import objective as objective_module
from transformer.training.checkpoint import latest_checkpoint, list_checkpoints
from transformer.training.schedule import noam_learning_rate
from transformer.training.trainer import Trainer, TrainingError


def _no_dropout(data: Path, **train: object) -> Trainer:
    return Trainer(
        run_config(data, model={"dropout": 0.0}, train=train),
        data.parent / f"run-{torch.randint(0, 10**9, ()).item()}",
        log=lambda message: None,
    )


def _grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def test_update_freq_2_gives_the_gradient_of_the_doubled_batch(small_data: Path) -> None:
    accumulating = _no_dropout(small_data)
    big_batch = _no_dropout(small_data)
    batches = accumulating.sampler.all_batches(epoch=0)[:2]
    pairs = [[accumulating.train_data[i] for i in b.tolist()] for b in batches]
    accumulating.forward_backward([collate(pairs[0]), collate(pairs[1])])
    big_batch.forward_backward([collate(pairs[0] + pairs[1])])
    a, b = _grads(accumulating), _grads(big_batch)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    # and not merely because gradients are tiny: one batch alone differs
    alone = _no_dropout(small_data)
    alone.forward_backward([collate(pairs[0])])
    assert any(not torch.allclose(g, a[n], atol=1e-6) for n, g in _grads(alone).items())


def test_the_schedule_advances_once_per_update_not_per_batch(small_data: Path) -> None:
    trainer = Trainer(
        run_config(small_data, optim={"update_freq": 2}, train={"max_updates": 5, "save_every": 0}),
        small_data.parent / "run-update-freq",
        log=lambda message: None,
    )
    trainer.train()
    assert trainer.step == 5
    assert trainer.batches_done == 10  # two batches per update
    lr = trainer.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(noam_learning_rate(5, 32, 10))


def test_a_cooldown_anneals_the_last_updates(small_data: Path) -> None:
    trainer = Trainer(
        run_config(small_data, optim={"cooldown": 4}, train={"max_updates": 5, "save_every": 0}),
        small_data.parent / "run-cooldown",
        log=lambda message: None,
    )
    assert [trainer.learning_rate(s) / noam_learning_rate(s, 32, 10) for s in range(1, 6)] == [
        pytest.approx(x) for x in (1, 1, 0.75, 0.5, 0.25)
    ]
    trainer.train()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
        noam_learning_rate(5, 32, 10) / 4
    )


def test_a_cooldown_in_minutes_anneals_the_last_minutes(small_data: Path) -> None:
    config = run_config(
        small_data,
        optim={"cooldown_minutes": 2},
        train={"max_updates": 3, "max_minutes": 10, "save_every": 0},
    )
    trainer = Trainer(config, small_data.parent / "run-cooldown-minutes", log=lambda m: None)
    noam = noam_learning_rate(3, 32, 10)
    assert [trainer.learning_rate(3, m) / noam for m in (0, 8, 9, 9.5, 10)] == [
        pytest.approx(x) for x in (1, 1, 0.5, 0.25, 0)
    ]
    trainer.progress.train_seconds = 9 * 60  # resumed 9 minutes in: half the rate is left
    assert trainer.learning_rate(3) == pytest.approx(noam / 2)
    trainer.progress.train_seconds = 0.0
    trainer.train()  # 3 quick updates, far from the cooldown
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(noam, rel=1e-3)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(
    small_data: Path, tmp_path: Path
) -> None:
    config = run_config(small_data, train={"max_updates": 8, "save_every": 4})
    Trainer(config, tmp_path, log=lambda m: None).train()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 8]
    weights = tmp_path / "checkpoints" / "step_00000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    warnings: list[str] = []
    path, state = latest_checkpoint(tmp_path, warn=warnings.append)
    assert path.name == "step_00000004" and state["step"] == 4
    assert "update 8" in warnings[0] and "checksum mismatch" in warnings[0]
    # a resumed trainer continues from update 4 and warns
    messages: list[str] = []
    resumed = Trainer(config, tmp_path, log=messages.append)
    resumed.train()
    assert any("skipping damaged checkpoint" in m for m in messages)
    assert any("resuming from" in m and "step_00000004" in m for m in messages)
    assert resumed.step == 8


def test_a_finished_run_says_so(small_data: Path, tmp_path: Path) -> None:
    config = run_config(small_data, train={"max_updates": 3})
    Trainer(config, tmp_path, log=lambda m: None).train()
    messages: list[str] = []
    Trainer(config, tmp_path, log=messages.append).train()
    assert any("nothing to do" in m and "max_updates = 3" in m for m in messages)


def test_ten_non_finite_losses_in_a_row_stop_training_with_the_checkpoint_intact(
    small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = objective_module.projected_smoothed_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, nll = real(*args, **kwargs)
        return (loss * float("nan"), nll) if calls["n"] > 4 else (loss, nll)

    monkeypatch.setattr(objective_module, "projected_smoothed_loss", poisoned)
    config = run_config(small_data, train={"max_updates": 50, "save_every": 4})
    messages: list[str] = []
    trainer = Trainer(config, tmp_path, log=messages.append)
    with pytest.raises(TrainingError, match="10 non-finite losses in a row") as e:
        trainer.train()
    assert "last good checkpoint (update 4)" in str(e.value)
    assert trainer.step == 4  # skipped updates changed nothing
    assert sum("non-finite loss" in m for m in messages) == 10
    assert latest_checkpoint(tmp_path)[1]["step"] == 4
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "nonfinite" for r in rows) == 10


def test_validation_keeps_the_best_model_and_logs_bleu(small_data: Path, tmp_path: Path) -> None:
    config = run_config(
        small_data,
        train={"max_updates": 6, "valid_every": 3, "valid_bleu": True, "best_metric": "loss"},
    )
    Trainer(config, tmp_path, log=lambda m: None).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [3, 6]
    assert all({"loss", "ppl", "bleu", "best"} <= r.keys() for r in valid)
    assert valid[1]["loss"] < valid[0]["loss"]
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_early_stopping_after_patience_validations_without_improvement(
    small_data: Path, tmp_path: Path
) -> None:
    config = run_config(
        small_data,
        optim={"lr_factor": 1e-6},  # nothing is learnt: BLEU cannot improve
        train={
            "max_updates": 100,
            "valid_every": 2,
            "valid_bleu": True,
            "valid_bleu_sentences": 5,
            "best_metric": "bleu",
            "patience": 2,
        },
    )
    messages: list[str] = []
    trainer = Trainer(config, tmp_path, log=messages.append)
    trainer.train()
    assert trainer.step == 6  # best at update 2, then 2 validations without improvement
    assert any("early stopping" in m and "valid bleu in 2 validations" in m for m in messages)


def test_bf16_autocast_trains_on_cpu(small_data: Path, tmp_path: Path) -> None:
    config = run_config(small_data, train={"max_updates": 3, "precision": "bf16"})
    trainer = Trainer(config, tmp_path, log=lambda m: None)
    trainer.train()
    assert trainer.step == 3
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights


@pytest.mark.parametrize("amd", [False, True])
def test_fp32_on_an_amd_cpu_multiplies_in_onednn_with_the_same_gradient(
    small_data: Path, amd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32 training sends every linear map through oneDNN where `onednn_fp32_linear` says so
    (an AMD CPU), forward and backward, and the gradient of an update is MKL's to rounding."""
    monkeypatch.setattr(hardware, "onednn_fp32_linear", lambda device: False)  # MKL
    reference = _no_dropout(small_data)
    batch = collate([reference.train_data[i] for i in range(8)])
    reference.forward_backward([batch])
    monkeypatch.setattr(hardware, "onednn_fp32_linear", lambda device: amd)
    calls: list[int] = []
    real = hardware.onednn_linear
    monkeypatch.setattr(hardware, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    trainer = _no_dropout(small_data)
    trainer.forward_backward([batch])
    assert (len(calls) > 0) is amd
    got, expected = _grads(trainer), _grads(reference)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("amd", [False, True])
def test_validation_between_updates_sees_the_weights_of_the_last_update(
    small_data: Path, amd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing a validation keeps (the attention's stacked projections, say) may outlive the
    weights it was made from: fused Adam updates them in place without a new version, so after
    two updates validation (loss and BLEU) must equal that of a fresh copy of the model, with
    the linear maps in oneDNN (an AMD CPU) or not."""
    monkeypatch.setattr(hardware, "onednn_fp32_linear", lambda device: amd)
    trainer = _no_dropout(small_data)
    batches = trainer.sampler.all_batches(epoch=0)[:2]
    groups = [[collate([trainer.train_data[i] for i in b.tolist()])] for b in batches]

    def validation(model: torch.nn.Module) -> dict:
        return trainer.validator(model, trainer.tokenizer, trainer.device, trainer.autocast)

    first = validation(trainer.model)
    for group in groups:
        trainer.train_step(group)
    got, expected = validation(trainer.model), validation(copy.deepcopy(trainer.model))
    assert got["loss"] != first["loss"]
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6, abs=0)
    assert got.get("bleu") == expected.get("bleu")


def test_fp16_on_cpu_is_refused_with_a_hint(small_data: Path, tmp_path: Path) -> None:
    config = run_config(small_data, train={"precision": "fp16", "device": "cpu"})
    with pytest.raises(TrainingError, match="use bf16 on CPU"):
        Trainer(config, tmp_path, log=lambda m: None)


def test_an_update_the_fp16_gradient_scaler_skips_does_not_advance_the_schedule(
    small_data: Path,
) -> None:
    trainer = _no_dropout(small_data)
    # The scaler of precision fp16 (CUDA), on CPU: the skip logic is the same.
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    batches = trainer.sampler.all_batches(epoch=0)[:3]
    groups = [[collate([trainer.train_data[i] for i in b.tolist()])] for b in batches]
    assert trainer.train_step(groups[0])["lr"] == pytest.approx(noam_learning_rate(1, 32, 10))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    adam_steps = [s["step"].item() for s in trainer.optimizer.state_dict()["state"].values()]

    weight = next(trainer.model.parameters())
    overflow = weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    assert trainer.train_step(groups[1]) == {}  # skipped: the loss was finite, the gradient not
    overflow.remove()
    assert trainer.step == 1
    assert trainer.scaler.get_scale() == 2.0**9
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    after = [s["step"].item() for s in trainer.optimizer.state_dict()["state"].values()]
    assert after == adam_steps  # Adam's own step count did not move either

    stats = trainer.train_step(groups[2])
    assert trainer.step == 2
    assert stats["lr"] == pytest.approx(noam_learning_rate(2, 32, 10))  # not 3
    rows = [json.loads(line) for line in trainer.metrics.path.read_text().splitlines()]
    assert [(r["kind"], r["step"], r["new_scale"]) for r in rows] == [("overflow", 1, 2.0**9)]


def test_validation_bleu_decodes_as_the_translator_does(small_data: Path, tmp_path: Path) -> None:
    from transformer.training.validation import best_translations
    from transformer.translator import Translator

    # Untrained weights: long, differing outputs (a briefly trained model says little).
    trainer = Trainer(run_config(small_data), tmp_path, log=lambda m: None)
    sources = [*trainer.validator.texts[0][:6], "", "   "]
    translator = Translator([trainer.model], trainer.tokenizer)
    for beam, how in ((1, {"method": "greedy"}), (3, {"method": "beam", "beam": 3})):
        ours = best_translations(trainer.model, trainer.tokenizer, sources, beam, "cpu", 200)
        assert ours == translator.translate(sources, **how)
        assert ours[-2:] == ["", ""]
        assert len(set(ours)) > 3  # real, differing translations


def test_a_run_that_ends_with_its_epoch_has_a_checkpoint_that_says_so(
    small_data: Path, tmp_path: Path
) -> None:
    """The last update of the epoch is checkpointed (save_every 1) before the epoch ends: the run
    saves once more, so that its newest checkpoint records the epoch limit as reached."""
    config = run_config(small_data, train={"max_updates": 10_000, "max_epochs": 1, "save_every": 1})
    messages: list[str] = []
    trainer = Trainer(config, tmp_path, log=messages.append)
    trainer.train()
    state = latest_checkpoint(tmp_path)[1]
    assert state["step"] == trainer.step == len(trainer.sampler)
    assert state["epoch"] == 1 and state["batches_done"] == 0
    assert "reached train.max_epochs = 1" in messages[-1] and "(1 epoch(s) done" in messages[-1]
    again: list[str] = []
    Trainer(config, tmp_path, log=again.append).train()
    assert any("nothing to do" in m for m in again)
