"""BOSS straightening, its ablations and reflow on the shipped MNIST flow teacher (issue 5); prints Markdown.

    OMP_NUM_THREADS=1 python scripts/bench_straighten.py --steps 4 --variants boss uniform reflow boss-lora

Variants, all at the same budget (noises, optimizer steps, batch, learning rate):
  boss       straighten for the BOSS K-step grid (Nguyen et al. 2024)
  uniform    straighten for the uniform K-step grid (the grid ablation)
  boss-lora  straighten for the BOSS grid training only LoRA adapters (peft; rank --lora-rank)
  reflow     plain reflow on (noise, teacher sample) pairs (Liu et al. 2023); not tied to K, trained once
             and scored on every K's BOSS and uniform grids
The uniform grid is snapped to the 100-step fine grid (K = 6: 1, .83, .67, .5, .33, .17, 0).
Scores: Euler on the grid; FID on `mnist` features, label accuracy, RMS error to the teacher's
32-step DPM-Solver++(3M) samples from the same noise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fewstep.distill.config import load_config
from fewstep.distill.loop import train
from fewstep.io import assets_dir
from fewstep.metrics.mnist import MnistScorer
from fewstep.pipelines.loading import load_teacher
from fewstep.pipelines.scoring import generate_images, rms_pixel_error
from fewstep.samplers import get_schedule
from fewstep.samplers.boss import boss_schedule
from fewstep.samplers.spec import SamplerSpec

VARIANTS = ("boss", "uniform", "boss-lora", "reflow")
#: the teacher's fine grid (trajectories, BOSS search); straightening grids must lie on it.
FINE_STEPS = 100


def snap_to_grid(ts: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """Each time of `ts` moved to the nearest point of `fine` (uniform K-step grids with K not dividing 100)."""
    return fine[(ts[:, None] - fine[None, :]).abs().argmin(dim=1)]


def finetune(teacher_dir: Path, run_dir: Path, objective: str, spec: Path | None, args, lora_rank: int = 0) -> tuple[Path, float]:
    """Train one variant; returns (exported pipeline, seconds)."""
    config = load_config(None, [
        f"run_dir={run_dir}", "log_with=none", "checkpoint_every=0", "samples_per_class=4",
        f"max_steps={args.train_steps}", "model.type=pretrained", f"model.pretrained={teacher_dir}",
        "model.num_classes=10", f"objective.name={objective}", f"objective.spec={spec or 'null'}",
        f"objective.num_noises={args.noises}", f"objective.fine_steps={FINE_STEPS}", f"objective.lora_rank={lora_rank}",
        "data.batch_size=32", f"optim.lr={args.lora_lr if lora_rank else args.lr}",
        "optim.lr_scheduler=constant_with_warmup", "optim.lr_warmup_steps=50", "optim.ema_decay=0.99",
    ])
    start = time.perf_counter()
    result = train(config)
    return result.pipeline, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[4])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["boss", "uniform"])
    parser.add_argument("--noises", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    teacher_dir = assets_dir() / "teachers" / "mnist_flow"
    teacher = load_teacher(teacher_dir)
    path = teacher.path
    work = Path(tempfile.mkdtemp(prefix="straighten_"))
    scorer = MnistScorer()
    reference, _, _ = generate_images(teacher, get_schedule("uniform", path, 32), "dpmpp_3m", args.images, seed=1)
    start = time.perf_counter()  # one teacher sampling pass: the fine grid on as many noises as training stores
    generate_images(teacher, get_schedule("uniform", path, 100), "ddim", args.noises, seed=2)
    teacher_pass = time.perf_counter() - start
    g = torch.Generator().manual_seed(0)
    search = [(torch.randn((64, *teacher.sample_shape), generator=g), teacher.class_labels(64))]
    rows: list[dict] = []

    def score(model_teacher, ts) -> dict:
        images, labels, _ = generate_images(model_teacher, ts, "ddim", args.images, seed=1)
        s = scorer.score(images, labels)
        return {"fid": s.fid, "accuracy": s.accuracy, "rms": rms_pixel_error(images, reference)}

    reflowed = None
    if "reflow" in args.variants:
        pipeline, seconds = finetune(teacher_dir, work / "reflow", "reflow", None, args)
        reflowed = (load_teacher(pipeline), seconds)
    for k in args.steps:
        fine = get_schedule("uniform", path, FINE_STEPS)
        grids = {"BOSS": boss_schedule(teacher.denoiser, search, k, fine).ts, "uniform": snap_to_grid(get_schedule("uniform", path, k), fine)}
        specs = {name: SamplerSpec.from_grid("ddim", ts, path, provenance={"method": name}).save(work / f"{name}_k{k}.safetensors")
                 for name, ts in grids.items()}
        for name, ts in grids.items():
            rows.append({"K": k, "grid": name, "model": "teacher", **score(teacher, ts), "seconds": None})
        runs = [("boss", "BOSS", "straightened", 0), ("uniform", "uniform", "straightened", 0),
                ("boss-lora", "BOSS", f"straightened, LoRA r={args.lora_rank}", args.lora_rank)]
        for variant, grid, label, rank in runs:
            if variant in args.variants:
                pipeline, seconds = finetune(teacher_dir, work / f"{variant}_k{k}", "boss_straighten", specs[grid], args, rank)
                rows.append({"K": k, "grid": grid, "model": label, **score(load_teacher(pipeline), grids[grid]), "seconds": seconds})
        if reflowed is not None:
            for name, ts in grids.items():
                rows.append({"K": k, "grid": name, "model": "reflow", **score(reflowed[0], ts), "seconds": reflowed[1]})
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"| K | grid (Euler) | model | FID_{args.images} | accuracy | RMS vs teacher 32-step | training time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        seconds = f"{r['seconds']:.0f} s ({r['seconds'] / teacher_pass:.1f}x teacher pass)" if r["seconds"] else ""
        lines.append(f"| {r['K']} | {r['grid']} | {r['model']} | {r['fid']:.2f} | {100 * r['accuracy']:.1f}% | {r['rms']:.3f} | {seconds} |")
    lines.append(f"\nOne teacher pass (100 Euler steps on {args.noises} noises): {teacher_pass:.0f} s.")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
