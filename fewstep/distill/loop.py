"""The one training loop (accelerate): every trainer in fewstep runs through `train()`.

The loop owns devices and `prepare`, gradient accumulation, clipping, mixed precision, EMA
(diffusers' `EMAModel`), LR schedules (diffusers' `get_scheduler`), tensorboard logging via
accelerate trackers plus a progress bar, sample grids, an optional evaluation hook,
checkpoints (`accelerator.save_state` into a temp folder renamed to
`run_dir/checkpoints/step_XXXXXX`), exact resume and the NaN guard. Objectives only compute
losses (`fewstep.distill.objectives`).

Exact resume: data order and training noise are pure functions of (seed, step), so a resumed
run sees the same batches and noise as an uninterrupted one; model, optimizer and EMA state
come from the checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..batch_noise import ShardedGenerator
from .config import MODEL_TYPES, DataConfig, ModelConfig, TrainConfig, save_config
from .objectives import Objective, Teacher, build_objective
from .processes import (
    check_checkpoint_engine, check_engine_device, check_engine_ema, check_engine_installed, check_engine_serves,
    checkpoint_engine, distributed_without_gpu, fill_deepspeed_batch, full_parameters, launch_engine, per_process_batch,
    sharded_state_names,
)

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "trainer_state.json"
#: `sample_fn(class_labels [B]) -> samples [B, ...]` with the EMA weights.
SampleFn = Callable[[Tensor], Tensor]
#: `eval_fn(sample_fn, step) -> {metric: value}`, called on the main process (e.g. a small-N FID).
EvalFn = Callable[[SampleFn, int], dict[str, float]]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stopped before the optimizer step."""


@dataclass
class TrainResult:
    """What a finished run produced: per-step mean losses (from the start step on) and paths."""

    run_dir: Path
    start_step: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    pipeline: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# Building blocks: data, model, deterministic batches and noise
# ----------------------------------------------------------------------------------------


def build_dataset(cfg: DataConfig) -> Dataset:
    """`fewstep.data.get_dataset` with clear errors for bad names, paths and options (naming the config keys)."""
    from fewstep.data import get_dataset
    from fewstep.data.registry import PATH_DATASETS, check_options, list_datasets

    if cfg.name not in list_datasets():
        raise ValueError(f"data.name={cfg.name!r} is not a dataset; choose one of {', '.join(list_datasets())}")
    kwargs = dict(cfg.options)
    if cfg.path is not None and cfg.name not in PATH_DATASETS:
        raise ValueError(f"data.path is only read by data.name=folder, hf or audio_folder, not by data.name={cfg.name}; "
                         "drop data.path (data.path=null) or set data.name=folder (images) or audio_folder (audio)")
    if cfg.path is not None:
        if not Path(cfg.path).exists():
            raise FileNotFoundError(
                f"data.path {cfg.path!r} does not exist; point data.path at an image folder "
                "(name=folder), a saved Hugging Face dataset (name=hf) or an audio folder (name=audio_folder)"
            )
        kwargs["path"] = cfg.path
    elif cfg.name in PATH_DATASETS:
        raise ValueError(f"data.name={cfg.name} needs data.path=FOLDER")
    try:
        check_options(cfg.name, dict(cfg.options))
    except ValueError as error:
        raise ValueError(f"data.options of data.name={cfg.name}: {error}; fix data.options (data.options={{}} "
                         "replaces the options a config file set, data.options.KEY=VALUE changes one)") from None
    return get_dataset(cfg.name, split=cfg.split, **kwargs)


def build_model(cfg: ModelConfig, teacher: Teacher | None = None) -> nn.Module:
    """The network named by `model.type`, with num_classes + 1 class embeddings (null class last).

    `model.type=pretrained`: a trainable copy of the network of `model.pretrained` (the
    teacher's own when it is the teacher, `load_model_teacher`).
    """
    from fewstep.models import ClassConditionalMLP, small_unet

    if cfg.type == "mlp":
        return ClassConditionalMLP(dim=cfg.dim, width=cfg.width, num_blocks=cfg.num_blocks, num_class_embeds=cfg.num_classes + 1)
    if cfg.type == "unet":
        return small_unet(cfg.sample_size, cfg.in_channels, cfg.num_classes, cfg.block_out_channels, cfg.layers_per_block, cfg.attention)
    if cfg.type == "pretrained":
        if not cfg.pretrained:
            raise ValueError("model.type=pretrained needs model.pretrained=PIPELINE_FOLDER")
        if teacher is None or (cfg.teacher is not None and Path(cfg.teacher).resolve() != Path(cfg.pretrained).resolve()):
            return load_any_teacher(cfg.pretrained).network.requires_grad_(True).train()
        return copy.deepcopy(teacher.network).requires_grad_(True).train()
    if cfg.type == "masked_transformer":
        from fewstep.models import MaskedDiffusionTransformer

        return MaskedDiffusionTransformer(vocab_size=cfg.vocab_size, seq_len=cfg.seq_len, dim=cfg.width,
                                          num_layers=cfg.num_layers, num_heads=cfg.num_heads)
    if cfg.type == "oobleck":
        from fewstep.models.acestep import oobleck_autoencoder

        return oobleck_autoencoder(cfg.latent_channels, cfg.width, cfg.downsampling_ratios, cfg.sample_rate, cfg.audio_channels)
    if cfg.type == "acestep":
        from fewstep.models.acestep import acestep_transformer

        return acestep_transformer(cfg.latent_channels, cfg.width, cfg.num_layers, cfg.num_heads, cfg.patch_size)
    raise ValueError(f"unknown model.type {cfg.type!r}; choose one of: {', '.join(MODEL_TYPES)}")


