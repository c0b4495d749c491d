"""Configs: YAML/JSON loading, key=value overrides with type coercion, clear errors for unknown keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fewstep.distill.config import TrainConfig, load_config, parse_overrides, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "configs"


def test_yaml_and_json_load_the_same_config(tmp_path: Path) -> None:
    data = {"max_steps": 7, "model": {"type": "unet", "block_out_channels": [16, 32]}, "optim": {"lr": 1e-4}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "c.json").write_text(json.dumps(data))
    a, b = load_config(tmp_path / "c.yaml"), load_config(tmp_path / "c.json")
    assert a == b
    assert a.max_steps == 7 and a.model.block_out_channels == (16, 32) and a.optim.lr == 1e-4
    assert a.data == TrainConfig().data  # untouched sections keep their defaults


def test_overrides_are_coerced_to_field_types() -> None:
    config = load_config(None, [
        "optim.lr=1e-4",  # YAML 1.1 reads this as a string; the float field coerces it
        "max_steps=12", "model.block_out_channels=32,64", "model.attention=true",
        "checkpoints_total_limit=null", "data.options={n: 100}", "objective.prediction_type=v_prediction",
    ])
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)
    assert config.max_steps == 12 and config.model.block_out_channels == (32, 64)
    assert config.model.attention is True and config.checkpoints_total_limit is None
    assert config.data.options == {"n": 100} and config.objective.prediction_type == "v_prediction"


@pytest.mark.parametrize("override, where, valid", [
    ("optim.lrr=1", "optim.lrr", "lr, weight_decay"),
    ("foo=1", "foo", "run_dir, seed, max_steps"),
    ("model.depth=3", "model.depth", "block_out_channels"),
])
def test_unknown_keys_are_rejected_with_the_valid_ones_listed(override: str, where: str, valid: str) -> None:
    with pytest.raises(ValueError, match="unknown config key") as info:
        load_config(None, [override])
    assert f"'{where}'" in str(info.value) and valid in str(info.value)


def test_unknown_key_in_a_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("data:\n  batchsize: 3\n")
    with pytest.raises(ValueError, match=r"'data.batchsize'.*batch_size"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("override, message", [
    ("objective.name=gan", "flow_matching, vp_diffusion"),
    ("max_steps=abc", "max_steps must be an integer"),
    ("model.attention=3", "true or false"),
    ("optim.ema_decay=1.5", "ema_decay"),
    ("max_steps", "not key=value"),
])
def test_bad_values_name_the_key_and_the_fix(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(None, ["model.block_out_channels=8,16", "data.options={n: 5}"])
    path = save_config(config, tmp_path / "config.yaml")
    assert load_config(path) == config
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


@pytest.mark.parametrize("name", ["mixture_flow", "mixture_vp", "mnist_flow", "mnist_vp"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.objective.name == ("flow_matching" if name.endswith("flow") else "vp_diffusion")


def test_config_choices_match_the_registries() -> None:
    """config.py lists objective names without importing the objectives (kept light); the two must agree."""
    from fewstep.distill import config
    from fewstep.distill.objectives import OBJECTIVES

    assert set(config.OBJECTIVES) == set(OBJECTIVES)
