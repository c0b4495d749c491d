"""Benchmark MSD / DMD one-step students against their teachers (issue 11; docs/BENCHMARKS.md).

    python scripts/bench_msd.py mixture --out runs/bench_msd         # trains every mixture variant (~25 min, 1 thread)
    python scripts/bench_msd.py mnist --n 1000 --teachers mnist_flow mnist_vp --students K1=runs/mnist_dmd/pipeline K2=...

mixture: the 2-D 8-Gaussians flow teacher at 1/2/4/8/32 steps (best of DPM-Solver++(2M) / UniPC-bh2
on uniform and logSNR grids) vs one DMD student and MSD with K = 2, 4, 8 teacher-size students
(equal total training compute: K x batch_per_student is fixed), and K = 4 quarter-size students
with and without TSM (their total parameters equal one teacher-size student). Cells: per-class
mean error and covariance error against the exact mixture, and the energy distance.

mnist: FID on the `mnist` features (N samples, 95 % bootstrap interval) and label accuracy of the
shipped classifier, teacher (guidance 2, DPM-Solver++(2M), uniform grid) at 1/2/4/8/32 steps
and every student pipeline given; time per image of each student vs the teacher's 32-step run
(same run, same batch size).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import mnist_score_cells, parameter_count  # noqa: E402
from fewstep.io import describe_machine  # noqa: E402

TEACHER_STEPS = (1, 2, 4, 8, 32)
MIXTURE_CLASSES = 8
#: (label, config overrides) of the mixture variants; the per-step generated batch is 512 in each.
MIXTURE_VARIANTS = {
    "DMD, 1 student": ["objective.num_students=1", "objective.batch_per_student=512"],
    "MSD K=2": ["objective.num_students=2", "objective.batch_per_student=256"],
    "MSD K=4": ["objective.num_students=4", "objective.batch_per_student=128"],
    "MSD K=8": ["objective.num_students=8", "objective.batch_per_student=64"],
}
#: quarter-size MLP students (width 64): TSM-initialised or random.
SMALL_STUDENT = ["model.width=64", "model.num_blocks=3"]



def mixture_samples(pipe, per_class: int, steps: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(MIXTURE_CLASSES).repeat_interleave(per_class)
    x = pipe(class_labels=labels, num_inference_steps=steps, output_type="pt", generator=torch.Generator().manual_seed(seed)).images
    return x, labels


def teacher_mixture_rows(per_class: int) -> list[str]:
    """Best fewstep sampler of the mixture teacher at each step count (lowest energy distance)."""
    from fewstep.distill.evaluate import mixture_sample_report
    from fewstep.pipelines.loading import load_teacher
    from fewstep.samplers import get_schedule, sample

    teacher = load_teacher(REPO / "assets" / "teachers" / "mixture_flow")
    labels = torch.arange(MIXTURE_CLASSES).repeat_interleave(per_class)
    z = torch.randn((labels.shape[0], 2), generator=torch.Generator().manual_seed(0))
    rows = []
    for steps in TEACHER_STEPS:
        best = None
        for solver in ("dpmpp_2m", "unipc_bh2"):
            for schedule in ("uniform", "logsnr"):
                with torch.no_grad():
                    x = sample(teacher.denoiser, z, get_schedule(schedule, teacher.path, steps), solver, class_labels=labels).x
                report = mixture_sample_report(x, labels)
                if best is None or report["energy_distance"] < best[1]["energy_distance"]:
                    best = (f"{solver}, {schedule}", report)
        name, report = best
        rows.append(row(f"teacher, {steps} steps ({name})", parameter_count(teacher.network), report))
    return rows


def row(label: str, params: int, report: dict[str, float], extra: str = "") -> str:
    return (f"| {label} | {params / 1e3:.0f}k | {report['mean_error']:.4f} | {report['cov_error']:.4f} | "
            f"{report['energy_distance']:.4f} |{extra}")


def train_variant(out: Path, name: str, overrides: list[str], max_steps: int) -> tuple[Path, float]:
    from fewstep.distill.config import load_config
    from fewstep.distill.loop import train

    start = time.perf_counter()
    config = load_config(REPO / "assets" / "configs" / "mixture_msd.yaml",
                         [f"run_dir={out / name}", "log_with=none", f"max_steps={max_steps}", "checkpoint_every=0", *overrides])
    result = train(config)
    return result.pipeline, time.perf_counter() - start


def mixture_part(out: Path, max_steps: int, tsm_steps: int, per_class: int) -> str:
    from diffusers import DiffusionPipeline

    import fewstep.pipelines  # noqa: F401
    from fewstep.distill.config import load_config
    from fewstep.distill.evaluate import mixture_sample_report
    from fewstep.distill.loop import train

    lines = [f"\n2-D 8-Gaussians flow teacher; {per_class} samples per class; students trained {max_steps} steps "
             "(512 generated samples per step in total)\n",
             "| model | parameters (per student) | mean error | cov error | energy distance | training time |",
             "|---|---|---|---|---|---|"]
    lines += [r + " |" for r in teacher_mixture_rows(per_class)]
    runs = {name: ["model.type=pretrained", *overrides] for name, overrides in MIXTURE_VARIANTS.items()}
    tsm_config = load_config(None, [f"run_dir={out / 'tsm'}", "log_with=none", f"max_steps={tsm_steps}", "checkpoint_every=0",
                                    "model.type=mlp", "model.num_classes=8", *SMALL_STUDENT,
                                    f"model.teacher={REPO / 'assets' / 'teachers' / 'mixture_flow'}", "objective.name=tsm",
                                    "data.name=8gaussians", "data.options={n: 20000}", "data.batch_size=512",
                                    "optim.lr=2e-3", "optim.ema_decay=0.999", "optim.ema_warmup=true"])
    tsm_start = time.perf_counter()
    tsm = train(tsm_config).pipeline
    tsm_time = time.perf_counter() - tsm_start
    teacher_path = REPO / "assets" / "teachers" / "mixture_flow"
    runs["MSD K=4, 1/4-size students, TSM init"] = ["model.type=pretrained", f"model.pretrained={tsm}",
                                                    f"model.teacher={teacher_path}", *MIXTURE_VARIANTS["MSD K=4"]]
    runs["MSD K=4, 1/4-size students, random init"] = ["model.type=mlp", *SMALL_STUDENT, f"model.teacher={teacher_path}",
                                                       *MIXTURE_VARIANTS["MSD K=4"]]
    for name, overrides in runs.items():
        pipeline, seconds = train_variant(out, name.replace(" ", "_").replace(",", "").replace("/", "-"), overrides, max_steps)
        pipe = DiffusionPipeline.from_pretrained(pipeline)
        x, labels = mixture_samples(pipe, per_class)
        params = parameter_count(pipe.unet.students[0])
        extra = f" {seconds:.0f} s" + (f" (+ TSM {tsm_time:.0f} s)" if "TSM" in name else "") + " |"
        lines.append(row(f"{name}, 1 step", params, mixture_sample_report(x, labels), extra))
    return "\n".join(lines)


def mnist_part(teachers: list[str], students: dict[str, str], num_images: int, batch_size: int, replicates: int) -> str:
    from fewstep.metrics.mnist import MnistScorer
    from fewstep.pipelines.loading import load_teacher

    scorer = MnistScorer()

    def score(model, steps: int, guidance: float) -> tuple[str, float]:
        return mnist_score_cells(scorer, model, steps, "dpmpp_2m", guidance, num_images, batch_size, replicates)

    lines = [f"\nMNIST, {num_images} images (FID_{num_images} on mnist features with a 95 % bootstrap interval, "
             f"{replicates} replicates; label accuracy of the shipped classifier; time per image relative to the "
             f"{teachers[0]} teacher's 32-step run in this run, batch {batch_size})\n",
             "| model | parameters | FID | accuracy | network calls per image | time per image vs teacher 32 steps |",
             "|---|---|---|---|---|---|"]
    reference_time = None
    for name in teachers:
        teacher = load_teacher(REPO / "assets" / "teachers" / name)
        rows = []
        for steps in sorted(TEACHER_STEPS, reverse=True):
            cells, seconds = score(teacher, steps, 2.0)
            reference_time = reference_time or seconds
            rows.append(f"| teacher {name}, {steps} steps (DPM-Solver++(2M), uniform, w = 2) | "
                        f"{parameter_count(teacher.network) / 1e3:.0f}k | {cells} | {seconds / reference_time:.3f}x |")
        lines += rows[::-1]
    for name, folder in students.items():
        student = load_teacher(folder)
        sizes = [parameter_count(s) for s in getattr(student.network, "students", [student.network])]
        cells, seconds = score(student, 1, 1.0)
        size = f"{len(sizes)} x {sizes[0] / 1e3:.0f}k" if len(sizes) > 1 else f"{sizes[0] / 1e3:.0f}k"
        lines.append(f"| {name}, 1 step | {size} | {cells} | {seconds / reference_time:.3f}x "
                     f"({reference_time / seconds:.0f}x faster) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["mixture", "mnist"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_msd"), help="mixture: run folders")
    parser.add_argument("--max-steps", type=int, default=1000, help="mixture: student training steps")
    parser.add_argument("--tsm-steps", type=int, default=1500, help="mixture: TSM steps of the quarter-size student")
    parser.add_argument("--per-class", type=int, default=500, help="mixture: samples per class")
    parser.add_argument("--teachers", nargs="+", default=["mnist_flow"], help="mnist: teachers under assets/teachers")
    parser.add_argument("--students", nargs="*", default=[], help="mnist: NAME=PIPELINE_FOLDER of each student (split at the last =)")
    parser.add_argument("--n", type=int, default=1000, help="mnist: images per model")
    parser.add_argument("--batch-size", type=int, default=250, help="mnist: generation batch")
    parser.add_argument("--replicates", type=int, default=200, help="mnist: bootstrap replicates")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {describe_machine()}\n")
    if args.part == "mixture":
        print(mixture_part(args.out, args.max_steps, args.tsm_steps, args.per_class))
    else:
        students = dict(item.rsplit("=", 1) for item in args.students)
        print(mnist_part(args.teachers, students, args.n, args.batch_size, args.replicates))


if __name__ == "__main__":
    main()
