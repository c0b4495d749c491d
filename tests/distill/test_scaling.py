"""ZeRO memory accounting (Rajbhandari et al. 2020) and the shipped accelerate config files (assets/accelerate/)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from safetensors import safe_open

from fewstep.distill import scaling
from fewstep.distill.scaling import (
    SD15_UNET, SD_CLASS_TRAINERS, SHIPPED_TRAINERS, STAGES, NetworkSpec, ema_bytes, frozen_bytes, network_bytes,
    trainer_memory, training_bytes,
)

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = ROOT / "assets" / "accelerate"
GB = 1e9
PSI = 7.5e9  # the ZeRO paper's example model


def paper_formula(psi: float, stage: int, n: int, weights: int = 2, gradients: int = 2, k: int = 12) -> float:
    """The ZeRO paper's equations as printed: (2 + 2 + K) Psi, 4 Psi + K Psi / N, 2 Psi + (2 + K) Psi / N, (4 + K) Psi / N."""
    return [(weights + gradients + k) * psi, (weights + gradients) * psi + k * psi / n,
            weights * psi + (gradients + k) * psi / n, (weights + gradients + k) * psi / n][stage]


# -- (a) the paper's numbers -------------------------------------------------------------------

def test_paper_example_at_64_processes() -> None:
    """The paper's example: Psi = 7.5B, K = 12, N = 64 -> 120 GB, 31.4 GB, 16.6 GB, 1.9 GB."""
    printed = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, gb in printed.items():
        assert round(training_bytes(PSI, stage, 64) / GB, 1) == gb


def test_paper_example_on_one_process_is_120_gb_at_every_stage() -> None:
    """With N = 1 nothing is split: 16 Psi = 120 GB whatever the stage."""
    assert [training_bytes(PSI, stage, 1) / GB for stage in STAGES] == [120.0] * 4


@pytest.mark.parametrize("n", [1, 4, 16, 64, 1024])
@pytest.mark.parametrize("stage", STAGES)
def test_mixed_and_full_precision_follow_the_paper_equations(stage: int, n: int) -> None:
    assert training_bytes(PSI, stage, n) == pytest.approx(paper_formula(PSI, stage, n), rel=1e-12)
    assert training_bytes(PSI, stage, n, mixed_precision=False) == pytest.approx(
        paper_formula(PSI, stage, n, weights=4, gradients=4, k=8), rel=1e-12)


def test_optimizer_state_bytes_is_the_papers_k() -> None:
    """K = 8 (e.g. a 16-bit-state optimizer) at stage 1, N = 64: 4 Psi + 8 Psi / 64."""
    assert training_bytes(PSI, 1, 64, optimizer_state_bytes=8) == pytest.approx(4 * PSI + 8 * PSI / 64, rel=1e-12)


# -- (b) limits and monotonicity ---------------------------------------------------------------

@pytest.mark.parametrize("psi", [1, 637_169, SD15_UNET, PSI])
@pytest.mark.parametrize("mixed_precision", [True, False])
def test_stage_three_is_ddp_divided_by_n_exactly(psi: float, mixed_precision: bool) -> None:
    for n in (1, 2, 3, 7, 8, 64, 1000):
        assert training_bytes(psi, 3, n, mixed_precision) == training_bytes(psi, 0, n, mixed_precision) / n


@pytest.mark.parametrize("stage", STAGES)
def test_memory_never_grows_with_more_processes(stage: int) -> None:
    per_n = [training_bytes(SD15_UNET, stage, n) for n in range(1, 257)]
    assert all(b <= a for a, b in zip(per_n, per_n[1:]))
    if stage == 0:
        assert len(set(per_n)) == 1  # DDP replicates everything
    else:
        assert per_n[-1] < per_n[0]


def test_each_stage_saves_more_than_the_last_on_several_processes() -> None:
    for n in (2, 8, 64):
        per_stage = [training_bytes(SD15_UNET, stage, n) for stage in STAGES]
        assert all(b < a for a, b in zip(per_stage, per_stage[1:]))


