"""Process groups through accelerate: the same code on one CPU, several CPU processes (gloo) or GPUs."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch


def distributed_without_gpu() -> bool:
    """True under a multi-process launch (torchrun / `accelerate launch --multi_gpu`) on a machine without CUDA.

    accelerate only sets up its gloo MULTI_CPU mode when asked for the CPU; otherwise each
    process would silently work alone.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def process_state() -> Any:
    """accelerate's `PartialState` (rank, world size, barriers), set up for gloo on a machine without CUDA."""
    from accelerate import PartialState

    return PartialState(cpu=distributed_without_gpu())


T = TypeVar("T")


def shard_map(make: Callable[[int], T], count: int, desc: str | None = None) -> list[T]:
    """[make(0), ..., make(count - 1)] on every process, each item made by one process (i mod P) and shared.

    Teacher-side work (ODE pairs, trajectories) split across the processes of a launch; the
    result equals a one-process run as long as `make(i)` depends only on i (seed by i). `make`
    should return CPU tensors: the items travel between processes by `gather_object`.
    """
    from tqdm.auto import tqdm

    state = process_state()
    mine = range(state.process_index, count, state.num_processes)
    made = {i: make(i) for i in tqdm(mine, desc=desc, leave=False, disable=desc is None or not state.is_main_process)}
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        made = {i: item for part in gather_object([made]) for i, item in part.items()}
    return [made[i] for i in range(count)]


#: engines `accelerate launch` selects through its config file (assets/accelerate/*.yaml).
ENGINES = ("ddp", "fsdp", "deepspeed")


def launch_engine() -> str:
    """The engine `accelerate launch` chose for this process: "deepspeed", "fsdp", or "ddp" (also plain / one-process runs)."""
    for engine, variable in (("deepspeed", "ACCELERATE_USE_DEEPSPEED"), ("fsdp", "ACCELERATE_USE_FSDP")):
        if os.environ.get(variable, "false").lower() == "true":
            return engine
    return "ddp"


def check_engine_installed(engine: str) -> None:
    """Refuse a DeepSpeed launch when deepspeed is not installed, naming the fix and the alternatives."""
    if engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ValueError("this run was launched for DeepSpeed (an accelerate config with distributed_type: DEEPSPEED, e.g. "
                         "assets/accelerate/deepspeed_zero2.yaml) but the deepspeed package is not installed: "
                         "`pip install deepspeed` (it needs a CUDA toolchain), or launch with "
                         "assets/accelerate/fsdp.yaml (the same sharding in PyTorch) or assets/accelerate/ddp.yaml")


def has_accelerator_device() -> bool:
    """True if torch sees a GPU-class device (CUDA, or XPU where torch has it) that FSDP / DeepSpeed can shard onto."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def check_engine_device(engine: str) -> None:
    """Refuse FSDP / DeepSpeed without a GPU: accelerate's plugins need one (measured: FSDP stops at start-up on a CPU)."""
    if engine in ("fsdp", "deepspeed") and not has_accelerator_device():
        raise ValueError(f"this run was launched for {'FSDP' if engine == 'fsdp' else 'DeepSpeed'}, which accelerate runs "
                         "on GPUs (or XPU / NPU / MLU / HPU) only, and this machine has none; on a CPU launch with "
                         "assets/accelerate/ddp.yaml --num_processes N (gloo) or `accelerate launch --multi_gpu "
                         "--num_processes N` (docs/scaling.md)")


def check_engine_serves(engine: str, objective: str, trained_networks: list[str]) -> None:
    """Refuse an engine that cannot train this objective's networks, naming the alternative (docs/scaling.md)."""
    if engine == "deepspeed" and len(trained_networks) > 1:
        raise ValueError(f"objective.name={objective} trains {len(trained_networks)} networks "
                         f"({', '.join(trained_networks)}), but accelerate's DeepSpeed integration prepares one model per "
                         "Accelerator; launch this objective with assets/accelerate/fsdp.yaml (full shard, the PyTorch "
                         "analogue of ZeRO-3) or assets/accelerate/ddp.yaml (docs/scaling.md)")


def per_process_batch(batch_size: int, global_batch_size: int | None, processes: int, accumulation: int) -> int:
    """Items per process per micro-batch: `batch_size`, or `global_batch_size` split over processes x accumulation steps."""
    if global_batch_size is None:
        return batch_size
    parts = processes * accumulation
    if global_batch_size % parts:
        lower, upper = global_batch_size // parts * parts, -(-global_batch_size // parts) * parts
        choices = " or ".join(str(n) for n in (lower, upper) if n > 0)
        raise ValueError(f"data.global_batch_size={global_batch_size} cannot be split over {processes} process(es) x "
                         f"{accumulation} accumulation step(s) = {parts} equal micro-batches; use a multiple of {parts} "
                         f"({choices}), change optim.gradient_accumulation_steps or --num_processes, or drop "
                         "data.global_batch_size and set data.batch_size (per process)")
    return global_batch_size // parts


