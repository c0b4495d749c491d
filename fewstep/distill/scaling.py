"""Model-state memory per process under data parallelism and ZeRO (Rajbhandari et al., SC 2020, arXiv 1910.02054).

A trainable parameter costs `weights + gradients + optimizer` bytes. Mixed-precision Adam: 2 + 2 +
K with K = 12 (fp32 master weights, momentum, variance); full precision (fp32) Adam: 4 + 4 + 8.
ZeRO stage s splits the first s of (optimizer states, gradients, weights) across the N
data-parallel processes, so for Psi parameters (mixed precision):

    DDP (stage 0)  (2 + 2 + K) Psi        stage 2  2 Psi + (2 + K) Psi / N
    stage 1        4 Psi + K Psi / N      stage 3  (2 + 2 + K) Psi / N

A frozen network (a teacher) holds only its weights (2 bytes in 16 bit, 4 in fp32), an EMA copy
one fp32 copy (4 bytes); both are split across processes at stage 3 only. FSDP full-shard is
the stage-3 analogue. Activations, temporary buffers and fragmentation come on top of all of this.

The presets below list, for each shipped trainer, the networks it holds: at the shipped sizes
(`SHIPPED_TRAINERS`) and at Stable-Diffusion-class sizes (`SD_CLASS_TRAINERS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ZeRO stages: 0 is plain data parallelism (DDP), 3 partitions everything.
STAGES = (0, 1, 2, 3)


@dataclass(frozen=True)
class BytesPerParam:
    """Bytes one parameter costs in weights, gradients and optimizer states (ZeRO, Rajbhandari et al. 2020)."""

    weights: int
    gradients: int = 0
    optimizer: int = 0


#: fp16/bf16 weights and gradients, fp32 master weights + Adam momentum + variance (K = 12).
MIXED_PRECISION_ADAM = BytesPerParam(weights=2, gradients=2, optimizer=12)
#: fp32 weights and gradients, fp32 Adam momentum + variance.
FP32_ADAM = BytesPerParam(weights=4, gradients=4, optimizer=8)
#: an exponential moving average keeps one fp32 copy of the weights.
EMA_BYTES_PER_PARAM = 4


def check_stage(stage: int) -> None:
    """Raise ValueError unless `stage` is a ZeRO stage (0 = DDP, 1, 2, 3)."""
    if stage not in STAGES:
        raise ValueError(f"ZeRO stage must be one of {STAGES} (0 = plain DDP), got {stage!r}")


def check_processes(num_processes: int) -> None:
    """Raise ValueError unless there is at least one process."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes!r}")


def split_bytes(per_param: BytesPerParam, stage: int) -> tuple[int, int]:
    """(bytes per parameter every process holds whole, bytes per parameter split across processes) at ZeRO `stage`."""
    check_stage(stage)
    split = ((per_param.optimizer if stage >= 1 else 0) + (per_param.gradients if stage >= 2 else 0)
             + (per_param.weights if stage >= 3 else 0))
    whole = per_param.weights + per_param.gradients + per_param.optimizer - split
    return whole, split


def bytes_per_process(num_params: float, per_param: BytesPerParam, stage: int, num_processes: int) -> float:
    """Model-state bytes on each of `num_processes` processes at ZeRO `stage` (Rajbhandari et al. 2020)."""
    check_processes(num_processes)
    whole, split = split_bytes(per_param, stage)
    return num_params * whole + num_params * split / num_processes


def adam_bytes(mixed_precision: bool = True, optimizer_state_bytes: int | None = None) -> BytesPerParam:
    """Per-parameter bytes of Adam training (ZeRO's K = `optimizer_state_bytes`; default 12 mixed, 8 fp32)."""
    base = MIXED_PRECISION_ADAM if mixed_precision else FP32_ADAM
    if optimizer_state_bytes is None:
        return base
    return BytesPerParam(base.weights, base.gradients, optimizer_state_bytes)


def training_bytes(num_params: float, stage: int, num_processes: int, mixed_precision: bool = True,
                   optimizer_state_bytes: int | None = None) -> float:
    """Bytes per process of a trainable network with Adam at ZeRO `stage` (Rajbhandari et al. 2020)."""
    return bytes_per_process(num_params, adam_bytes(mixed_precision, optimizer_state_bytes), stage, num_processes)


def frozen_bytes(num_params: float, stage: int, num_processes: int, bytes_per_param: int = 2) -> float:
    """Bytes per process of a frozen network: weights only, split at stage 3 only (ZeRO, Rajbhandari et al. 2020)."""
    return bytes_per_process(num_params, BytesPerParam(weights=bytes_per_param), stage, num_processes)


def ema_bytes(num_params: float, stage: int, num_processes: int) -> float:
    """Bytes per process of an fp32 EMA copy, split at stage 3 only (like weights in ZeRO, Rajbhandari et al. 2020)."""
    return bytes_per_process(num_params, BytesPerParam(weights=EMA_BYTES_PER_PARAM), stage, num_processes)


