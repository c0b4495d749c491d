"""Benchmark SlimFlow students (issue 12; docs/BENCHMARKS.md).

    python scripts/bench_slimflow.py exact --seeds 4                     # annealing vs plain reflow vs flow matching
    python scripts/bench_slimflow.py mixture --out runs/bench_slimflow   # the shipped 2-D teacher, both stages
    python scripts/bench_slimflow.py mnist --students q=runs/q_distill/pipeline ...

exact: the unconditional 8-Gaussian mixture's exact flow as teacher (no teacher error); a 64-wide
MLP trained 400 steps on 2,048 of its DPM-Solver++(2M) pairs with annealing reflow (beta 1 -> 0
over 200 steps), plain reflow (beta = 0) and fresh-noise flow matching (beta = 1); one-step RMS
error to the exact ODE's sample from held-out noise, and straightness; mean and spread over seeds.

mixture: the shipped class-conditional 8-Gaussians flow teacher (MLP width 128) distilled into an
MLP of width 32 through both stages with every ablation (beta = 0, beta = 1; no guidance term,
pseudo-Huber); energy distance to the exact mixture at 1 / 2 / 4 Euler steps, one-step RMS to the
teacher's samples, straightness, next to the teacher and the shipped MSD students.

mnist: FID on the `mnist` features (N images, 95 % bootstrap interval) and label accuracy at
1 / 2 / 4 Euler steps of every flow student given, the teacher (w = 2, DPM-Solver++(2M)) at
1 / 2 / 4 / 32 steps, straightness of every flow (32 Euler steps, 256 noises), parameters, and
time per image as a ratio to the teacher's 32-step run in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import mnist_score_cells, parameter_count  # noqa: E402
from fewstep.io import describe_machine  # noqa: E402

STUDENT_STEPS = (1, 2, 4)
TEACHER_STEPS = (1, 2, 4, 32)
MIXTURE_STUDENT = ["model.type=mlp", "model.width=32", "model.num_blocks=2"]



# -- exact mixture ---------------------------------------------------------------------------


def exact_part(seeds: int, steps: int) -> str:
    sys.path.insert(0, str(REPO / "tests" / "distill"))
    from test_slimflow import exact_teacher, one_step_error, train_small_student  # the test's oracle and trainer

    from fewstep.distill.evaluate import straightness
    from fewstep.distill.teacher_pairs import PairRecipe, teacher_pair_dataset
    from fewstep.samplers import Denoiser, RectifiedFlowPath

    teacher = exact_teacher()
    held = teacher_pair_dataset(teacher, PairRecipe.from_solver("dpmpp_2m", teacher.path, 16, seed=99, shard_size=512),
                                512, progress=False).tensors
    variants = {"annealing reflow (beta 1 -> 0 over the first half)": {"anneal_steps": steps // 2},
                "plain reflow (beta = 0)": {"beta_start": 0.0},
                "flow matching on the teacher's samples (beta = 1)": {"beta_end": 1.0}}
    lines = [f"\nExact unconditional 8-Gaussians flow as teacher; 64-wide MLP ({steps} steps, batch 256, Adam 3e-3) on "
             f"2,048 pairs; 512 held-out noises; mean ± sd over {seeds} seeds\n",
             "| student objective | one-step RMS to the exact ODE sample | straightness (32 Euler steps) |", "|---|---|---|"]
    for name, options in variants.items():
        errors, straight = [], []
        for seed in range(seeds):
            model = train_small_student(teacher, seed, steps, **options)
            errors.append(one_step_error(model, held))
            denoiser = Denoiser(model, RectifiedFlowPath(), "flow_prediction")
            straight.append(straightness(denoiser, held[0][:256, 0], class_labels=held[1][:256]))
        lines.append(f"| {name} | {statistics.mean(errors):.3f} ± {statistics.stdev(errors):.3f} | "
                     f"{statistics.mean(straight):.4f} ± {statistics.stdev(straight):.4f} |")
    return "\n".join(lines)


# -- shipped 2-D teacher ---------------------------------------------------------------------


def train_stage(config: str, run_dir: Path, overrides: list[str]) -> tuple[Path, float]:
    from fewstep.distill.config import load_config
    from fewstep.distill.loop import train

    start = time.perf_counter()
    result = train(load_config(REPO / "assets" / "configs" / config, [f"run_dir={run_dir}", "log_with=none",
                                                                        "checkpoint_every=0", *overrides]))
    return result.pipeline, time.perf_counter() - start


def mixture_cells(pipe, held: tuple[torch.Tensor, torch.Tensor], per_class: int, steps: tuple[int, ...]) -> str:
    """Energy distance at each step count, one-step RMS to the teacher's samples, straightness."""
    from fewstep.distill.evaluate import mixture_sample_report, straightness
    from fewstep.samplers import Denoiser, RectifiedFlowPath

    labels = torch.arange(8).repeat_interleave(per_class)
    energies = []
    for k in steps:
        x = pipe(class_labels=labels, num_inference_steps=k, output_type="pt", generator=torch.Generator().manual_seed(0)).images
        energies.append(f"{mixture_sample_report(torch.as_tensor(x), labels)['energy_distance']:.4f}")
    states, pair_labels = held
    z = states[:, 0]
    one = pipe(class_labels=pair_labels, num_inference_steps=1, output_type="pt", latents=z).images
    rms = float((torch.as_tensor(one) - states[:, 1]).pow(2).mean().sqrt())
    s = straightness(Denoiser(pipe.unet, RectifiedFlowPath(), "flow_prediction"), z[:256], class_labels=pair_labels[:256])
    return f"{' / '.join(energies)} | {rms:.4f} | {s:.4f}"