def load_model_teacher(cfg: ModelConfig) -> Teacher | None:
    """The whole frozen teacher (network, noise path, prediction type, scheduler config), or None.

    It is `model.teacher` if set, else `model.pretrained` for model.type=pretrained.
    """
    source = cfg.teacher if cfg.teacher is not None else (cfg.pretrained if cfg.type == "pretrained" else None)
    if cfg.type == "pretrained" and not cfg.pretrained:
        raise ValueError("model.type=pretrained needs model.pretrained=PIPELINE_FOLDER")
    if source is None:
        return None
    teacher = load_any_teacher(source)
    teacher.network.eval().requires_grad_(False)
    return teacher


def load_any_teacher(source: str) -> Teacher:
    """A saved pipeline as a frozen teacher: image / 2-D pipelines, or an ACE-Step-style music generator (with its pipeline)."""
    from fewstep.pipelines.loading import load_teacher
    from fewstep.pipelines.music import is_music_pipeline, load_music_teacher

    return load_music_teacher(source) if is_music_pipeline(source) else load_teacher(source)


class StepBatchSampler(Sampler[list[int]]):
    """Infinite, stateless batches: micro-batch m of process r is a slice of randperm(seed + epoch).

    Every process draws `batch_size` items per micro-batch; an epoch is floor(N / (B * P))
    micro-batches (the remainder is dropped). Starting at micro-batch `start` reproduces an
    uninterrupted run exactly.
    """

    def __init__(self, num_items: int, batch_size: int, num_processes: int, rank: int, seed: int, start: int = 0) -> None:
        self.per_epoch = num_items // (batch_size * num_processes)
        if self.per_epoch == 0:
            raise ValueError(
                f"the dataset has {num_items} items, fewer than data.batch_size x processes = "
                f"{batch_size * num_processes}; lower data.batch_size"
            )
        self.num_items, self.batch_size, self.num_processes, self.rank = num_items, batch_size, num_processes, rank
        self.seed, self.start = seed, start

    def __iter__(self) -> Iterator[list[int]]:
        m, epoch, perm = self.start, -1, torch.empty(0, dtype=torch.long)
        while True:
            e, pos = divmod(m, self.per_epoch)
            if e != epoch:
                epoch, perm = e, torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + e))
            lo = (pos * self.num_processes + self.rank) * self.batch_size
            yield perm[lo : lo + self.batch_size].tolist()
            m += 1


def step_generator(seed: int, step: int, micro: int, phase: str, device: torch.device, rank: int = 0,
                   world: int = 1) -> ShardedGenerator:
    """The training noise of one micro-batch, seeded from (seed, step, micro-batch, phase): no saved RNG state needed.

    Seeded alike on every process; per-sample draws through `fewstep.batch_noise` give process
    `rank` its rows of the global batch's noise, so the noise does not depend on how many
    processes share the batch.
    """
    key = hashlib.sha256(f"{seed}/{step}/{micro}/{phase}".encode()).digest()
    generator = ShardedGenerator(device, rank, world)
    generator.manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))
    return generator


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------


def _network_signature(networks: dict[str, nn.Module]) -> dict[str, Any]:
    """{name: {"class", "config"}} of the unwrapped networks, for checking a checkpoint matches."""
    sig = {}
    for name, net in networks.items():
        config = {k: v for k, v in dict(getattr(net, "config", {})).items() if not k.startswith("_")}
        sig[name] = {"class": type(net).__name__, "config": json.loads(json.dumps(config, default=str))}
    return sig


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Completed checkpoints of a run, oldest first (temp folders are never listed)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class DamagedCheckpointError(ValueError):
    """A checkpoint folder with a missing, truncated or unreadable file (named in the message)."""


class CheckpointFallbackWarning(UserWarning):
    """`--resume latest` skipped a damaged checkpoint and resumed from an older intact one."""