@dataclass(frozen=True)
class NetworkSpec:
    """One network of a trainer: its parameter count, whether it trains, whether the trainer keeps its EMA."""

    num_params: int
    trainable: bool
    ema: bool = False

    def __post_init__(self) -> None:
        if self.num_params < 0:
            raise ValueError(f"num_params must be >= 0, got {self.num_params}")
        if self.ema and not self.trainable:
            raise ValueError("a frozen network has no EMA: set trainable=True or ema=False")


def network_bytes(spec: NetworkSpec, stage: int, num_processes: int, mixed_precision: bool = True) -> float:
    """Bytes per process of one network (+ its EMA) at ZeRO `stage` (Rajbhandari et al. 2020)."""
    if not spec.trainable:
        return frozen_bytes(spec.num_params, stage, num_processes, bytes_per_param=2 if mixed_precision else 4)
    total = training_bytes(spec.num_params, stage, num_processes, mixed_precision)
    return total + (ema_bytes(spec.num_params, stage, num_processes) if spec.ema else 0.0)


def trainer_memory(networks: dict[str, NetworkSpec], stage: int, num_processes: int,
                   mixed_precision: bool = True) -> dict[str, float]:
    """Bytes per process of each network of a trainer, plus their "total" (ZeRO, Rajbhandari et al. 2020)."""
    if "total" in networks:
        raise ValueError("'total' is reserved for the sum; rename that network")
    memory = {name: network_bytes(spec, stage, num_processes, mixed_precision) for name, spec in networks.items()}
    memory["total"] = sum(memory.values())
    return memory


# -- trainer presets -------------------------------------------------------------------------

def frozen(num_params: int) -> NetworkSpec:
    """A frozen network (weights only)."""
    return NetworkSpec(num_params, trainable=False)


def trained(num_params: int, ema: bool = False) -> NetworkSpec:
    """A trainable network, with or without an EMA copy."""
    return NetworkSpec(num_params, trainable=True, ema=ema)


def teacher_training_networks(model: int) -> dict[str, NetworkSpec]:
    """`flow_matching` / `vp_diffusion`: one network with its EMA."""
    return {"model": trained(model, ema=True)}


def distribution_matching_networks(teacher: int, student: int, num_students: int = 1) -> dict[str, NetworkSpec]:
    """`msd` / `dmd`: the frozen teacher; per student the student (EMA) and a trainable teacher-sized critic."""
    networks = {"teacher": frozen(teacher)}
    for k in range(num_students):
        networks[f"student_{k}"] = trained(student, ema=True)
        networks[f"critic_{k}"] = trained(teacher)
    return networks


def slimflow_networks(teacher: int, student: int) -> dict[str, NetworkSpec]:
    """`slimflow_reflow` / `slimflow_distill`: the frozen teacher and the student (EMA)."""
    return {"teacher": frozen(teacher), "model": trained(student, ema=True)}


def acestep_networks(transformer: int, condition_encoder: int, repa_projector: int = 0,
                     frozen_parts: dict[str, int] | None = None) -> dict[str, NetworkSpec]:
    """`acestep`: transformer and condition encoder (both EMA), the REPA projector (no EMA), frozen VAE / text encoder."""
    networks = {"transformer": trained(transformer, ema=True), "condition_encoder": trained(condition_encoder, ema=True)}
    if repa_projector:
        networks["repa_projector"] = trained(repa_projector)
    return networks | {name: frozen(n) for name, n in (frozen_parts or {}).items()}


def acestep_turbo_networks(transformer: int, frozen_parts: dict[str, int] | None = None) -> dict[str, NetworkSpec]:
    """`acestep_turbo` (method=dmd): frozen teacher transformer, student (EMA), critic; the teacher's frozen encoders."""
    networks = {"teacher": frozen(transformer), "student": trained(transformer, ema=True), "critic": trained(transformer)}
    return networks | {name: frozen(n) for name, n in (frozen_parts or {}).items()}


# Shipped sizes, counted once from the safetensors headers of assets/ (the sum over every tensor
# of the product of its shape, `safetensors.safe_open(path, "np").get_slice(key).get_shape()`).
MNIST_FLOW_UNET = 637_169  # assets/teachers/mnist_flow/unet; each mnist_flow_msd student is a copy (2 x 637,169 stored)
MNIST_SLIMFLOW_UNET = 359_461  # assets/students/mnist_flow_slimflow/unet (widths 12/24/48)
MUSIC_TRANSFORMER = 331_848  # assets/music/generator/transformer
MUSIC_CONDITION_ENCODER = 207_296  # assets/music/generator/condition_encoder
MUSIC_VAE = 228_145  # assets/music/generator/vae (= assets/music/autoencoder)
MUSIC_TEXT_ENCODER = 21_120  # assets/music/generator/text_encoder
# Not stored: acestep's REPA projector Linear(64, 128) + Linear(128, 64) (width 64, music features 64).
MUSIC_REPA_PROJECTOR = (64 * 128 + 128) + (128 * 64 + 64)
MUSIC_FROZEN_PARTS = {"vae": MUSIC_VAE, "text_encoder": MUSIC_TEXT_ENCODER}

