"""Training configs: nested dataclasses loaded from YAML/JSON with `section.key=value` overrides.

    config = load_config("assets/configs/mixture_flow.yaml", ["optim.lr=3e-4", "max_steps=200"])

Unknown keys are errors that list the valid keys; values are coerced to the field's type
(`block_out_channels=[32,64]` or `=32,64`, `checkpoints_total_limit=null`). An override replaces
the value it names (`data.options={}` clears the file's options; `data.options.n=5` changes one);
sections are merged key by key. Bad YAML is a ValueError naming the file (and line) or the override.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import yaml

MODEL_TYPES = ("mlp", "unet", "pretrained", "masked_transformer", "oobleck", "acestep")
#: model types any image / 2-D objective trains (objectives without `model_types`).
GENERIC_MODEL_TYPES = ("mlp", "unet", "pretrained")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
TRACKERS = ("tensorboard", "none")


@dataclass
class ModelConfig:
    """The network: `mlp` (2-D data), `unet` (images, `small_unet`), `pretrained` (a saved pipeline's network),
    `masked_transformer` (token sequences, `MaskedDiffusionTransformer`), `oobleck` (a waveform VAE,
    `AutoencoderOobleck`) or `acestep` (an `AceStepTransformer1DModel` music generator on `objective.autoencoder`'s latents)."""

    type: str = "mlp"
    pretrained: str | None = None  # type=pretrained: a pipeline folder whose `unet` is loaded (EMA weights)
    teacher: str | None = None  # distillation: the frozen teacher pipeline (default: model.pretrained)
    num_classes: int = 8
    dim: int = 2  # mlp
    width: int = 256  # mlp hidden width; masked_transformer model width
    num_blocks: int = 4  # mlp
    sample_size: int = 32  # unet
    in_channels: int = 1  # unet
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # unet
    layers_per_block: int = 1  # unet
    attention: bool = False  # unet: self-attention at the lowest resolution
    vocab_size: int = 0  # masked_transformer: real tokens (the dataset's vocab_size; mask id = vocab_size)
    seq_len: int = 64  # masked_transformer: longest sequence
    num_layers: int = 3  # masked_transformer
    num_heads: int = 4  # masked_transformer, acestep
    sample_rate: int = 8000  # oobleck: audio sample rate (Hz)
    audio_channels: int = 1  # oobleck: 1 mono, 2 stereo
    latent_channels: int = 8  # oobleck: latent channels per frame
    downsampling_ratios: tuple[int, ...] = (4, 4, 16)  # oobleck: the hop is their product (256 samples per frame)
    patch_size: int = 2  # acestep: latent frames per transformer token


@dataclass
class DataConfig:
    """`fewstep.data.get_dataset(name, split=split, path=path, **options)`; batch_size is per process.

    `global_batch_size` (optional) fixes the batch of one optimizer step instead: each process
    then takes global_batch_size / (processes x optim.gradient_accumulation_steps), which must
    divide exactly (docs/scaling.md).
    """

    name: str = "8gaussians"
    split: str = "train"
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 256
    global_batch_size: int | None = None
    num_workers: int = 0


class ObjectiveConfig:
    """The `objective:` section: `name` (a registered objective) + the options that objective declares.

    The options are the objective's own `Options` dataclass (`fewstep.distill.objectives`), so
    each objective states its options, defaults and checks once; an option the named objective
    does not declare is an error listing the ones it does. Options read as attributes
    (`config.objective.lora_rank`); `to_dict()` gives the flat YAML mapping back.
    """

    def __init__(self, name: str = "flow_matching", options: Any = None) -> None:
        from .objectives import get_objective_class

        objective = get_objective_class(name)
        self.name = name
        self.options = options if options is not None else objective.Options()

    @classmethod
    def from_mapping(cls, data: Any, prefix: str = "objective.") -> "ObjectiveConfig":
        """Build from `{name: ..., option: value, ...}`, checking every option against the objective's `Options`."""
        from .objectives import get_objective_class

        if not isinstance(data, dict):
            raise ValueError(f"config section 'objective' must be a mapping, got {data!r}")
        options = dict(data)
        name = options.pop("name", "flow_matching")
        objective = get_objective_class(name)
        valid = _valid_keys(objective.Options)
        unknown = [key for key in options if key not in valid]
        if unknown:
            listed = ", ".join(valid) if valid else "none"
            raise ValueError(
                f"{', '.join(prefix + key for key in unknown)}: not an option of objective {name!r} (its options: "
                f"{listed}); drop it, or choose the objective that uses it (if a config file set it for another "
                f"objective: objective={{name: {name}, ...}} replaces the file's objective section)"
            )
        return cls(name, _build(objective.Options, options, prefix))

    def __getattr__(self, key: str) -> Any:
        options = self.__dict__.get("options")
        if options is None or key.startswith("__"):
            raise AttributeError(key)
        try:
            return getattr(options, key)
        except AttributeError:
            raise AttributeError(f"objective {self.__dict__.get('name')!r} has no option {key!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """`{name: ..., **options}` as in a config file."""
        return {"name": self.name, **dataclasses.asdict(self.options)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectiveConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ObjectiveConfig({self.to_dict()})"


@dataclass
class OptimConfig:
    """AdamW, a diffusers LR schedule, clipping, gradient accumulation and EMA."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 disables clipping
    gradient_accumulation_steps: int = 1
    ema_decay: float = 0.999  # 0 disables EMA
    ema_warmup: bool = False  # diffusers' EMA warm-up (decay grows as 1 - (1 + step)^-2/3)


@dataclass
class TrainConfig:
    """Everything a run needs; written resolved to `run_dir/config.yaml`."""

    run_dir: str = "runs/run"
    seed: int = 0
    max_steps: int = 1000
    mixed_precision: str = "no"
    log_with: str = "tensorboard"
    log_every: int = 10
    checkpoint_every: int = 500  # 0: only the final checkpoint
    checkpoints_total_limit: int | None = 2
    sample_every: int = 0  # 0: only the final grid
    sample_steps: int = 32  # DPM-Solver++(2M) steps for the sample grid
    samples_per_class: int = 8
    sample_guidance: float = 1.0
    eval_every: int = 0  # call eval_fn every N steps (0: never)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> "TrainConfig":
        """Check choices and ranges; raises ValueError naming the key and the valid values."""
        _check_choice("model.type", self.model.type, MODEL_TYPES)
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _check_choice("optim.lr_scheduler", self.optim.lr_scheduler, LR_SCHEDULERS)
        _check_choice("log_with", self.log_with, TRACKERS)
        positive = {
            "max_steps": self.max_steps, "data.batch_size": self.data.batch_size, "optim.lr": self.optim.lr,
            "optim.gradient_accumulation_steps": self.optim.gradient_accumulation_steps,
            "model.num_classes": self.model.num_classes,
        }
        if self.data.global_batch_size is not None:
            positive["data.global_batch_size"] = self.data.global_batch_size
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"{key} must be > 0, got {value}")
        self._check_objective_model()
        if self.model.type == "masked_transformer" and self.model.vocab_size < 1:
            raise ValueError("model.type=masked_transformer needs model.vocab_size (the dataset's; text: 59)")
        if not 0 <= self.optim.ema_decay < 1:
            raise ValueError(f"optim.ema_decay must lie in [0, 1) (0 disables EMA), got {self.optim.ema_decay}")
        return self

    def _check_objective_model(self) -> None:
        """The model types and the teacher the objective declares it needs (`model_types`, `teacher_use`)."""
        from .objectives import get_objective_class

        name, model_type = self.objective.name, self.model.type
        objective = get_objective_class(name)
        allowed = objective.model_types
        allowed = allowed if allowed is not None else GENERIC_MODEL_TYPES
        if model_type not in allowed:
            partner = {"masked_transformer": "masked_diffusion", "oobleck": "music_autoencoder", "acestep": "acestep"}
            raise ValueError(f"objective.name={name} trains model.type={' or '.join(allowed)}, not model.type={model_type}"
                             + (f"; model.type={model_type} goes with objective.name={partner[model_type]}"
                                if model_type in partner else ""))
        has_teacher = model_type == "pretrained" or self.model.teacher is not None
        if objective.teacher_use == "required" and not has_teacher:
            raise ValueError(f"objective.name={name} learns from a teacher: set model.type=pretrained and "
                             "model.pretrained=PIPELINE_FOLDER (e.g. assets/teachers/mnist_flow), or "
                             "model.teacher=PIPELINE_FOLDER for a student built from model.type")
        if objective.teacher_use == "none" and has_teacher:
            raise ValueError(f"objective.name={name} does not start from a pretrained pipeline or use a teacher; "
                             "use another model.type and drop model.teacher")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the inverse of `config_from_dict`."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, ObjectiveConfig) else (
                dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
        return json.loads(json.dumps(out))


def _check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


def _valid_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _is_section(tp: Any) -> bool:
    return tp is ObjectiveConfig or (isinstance(tp, type) and dataclasses.is_dataclass(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a parsed YAML value to the annotated type `tp`, or raise a ValueError naming `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if tp is Any:
        return value
    if origin is tuple or tp is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        return tuple(_coerce(key, yaml.safe_load(v) if isinstance(v, str) else v, item_tp) for v in items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}; e.g. {key}={{n: 5000}}, or {key}={{}} for none")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a nested dict, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ValueError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    valid = _valid_keys(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in valid:
            where = f"in section '{prefix.rstrip('.')}'" if prefix else "at the top level"
            raise ValueError(f"unknown config key '{prefix}{key}'; valid keys {where}: {', '.join(valid)}")
        tp = hints[key]
        if tp is ObjectiveConfig:
            kwargs[key] = ObjectiveConfig.from_mapping(value, f"{prefix}{key}.")
        elif _is_section(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(prefix + key, value, tp)
    try:
        return cls(**kwargs)
    except ValueError as error:  # an Options dataclass's own checks
        raise ValueError(str(error)) from None


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A validated `TrainConfig` from a nested dict."""
    return _build(TrainConfig, data).validate()


def _yaml_error(error: yaml.YAMLError) -> str:
    """'line L, column C: problem (context)' of a YAML error (1-based, as editors count)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}" + (f" ({context})" if context else "")


def _parse_override(item: str) -> tuple[list[str], Any]:
    """`"section.key=value"` -> (["section", "key"], YAML-parsed value); ValueError naming the override."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not key=value (e.g. optim.lr=1e-4)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {item!r} has an empty key; write section.key=value (e.g. optim.lr=1e-4)")
    if not raw.strip():
        return parts, ""
    try:
        return parts, yaml.safe_load(raw)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        where = f" at column {mark.column + 1} of the value" if mark is not None else ""
        raise ValueError(
            f"override {item!r}: the value is not valid YAML{where} ({problem}); fix it (a mapping is "
            f"{{n: 5000}}, a list [32, 64]) or quote a string: {key.strip()}='...'"
        ) from None


def _section_type(parts: Sequence[str]) -> type | None:
    """The config dataclass that the dotted key `parts` names (TrainConfig for []), else None."""
    cls: Any = TrainConfig
    for part in parts:
        if not _is_section(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls if _is_section(cls) else None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`data` (a nested dict, e.g. a config file) with `key=value` overrides applied in order; `data` is not changed.

    An override replaces the value it names: `data.options={}` clears the options a file set,
    `data.options={n: 5}` sets exactly those options, `data.options.n=5` changes one option and
    keeps the others. A whole section (`optim={lr: 1e-4}`) is merged key by key, never replaced —
    except `objective={...}`, which replaces the section (its keys belong to the named objective).
    """
    out = _merge({}, data)  # a deep copy of the mappings
    for item in overrides:
        parts, value = _parse_override(item)
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(
                    f"override {item!r}: '{'.'.join(parts[: depth + 1])}' holds {child!r}, not a mapping, so "
                    f"'{'.'.join(parts[: depth + 2])}' does not exist; sections are model, data, objective and optim"
                )
            node = child
        last = parts[-1]
        section = _section_type(parts)
        # sections merge key by key, except `objective`: its keys are the named objective's options,
        # so a whole mapping (objective={name: vp_diffusion, ...}) replaces the file's section
        if isinstance(value, dict) and isinstance(node.get(last), dict) and section not in (None, ObjectiveConfig):
            node[last] = _merge(node[last], value)
        else:
            node[last] = value
    return out


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["optim.lr=1e-4", "max_steps=10"]` -> nested dict of YAML-parsed values."""
    return apply_overrides({}, overrides)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update: `update` wins, nested mappings are merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict):
            out[key] = _merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The nested dict stored in a .yaml/.yml/.json file; ValueError naming the file and line for bad syntax."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {str(path)!r} is a folder; pass a .yaml or .json file (see assets/configs/)")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found; pass a .yaml or .json file (see assets/configs/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not a text file ({error.reason} at byte {error.start}); "
                         "pass a .yaml or .json config") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {str(path)!r}: invalid JSON at line {error.lineno}, column {error.colno}: "
                             f"{error.msg}; fix the syntax there") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"config file {str(path)!r}: invalid YAML at {_yaml_error(error)}; fix the syntax there "
                             "(YAML wants 'key: value' lines, nested keys indented by spaces, no tabs)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__} ({data!r:.40})"
        raise ValueError(f"config file {str(path)!r} holds {kind} at the top level; a config is a mapping of "
                         "'key: value' lines (run_dir: ..., model: {...}, data: {...}; see assets/configs/)")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults <- file (YAML or JSON) <- `key=value` overrides (applied in order), validated."""
    data = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
    return path
