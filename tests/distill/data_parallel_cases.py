"""One tiny run per training objective, for checking 2-process data parallelism against one process.

Shared by tests/distill/test_data_parallel.py (the one-process references, in the test process)
and tests/distill/run_data_parallel.py (the same cases under `accelerate launch`, 2 processes).
A case's overrides give the *per-process* sizes of the 2-process run; `case_config(name, run_dir,
processes=1)` doubles them, so both runs train on the same global batch.
"""

from __future__ import annotations

from pathlib import Path

from fewstep.distill.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]
MIXTURE = REPO / "assets" / "teachers" / "mixture_flow"
MIXTURE_VP = REPO / "assets" / "teachers" / "mixture_vp"
MUSIC = REPO / "assets" / "music"

#: keys that are per-process sample counts (scaled with the number of processes).
PER_PROCESS = ("data.batch_size", "objective.batch_per_student")
#: steps, and the checkpoint that resume tests start from.
MAX_STEPS, CHECKPOINT_STEP = 4, 2

COMMON = ["log_with=none", "log_every=1", f"max_steps={MAX_STEPS}", f"checkpoint_every={CHECKPOINT_STEP}",
          "checkpoints_total_limit=null", "sample_every=0", "sample_steps=2", "samples_per_class=1", "optim.ema_decay=0.9",
          "optim.lr=1e-3", "optim.max_grad_norm=1.0",
          # Adam divides by sqrt(v) + eps: with the default 1e-8 a parameter whose gradient is round-off (an attention
          # key bias) moves by +-lr either way; a larger eps keeps the updates proportional to the gradients compared
          "optim.adam_eps=1e-4"]
MIXTURE_MLP = ["model.type=mlp", "model.num_classes=8", "model.width=32", "model.num_blocks=1",
               "data.name=8gaussians", "data.options={n: 256}"]
PAIRS = ["objective.num_noises=64", "objective.fine_steps=6", "objective.shard_size=16"]
MUSIC_DATA = ["data.name=music", "data.options={n_train: 8, n_test: 4, seconds: 1.536}"]

CASES: dict[str, list[str]] = {
    "flow_matching": [*MIXTURE_MLP, "data.batch_size=16"],
    "flow_matching_accumulate": [*MIXTURE_MLP, "data.batch_size=8", "optim.gradient_accumulation_steps=2"],
    "vp_diffusion": [*MIXTURE_MLP, "objective.name=vp_diffusion", "data.batch_size=16"],
    "tsm": [*MIXTURE_MLP, f"model.teacher={MIXTURE}", "objective.name=tsm", "data.batch_size=16"],
    "reflow": [*MIXTURE_MLP, "model.type=pretrained", f"model.pretrained={MIXTURE}", "objective.name=reflow", *PAIRS,
               "data.batch_size=8"],
    "boss_straighten": [*MIXTURE_MLP, "model.type=pretrained", f"model.pretrained={MIXTURE}",
                        "objective.name=boss_straighten", *PAIRS, "data.batch_size=8"],
    "slimflow_reflow": [*MIXTURE_MLP, f"model.teacher={MIXTURE}", "objective.name=slimflow_reflow", *PAIRS,
                        "objective.anneal_steps=2", "data.batch_size=8"],
    "slimflow_distill": [*MIXTURE_MLP, "model.type=pretrained", f"model.pretrained={MIXTURE}",
                         "objective.name=slimflow_distill", f"objective.pairs_teacher={MIXTURE}", *PAIRS, "data.batch_size=8"],
    "msd": [*MIXTURE_MLP, "model.type=pretrained", f"model.pretrained={MIXTURE}",
            "objective={name: msd, num_students: 2, batch_per_student: 4, critic_steps: 2, guidance_scale: 2.0, gan_weight: 0.1}",
            "data.batch_size=8"],
    "dmd": [*MIXTURE_MLP, "model.type=pretrained", f"model.pretrained={MIXTURE_VP}",
            "objective={name: dmd, batch_per_student: 4, regression_weight: 0.5, regression_pairs: 16}", "data.batch_size=8"],
    "masked_diffusion": ["model.type=masked_transformer", "model.vocab_size=59", "model.seq_len=16", "model.width=16",
                         "model.num_layers=1", "model.num_heads=2", "objective.name=masked_diffusion", "data.name=text",
                         "data.options={seq_len: 16}", "data.batch_size=8"],
    "music_autoencoder": ["model.type=oobleck", "model.latent_channels=4", "model.width=8", "model.downsampling_ratios=[4,4,16]",
                          "objective.name=music_autoencoder", "objective.crop_samples=2048", "objective.eval_clips=4",
                          *MUSIC_DATA, "data.batch_size=2"],
    "acestep": ["model.type=acestep", "model.latent_channels=8", "model.width=32", "model.num_layers=2", "model.num_heads=2",
                "objective.name=acestep", "objective.text_dim=16", f"objective.autoencoder={MUSIC / 'autoencoder'}",
                *MUSIC_DATA, "data.batch_size=2"],
    "acestep_turbo": ["model.type=pretrained", f"model.pretrained={MUSIC / 'generator'}", "objective.name=acestep_turbo",
                      "objective.steps=[2, 1]", "data.name=music", "data.options={n_train: 8, n_test: 4}", "data.batch_size=2"],
    # the teacher's regression pairs are made in chunks of pair_batch_size, split over the processes (shard_map)
    "acestep_turbo_regression": ["model.type=pretrained", f"model.pretrained={MUSIC / 'generator'}",
                                 "objective={name: acestep_turbo, method: regression, steps: [2], regression_pairs: 4, "
                                 "regression_steps: 4, pair_batch_size: 2}",
                                 "data.name=music", "data.options={n_train: 8, n_test: 4}", "data.batch_size=2"],
}


def scaled(override: str, factor: int) -> str:
    """`key=value` with a per-process count multiplied by `factor` (inline `{...}` objective maps too)."""
    key, _, value = override.partition("=")
    if key in PER_PROCESS:
        return f"{key}={int(value) * factor}"
    if key == "objective" and "batch_per_student:" in value:
        head, _, tail = value.partition("batch_per_student:")
        number, sep, rest = tail.strip().partition(",")
        return f"{key}={head}batch_per_student: {int(number.rstrip('}')) * factor}{sep}{rest}" + ("}" if not sep else "")
    return override


def boss_spec(run_dir: Path) -> Path:
    """The BOSS schedule of the boss_straighten case: ROOT/boss.safetensors for run folders ROOT/<group>/<case>."""
    return run_dir.parents[1] / "boss.safetensors"


def make_boss_spec(root: Path) -> Path:
    """`fewstep boss schedule` of the mixture teacher on the cases' 6-step fine grid, in ROOT/boss.safetensors."""
    from fewstep.cli import main

    out = root / "boss.safetensors"
    assert main(["boss", "schedule", str(MIXTURE), "--steps", "3", "--fine-steps", "6", "--noises", "64", "--out", str(out)]) == 0
    return out


def case_config(name: str, run_dir: Path, processes: int = 2) -> TrainConfig:
    """Case `name` for `processes` processes (1 or 2) with the same global batch."""
    factor = 2 // processes
    extra = [f"objective.spec={boss_spec(run_dir)}"] if name == "boss_straighten" else []
    return load_config(None, [*COMMON, *(scaled(o, factor) for o in CASES[name]), f"run_dir={run_dir}", *extra])