# Stable-Diffusion-class sizes.
SD15_UNET = 859_520_964  # the SD 1.5 UNet
DIT_2B = 2_000_000_000  # approximately: a ~2e9 DiT such as SD3-medium's MMDiT

#: trainer -> its networks at the shipped configs' sizes (assets/configs/: mnist_flow, mnist_msd with
#: K = 2, mnist_slimflow_reflow / _distill, music_acestep, music_turbo).
SHIPPED_TRAINERS: dict[str, dict[str, NetworkSpec]] = {
    "flow_matching": teacher_training_networks(MNIST_FLOW_UNET),
    "msd": distribution_matching_networks(MNIST_FLOW_UNET, MNIST_FLOW_UNET, num_students=2),
    "dmd": distribution_matching_networks(MNIST_FLOW_UNET, MNIST_FLOW_UNET),
    "slimflow_reflow": slimflow_networks(MNIST_FLOW_UNET, MNIST_SLIMFLOW_UNET),
    "slimflow_distill": slimflow_networks(MNIST_SLIMFLOW_UNET, MNIST_SLIMFLOW_UNET),  # teacher: the 2-rectified flow
    "acestep": acestep_networks(MUSIC_TRANSFORMER, MUSIC_CONDITION_ENCODER, MUSIC_REPA_PROJECTOR, MUSIC_FROZEN_PARTS),
    "acestep_turbo": acestep_turbo_networks(MUSIC_TRANSFORMER,
                                            MUSIC_FROZEN_PARTS | {"condition_encoder": MUSIC_CONDITION_ENCODER}),
}

#: trainer -> its denoising networks at SD-class sizes: the image trainers with SD 1.5's UNet (students
#: teacher-sized: an upper bound for SlimFlow, whose students are smaller), the music trainers with a
#: ~2e9 DiT. Encoders, VAEs and the REPA projector are not counted here (their size depends on the choice).
SD_CLASS_TRAINERS: dict[str, dict[str, NetworkSpec]] = {
    "flow_matching": teacher_training_networks(SD15_UNET),
    "msd": distribution_matching_networks(SD15_UNET, SD15_UNET, num_students=2),
    "dmd": distribution_matching_networks(SD15_UNET, SD15_UNET),
    "slimflow_reflow": slimflow_networks(SD15_UNET, SD15_UNET),
    "slimflow_distill": slimflow_networks(SD15_UNET, SD15_UNET),
    "acestep": {"transformer": trained(DIT_2B, ema=True)},
    "acestep_turbo": acestep_turbo_networks(DIT_2B),
}


# -- the accounting against a live trainer -------------------------------------------------------

def trainer_specs(trainer: Any) -> dict[str, NetworkSpec]:
    """The NetworkSpecs of a built `fewstep.distill.loop.Trainer`: its networks (trained or frozen, EMA) and teacher."""
    specs = {}
    if trainer.teacher is not None:
        specs["teacher"] = frozen(sum(p.numel() for p in trainer.teacher.network.parameters()))
    for name, network in trainer.networks().items():
        params = list(network.parameters())
        trainable = any(p.requires_grad for p in params)
        specs[name] = NetworkSpec(sum(p.numel() for p in params), trainable=trainable, ema=name in trainer.emas)
    return specs


def measured_state_bytes(trainer: Any) -> dict[str, float]:
    """Bytes of the model-state tensors a built Trainer holds, per network (+ "total").

    Weights of every network and of the teacher, one gradient per trained weight (the size
    `backward` allocates during a step), the optimizers' state tensors of each trained weight
    (Adam's momentum, variance and step counter) and the EMA's shadow copies: what
    `trainer_memory(..., stage=0)` accounts for, read off the live objects.
    """
    def size(tensors: Any) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    optimizer_state = {id(p): size(v for v in state.values() if hasattr(v, "numel"))
                       for optimizer in trainer.optimizers for p, state in optimizer.state.items()}
    measured = {}
    if trainer.teacher is not None:
        measured["teacher"] = float(size(trainer.teacher.network.parameters()))
    for name, network in trainer.networks().items():
        trained_params = [p for p in network.parameters() if p.requires_grad]
        total = size(network.parameters()) + size(trained_params)  # weights + gradients
        total += sum(optimizer_state.get(id(p), 0) for p in trained_params)
        if name in trainer.emas:
            total += size(trainer.emas[name].shadow_params)
        measured[name] = float(total)
    measured["total"] = sum(measured.values())
    return measured
