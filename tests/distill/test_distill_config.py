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
        "checkpoints_total_limit=null", "data.options={n: 100}", "objective.name=vp_diffusion", "objective.prediction_type=v_prediction",
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
    ("objective.name=gan", "flow_matching, masked_diffusion, reflow, vp_diffusion"),
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


def test_objective_options_come_from_the_registry() -> None:
    """Every registered objective's defaults are its Options dataclass; an unused option names the objective."""
    import dataclasses

    from fewstep.distill.objectives import OBJECTIVES

    assert {"flow_matching", "vp_diffusion", "boss_straighten", "reflow", "masked_diffusion"} <= set(OBJECTIVES)
    for name, objective in OBJECTIVES.items():
        model = {"masked_diffusion": ["model.type=masked_transformer", "model.vocab_size=5"],
                 "boss_straighten": ["model.type=pretrained", "model.pretrained=x", "objective.spec=s"],
                 "music_autoencoder": ["model.type=oobleck"], "acestep": ["model.type=acestep"]}.get(
            name, ["model.type=pretrained", "model.pretrained=x"] if objective.teacher_use == "required" else [])
        config = load_config(None, [f"objective.name={name}", *model])
        defaults = dataclasses.asdict(objective.Options())
        assert {k: v for k, v in config.objective.to_dict().items() if k not in ("name", "spec")} == {
            k: v for k, v in defaults.items() if k != "spec"}