@pytest.mark.parametrize("n", [1, 8, 64])
def test_frozen_teacher_has_weights_only(n: int) -> None:
    """No gradients and no optimizer states: 2 bytes (16 bit) or 4 (fp32) per parameter, split at stage 3 only."""
    for stage in (0, 1, 2):
        assert frozen_bytes(SD15_UNET, stage, n) == 2 * SD15_UNET
        assert network_bytes(NetworkSpec(SD15_UNET, trainable=False), stage, n) == 2 * SD15_UNET
        assert network_bytes(NetworkSpec(SD15_UNET, trainable=False), stage, n, mixed_precision=False) == 4 * SD15_UNET
    assert frozen_bytes(SD15_UNET, 3, n) == pytest.approx(2 * SD15_UNET / n, rel=1e-15)
    trained_ddp = network_bytes(NetworkSpec(SD15_UNET, trainable=True), 0, n)
    assert trained_ddp - network_bytes(NetworkSpec(SD15_UNET, trainable=False), 0, n) == (2 + 12) * SD15_UNET


@pytest.mark.parametrize("n", [1, 8, 64])
def test_ema_adds_one_fp32_copy_split_at_stage_three_only(n: int) -> None:
    psi = 1_000_003
    for stage in STAGES:
        with_ema = network_bytes(NetworkSpec(psi, trainable=True, ema=True), stage, n)
        without = network_bytes(NetworkSpec(psi, trainable=True), stage, n)
        assert with_ema - without == pytest.approx(4 * psi / (n if stage == 3 else 1), rel=1e-9)
        assert ema_bytes(psi, stage, n) == pytest.approx(4 * psi / (n if stage == 3 else 1), rel=1e-15)


def test_dmd_at_sd_class_size_by_hand() -> None:
    """Teacher 2 Psi + student (16 + 4) Psi + critic 16 Psi = 38 Psi under DDP; every term / N at stage 3."""
    memory = trainer_memory(SD_CLASS_TRAINERS["dmd"], 0, 8)
    assert memory == {"teacher": 2 * SD15_UNET, "student_0": 20 * SD15_UNET, "critic_0": 16 * SD15_UNET,
                      "total": 38 * SD15_UNET}
    assert trainer_memory(SD_CLASS_TRAINERS["dmd"], 3, 8)["total"] == pytest.approx(38 * SD15_UNET / 8, rel=1e-12)


def test_msd_holds_a_student_and_a_critic_per_student() -> None:
    networks = SHIPPED_TRAINERS["msd"]
    assert sorted(networks) == ["critic_0", "critic_1", "student_0", "student_1", "teacher"]
    assert [name for name, spec in networks.items() if spec.ema] == ["student_0", "student_1"]
    assert not networks["teacher"].trainable and networks["critic_0"].num_params == networks["teacher"].num_params


def test_trainer_total_is_the_sum_of_its_networks() -> None:
    for trainers in (SHIPPED_TRAINERS, SD_CLASS_TRAINERS):
        for networks in trainers.values():
            for stage in STAGES:
                memory = trainer_memory(networks, stage, 8)
                assert memory.pop("total") == pytest.approx(sum(memory.values()), rel=1e-12)
                assert set(memory) == set(networks)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="ZeRO stage must be one of"):
        training_bytes(10, 4, 8)
    with pytest.raises(ValueError, match="num_processes must be >= 1"):
        frozen_bytes(10, 0, 0)
    with pytest.raises(ValueError, match="a frozen network has no EMA"):
        NetworkSpec(10, trainable=False, ema=True)


def test_shipped_sizes_match_the_assets() -> None:
    """The recorded parameter counts equal the shapes in the shipped safetensors files."""
    def count(folder: str) -> int:
        path = next((ROOT / "assets" / folder).glob("*.safetensors"))
        with safe_open(str(path), "np") as f:
            return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())

    assert scaling.MNIST_FLOW_UNET == count("teachers/mnist_flow/unet")
    assert 2 * scaling.MNIST_FLOW_UNET == count("students/mnist_flow_msd/unet")  # two teacher-sized students
    assert scaling.MNIST_SLIMFLOW_UNET == count("students/mnist_flow_slimflow/unet")
    assert scaling.MUSIC_TRANSFORMER == count("music/generator/transformer")
    assert scaling.MUSIC_CONDITION_ENCODER == count("music/generator/condition_encoder")
    assert scaling.MUSIC_VAE == count("music/generator/vae")
    assert scaling.MUSIC_TEXT_ENCODER == count("music/generator/text_encoder")
    width = json.loads((ROOT / "assets/music/generator/transformer/config.json").read_text())["hidden_size"]
    features = json.loads((ROOT / "assets/music_features/config.json").read_text())["widths"][-1]
    assert scaling.MUSIC_REPA_PROJECTOR == (width * 2 * width + 2 * width) + (2 * width * features + features)