def mixture_part(out: Path, reflow_steps: int, distill_steps: int, per_class: int) -> str:
    from diffusers import DiffusionPipeline

    import fewstep.pipelines  # noqa: F401
    from fewstep.distill.evaluate import mixture_sample_report
    from fewstep.distill.teacher_pairs import PairRecipe, teacher_pair_dataset
    from fewstep.pipelines.loading import load_teacher
    from fewstep.samplers import get_schedule, sample

    teacher_dir = REPO / "assets" / "teachers" / "mixture_flow"
    teacher = load_teacher(teacher_dir)
    held = teacher_pair_dataset(teacher, PairRecipe.from_solver("dpmpp_2m", teacher.path, 16, seed=99, shard_size=1024),
                                1024, progress=False).tensors
    pairs = [f"objective.pairs_dir={out / 'pairs'}"]
    lines = [f"\nShipped 2-D 8-Gaussians flow teacher (MLP width 128, {parameter_count(teacher.network) / 1e3:.0f}k) -> MLP "
             f"width 32; stage 1 {reflow_steps} steps, stage 2 {distill_steps} steps, batch 512; 8,192 pairs "
             f"(DPM-Solver++(2M), 16 steps); {per_class} samples per class; Euler for every student\n",
             "| model | parameters | energy distance at 1 / 2 / 4 steps | one-step RMS to the teacher's sample | "
             "straightness | training time |", "|---|---|---|---|---|---|"]
    labels = torch.arange(8).repeat_interleave(per_class)
    cells = []
    for k in (1, 2, 4, 32):
        x = sample(teacher.denoiser, torch.randn(labels.numel(), 2, generator=torch.Generator().manual_seed(0)),
                   get_schedule("uniform", teacher.path, k), "dpmpp_2m", class_labels=labels).x
        cells.append(f"{mixture_sample_report(x, labels)['energy_distance']:.4f}")
    lines.append(f"| teacher, DPM-Solver++(2M) at 1 / 2 / 4 (/ 32) steps | {parameter_count(teacher.network) / 1e3:.0f}k | "
                 f"{' / '.join(cells[:3])} ({cells[3]}) | | | |")
    stage1 = {"annealing": ("annealing reflow (beta 1 -> 0)", []),
              "reflow": ("plain reflow (beta = 0)", ["objective.beta_start=0"]),
              "flow_matching": ("flow matching on teacher samples (beta = 1)", ["objective.beta_end=1"])}
    stage2 = {"l2": ("L2 + two-step guidance", []), "l2_noguide": ("L2, no guidance term", ["objective.guidance_weight=0"]),
              "huber": ("pseudo-Huber + guidance", ["objective.distance=pseudo_huber"])}
    for slug, (name, overrides) in stage1.items():
        pipeline, seconds = train_stage("mixture_slimflow_reflow.yaml", out / slug,
                                        [f"max_steps={reflow_steps}", *MIXTURE_STUDENT, *pairs, *overrides])
        pipe = DiffusionPipeline.from_pretrained(pipeline)
        lines.append(f"| stage 1: {name} | {parameter_count(pipe.unet) / 1e3:.1f}k | "
                     f"{mixture_cells(pipe, held, per_class, STUDENT_STEPS)} | {seconds:.0f} s |")
        for guide, (guide_name, guide_overrides) in (stage2 if slug == "annealing" else {"l2": stage2["l2"]}).items():
            distilled, more = train_stage("mixture_slimflow_distill.yaml", out / f"{slug}_{guide}",
                                          [f"max_steps={distill_steps}", f"model.pretrained={pipeline}", *pairs, *guide_overrides])
            pipe = DiffusionPipeline.from_pretrained(distilled)
            lines.append(f"| stage 2 from {name.split(' (')[0]}: {guide_name} | {parameter_count(pipe.unet) / 1e3:.1f}k | "
                         f"{mixture_cells(pipe, held, per_class, STUDENT_STEPS)} | {seconds + more:.0f} s |")
    msd = DiffusionPipeline.from_pretrained(REPO / "assets" / "students" / "mixture_flow_msd")
    x = msd(class_labels=labels, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    lines.append(f"| shipped MSD K = 4 (assets/students/mixture_flow_msd), 1 step | 4 x "
                 f"{parameter_count(msd.unet.students[0]) / 1e3:.0f}k | "
                 f"{mixture_sample_report(torch.as_tensor(x), labels)['energy_distance']:.4f} | | | |")
    return "\n".join(lines)


# -- MNIST ----------------------------------------------------------------------------------------


def mnist_part(students: dict[str, str], num_images: int, batch_size: int, replicates: int) -> str:
    from fewstep.distill.evaluate import straightness
    from fewstep.metrics.mnist import MnistScorer
    from fewstep.pipelines.loading import load_teacher

    scorer = MnistScorer()
    probe = torch.randn(256, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    probe_labels = torch.arange(256) % 10

    def score(model, steps: int, solver: str, guidance: float) -> tuple[str, float]:
        return mnist_score_cells(scorer, model, steps, solver, guidance, num_images, batch_size, replicates)

    teacher = load_teacher(REPO / "assets" / "teachers" / "mnist_flow")
    teacher_size = parameter_count(teacher.network)
    lines = [f"\nMNIST, {num_images} images per row (FID_{num_images} on mnist features, 95 % bootstrap interval, "
             f"{replicates} replicates; label accuracy of the shipped classifier); straightness: 32 Euler steps from 256 "
             f"noises; time per image relative to the teacher's 32-step run in this run (batch {batch_size})\n",
             "| model | parameters (vs teacher) | steps | FID | accuracy | network calls per image | straightness | "
             "time per image vs teacher 32 steps |", "|---|---|---|---|---|---|---|---|"]
    rows, reference = [], None
    teacher_straightness = straightness(teacher.guided(2.0), probe, class_labels=probe_labels)
    for steps in sorted(TEACHER_STEPS, reverse=True):
        cells, seconds = score(teacher, steps, "dpmpp_2m", 2.0)
        reference = reference or seconds
        rows.append(f"| teacher mnist_flow (DPM-Solver++(2M), w = 2) | {teacher_size / 1e3:.0f}k (1) | {steps} | {cells} | "
                    f"{teacher_straightness:.4f} | {seconds / reference:.3f}x |")
    lines += rows[::-1]
    for name, folder in students.items():
        student = load_teacher(folder)
        size = parameter_count(student.network)
        s = straightness(student.denoiser, probe, class_labels=probe_labels)
        for steps in STUDENT_STEPS:
            cells, seconds = score(student, steps, "ddim", 1.0)
            lines.append(f"| {name} (Euler) | {size / 1e3:.0f}k ({size / teacher_size:.2f}) | {steps} | {cells} | {s:.4f} | "
                         f"{seconds / reference:.3f}x ({reference / seconds:.0f}x faster) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["exact", "mixture", "mnist"])
    parser.add_argument("--seeds", type=int, default=4, help="exact: seeds per variant")
    parser.add_argument("--steps", type=int, default=400, help="exact: training steps")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_slimflow"), help="mixture: run folders")
    parser.add_argument("--reflow-steps", type=int, default=3000, help="mixture: stage-1 steps")
    parser.add_argument("--distill-steps", type=int, default=1500, help="mixture: stage-2 steps")
    parser.add_argument("--per-class", type=int, default=500, help="mixture: samples per class")
    parser.add_argument("--students", nargs="*", default=[], help="mnist: NAME=PIPELINE_FOLDER (split at the last =)")
    parser.add_argument("--n", type=int, default=1000, help="mnist: images per row")
    parser.add_argument("--batch-size", type=int, default=250, help="mnist: generation batch")
    parser.add_argument("--replicates", type=int, default=200, help="mnist: bootstrap replicates")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {describe_machine()}\n")
    if args.part == "exact":
        print(exact_part(args.seeds, args.steps))
    elif args.part == "mixture":
        print(mixture_part(args.out, args.reflow_steps, args.distill_steps, args.per_class))
    else:
        print(mnist_part(dict(item.rsplit("=", 1) for item in args.students), args.n, args.batch_size, args.replicates))


if __name__ == "__main__":
    main()