@pytest.mark.parametrize("overrides, message", [
    (["objective.lora_rank=8"], r"objective.lora_rank: not an option of objective 'flow_matching' \(its options: "
                                r"time_sampling, logit_mean"),
    (["objective.name=vp_diffusion", "objective.time_sampling=uniform"], "not an option of objective 'vp_diffusion'"),
    (["objective.spec=nonexistent.safetensors"], "objective.spec: not an option of objective 'flow_matching'"),
    (["objective.name=masked_diffusion"], "trains model.type=masked_transformer, not model.type=mlp"),
    (["objective.name=nope"], "objective.name='nope' is not an objective; choose one of: .*flow_matching"),
    (["objective.time_sampling=sometimes"], "time_sampling='sometimes' is not valid"),
])
def test_unused_or_bad_objective_options_are_refused(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


# -- bad YAML / JSON are errors naming the file (or override) and the line ----------------


@pytest.mark.parametrize("name, text, message", [
    ("c.yaml", "max_steps: 5\nmodel:\n  type: [mlp\n", r"c\.yaml'?: invalid YAML at line 4"),
    ("c.yaml", "max_steps: 5\n  seed: 3\n", r"c\.yaml'?: invalid YAML at line 2"),
    ("c.yml", "data:\n\toptions: {}\n", r"c\.yml'?: invalid YAML at line 2"),
    ("c.json", '{"max_steps": 5,\n "seed": }', r"c\.json'?: invalid JSON at line 2, column 10"),
    ("c.yaml", "- max_steps: 5\n- seed: 3\n", r"c\.yaml'? holds a list at the top level; a config is a mapping"),
    ("c.json", "[1, 2]", r"c\.json'? holds a list at the top level"),
    ("c.yaml", "just a string\n", r"holds a str .* at the top level"),
])
def test_bad_config_files_are_value_errors_naming_the_file_and_line(tmp_path: Path, name: str, text: str,
                                                                     message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(tmp_path / name)


def test_binary_or_folder_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"c\.yaml'? is not a text file"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_config(tmp_path)


@pytest.mark.parametrize("override, message", [
    ("data.options={n: 5", r"override 'data.options=\{n: 5': the value is not valid YAML at column 6"),
    ("model.block_out_channels=[8, 16", r"override 'model.block_out_channels=\[8, 16': the value is not valid YAML"),
    ("run_dir=@home", r"override 'run_dir=@home'.*quote a string: run_dir='...'"),
    ("optim..lr=1", "has an empty key"),
    ("max_steps.x=1", r"'max_steps' holds .*not a mapping"),
    ("data.options=null", r"data.options must be a mapping.*data.options=\{\} for none"),
])
def test_bad_overrides_are_value_errors_naming_the_override(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(CONFIGS / "mixture_flow.yaml", [override])


@pytest.mark.parametrize("argv_tail, message", [
    (["data.options={n: 5"], "override 'data.options={n: 5': the value is not valid YAML"),
    (["data.options={nonsense: 5}"], "unknown option 'nonsense' for dataset '8gaussians'; valid options of "
                                     "'8gaussians': n (default 10000), seed (default 0)"),
])
def test_cli_reports_bad_overrides_and_options_in_one_line(tmp_path: Path, capsys, argv_tail, message) -> None:
    from fewstep.cli import main

    assert main(["train", str(CONFIGS / "mixture_flow.yaml"), f"run_dir={tmp_path / 'run'}", *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewstep train: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [
    ("max_steps: 5\nmodel: {type: mlp\n", "invalid YAML at line 3"),
    ("- 1\n- 2\n", "holds a list at the top level"),
])
def test_cli_reports_bad_config_files_in_one_line(tmp_path: Path, capsys, text: str, message: str) -> None:
    from fewstep.cli import main

    (tmp_path / "c.yaml").write_text(text)
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewstep train: error:") and "c.yaml" in err and message in err and "Traceback" not in err


# -- an override replaces the value it names ---------------------------------------------


def test_mapping_override_replaces_the_files_mapping_and_dotted_keys_change_one_entry() -> None:
    shipped = CONFIGS / "mixture_flow.yaml"  # data.options: {n: 20000}
    assert load_config(shipped).data.options == {"n": 20000}
    assert load_config(shipped, ["data.options={}"]).data.options == {}
    assert load_config(shipped, ["data.options={seed: 3}"]).data.options == {"seed": 3}
    assert load_config(shipped, ["data.options.seed=3"]).data.options == {"n": 20000, "seed": 3}
    assert load_config(shipped, ["data.options={}", "data.options.seed=3"]).data.options == {"seed": 3}
    # sections are merged key by key, never replaced: the file's other optim keys stay
    config = load_config(shipped, ["optim={lr: 0.5}"])
    assert config.optim.lr == 0.5 and config.optim.lr_scheduler == "cosine" and config.optim.ema_warmup is True


def test_a_shipped_config_switches_to_an_image_folder(tmp_path: Path) -> None:
    """mixture_flow.yaml sets data.options={n: 20000}; an image folder takes other options."""
    from PIL import Image

    from fewstep.cli import main

    for label, value in (("dark", 30), ("light", 220)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (12, 10), value + i).save(tmp_path / "images" / label / f"{i}.png")
    code = main(["train", str(CONFIGS / "mixture_flow.yaml"), f"run_dir={tmp_path / 'run'}", "data.name=folder",
                 f"data.path={tmp_path / 'images'}", "data.options={resolution: 8, channels: 1}", "data.batch_size=4",
                 "model.type=unet", "model.sample_size=8", "model.in_channels=1", "model.num_classes=2",
                 "model.block_out_channels=8,16", "max_steps=2", "log_with=none", "sample_steps=2",
                 "samples_per_class=1"])
    assert code == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["options"] == {"resolution": 8,
                                                                                                 "channels": 1}
    assert (tmp_path / "run" / "pipeline" / "model_index.json").is_file()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_round_trips(tmp_path: Path, path: Path) -> None:
    config = load_config(path)
    assert config.objective.name == yaml.safe_load(path.read_text())["objective"]["name"]
    assert load_config(save_config(config, tmp_path / "config.yaml")) == config


def test_a_whole_objective_mapping_replaces_the_files_section(tmp_path: Path) -> None:
    """objective={name: ...} switches a config file to another objective without its old options."""
    file = tmp_path / "c.yaml"
    file.write_text("objective:\n  name: flow_matching\n  time_sampling: logit_normal\n  cfg_dropout: 0.2\n")
    switched = load_config(file, ["objective={name: vp_diffusion, prediction_type: v_prediction}"])
    assert switched.objective.to_dict() == {"name": "vp_diffusion", "prediction_type": "v_prediction",
                                            "beta_schedule": "linear", "num_train_timesteps": 1000, "cfg_dropout": 0.1}
    kept = load_config(file, ["objective.cfg_dropout=0.3"])  # one option changed, the others kept
    assert (kept.objective.time_sampling, kept.objective.cfg_dropout) == ("logit_normal", 0.3)
    with pytest.raises(ValueError, match=r"objective=\{name: vp_diffusion, \.\.\.\} replaces the file's objective section"):
        load_config(file, ["objective.name=vp_diffusion"])