# -- (c) the accelerate config files -----------------------------------------------------------

EXPECTED = {
    "ddp": {"distributed_type": DistributedType.MULTI_GPU, "num_machines": 1, "num_processes": 8},
    "fsdp": {"distributed_type": DistributedType.FSDP, "num_machines": 1, "num_processes": 8},
    "deepspeed_zero2": {"distributed_type": DistributedType.DEEPSPEED, "num_machines": 1, "num_processes": 8},
    "deepspeed_zero3": {"distributed_type": DistributedType.DEEPSPEED, "num_machines": 1, "num_processes": 8},
    "multinode": {"distributed_type": DistributedType.MULTI_GPU, "num_machines": 2, "num_processes": 16},
}


def config_path(name: str) -> Path:
    return ACCELERATE_CONFIGS / f"{name}.yaml"


def test_exactly_the_expected_config_files_ship() -> None:
    assert sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name: str) -> None:
    config = load_config_from_file(str(config_path(name)))
    assert isinstance(config, ClusterConfig)
    for key, value in EXPECTED[name].items():
        assert getattr(config, key) == value, key
    assert config.mixed_precision == "no"  # fewstep's own `mixed_precision` decides (see the files' comments)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_starts_with_its_launch_command(name: str) -> None:
    text = config_path(name).read_text()
    assert text.startswith("#")
    assert f"accelerate launch --config_file assets/accelerate/{name}.yaml" in text
    assert "-m fewstep train CONFIG" in text and "data.batch_size" in text


def test_sharding_settings() -> None:
    fsdp = load_config_from_file(str(config_path("fsdp"))).fsdp_config
    assert fsdp["fsdp_version"] == 1 and fsdp["fsdp_reshard_after_forward"] == "FULL_SHARD"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT" and fsdp["fsdp_auto_wrap_policy"] == "SIZE_BASED_WRAP"
    zero2 = load_config_from_file(str(config_path("deepspeed_zero2"))).deepspeed_config
    zero3 = load_config_from_file(str(config_path("deepspeed_zero3"))).deepspeed_config
    assert zero2["zero_stage"] == 2 and zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True
    multinode = load_config_from_file(str(config_path("multinode")))
    assert multinode.machine_rank == 0 and multinode.main_process_ip is None  # both given on the command line


def launch_args(name: str, *extra: str):
    """`accelerate launch` arguments for config `name` after the launcher merged the file into them."""
    parsed = launch_command_parser().parse_args(["--config_file", str(config_path(name)), *extra, "-m", "fewstep", "train", "C"])
    return _validate_launch_command(parsed)[0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_nested_key_is_a_launch_option(name: str) -> None:
    """The launcher copies deepspeed_config / fsdp_config entries onto its arguments without checking them: a
    misspelt key would be ignored silently, so each must name an `accelerate launch` option."""
    options = set(vars(launch_command_parser().parse_args(["script.py"])))
    config = load_config_from_file(str(config_path(name)))
    nested = list(config.deepspeed_config) + list(config.fsdp_config)
    assert all(key in options for key in nested), sorted(set(nested) - options)


def test_launcher_reads_the_files() -> None:
    zero3 = launch_args("deepspeed_zero3")
    assert zero3.use_deepspeed and zero3.zero_stage == 3 and zero3.zero3_save_16bit_model is True
    fsdp = launch_args("fsdp")
    assert fsdp.use_fsdp and fsdp.fsdp_reshard_after_forward == "FULL_SHARD"
    assert fsdp.fsdp_state_dict_type == "SHARDED_STATE_DICT" and fsdp.fsdp_min_num_params == 10_000_000
    node = launch_args("multinode", "--machine_rank", "1", "--main_process_ip", "10.0.0.1")
    assert node.multi_gpu and (node.num_machines, node.num_processes, node.machine_rank) == (2, 16, 1)
    assert (node.main_process_ip, node.main_process_port) == ("10.0.0.1", 29500)


def test_fewsteps_mixed_precision_overrides_the_launchers() -> None:
    """The files leave precision to fewstep: an explicit `Accelerator(mixed_precision=...)` beats the launcher's env."""
    code = "from accelerate import Accelerator; print(Accelerator(cpu=True, mixed_precision='no').mixed_precision)"
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "no"


# -- (d) what accelerate refuses ---------------------------------------------------------------

def write_variant(tmp_path: Path, **changes) -> Path:
    """A copy of ddp.yaml with `changes` applied."""
    data = yaml.safe_load(config_path("ddp").read_text()) | changes
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_distributed_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MULTI_GPUS"):
        load_config_from_file(str(write_variant(tmp_path, distributed_type="MULTI_GPUS")))


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_gpus"):
        load_config_from_file(str(write_variant(tmp_path, num_gpus=8)))


# -- engines the loop refuses, before anything is written ---------------------------------------


def test_launch_engine_follows_accelerate_launchs_environment(monkeypatch) -> None:
    from fewstep.distill.processes import launch_engine

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert launch_engine() == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert launch_engine() == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "True")
    assert launch_engine() == "deepspeed"


