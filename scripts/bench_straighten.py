"""BOSS straightening on the shipped MNIST flow teacher (issue 5); prints Markdown for docs/BENCHMARKS.md.

    OMP_NUM_THREADS=1 python scripts/bench_straighten.py --steps 4 --noises 512 --train-steps 600

Straightens the teacher for (a) the BOSS K-step grid and (b) the uniform K-step grid (the
ablation at the same training budget), then scores Euler on each grid before and after:
FID on `mnist` features, accuracy, RMS error to the teacher's 32-step DPM-Solver++(3M)
samples from the same noise.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fewstep.distill.config import load_config
from fewstep.distill.loop import train
from fewstep.metrics.mnist import assets_dir
from fewstep.pipelines.loading import load_teacher
from fewstep.pipelines.scoring import MnistScorer, generate_images, rms_pixel_error
from fewstep.samplers import get_schedule
from fewstep.samplers.boss import boss_schedule
from fewstep.samplers.spec import SamplerSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--noises", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    teacher_dir = assets_dir() / "teachers" / "mnist_flow"
    teacher = load_teacher(teacher_dir)
    path, fine = teacher.path, get_schedule("uniform", teacher.path, 100)
    work = Path(tempfile.mkdtemp(prefix="straighten_"))
    g = torch.Generator().manual_seed(0)
    search = [(torch.randn((64, *teacher.sample_shape), generator=g), teacher.class_labels(64))]
    grids = {"BOSS": boss_schedule(teacher.denoiser, search, args.steps, fine).ts,
             "uniform": get_schedule("uniform", path, args.steps)}
    scorer = MnistScorer()
    reference, labels, _ = generate_images(teacher, get_schedule("uniform", path, 32), "dpmpp_3m", args.images, seed=1)
    lines = [f"| grid (K = {args.steps}, Euler) | model | FID_{args.images} | accuracy | RMS vs teacher 32-step | straightening time |",
             "|---|---|---|---|---|---|"]

    def score(model_teacher, ts) -> str:
        images, labels_, _ = generate_images(model_teacher, ts, "ddim", args.images, seed=1)
        s = scorer.score(images, labels_)
        err = rms_pixel_error(images, reference)
        return f"{s.fid:.2f} | {100 * s.accuracy:.1f}% | {err:.3f}"

    for name, ts in grids.items():
        spec_file = SamplerSpec.from_grid("ddim", ts, path, provenance={"method": name}).save(work / f"{name}.safetensors")
        lines.append(f"| {name} | teacher | {score(teacher, ts)} | |")
        config = load_config(None, [
            f"run_dir={work / name}", "log_with=none", "checkpoint_every=0", "samples_per_class=4",
            f"max_steps={args.train_steps}", "model.type=pretrained", f"model.pretrained={teacher_dir}",
            "model.num_classes=10", "objective.name=boss_straighten", f"objective.spec={spec_file}",
            f"objective.num_noises={args.noises}", "objective.fine_steps=100", "data.batch_size=32",
            "optim.lr=2e-4", "optim.lr_scheduler=constant_with_warmup", "optim.lr_warmup_steps=50",
            "optim.ema_decay=0.99",
        ])
        start = time.perf_counter()
        result = train(config)
        seconds = time.perf_counter() - start
        lines.append(f"| {name} | straightened | {score(load_teacher(result.pipeline), ts)} | {seconds:.0f} s |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
