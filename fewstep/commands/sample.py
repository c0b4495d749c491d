"""`fewstep sample`: write PNG samples of a saved pipeline with any fewstep solver, ready for `fewstep fid`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    from fewstep.samplers import available_schedules, available_solvers

    parser = subparsers.add_parser(
        "sample",
        help="sample a saved pipeline with a fewstep solver and write PNGs (for fewstep fid)",
        description="Sample a saved class-conditional or unconditional pipeline with any fewstep solver and "
        "grid (or a sampler spec from `fewstep boss schedule` / `fewstep fit-sampler`) and write one PNG per "
        "image into OUT (class-conditional: labels cycle over the classes; the label is in the file name).",
    )
    parser.add_argument("pipeline", type=Path, help="a saved pipeline folder (model_index.json)")
    parser.add_argument("--solver", default=None, help=f"one of {', '.join(available_solvers())} (default dpmpp_2m)")
    parser.add_argument("--schedule", default=None,
                        help=f"one of {', '.join(available_schedules()[:-1])} (default uniform)")
    parser.add_argument("--steps", type=int, default=None,
                        help="number of steps (default: the pipeline's own, 1 for one-step students; else 10)")
    parser.add_argument("--spec", type=Path, default=None,
                        help="a sampler spec: fixes the solver, grid and step count (a different --steps or "
                        "--solver is refused, as FewStepScheduler refuses it)")
    parser.add_argument("--n", type=int, default=100, help="number of images")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty or absent)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args) -> int:
    import numpy as np
    from PIL import Image

    from fewstep.io import check_writable_target, write_atomic
    from fewstep.pipelines.loading import load_teacher
    from fewstep.pipelines.scoring import generate_images
    from fewstep.samplers import get_schedule, get_solver
    from fewstep.samplers.spec import SamplerSpec

    if args.n < 1 or (args.steps is not None and args.steps < 1):
        raise ValueError("--n and --steps must be >= 1")
    check_writable_target(args.out, "--out", folder=True)
    if args.out.exists() and any(args.out.iterdir()):
        raise ValueError(f"{args.out} is not empty; choose a new folder so samples from different runs don't mix")
    spec = None if args.spec is None else SamplerSpec.load(args.spec)
    if spec is not None:
        check_spec_arguments(spec, args)
    teacher = load_teacher(args.pipeline, args.device)
    if len(teacher.sample_shape) != 3:
        raise ValueError(f"{args.pipeline} generates tensors of shape {teacher.sample_shape}, not images")
    if spec is not None:
        spec.check_compatible(teacher.path)
        mismatch = teacher.spec_mismatch(spec.provenance)
        if mismatch:
            print(f"warning: {args.spec} may not suit {args.pipeline}: {mismatch}", file=sys.stderr)
        fitted_scale = spec.provenance.get("guidance_scale")
        if fitted_scale is not None and float(fitted_scale) != args.guidance_scale:
            print(f"warning: {args.spec} was fitted with --guidance-scale {fitted_scale}; sampling with "
                  f"{args.guidance_scale}", file=sys.stderr)
        sampler = spec.sample_args()
    else:
        solver = args.solver or "dpmpp_2m"
        get_solver(solver)  # clear error for unknown names
        steps = args.steps or teacher.default_steps or 10
        sampler = {"ts": get_schedule(args.schedule or "uniform", teacher.path, steps), "solver": solver}
    images, labels, nfe = generate_images(teacher, num_images=args.n, seed=args.seed, batch_size=args.batch_size,
                                          guidance_scale=args.guidance_scale, device=args.device, **sampler)
    solver, ts = sampler["solver"], sampler["ts"]
    args.out.mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        array = image.permute(1, 2, 0).numpy()
        array = array[..., 0] if array.shape[-1] == 1 else array
        name = f"{index:06d}_class{int(label)}.png" if teacher.num_classes else f"{index:06d}.png"
        write_atomic(args.out / name, lambda tmp, a=array: Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG"))
    info = {"pipeline": str(args.pipeline), "solver": solver, "ts": [float(t) for t in ts], "nfe": nfe, "n": args.n,
            "guidance_scale": args.guidance_scale, "seed": args.seed, "spec": None if args.spec is None else str(args.spec)}
    write_atomic(args.out / "sampling.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
    print(f"wrote {args.n} images to {args.out} ({solver}, NFE {nfe}); settings in {args.out / 'sampling.json'}\n"
          f"score them with: fewstep fid {args.out} assets/mnist_stats/mnist_all.npz --features mnist")
    return 0


def check_spec_arguments(spec, args) -> None:
    """A spec fixes solver, grid and step count: refuse a --steps / --solver / --schedule that contradicts it."""
    if args.steps is not None and args.steps != spec.num_steps:
        raise ValueError(f"{args.spec} is a {spec.num_steps}-step sampler spec; drop --steps {args.steps} "
                         f"(or pass --steps {spec.num_steps}), or sample without --spec")
    if args.solver is not None and args.solver != spec.solver:
        raise ValueError(f"{args.spec} uses solver {spec.solver!r}; drop --solver {args.solver} or sample without --spec")
    if args.schedule is not None:
        raise ValueError(f"{args.spec} carries its own grid; drop --schedule {args.schedule} or sample without --spec")