def test_a_deepspeed_launch_without_deepspeed_is_refused_before_writing(tmp_path, monkeypatch) -> None:
    import importlib.util

    from distill_helpers import tiny_config

    from fewstep.distill.loop import Trainer

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here: the refusal is for machines without it")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="deepspeed package is not installed.*pip install deepspeed.*fsdp.yaml"):
        Trainer(tiny_config(run))
    assert not run.exists()


def test_deepspeed_is_refused_for_objectives_with_several_trained_networks() -> None:
    from fewstep.distill.processes import check_engine_serves

    with pytest.raises(ValueError, match="msd trains 2 networks \\(student_0, critic_0\\).*fsdp.yaml"):
        check_engine_serves("deepspeed", "msd", ["student_0", "critic_0"])
    check_engine_serves("deepspeed", "flow_matching", ["model"])  # one network: accelerate's DeepSpeed can take it
    check_engine_serves("fsdp", "msd", ["student_0", "critic_0"])
    check_engine_serves("ddp", "msd", ["student_0", "critic_0"])


def test_fsdp_without_a_gpu_is_refused_before_writing(tmp_path, monkeypatch) -> None:
    """accelerate's FSDP plugin stops at start-up without a GPU-class device; fewstep says so and names the CPU route."""
    from distill_helpers import tiny_config

    from fewstep.distill.loop import Trainer
    from fewstep.distill.processes import has_accelerator_device

    if has_accelerator_device():
        pytest.skip("this machine has a GPU: FSDP can run here")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="launched for FSDP.*GPUs.*ddp.yaml"):
        Trainer(tiny_config(run))
    assert not run.exists()


# -- batch split, DeepSpeed batch fields, checkpoints of other engines -------------------------


@pytest.mark.parametrize(("global_batch", "processes", "accumulation", "expected"), [(None, 8, 2, 64), (512, 8, 1, 64),
                                                                                      (512, 8, 2, 32), (6, 3, 2, 1)])
def test_per_process_batch(global_batch, processes, accumulation, expected) -> None:
    from fewstep.distill.processes import per_process_batch

    assert per_process_batch(64, global_batch, processes, accumulation) == expected


def test_an_impossible_batch_split_is_refused_naming_the_nearest_multiples() -> None:
    from fewstep.distill.processes import per_process_batch

    with pytest.raises(ValueError, match=r"global_batch_size=100 cannot be split over 3 process\(es\) x 2 .* 6 equal "
                                         r"micro-batches; use a multiple of 6 \(96 or 102\)"):
        per_process_batch(64, 100, 3, 2)
    with pytest.raises(ValueError, match=r"multiple of 8 \(8\)"):
        per_process_batch(64, 4, 8, 1)


def test_global_batch_size_sets_the_per_process_batch_of_a_run(tmp_path) -> None:
    from distill_helpers import tiny_config

    from fewstep.distill.loop import Trainer

    trainer = Trainer(tiny_config(tmp_path / "run", "data.global_batch_size=48", "optim.gradient_accumulation_steps=3"))
    assert trainer.config.data.batch_size == 16  # one process x 3 micro-batches of 16
    with pytest.raises(ValueError, match="global_batch_size=50 cannot be split"):
        Trainer(tiny_config(tmp_path / "bad", "data.global_batch_size=50", "optim.gradient_accumulation_steps=3"))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="data.global_batch_size must be > 0"):
        tiny_config(tmp_path / "zero", "data.global_batch_size=0")


