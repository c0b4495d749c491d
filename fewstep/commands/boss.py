"""`fewstep boss`: Bellman-optimal step schedules (and straightening) for a saved pipeline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    from fewstep.samplers.boss import STEP_RULES

    parser = subparsers.add_parser(
        "boss",
        help="BOSS: Bellman-optimal step schedules for a step budget K (Nguyen et al. 2024)",
        description="BOSS step schedules. `fewstep boss schedule PIPELINE --steps K --out spec.safetensors` "
        "integrates the teacher on a fine grid, finds the K-step grid of least local error by dynamic "
        "programming, and writes a sampler spec that FewStepScheduler(spec=...) and sample() load.",
    )
    sub = parser.add_subparsers(dest="boss_command", metavar="SUBCOMMAND")
    schedule = sub.add_parser("schedule", help="search the K-step schedule of a saved pipeline",
                              description="Search the Bellman-optimal K-step schedule of a saved pipeline.")
    schedule.add_argument("pipeline", type=Path, help="a saved pipeline folder (model_index.json)")
    schedule.add_argument("--steps", type=int, required=True, help="step budget K")
    schedule.add_argument("--out", type=Path, required=True, help="output sampler spec (.safetensors)")
    schedule.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    schedule.add_argument("--fine-steps", type=int, default=100, help="intervals of the teacher's fine grid (default 100)")
    schedule.add_argument("--noises", type=int, default=100, help="teacher trajectories (default 100)")
    schedule.add_argument("--batch-size", type=int, default=50)
    schedule.add_argument("--step-rule", choices=list(STEP_RULES), default="euler",
                          help="the solver the schedule is optimised for (default euler, as in the paper)")
    schedule.add_argument("--device", default="cpu")
    schedule.add_argument("--seed", type=int, default=0)
    straighten = sub.add_parser(
        "straighten", help="fine-tune a flow teacher for its BOSS grid (accelerate launch -m fewstep boss straighten ...)",
        description="Straightening = `fewstep train CONFIG` with objective.name=boss_straighten, "
        "model.type=pretrained, model.pretrained=PIPELINE and objective.spec=SPEC (see "
        "assets/configs/mnist_flow_boss_straighten.yaml).",
    )
    straighten.add_argument("config", help="a .yaml / .json config file")
    straighten.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    straighten.add_argument("--resume", default=None, metavar="latest|PATH")
    straighten.add_argument("--run-dir", default=None)
    straighten.add_argument("--export-only", action="store_true", help="export the checkpoint given by --resume")
    parser.set_defaults(_parser=parser)
    return parser


def run(args) -> int:
    if getattr(args, "boss_command", None) is None:
        args._parser.print_help()
        return 2
    if args.boss_command == "straighten":
        from fewstep.commands import train

        args.overrides = ["objective.name=boss_straighten", *args.overrides]
        return train.run(args)
    return schedule_command(args)


def _noise_batches(teacher, total: int, batch_size: int, seed: int, device: str):
    """Seeded (noise [B, ...], {"class_labels": [B]}) batches; labels cycle over the classes."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for start in range(0, total, batch_size):
        count = min(batch_size, total - start)
        noise = torch.randn((count, *teacher.sample_shape), generator=generator).to(device)
        labels = teacher.class_labels(start + count, device)
        cond = {k: v[start:] for k, v in labels.items()}
        yield noise, cond


def schedule_command(args) -> int:
    import torch

    from fewstep.distill.processes import process_state, shard_map
    from fewstep.io import check_spec_output
    from fewstep.pipelines.loading import load_teacher
    from fewstep.samplers import get_schedule
    from fewstep.samplers.boss import STEP_RULES, TrajectoryGrams, batch_grams, search_schedule
    from fewstep.samplers.spec import SamplerSpec

    if args.steps < 1:
        raise ValueError("--steps must be >= 1")
    if args.steps > args.fine_steps:
        raise ValueError(f"--steps {args.steps} is larger than the fine grid (--fine-steps {args.fine_steps}); "
                         "use a finer grid or fewer steps")
    if args.noises < 1 or args.batch_size < 1:
        raise ValueError("--noises and --batch-size must be >= 1")
    check_spec_output(args.out, args.overwrite)
    state = process_state()
    device = state.device if state.num_processes > 1 else torch.device(args.device)  # under a launch: this process's
    teacher = load_teacher(args.pipeline, device)
    fine_ts = get_schedule("uniform", teacher.path, args.fine_steps, final="zero")
    start = time.perf_counter()
    batches = list(_noise_batches(teacher, args.noises, args.batch_size, args.seed, device))

    def grams_of(i: int) -> TrajectoryGrams:
        noise, cond = batches[i]
        return batch_grams(teacher.denoiser, noise, fine_ts, **cond)

    # the teacher's trajectories, batches split over the processes of `accelerate launch`; the search runs on the main one
    grams = TrajectoryGrams.merge(shard_map(grams_of, len(batches), desc="teacher trajectories"))
    if not state.is_main_process:
        return 0
    result = search_schedule(grams, teacher.path, args.steps, args.step_rule)
    seconds = time.perf_counter() - start
    solver = STEP_RULES[args.step_rule]
    spec = SamplerSpec.from_grid(solver, result.ts, teacher.path, provenance={
        "method": "boss", "step_rule": args.step_rule, **teacher.provenance(args.pipeline), "fine_steps": args.fine_steps,
        "noises": args.noises, "seed": args.seed, "dp_objective": result.objective,
        "uniform_objective": result.uniform_objective, "search_seconds": round(seconds, 2),
    })
    spec.save(args.out)
    grid = ", ".join(f"{float(t):.3f}" for t in result.ts)
    print(f"BOSS {args.step_rule} schedule, K={args.steps} on {args.fine_steps} fine steps, {args.noises} noises "
          f"({seconds:.1f} s)\n  t: {grid}\n  fine-grid indices: {result.indices}\n"
          f"  DP objective {result.objective:.4g} (uniform grid: {result.uniform_objective:.4g})\n"
          f"wrote {args.out}  (FewStepScheduler.from_config(pipe.scheduler.config, spec='{args.out}'))")
    return 0