def _checkpoint_problem(file: Path) -> str | None:
    """Why `file` of a checkpoint cannot be loaded, or None if it is intact (checked without unpickling)."""
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:  # the header must describe exactly the file's bytes
                f.keys()
        elif file.suffix == ".json":
            json.loads(file.read_text())
        elif file.suffix in (".bin", ".pkl", ".pt", ".pth"):
            # torch.save writes a zip archive: its directory and every member's CRC must check out
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"its member {bad} is corrupt"
    except zipfile.BadZipFile as error:
        return f"it is not a complete torch.save archive ({error})"
    except UnicodeDecodeError as error:
        return f"it is not JSON text ({error.reason})"
    except json.JSONDecodeError as error:
        return f"it is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    except Exception as error:  # safetensors raises its own SafetensorError
        return f"it cannot be loaded ({type(error).__name__}: {error})"
    return None


def verify_checkpoint(path: Path, num_networks: int = 1, num_optimizers: int = 1) -> None:
    """Raise `DamagedCheckpointError` naming the first missing or unloadable file of checkpoint `path`.

    Every file must load (safetensors headers match the file size, torch.save archives pass their
    CRC check, JSON parses) and the files `_restore` needs must be there: `trainer_state.json`,
    `model.safetensors` (`model_1.safetensors`, ... for more networks), `optimizer.bin`
    (`optimizer_1.bin`, ...) and `ema/<network>/` for every network the state lists under "ema".
    A checkpoint written under FSDP / DeepSpeed needs its shard folders instead of the model and
    optimizer files (`fewstep.distill.processes.sharded_state_names`).
    """
    path = Path(path)
    state_file = path / STATE_FILE
    required = [state_file]
    if state_file.is_file() and _checkpoint_problem(state_file) is None:
        # the checkpoint's own record of what it holds (a run with other networks is refused later, by name)
        state = json.loads(state_file.read_text())
        if isinstance(state, dict) and isinstance(state.get("networks"), dict):
            num_networks = len(state["networks"])
        if isinstance(state, dict) and isinstance(state.get("optimizers"), int):
            num_optimizers = state["optimizers"]
    state = json.loads(state_file.read_text()) if state_file.is_file() and _checkpoint_problem(state_file) is None else {}
    state = state if isinstance(state, dict) else {}
    engine = checkpoint_engine(path, state.get("engine"))
    folders = [path / name for name in sharded_state_names(engine, num_networks, num_optimizers)] if engine != "ddp" else []
    if engine == "ddp":
        for i in range(num_networks):
            suffix = f"_{i}" if i else ""
            safetensors, legacy = path / f"model{suffix}.safetensors", path / f"pytorch_model{suffix}.bin"
            required.append(legacy if legacy.is_file() and not safetensors.exists() else safetensors)
        required += [path / (f"optimizer_{i}.bin" if i else "optimizer.bin") for i in range(num_optimizers)]
    for name in state.get("ema") or []:
        required += [path / EMA_DIR / name / EMA_WEIGHTS, path / EMA_DIR / name / EMA_STATE]
    for file in required:
        if not file.is_file():
            raise DamagedCheckpointError(f"checkpoint {path} is incomplete: {file.relative_to(path)} is missing")
    for folder in folders:  # FSDP / DeepSpeed shards: one folder per network (and optimizer), written by every rank
        if not folder.is_dir() or not any(folder.iterdir()):
            raise DamagedCheckpointError(f"checkpoint {path} is incomplete: {folder.relative_to(path)}/ "
                                         f"({engine.upper()} shards) is missing or empty")
    for file in sorted(f for f in path.rglob("*") if f.is_file()):
        problem = _checkpoint_problem(file)
        if problem is not None:
            raise DamagedCheckpointError(f"checkpoint file {file} is damaged: {problem}")
    state = json.loads(state_file.read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpointError(f"checkpoint file {state_file} is damaged: it has no integer 'step'")


def resolve_resume(run_dir: Path, resume: str | None, num_networks: int = 1, num_optimizers: int = 1) -> Path | None:
    """The checkpoint to resume from: None, "latest" (None if the run has none) or a path; verified.

    "latest" takes the newest *intact* checkpoint (`verify_checkpoint`): damaged newer ones are
    skipped with a `CheckpointFallbackWarning` naming the bad file; if every checkpoint is damaged
    the error lists them. A given path must be intact.
    """
    if resume is None:
        existing = list_checkpoints(run_dir)
        if existing:
            raise ValueError(
                f"{run_dir} already has checkpoints (latest {existing[-1].name}); continue it with "
                "--resume latest, or choose a new run_dir"
            )
        return None
    if resume == "latest":
        damaged: list[str] = []
        for candidate in reversed(list_checkpoints(run_dir)):
            try:
                verify_checkpoint(candidate, num_networks, num_optimizers)
            except DamagedCheckpointError as error:
                damaged.append(str(error))
                continue
            for message in damaged:
                warnings.warn(f"{message}; skipping it and resuming from the older intact checkpoint {candidate}",
                              CheckpointFallbackWarning, stacklevel=3)
            return candidate
        if damaged:
            raise DamagedCheckpointError(
                f"every checkpoint of {run_dir} is damaged: " + "; ".join(damaged)
                + ". Delete the damaged step_* folders to train from the start, or choose a new run_dir"
            )
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{resume!r} is not a fewstep checkpoint (no {STATE_FILE}); pass a run_dir/checkpoints/step_XXXXXX folder or 'latest'")
    try:
        verify_checkpoint(path, num_networks, num_optimizers)
    except DamagedCheckpointError as error:
        raise DamagedCheckpointError(f"{error}; resume from another checkpoint (--resume latest takes the newest "
                                     "intact one)") from None
    return path


def read_checkpoint_state(path: Path, networks: dict[str, nn.Module], signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's trainer state, after checking it was written for these networks (and objective signature)."""
    state_file = path / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedCheckpointError(f"checkpoint file {state_file} is damaged: it is not valid JSON ({error}); "
                                     "resume from another checkpoint") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpointError(f"checkpoint file {state_file} is damaged: it has no integer 'step'; "
                                     "resume from another checkpoint")
    expected = _network_signature(networks)
    if state.get("networks") != expected:
        saved = {k: v.get("class") if isinstance(v, dict) else v for k, v in (state.get("networks") or {}).items()}
        raise ValueError(
            f"checkpoint {path} was written for other networks ({saved}, or a different config) than this "
            f"config builds ({ {k: v['class'] for k, v in expected.items()} }); resume with the run's own "
            "config (run_dir/config.yaml) or start a new run_dir"
        )
    saved_signature = state.get("objective_signature", {})
    if signature is not None and saved_signature != json.loads(json.dumps(signature)):
        changed = sorted(k for k in set(saved_signature) | set(signature) if saved_signature.get(k) != signature.get(k))
        raise ValueError(
            f"checkpoint {path} was trained with another {', '.join(changed)} "
            f"({ {k: saved_signature.get(k) for k in changed} } there, { {k: signature.get(k) for k in changed} } now); "
            "resume with the run's own config (run_dir/config.yaml) or start a new run_dir"
        )
    return state


EMA_DIR = "ema"
EMA_WEIGHTS, EMA_STATE = "ema_weights.safetensors", "ema_state.json"


def save_ema(ema: Any, network: nn.Module, folder: Path) -> None:
    """EMA weights keyed by parameter name (safetensors) + its counters (JSON) into `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    names = [name for name, _ in network.named_parameters()]
    save_file({name: p.detach().cpu().contiguous() for name, p in zip(names, shadow, strict=True)}, str(folder / EMA_WEIGHTS))
    (folder / EMA_STATE).write_text(json.dumps(state, indent=2))


def load_ema(ema: Any, network: nn.Module, folder: Path) -> None:
    """Restore what `save_ema` wrote, checking every parameter of `network` is there with its shape."""
    from safetensors.torch import load_file

    if not (folder / EMA_WEIGHTS).is_file():
        raise ValueError(f"checkpoint {folder.parent.parent} has no EMA weights ({folder.parent.name}/{folder.name}/"
                         f"{EMA_WEIGHTS}); resume with the run's own config (run_dir/config.yaml)")
    try:
        weights = load_file(str(folder / EMA_WEIGHTS))
        counters = json.loads((folder / EMA_STATE).read_text())
    except Exception as error:  # SafetensorError, OSError, JSONDecodeError
        raise DamagedCheckpointError(f"the EMA files in {folder} cannot be loaded ({type(error).__name__}: {error}); "
                                     "resume from another checkpoint") from None
    shadow = []
    for name, param in network.named_parameters():
        if name not in weights or weights[name].shape != param.shape:
            raise ValueError(f"the EMA weights in {folder} do not match this network (parameter {name!r}); "
                             "resume with the run's own config (run_dir/config.yaml)")
        shadow.append(weights[name])
    ema.load_state_dict({**counters, "shadow_params": shadow})


#: folders the loop writes inside run_dir.
RUN_SUBFOLDERS = ("checkpoints", "logs", "samples", "pipeline")


def check_run_dir(run_dir: str | Path) -> None:
    """Raise an OSError naming the problem unless `run_dir` is a writable folder or can be created as one.

    Creates and changes nothing: `fewstep.io.check_writable_target` checks run_dir (or the
    ancestor it would be created in); here also the sub-folders the loop writes to, if they exist.
    """
    from fewstep.io import check_writable_target

    run_dir = check_writable_target(run_dir, "run_dir", folder=True)
    for name in RUN_SUBFOLDERS:
        if (run_dir / name).exists():
            check_writable_target(run_dir / name, "run_dir sub-folder", folder=True)


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temp folder into place, replacing any previous `final`."""
    if final.exists():
        old = final.with_name(f".old_{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


# ----------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------


class Trainer:
    """State of one run: accelerator, objective, optimizers, schedules, EMA; `train()` drives it."""

    def __init__(self, config: TrainConfig, resume: str | None = None, eval_fn: EvalFn | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        self.config, self.eval_fn = config, eval_fn
        self.run_dir = Path(config.run_dir)
        check_run_dir(self.run_dir)  # before any model is built or trained
        engine = launch_engine()
        check_engine_installed(engine)
        check_engine_device(engine)
        check_engine_ema(engine, config.optim.ema_decay)
        self.accelerator = Accelerator(
            cpu=distributed_without_gpu(),
            mixed_precision=config.mixed_precision,
            log_with=None if config.log_with == "none" else config.log_with,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
        )
        set_seed(config.seed)
        micro_batch = per_process_batch(config.data.batch_size, config.data.global_batch_size,
                                        self.accelerator.num_processes, config.optim.gradient_accumulation_steps)
        self.config = config = dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=micro_batch))
        if engine == "deepspeed":
            fill_deepspeed_batch(self.accelerator.state.deepspeed_plugin.deepspeed_config, micro_batch,
                                 config.optim.gradient_accumulation_steps)
        self.engine = engine
        self.teacher = load_model_teacher(config.model)
        model = build_model(config.model, self.teacher)
        self.objective: Objective = build_objective(config.objective.name, config.objective.options, model, self.teacher)
        check_engine_serves(engine, config.objective.name, [name for name, net in self.objective.networks.items()
                                                            if any(p.requires_grad for p in net.parameters())])
        if self.teacher is not None:  # on the device before objectives make data with it (teacher pairs)
            self.teacher.network.to(self.accelerator.device)
        make_dataset = getattr(self.objective, "make_dataset", None)  # objectives that make (or add to) their data
        self.dataset = make_dataset(lambda: build_dataset(config.data)) if make_dataset is not None else build_dataset(config.data)
        self.objective.check_data(self.dataset, config.model.num_classes)
        self.phase_names = list(dict.fromkeys(self.objective.phases))  # one optimizer per distinct phase
        self.resume_from = resolve_resume(self.run_dir, resume, len(self.objective.networks), len(self.phase_names))
        if self.resume_from is not None:
            recorded = json.loads((self.resume_from / STATE_FILE).read_text()).get("engine")
            check_checkpoint_engine(self.resume_from, checkpoint_engine(self.resume_from, recorded), engine)
        self.resume_state = (read_checkpoint_state(self.resume_from, self.objective.networks, self.objective.signature())
                             if self.resume_from else None)
        self._build_optimization()
        self.start_step = 0
        self.last_checkpoint: Path | None = self.resume_from

    # -- set-up ------------------------------------------------------------------------

    def _build_optimization(self) -> None:
        """Optimizers and LR schedules per distinct phase, `prepare`, and the EMA of the averaged networks."""
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        cfg = self.config.optim
        self.optimizers = [
            torch.optim.AdamW(_scaled_lr_groups(self.objective.param_groups(phase), cfg.lr), lr=cfg.lr,
                              betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
            for phase in self.phase_names
        ]
        # LR schedules are stepped once per training step here (not prepared: accelerate would
        # step them once per process), also for a phase that updates several times per step.
        self.lr_schedulers = [
            get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=self.config.max_steps)
            for opt in self.optimizers
        ]
        names = list(self.objective.networks)
        if self.accelerator.num_processes > 1 and (len(self.phase_names) > 1 or getattr(self.objective, "find_unused_parameters", False)):
            # a phase may run a network whose loss does not reach all of its parameters (a critic
            # evaluated for the generator's loss; a null embedding in a batch without dropout):
            # DDP must not wait for their gradients.
            self.accelerator.ddp_handler = _ddp_find_unused()
        prepared = self.accelerator.prepare(*self.objective.networks.values(), *self.optimizers)
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.objective.networks = dict(zip(names, prepared[: len(names)]))
        self.optimizers = list(prepared[len(names):])
        self.emas: dict[str, EMAModel] = {}
        if cfg.ema_decay > 0:
            networks = self.networks()
            for name in self.objective.ema_names():
                self.emas[name] = EMAModel(networks[name].parameters(), decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup)
                self.emas[name].to(self.accelerator.device)

    def networks(self) -> dict[str, nn.Module]:
        """Every network of the objective, without accelerate's wrappers (raw, not EMA, weights)."""
        return {k: self.accelerator.unwrap_model(v) for k, v in self.objective.networks.items()}

    def _restore(self) -> None:
        """Load model / optimizer state, EMA and the step counter from `resume_from`."""
        assert self.resume_from is not None and self.resume_state is not None
        try:
            self.accelerator.load_state(str(self.resume_from))
        except Exception as error:  # verified beforehand; name the checkpoint if loading still fails
            raise DamagedCheckpointError(f"cannot load checkpoint {self.resume_from} ({type(error).__name__}: {error}); "
                                         "resume from another checkpoint or with the run's own config") from error
        networks = self.networks()
        for name, ema in self.emas.items():
            load_ema(ema, networks[name], self.resume_from / EMA_DIR / name)
            ema.to(self.accelerator.device)
        self.start_step = int(self.resume_state["step"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            for scheduler in self.lr_schedulers:
                for _ in range(self.start_step):
                    scheduler.step()

    # -- checkpoints, samples, export --------------------------------------------------

    def save_checkpoint(self, step: int) -> Path:
        """`save_state` + EMA + trainer_state.json into a temp folder, renamed when complete."""
        acc = self.accelerator
        folder = self.run_dir / "checkpoints"
        final, tmp = folder / f"{CHECKPOINT_PREFIX}{step:06d}", folder / f".tmp_{CHECKPOINT_PREFIX}{step:06d}"
        if acc.is_main_process:
            self._flush_trackers()  # every event up to `step` is on disk before the checkpoint exists
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            networks = self.networks()
            for name, ema in self.emas.items():
                save_ema(ema, networks[name], tmp / EMA_DIR / name)
            state = {"step": step, "objective": self.config.objective.name, "ema": list(self.emas),
                     "networks": _network_signature(networks), "objective_signature": self.objective.signature(),
                     "optimizers": len(self.optimizers), "engine": self.engine, "processes": acc.num_processes}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            _atomic_replace_dir(tmp, final)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        self.last_checkpoint = final
        return final

    def _flush_trackers(self) -> None:
        for tracker in self.accelerator.trackers:
            writer = getattr(tracker, "writer", None)
            if writer is not None and hasattr(writer, "flush"):
                writer.flush()

    def _prune_checkpoints(self) -> None:
        limit = self.config.checkpoints_total_limit
        if limit is not None and limit > 0:
            for old in list_checkpoints(self.run_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[dict[str, nn.Module]]:
        """Every network with its EMA weights swapped in temporarily (raw weights where it has no EMA)."""
        networks = self.networks()
        swapped = []
        try:
            for name, ema in self.emas.items():
                ema.store(networks[name].parameters())
                swapped.append(name)
                ema.copy_to(networks[name].parameters())
            yield networks
        finally:
            for name in swapped:
                self.emas[name].restore(networks[name].parameters())

    def sample_fn(self, networks: dict[str, nn.Module]) -> SampleFn:
        """`class_labels -> samples` with the configured solver steps and guidance (seeded, deterministic)."""
        cfg = self.config

        def fn(class_labels: Tensor) -> Tensor:
            generator = torch.Generator(device=self.accelerator.device).manual_seed(cfg.seed)
            modes = {name: net.training for name, net in networks.items()}
            for net in networks.values():
                net.eval()
            try:
                return self.objective.sample(networks, class_labels.to(self.accelerator.device), generator,
                                             cfg.sample_steps, cfg.sample_guidance)
            finally:
                for name, net in networks.items():
                    net.train(modes[name])

        return fn

    def write_sample_grid(self, step: int) -> Path:
        """The objective's preview of EMA samples (an image grid, a 2-D scatter plot, decoded text) in run_dir/samples."""
        with self.ema_weights() as networks:
            return self.objective.write_preview(self.sample_fn(networks), networks,
                                                self.run_dir / "samples" / f"{CHECKPOINT_PREFIX}{step:06d}",
                                                self.config.model.num_classes, self.config.samples_per_class)

    def evaluate(self, step: int) -> dict[str, float]:
        """Run `eval_fn` on the EMA weights (main process)."""
        assert self.eval_fn is not None
        with self.ema_weights() as networks:
            return {k: float(v) for k, v in self.eval_fn(self.sample_fn(networks), step).items()}

    def export_pipeline(self) -> Path:
        """Save the EMA networks the objective's way (by default a `ClassConditionalPipeline`) in run_dir/pipeline."""
        final, tmp = self.run_dir / "pipeline", self.run_dir / ".tmp_pipeline"
        shutil.rmtree(tmp, ignore_errors=True)
        with self.ema_weights() as networks:
            self.objective.export(networks, tmp)
        _atomic_replace_dir(tmp, final)
        return final

    # -- one optimisation step ---------------------------------------------------------

    def _phase_step(self, phase: str, repeat: int, optimizer: Any, step: int, batches: Iterator[Any]) -> dict[str, float]:
        """Accumulate `gradient_accumulation_steps` micro-batches, clip, step; returns mean logged values.

        `repeat` counts earlier updates of the same phase in this step (a critic updated several
        times per generator update); it keeps their training noise distinct.
        """
        acc, cfg = self.accelerator, self.config
        accum = cfg.optim.gradient_accumulation_steps
        totals: dict[str, float] = {}
        # A phase's loss may back-propagate into another phase's network (a generator's loss through
        # its critic): start every phase from zero gradients everywhere, or stale ones would leak
        # into the next phase's step (and a resumed run, which starts with none, would differ).
        for net in self.objective.networks.values():
            net.zero_grad(set_to_none=True)
        for micro in range(accum):
            batch = _to_device(next(batches), acc.device)
            key = phase if repeat == 0 else f"{phase}#{repeat}"
            generator = step_generator(cfg.seed, step, micro, key, acc.device, acc.process_index, acc.num_processes)
            with contextlib.ExitStack() as stack:
                if micro < accum - 1:  # no gradient all-reduce until the last micro-batch
                    for net in self.objective.networks.values():
                        stack.enter_context(acc.no_sync(net))
                with acc.autocast():
                    losses = self.objective.loss(batch, step, generator, phase)
                values = {k: acc.reduce(v.detach().float(), reduction="mean").item() for k, v in losses.items()}
                self._check_finite(values["loss"], step, phase)
                acc.backward(losses["loss"] / accum)
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v / accum
        if cfg.optim.max_grad_norm > 0:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            totals["grad_norm"] = float(acc.clip_grad_norm_(params, cfg.optim.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return totals

    def _check_finite(self, loss: float, step: int, phase: str) -> None:
        """Stop every process on a NaN/inf loss, before the optimizer step, naming the checkpoint that is intact."""
        if math.isfinite(loss):
            return
        last = str(self.last_checkpoint) if self.last_checkpoint else "none yet"
        raise NonFiniteLossError(
            f"loss is {loss} at step {step} (phase {phase!r}); the run stopped before updating the weights. "
            f"Last good checkpoint: {last} (intact). Lower optim.lr, keep optim.max_grad_norm > 0 or use "
            "mixed_precision=no, then continue with --resume latest"
        )

    def train_step(self, step: int, batches: Iterator[Any]) -> dict[str, float]:
        """One optimizer step per entry of `objective.phases` (a phase may repeat), LR schedules, then the EMA updates.

        Logged scalars of a repeated phase are averaged over its updates.
        """
        logs: dict[str, float] = {}
        sums: dict[str, dict[str, float]] = {}
        for phase in self.objective.phases:
            totals = sums.setdefault(phase, {})
            repeat = int(totals.get("#updates", 0))
            values = self._phase_step(phase, repeat, self.optimizers[self.phase_names.index(phase)], step, batches)
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v
            totals["#updates"] = repeat + 1
        for phase, scheduler in zip(self.phase_names, self.lr_schedulers):
            scheduler.step()
            totals = sums[phase]
            updates = totals.pop("#updates")
            prefix = "" if len(self.phase_names) == 1 else f"{phase}/"
            logs.update({prefix + k: v / updates for k, v in totals.items()})
            logs[f"{prefix}lr"] = scheduler.get_last_lr()[0]
        networks = self.networks()
        for name, ema in self.emas.items():
            ema.step(networks[name].parameters())
        return logs

    # -- the loop ----------------------------------------------------------------------

    def _batches(self) -> Iterator[Any]:
        cfg, acc = self.config, self.accelerator
        start = self.start_step * cfg.optim.gradient_accumulation_steps * len(self.objective.phases)
        sampler = StepBatchSampler(len(self.dataset), cfg.data.batch_size, acc.num_processes, acc.process_index, cfg.seed, start)
        return iter(DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers))

    def _init_run(self) -> None:
        """Restore, write the resolved config and start the trackers."""
        if self.resume_from is not None:
            self._restore()
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
            cfg, processes = self.config, self.accelerator.num_processes
            if processes > 1 or cfg.data.global_batch_size is not None:
                accumulation = cfg.optim.gradient_accumulation_steps
                print(f"batch: {cfg.data.batch_size} per process x {processes} process(es) x {accumulation} accumulation "
                      f"step(s) = {cfg.data.batch_size * processes * accumulation} per optimizer step ({self.engine.upper()})")
        if self.config.log_with != "none":
            # Events of an earlier attempt after the step this run starts from (steps > start_step, or all of
            # them for a fresh start) are purged: tensorboard then shows every step once.
            purge_step = self.start_step + 1 if self.resume_from is not None else 0
            if self.accelerator.is_main_process:
                _wait_past_event_files(self.run_dir / "logs" / "train")
            self.accelerator.init_trackers("train", config=_flat_hparams(self.config.to_dict()),
                                           init_kwargs={"tensorboard": {"purge_step": purge_step}})

    def _periodic(self, step: int, result: TrainResult) -> None:
        """Checkpoint, sample grid and evaluation at their configured intervals (after `step` steps)."""
        cfg, acc = self.config, self.accelerator
        if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            self.save_checkpoint(step)
        sample = cfg.sample_every > 0 and step % cfg.sample_every == 0 and step < cfg.max_steps
        evaluate = self.eval_fn is not None and cfg.eval_every > 0 and step % cfg.eval_every == 0
        if sample or evaluate:
            with full_parameters(self.engine, self.objective.networks.values()):  # every process (FSDP / ZeRO-3)
                if acc.is_main_process and sample:
                    self.write_sample_grid(step)
                if acc.is_main_process and evaluate:
                    metrics = self.evaluate(step)
                    result.metrics.update(metrics)
                    acc.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        acc.wait_for_everyone()

    def _finish(self, result: TrainResult) -> None:
        """Final checkpoint, sample grid, evaluation and pipeline export."""
        cfg, acc = self.config, self.accelerator
        if self.start_step < cfg.max_steps:
            result.checkpoint = self.save_checkpoint(cfg.max_steps)
        with full_parameters(self.engine, self.objective.networks.values()):  # every process (FSDP / ZeRO-3)
            if acc.is_main_process:
                self.write_sample_grid(cfg.max_steps)
                if self.eval_fn is not None and not (cfg.eval_every > 0 and cfg.max_steps % cfg.eval_every == 0):
                    result.metrics.update(self.evaluate(cfg.max_steps))
                result.pipeline = self.export_pipeline()
        acc.wait_for_everyone()

    def train(self) -> TrainResult:
        """Run from the start (or resumed) step to `max_steps`."""
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        self._init_run()
        result = TrainResult(self.run_dir, self.start_step, checkpoint=self.last_checkpoint)
        batches = self._batches()
        bar = tqdm(total=cfg.max_steps, initial=self.start_step, desc="train", disable=not acc.is_main_process, dynamic_ncols=True)
        try:
            for step in range(self.start_step, cfg.max_steps):
                logs = self.train_step(step, batches)
                result.losses.append(logs.get("loss", next(iter(logs.values()))))
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if "/" not in k}, refresh=False)
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
                    acc.log(logs, step=step + 1)
                self._periodic(step + 1, result)
            self._finish(result)
        finally:
            bar.close()
            acc.end_training()
        return result


def _wait_past_event_files(folder: Path) -> None:
    """Wait (at most about a second) until the clock is past the newest tensorboard event file's timestamp.

    Event files are named `events.out.tfevents.<seconds>.<host>.<pid>...` and tensorboard reads
    them in name order; a new file must sort after the earlier attempt's, or that attempt's
    events would be read last and the new run's purge of them would not apply.
    """
    import time

    stamps = []
    for file in folder.glob("events.out.tfevents.*") if folder.is_dir() else ():
        field = file.name.split(".")[3]
        if field.isdigit():
            stamps.append(int(field))
    deadline = time.monotonic() + 2.0
    while stamps and int(time.time()) <= max(stamps) and time.monotonic() < deadline:
        time.sleep(0.05)


def _scaled_lr_groups(groups: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
    """Parameter groups with an "lr_scale" turned into their own "lr" (= optim.lr x lr_scale)."""
    out = []
    for group in groups:
        group = dict(group)
        scale = group.pop("lr_scale", None)
        if scale is not None:
            group["lr"] = lr * float(scale)
        out.append(group)
    return out


def _ddp_find_unused() -> Any:
    """accelerate's DDP kwargs handler with `find_unused_parameters=True`."""
    from accelerate.utils import DistributedDataParallelKwargs

    return DistributedDataParallelKwargs(find_unused_parameters=True)


def _flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten the config into tensorboard-compatible hparams (int / float / str / bool)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "options":
            flat.update(_flat_hparams(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return flat


def train(config: TrainConfig, resume: str | None = None, eval_fn: EvalFn | None = None) -> TrainResult:
    """Train `config` (resume: None, "latest" or a checkpoint folder); see `Trainer`."""
    return Trainer(config, resume=resume, eval_fn=eval_fn).train()


def export_checkpoint(config: TrainConfig, checkpoint: str) -> Path:
    """Write the EMA weights of `checkpoint` ("latest" or a folder) as run_dir/pipeline, without training."""
    trainer = Trainer(config, resume=checkpoint)
    if trainer.resume_from is None:
        raise FileNotFoundError(f"{config.run_dir} has no checkpoint to export; train first or pass a checkpoint folder")
    trainer._restore()
    with full_parameters(trainer.engine, trainer.objective.networks.values()):  # every process (FSDP / ZeRO-3)
        path = trainer.export_pipeline() if trainer.accelerator.is_main_process else trainer.run_dir / "pipeline"
    trainer.accelerator.end_training()
    return path