def test_deepspeed_auto_batch_fields_are_filled_from_fewsteps_batch(monkeypatch) -> None:
    from fewstep.distill.processes import fill_deepspeed_batch

    monkeypatch.setenv("WORLD_SIZE", "8")
    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 2}}
    assert fill_deepspeed_batch(config, 16, 1) == {"train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 1,
                                                  "train_batch_size": 128, "zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2 is not supported under DeepSpeed.*fsdp.yaml"):
        fill_deepspeed_batch({}, 16, 2)
    assert fill_deepspeed_batch({"train_micro_batch_size_per_gpu": 16}, 16, 1)["train_micro_batch_size_per_gpu"] == 16
    with pytest.raises(ValueError, match="sets train_micro_batch_size_per_gpu=32 but this fewstep run uses 16.*auto"):
        fill_deepspeed_batch({"train_micro_batch_size_per_gpu": 32}, 16, 1)


def test_shipped_deepspeed_configs_leave_the_batch_to_fewstep() -> None:
    """Every batch field of the shipped DeepSpeed files is "auto" (or absent), so `fill_deepspeed_batch` sets it."""
    from fewstep.distill.processes import fill_deepspeed_batch

    for name in ("deepspeed_zero2.yaml", "deepspeed_zero3.yaml"):
        plugin = yaml.safe_load((ACCELERATE_CONFIGS / name).read_text())["deepspeed_config"]
        fields = {k: v for k, v in plugin.items() if "batch" in k or k == "gradient_accumulation_steps"}
        fill_deepspeed_batch(fields, 16, 1)  # raises on a fixed value that disagrees


def fake_sharded_checkpoint(folder: Path, engine: str, networks: int = 1, optimizers: int = 1) -> Path:
    """A checkpoint folder laid out as accelerate's `save_state` lays it out under `engine` (tiny placeholder shards)."""
    from fewstep.distill.processes import sharded_state_names

    folder.mkdir(parents=True)
    for name in sharded_state_names(engine, networks, optimizers):
        (folder / name).mkdir()
        (folder / name / "__0_0.distcp").write_bytes(b"shard")
    (folder / "trainer_state.json").write_text(json.dumps({"step": 2, "networks": {f"n{i}": {} for i in range(networks)},
                                                           "optimizers": optimizers, "ema": [], "engine": engine}))
    return folder


@pytest.mark.parametrize("engine", ["fsdp", "deepspeed"])
def test_sharded_checkpoints_pass_the_resume_check_when_complete(tmp_path, engine) -> None:
    from fewstep.distill.loop import DamagedCheckpointError, verify_checkpoint

    folder = fake_sharded_checkpoint(tmp_path / "step_000002", engine, networks=2, optimizers=2)
    verify_checkpoint(folder)  # no model.safetensors / optimizer.bin asked for
    shard = sorted(p for p in folder.iterdir() if p.is_dir())[-1]
    (shard / "__0_0.distcp").unlink()
    with pytest.raises(DamagedCheckpointError, match=f"{shard.name}/ \\({engine.upper()} shards\\) is missing or empty"):
        verify_checkpoint(folder)


def test_the_engine_of_a_checkpoint_is_read_from_its_state_or_its_files(tmp_path) -> None:
    from fewstep.distill.processes import checkpoint_engine

    assert checkpoint_engine(tmp_path, "fsdp") == "fsdp"
    assert checkpoint_engine(tmp_path, None) == "ddp"  # written before engines were recorded: plain files
    (tmp_path / "pytorch_model_fsdp_0").mkdir()
    assert checkpoint_engine(tmp_path, None) == "fsdp"


@pytest.mark.parametrize(("written", "running", "fix"), [("fsdp", "ddp", "fsdp.yaml"), ("ddp", "deepspeed", "ddp.yaml"),
                                                         ("deepspeed", "fsdp", "deepspeed_zero2.yaml")])
def test_a_checkpoint_of_another_engine_is_refused_naming_the_launch_that_resumes_it(tmp_path, written, running, fix) -> None:
    from fewstep.distill.processes import check_checkpoint_engine

    with pytest.raises(ValueError, match=f"written under {written.upper()}.*launched for {running.upper()}.*{fix}"):
        check_checkpoint_engine(tmp_path, written, running)
    check_checkpoint_engine(tmp_path, running, running)


