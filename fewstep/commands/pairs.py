"""`fewstep pairs`: store a teacher's (noise, ODE sample) pairs as resumable safetensors shards with provenance."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    from fewstep.samplers import available_schedules, available_solvers

    parser = subparsers.add_parser(
        "pairs",
        help="make a teacher's (noise, ODE sample) pairs for reflow / SlimFlow / straightening as safetensors shards",
        description="Integrate seeded noise with a saved pipeline's ODE (any fewstep solver, or a sampler spec) and "
        "store (noise, sample, label) as safetensors shards with a pairs.json manifest (teacher fingerprint, solver, "
        "grid, guidance, seed). Run it again to resume or to add pairs; under `accelerate launch` each process makes "
        "its share of the shards. Training objectives read the folder through objective.pairs_dir.",
    )
    parser.add_argument("pipeline", type=Path, help="the teacher: a saved pipeline folder (model_index.json)")
    parser.add_argument("--out", type=Path, required=True, help="the pairs folder (created, or resumed if it holds these pairs)")
    parser.add_argument("--n", type=int, default=4096, help="number of pairs (default 4096)")
    parser.add_argument("--solver", default="dpmpp_2m", help=f"one of {', '.join(available_solvers())} (default dpmpp_2m)")
    parser.add_argument("--steps", type=int, default=16, help="teacher steps (default 16)")
    parser.add_argument("--schedule", default="uniform", help=f"one of {', '.join(available_schedules()[:-1])} (default uniform)")
    parser.add_argument("--spec", type=Path, default=None, help="a sampler spec fixing solver, grid and steps instead")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="the teacher's classifier-free guidance")
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: accelerate's device for this process")
    return parser


def run(args) -> int:
    from fewstep.distill.processes import process_state
    from fewstep.distill.teacher_pairs import PairRecipe, TeacherPairDataset, write_pairs
    from fewstep.pipelines.loading import load_teacher

    state = process_state()
    teacher = load_teacher(args.pipeline, args.device or state.device)
    options = {"guidance_scale": args.guidance_scale, "seed": args.seed, "shard_size": args.shard_size}
    if args.spec is not None:
        recipe = PairRecipe.from_spec(args.spec, teacher.path, **options)
    else:
        recipe = PairRecipe.from_solver(args.solver, teacher.path, args.steps, args.schedule, **options)
    write_pairs(teacher, recipe, args.n, args.out)
    if state.is_main_process:
        dataset = TeacherPairDataset.load(args.out)
        print(f"{args.out}: {len(dataset)} pairs of shape {tuple(dataset.tensors[0].shape[1:])} from {args.pipeline} "
              f"({recipe.solver}, {recipe.ts.numel() - 1} steps, guidance {args.guidance_scale}); train on them with "
              f"objective.pairs_dir={args.out}")
    return 0
