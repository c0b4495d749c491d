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
    parser.add_argument("--n", type=int, default=None, help="number of images (default 100); music: clips per prompt (default 4)")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty or absent)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    music = parser.add_argument_group("music (AceStepPipeline folders): WAV files + a spectrogram PNG")
    music.add_argument("--prompt", action="append", default=None,
                       help="caption, e.g. 'piano, 120 bpm, C major' (repeat for several)")
    music.add_argument("--lyrics", action="append", default=None, help="lyrics (one, or one per --prompt)")
    music.add_argument("--duration", type=float, default=None, help="seconds per clip (default: the training clip length)")
    music.add_argument("--shift", type=float, default=None,
                       help="time shift of the pipeline's grid (default: ACE-Step's 3; a turbo student's default grid)")
    music.add_argument("--guidance", choices=("apg", "cfg"), default="apg",
                       help="guidance when --guidance-scale > 1: APG (the pipeline's) or plain CFG")
    return parser


def run(args) -> int:
    import numpy as np
    from PIL import Image

    from fewstep.io import check_writable_target, write_atomic
    from fewstep.pipelines.loading import load_teacher
    from fewstep.pipelines.scoring import generate_images
    from fewstep.samplers import get_schedule, get_solver
    from fewstep.samplers.spec import SamplerSpec

    from fewstep.pipelines.music import is_music_pipeline

    if is_music_pipeline(args.pipeline):
        return run_music(args)
    if args.prompt or args.lyrics or args.duration is not None:
        raise ValueError(f"--prompt / --lyrics / --duration are for music pipelines (AceStepPipeline); {args.pipeline} is not one")
    args.n = 100 if args.n is None else args.n
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


def run_music(args) -> int:
    """WAV clips of an AceStepPipeline for each --prompt, a spectrogram grid and sampling.json."""
    from fewstep.audio import save_spectrogram_grid, write_audio
    from fewstep.io import check_writable_target, write_atomic
    from fewstep.pipelines.music import check_prompts, generate_music, load_music_pipeline, music_info

    clips = 4 if args.n is None else args.n
    if clips < 1 or (args.steps is not None and args.steps < 1):
        raise ValueError("--n and --steps must be >= 1")
    if not args.prompt:
        raise ValueError("a music pipeline needs --prompt (e.g. --prompt 'piano, 120 bpm, C major')")
    if args.schedule is not None:
        raise ValueError("AceStepPipeline makes its own grid (t shifted by --shift); drop --schedule, or pass --spec "
                         "for a BOSS / learned grid")
    check_writable_target(args.out, "--out", folder=True)
    if args.out.exists() and any(args.out.iterdir()):
        raise ValueError(f"{args.out} is not empty; choose a new folder so samples from different runs don't mix")
    pipe = load_music_pipeline(args.pipeline, solver=args.solver, spec=args.spec, device=args.device)
    info = music_info(args.pipeline)
    check_prompts(pipe, args.prompt, info)
    spec_steps = getattr(getattr(pipe.scheduler, "sampler_spec", None), "num_steps", None)
    if spec_steps is not None and args.steps is not None and args.steps != spec_steps:
        raise ValueError(f"{args.spec} is a {spec_steps}-step sampler spec; drop --steps {args.steps} or sample without --spec")
    steps = spec_steps or args.steps or getattr(pipe, "default_inference_steps", None) or 8
    shift = args.shift if args.shift is not None or hasattr(pipe, "student_grids") else 3.0
    if hasattr(pipe, "student_grids"):  # a turbo student: only its trained grids, no guidance
        if args.guidance_scale > 1:
            raise ValueError(f"{args.pipeline} is a turbo student with the teacher's guidance distilled into it; "
                             "drop --guidance-scale (it samples without guidance, one network call per step)")
        pipe.student_times(steps, shift)  # refuses an untrained step count or shift, naming the trained ones
    samples = generate_music(pipe, args.prompt, args.lyrics or [""], num_clips=clips, num_steps=steps,
                             guidance_scale=args.guidance_scale, shift=shift,
                             duration=args.duration if args.duration is not None else info.get("clip_seconds"),
                             seed=args.seed, batch_size=args.batch_size, guidance=args.guidance)
    args.out.mkdir(parents=True, exist_ok=True)
    for index, clip in enumerate(samples.audio):
        write_audio(args.out / f"{index:06d}.wav", clip, samples.sample_rate)
    grid = save_spectrogram_grid(samples.audio[:16, 0], samples.sample_rate, args.out / "spectrograms.png",
                                 titles=samples.prompts[:16])
    record = {"pipeline": str(args.pipeline), "scheduler": dict(pipe.scheduler.config), "steps": steps, "nfe": samples.nfe,
              "guidance_scale": args.guidance_scale, "guidance": args.guidance, "shift": shift, "seed": args.seed,
              "clips": [{"file": f"{i:06d}.wav", "prompt": p, "lyrics": l}
                        for i, (p, l) in enumerate(zip(samples.prompts, samples.lyrics))]}
    write_atomic(args.out / "sampling.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1, default=str)))
    print(f"wrote {len(samples.audio)} clips to {args.out} (NFE {samples.nfe} each), spectrograms in {grid}\n"
          f"score them with: fewstep fid {args.out} music:test --features music")
    return 0