def test_resuming_an_fsdp_checkpoint_in_a_ddp_run_is_refused_before_writing(tmp_path) -> None:
    from distill_helpers import tiny_config

    from fewstep.distill.loop import Trainer

    checkpoint = fake_sharded_checkpoint(tmp_path / "run" / "checkpoints" / "step_000002", "fsdp")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="written under FSDP.*assets/accelerate/fsdp.yaml"):
        Trainer(tiny_config(tmp_path / "run"), resume=str(checkpoint))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_checkpoints_record_their_engine_and_process_count(tmp_path) -> None:
    from distill_helpers import single_thread, tiny_config

    from fewstep.distill.loop import train

    with single_thread():
        result = train(tiny_config(tmp_path / "run", "max_steps=1"))
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert state["engine"] == "ddp" and state["processes"] == 1


@pytest.mark.parametrize("command", [
    ["fit-sampler", "--steps", "2", "--teacher-steps", "8", "--noises", "64", "--heldout", "16", "--iterations", "5",
     "--batch-size", "8"],
    ["boss", "schedule", "--steps", "3", "--fine-steps", "12", "--noises", "48", "--batch-size", "8"],
], ids=["fit-sampler", "boss-schedule"])
def test_sampler_fitting_under_two_processes_writes_the_one_process_spec(tmp_path, command) -> None:
    """`accelerate launch -m fewstep fit-sampler | boss schedule`: the teacher's work is split, the spec is the same."""
    from distill_helpers import launch_fewstep
    from safetensors.torch import load_file

    from fewstep.cli import main

    teacher = str(ROOT / "assets" / "teachers" / "mixture_flow")
    split = 2 if command[0] == "boss" else 1
    args = [*command[:split], teacher, *command[split:]]
    assert main([*args, "--out", str(tmp_path / "one.safetensors")]) == 0
    done = launch_fewstep([*args, "--out", str(tmp_path / "two.safetensors")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # the main process fits and writes
    one, two = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-6, atol=1e-9)

@pytest.mark.parametrize(("engine", "stage", "refused"), [("fsdp", None, True), ("deepspeed", "3", True),
                                                          ("deepspeed", "2", False), ("ddp", None, False)])
def test_an_ema_of_sharded_parameters_is_refused_naming_the_alternatives(monkeypatch, engine, stage, refused) -> None:
    from fewstep.distill.processes import check_engine_ema, shards_parameters

    if stage is not None:
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", stage)
    assert shards_parameters(engine) == refused
    check_engine_ema(engine, 0.0)  # no EMA: every engine
    if refused:
        with pytest.raises(ValueError, match="optim.ema_decay=0.999.*shard.*optim.ema_decay=0.*ddp.yaml or deepspeed_zero2"):
            check_engine_ema(engine, 0.999)
    else:
        check_engine_ema(engine, 0.999)



def test_the_fp32_accounting_equals_a_live_msd_trainers_tensors(tmp_path) -> None:
    """DDP accounting (fp32 Adam, EMA, frozen teacher) against the bytes a real trainer holds after one step."""
    from distill_helpers import single_thread, tiny_config

    from fewstep.distill.loop import Trainer
    from fewstep.distill.scaling import measured_state_bytes, trainer_specs

    teacher = ROOT / "assets" / "teachers" / "mixture_flow"
    config = tiny_config(tmp_path / "run", "model.type=pretrained", f"model.pretrained={teacher}",
                         "objective={name: msd, num_students: 2, batch_per_student: 8, critic_steps: 1}", "data.batch_size=32")
    with single_thread():
        trainer = Trainer(config)
        trainer.train_step(0, trainer._batches())
    specs = trainer_specs(trainer)
    assert sorted(specs) == ["critic_0", "critic_1", "student_0", "student_1", "teacher"]
    assert specs["student_0"].ema and not specs["critic_0"].ema and not specs["teacher"].trainable
    accounted = trainer_memory(specs, stage=0, num_processes=1, mixed_precision=False)
    measured = measured_state_bytes(trainer)
    for name in accounted:  # Adam's step counters (4 bytes per parameter tensor) are the only extra
        assert measured[name] == pytest.approx(accounted[name], rel=1e-3), name
