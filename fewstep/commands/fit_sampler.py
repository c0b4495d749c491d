"""`fewstep fit-sampler`: learn a few-step solver's grid / weights for a saved pipeline (LD3 / S4S / LSD+ style)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    from fewstep.samplers.learned import fittable_solvers

    parser = subparsers.add_parser(
        "fit-sampler",
        help="fit an M-step solver's time grid and/or weights to the pipeline's many-step output",
        description="Fit the time grid (LD3-like), the per-step solver weights (S4S-like) or both (LSD+-like) "
        "of an M-step DPM-Solver++ sampler so that it reproduces the teacher's many-step samples from the "
        "same noise; write a sampler spec for FewStepScheduler(spec=...) and sample().",
    )
    parser.add_argument("pipeline", type=Path, help="a saved pipeline folder (model_index.json)")
    parser.add_argument("--steps", type=int, required=True, help="student steps M (= NFE)")
    parser.add_argument("--out", type=Path, required=True, help="output sampler spec (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--solver", default="dpmpp_2m", choices=fittable_solvers(),
                        help="the deterministic multistep solver to fit (default dpmpp_2m)")
    parser.add_argument("--learn", default="both", choices=["grid", "weights", "both"])
    parser.add_argument("--eval-times", action="store_true",
                        help="also learn each step's model evaluation time, decoupled from the grid (LD3-style)")
    parser.add_argument("--init-schedule", default="uniform", help="starting grid (default uniform)")
    parser.add_argument("--teacher-steps", type=int, default=100, help="teacher DPM-Solver++(3M) steps (default 100)")
    parser.add_argument("--noises", type=int, default=256, help="training noises (default 256)")
    parser.add_argument("--heldout", type=int, default=64, help="held-out noises for the reported error (default 64)")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ball-radius", type=float, default=0.0, help="LD3 relaxation: noise perturbation scale")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance of the teacher the sampler is fitted to (default 1: none); "
                        "sample with the same scale")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args) -> int:
    import torch

    from fewstep.distill.processes import process_state, shard_map
    from fewstep.io import check_spec_output
    from fewstep.pipelines.loading import load_teacher
    from fewstep.samplers.learned import fit_sampler, teacher_outputs

    if args.steps < 1 or args.teacher_steps <= args.steps:
        raise ValueError(f"need 1 <= --steps < --teacher-steps (got {args.steps} and {args.teacher_steps})")
    check_spec_output(args.out, args.overwrite)
    state = process_state()
    device = state.device if state.num_processes > 1 else torch.device(args.device)  # under a launch: this process's
    teacher = load_teacher(args.pipeline, device)
    g = torch.Generator().manual_seed(args.seed)
    total = args.noises + args.heldout
    noise = torch.randn((total, *teacher.sample_shape), generator=g).to(device)
    cond = teacher.class_labels(total, device)
    denoiser = teacher.guided(args.guidance_scale)
    chunk = args.batch_size * 4

    def targets_of(i: int) -> torch.Tensor:
        rows = slice(i * chunk, (i + 1) * chunk)
        return teacher_outputs(denoiser, noise[rows], args.teacher_steps, batch_size=chunk,
                               **{k: v[rows] for k, v in cond.items()}).cpu()

    # the teacher's many-step samples, chunks split over the processes of `accelerate launch`; the fit runs on the main one
    targets = torch.cat(shard_map(targets_of, -(-total // chunk), desc="teacher samples")).to(device)
    if not state.is_main_process:
        return 0
    train, held = slice(0, args.noises), slice(args.noises, total)
    spec, history = fit_sampler(
        denoiser, args.steps, noise[train], targets[train], solver=args.solver, learn=args.learn,
        init_schedule=args.init_schedule, iterations=args.iterations, batch_size=args.batch_size,
        ball_radius=args.ball_radius, heldout=(noise[held], targets[held], {k: v[held] for k, v in cond.items()}) if args.heldout else None,
        seed=args.seed, cond={k: v[train] for k, v in cond.items()}, progress=True, learn_eval_times=args.eval_times,
    )
    spec.provenance.update(**teacher.provenance(args.pipeline), teacher_steps=args.teacher_steps,
                           guidance_scale=args.guidance_scale)
    spec.save(args.out)
    grid = ", ".join(f"{float(t):.3f}" for t in spec.ts)
    if spec.eval_ts is not None:
        grid += "\n  model evaluated at t: " + ", ".join(f"{float(t):.3f}" for t in spec.eval_ts)
    learned = args.learn + (" + evaluation times" if args.eval_times else "")
    print(f"{args.solver}, M={args.steps}, learned {learned} in {history.seconds:.1f} s\n  t: {grid}\n"
          f"  held-out RMS error vs the {args.teacher_steps}-step teacher: {history.heldout_before:.4g} -> "
          f"{history.heldout_after:.4g}\n  validation loss (selects the kept sampler): {history.validation_before:.4g} -> "
          f"{history.validation_error:.4g}" + ("" if history.improved else " (not improved: the spec is the starting point)")
          + (f"\n  {history.stopped_early}" if history.stopped_early else "") + f"\nwrote {args.out}")
    return 0