def fill_deepspeed_batch(ds_config: dict[str, Any], micro_batch: int, accumulation: int) -> dict[str, Any]:
    """DeepSpeed's "auto" batch fields from fewstep's batch (accelerate fills them only from a prepared DataLoader).

    train_micro_batch_size_per_gpu = the per-process micro-batch, gradient_accumulation_steps = 1
    and train_batch_size = micro x world size (left "auto" when the world size is not known).
    accelerate's DeepSpeed `backward` also steps the engine, so fewstep's own accumulation cannot
    be used there: `accumulation` > 1 is refused. Set values are kept; one that disagrees raises.
    """
    if accumulation != 1:
        raise ValueError(f"optim.gradient_accumulation_steps={accumulation} is not supported under DeepSpeed (accelerate's "
                         "DeepSpeed backward steps the engine every micro-batch); set it to 1 and raise data.batch_size, "
                         "or launch with assets/accelerate/fsdp.yaml / ddp.yaml")
    wanted = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1}
    world = int(os.environ.get("WORLD_SIZE", "0"))
    if world:
        wanted["train_batch_size"] = micro_batch * world
    for key, value in wanted.items():
        current = ds_config.get(key, "auto")
        if current == "auto":
            ds_config[key] = value
        elif int(current) != value:
            raise ValueError(f"the DeepSpeed config sets {key}={current} but this fewstep run uses {value} "
                             "(data.batch_size / data.global_batch_size and the number of processes); "
                             f"set {key}: auto in the DeepSpeed config and let fewstep fill it")
    return ds_config


def sharded_state_names(engine: str, num_networks: int, num_optimizers: int) -> list[str]:
    """Folders `save_state` writes for the networks / optimizers under FSDP (sharded state dict) or DeepSpeed (accelerate 1.x)."""
    if engine == "fsdp":
        return [f"pytorch_model_fsdp_{i}" for i in range(num_networks)] + [f"optimizer_{i}" for i in range(num_optimizers)]
    if engine == "deepspeed":  # one engine checkpoint per model, optimizer shards inside it
        return ["pytorch_model" + (f"_{i}" if i else "") for i in range(num_networks)]
    raise ValueError(f"{engine!r} writes plain files, not sharded folders")


def checkpoint_engine(folder: str | Path, recorded: str | None = None) -> str:
    """The engine a checkpoint folder was written under: its trainer_state.json's record, else told by its files."""
    if recorded in ENGINES:
        return recorded
    folder = Path(folder)
    if (folder / "pytorch_model_fsdp_0").exists():
        return "fsdp"
    if (folder / "pytorch_model").is_dir():
        return "deepspeed"
    return "ddp"


def check_checkpoint_engine(path: str | Path, written_under: str, running: str) -> None:
    """Refuse to resume a checkpoint whose state files another engine wrote, naming how to resume it."""
    if written_under == running:
        return
    files = {"ddp": "model.safetensors / optimizer.bin", "fsdp": "sharded pytorch_model_fsdp_0/ / optimizer_0/",
             "deepspeed": "DeepSpeed's pytorch_model/ with ZeRO shards"}
    launch = {"ddp": "assets/accelerate/ddp.yaml (or a plain / --multi_gpu launch)", "fsdp": "assets/accelerate/fsdp.yaml",
              "deepspeed": "assets/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml (the stage it was saved with)"}
    raise ValueError(f"checkpoint {path} was written under {written_under.upper()} ({files[written_under]}) but this run "
                     f"is launched for {running.upper()}, which cannot load it; resume with accelerate launch "
                     f"--config_file {launch[written_under]}, or start a new run_dir. Exported weights "
                     "(run_dir/pipeline) load under any engine through model.type=pretrained")


def shards_parameters(engine: str) -> bool:
    """True when the engine keeps only a shard of each trained parameter on a process: FSDP, or DeepSpeed ZeRO-3."""
    return engine == "fsdp" or (engine == "deepspeed" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2") == "3")


def check_engine_ema(engine: str, ema_decay: float) -> None:
    """Refuse an EMA of sharded parameters: diffusers' EMAModel averages whole tensors (docs/scaling.md)."""
    if ema_decay > 0 and shards_parameters(engine):
        name = "FSDP" if engine == "fsdp" else "DeepSpeed ZeRO-3"
        raise ValueError(f"optim.ema_decay={ema_decay}: {name} keeps only a shard of each parameter on a process, and the "
                         "EMA (diffusers' EMAModel) averages whole tensors; set optim.ema_decay=0 for this run, or launch "
                         "with assets/accelerate/ddp.yaml or deepspeed_zero2.yaml (parameters whole on every process)")


@contextlib.contextmanager
def full_parameters(engine: str, networks: Iterable[Any]) -> Iterator[None]:
    """On every process: the prepared networks' whole weights, for the main process's samples and export.

    Nothing to do under DDP / ZeRO-2. Under FSDP (`summon_full_params`) and ZeRO-3
    (`deepspeed.zero.GatheredParameters`) the weights are gathered on every process (a collective:
    all processes must enter) and need to fit one device, as inference does. Not run on this
    project's CPU machines (docs/scaling.md).
    """
    if not shards_parameters(engine):
        yield
        return
    with contextlib.ExitStack() as stack:
        if engine == "fsdp":
            from torch.distributed.fsdp import FullyShardedDataParallel

            for network in networks:
                stack.enter_context(FullyShardedDataParallel.summon_full_params(network, writeback=False))
        else:
            import deepspeed

            parameters = [p for network in networks for p in network.parameters()]
            stack.enter_context(deepspeed.zero.GatheredParameters(parameters, modifier_rank=None))
        yield
