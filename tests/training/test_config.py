"""The training YAML: every key known, every problem reported at once, resume-safe changes only."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.training.conftest import REPO, micro_config, write_config
from transformer.config import ConfigError
from transformer.training.config import load_config, parse_config
from transformer.training.rundir import prepare_run_dir

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_the_shipped_configs_are_valid_and_fully_commented() -> None:
    assert {p.stem for p in CONFIGS} >= {"tiny", "multi30k", "base", "big"}
    for path in CONFIGS:
        load_config(path)
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#"):
                assert "#" in line, f"{path.name}: key without a comment: {line.strip()}"


def test_paper_configs_have_the_papers_numbers() -> None:
    base = yaml.safe_load((REPO / "configs" / "base.yaml").read_text())
    big = yaml.safe_load((REPO / "configs" / "big.yaml").read_text())
    assert base["model"]["d_model"] == 512 and base["model"]["n_heads"] == 8
    assert big["model"]["d_model"] == 1024 and big["model"]["n_heads"] == 16
    assert big["model"]["d_ff"] == 4096 and big["model"]["dropout"] == 0.3
    for config in (base, big):
        assert config["optim"]["warmup"] == 4000
        assert (config["optim"]["beta1"], config["optim"]["beta2"]) == (0.9, 0.98)
        assert config["optim"]["eps"] == 1e-9 and config["optim"]["label_smoothing"] == 0.1


def test_every_unknown_key_and_wrong_type_is_reported_at_once(tmp_path: Path) -> None:
    config = micro_config(tmp_path)
    config["train"]["max_updatez"] = 5
    config["optim"]["warmup"] = "soon"
    config["model"]["d_modle"] = 64
    config["extra"] = {}
    with pytest.raises(ConfigError) as e:
        parse_config(config, where="x.yaml")
    text = str(e.value)
    for expected in (
        "train.max_updatez",
        "optim.warmup",
        "model.d_modle",
        "extra: unknown section",
    ):
        assert expected in text
    assert "4 problem(s)" in text


def test_set_overrides_are_typed_and_checked(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", micro_config(tmp_path))
    config = load_config(path, ["train.max_updates=7", "train.precision=bf16", "optim.clip_norm=1"])
    assert config.train.max_updates == 7 and config.train.precision == "bf16"
    assert config.optim.clip_norm == 1.0
    with pytest.raises(ConfigError, match=r"train\.bogus: unknown field"):
        load_config(path, ["train.bogus=1"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(path, ["max_updates=3"])


def test_a_run_directory_refuses_a_changed_recipe_but_accepts_a_longer_run(tmp_path: Path) -> None:
    first = parse_config(micro_config(tmp_path), where="a")
    prepare_run_dir(first, tmp_path / "run")
    longer = parse_config(micro_config(tmp_path, train={"max_updates": 99}), where="b")
    prepare_run_dir(longer, tmp_path / "run")  # allowed: extends the run
    other = parse_config(micro_config(tmp_path, optim={"warmup": 99}), where="c")
    with pytest.raises(ConfigError, match=r"optim.warmup: 10 -> 99"):
        prepare_run_dir(other, tmp_path / "run")
    # With a cooldown the schedule ends at max_updates: a longer run is another recipe.
    cooled = parse_config(micro_config(tmp_path, optim={"cooldown": 2}), where="d")
    prepare_run_dir(cooled, tmp_path / "cooled")
    longer = cooled.replace("train", max_updates=cooled.train.max_updates + 1)
    with pytest.raises(ConfigError, match=r"train.max_updates"):
        prepare_run_dir(longer, tmp_path / "cooled")
    with pytest.raises(ConfigError, match=r"optim.cooldown: 99 updates is more than train"):
        parse_config(micro_config(tmp_path, optim={"cooldown": 99}), where="e")


def test_a_cooldown_in_minutes_needs_a_time_budget_and_fixes_it(tmp_path: Path) -> None:
    timed = micro_config(tmp_path, optim={"cooldown_minutes": 5}, train={"max_minutes": 20})
    cooled = parse_config(timed, where="a")
    assert cooled.optim.cooldown_minutes == 5.0
    prepare_run_dir(cooled, tmp_path / "run")
    longer = cooled.replace("train", max_minutes=30.0)  # the cooldown would move: another recipe
    with pytest.raises(ConfigError, match=r"train.max_minutes"):
        prepare_run_dir(longer, tmp_path / "run")
    untimed = micro_config(tmp_path, optim={"cooldown_minutes": 5}, train={"max_minutes": 0})
    with pytest.raises(ConfigError, match=r"optim.cooldown_minutes: 5 minutes needs a train"):
        parse_config(untimed, where="b")
    both = micro_config(
        tmp_path, optim={"cooldown_minutes": 5, "cooldown": 2}, train={"max_minutes": 20}
    )
    with pytest.raises(ConfigError, match=r"either it or optim.cooldown \(updates\)"):
        parse_config(both, where="c")


def test_every_value_out_of_its_limits_is_named_with_the_limit(tmp_path: Path) -> None:
    config = micro_config(
        tmp_path,
        model={"dropout": 1.0, "n_heads": 0},
        data={"dir": "", "max_tokens": 0, "num_workers": -1},
        optim={"beta2": 1.0, "eps": 0, "label_smoothing": -0.1, "update_freq": 0},
        train={"keep_last": 0, "max_minutes": -1.0, "valid_beam": 0, "save_every": -1},
    )
    with pytest.raises(ConfigError) as e:
        parse_config(config, where="x.yaml")
    assert sorted(e.value.problems) == [
        "data.dir: required (a directory written by `transformer prepare`)",
        "data.max_tokens: must be >= 1, got 0",
        "data.num_workers: must be >= 0, got -1",
        "model.dropout: must be in [0, 1), got 1.0",
        "model.n_heads: must be >= 1, got 0",
        "optim.beta2: must be in [0, 1), got 1.0",
        "optim.eps: must be > 0, got 0.0",
        "optim.label_smoothing: must be in [0, 1), got -0.1",
        "optim.update_freq: must be >= 1, got 0",
        "train.keep_last: must be >= 1, got 0",
        "train.max_minutes: must be >= 0, got -1.0",
        "train.save_every: must be >= 0, got -1",
        "train.valid_beam: must be >= 1, got 0",
    ]


def test_the_model_sections_cross_field_rule_runs_once_its_fields_are_valid(
    tmp_path: Path,
) -> None:
    indivisible = micro_config(tmp_path, model={"d_model": 30, "n_heads": 4})
    with pytest.raises(ConfigError, match=r"model\.d_model: 30 is not divisible by n_heads=4"):
        parse_config(indivisible, where="x.yaml")
    explicit = micro_config(tmp_path, model={"d_model": 30, "n_heads": 4, "d_k": 8, "d_v": 8})
    assert parse_config(explicit, where="x.yaml").model_config(vocab_size=8).d_k == 8
