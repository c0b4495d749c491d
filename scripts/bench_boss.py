"""BOSS benchmark (issue 5); prints Markdown for docs/BENCHMARKS.md.

    python scripts/bench_boss.py --part mixture            # exact 2-D mixtures, ~3 min on 2 CPU cores
    python scripts/bench_boss.py --part mnist              # shipped MNIST flow teacher, FID on `mnist` features (~10 min)

Every grid is evaluated on the same held-out noises. On the mixtures the error is the RMS
distance to the exact ODE endpoint (RK4 reference); the DP objective (sum of the teacher's
local one-step errors, averaged over the search noises) is reported beside it.
"""

from __future__ import annotations

import argparse
import time

import torch

from fewstep.io import describe_machine
from fewstep.samplers import GaussianMixture, RectifiedFlowPath, get_schedule, get_solver, sample
from fewstep.samplers.boss import boss_schedule, teacher_trajectories
from fewstep.samplers.evaluation import exact_endpoint, rmse

KS = [2, 4, 6, 8]


def mixtures() -> dict[str, GaussianMixture]:
    from fewstep.data.mixtures import mixture_parameters

    return {name: GaussianMixture(**mixture_parameters(name)) for name in ["8gaussians", "moons"]}


def grids_for(denoiser, k: int, search_noise: list[torch.Tensor], fine_ts: torch.Tensor) -> dict[str, tuple]:
    """name -> (solver, ts, DP objective or None)."""
    path = denoiser.path
    euler = boss_schedule(denoiser, search_noise, k, fine_ts, step_rule="euler")
    two_m = boss_schedule(denoiser, search_noise, k, fine_ts, step_rule="dpmpp_2m")
    return {
        "Euler, uniform": ("ddim", get_schedule("uniform", path, k), euler.uniform_objective),
        "Euler, BOSS": ("ddim", euler.ts, euler.objective),
        "2M, uniform": ("dpmpp_2m", get_schedule("uniform", path, k), two_m.uniform_objective),
        "2M, BOSS-Euler grid": ("dpmpp_2m", euler.ts, None),
        "2M, BOSS-for-2M": ("dpmpp_2m", two_m.ts, two_m.objective),
        "2M, logSNR": ("dpmpp_2m", get_schedule("logsnr", path, k), None),
        "2M, Karras": ("dpmpp_2m", get_schedule("karras", path, k), None),
    }


def best_time(fn, repeats: int):
    """(result, seconds): the fastest of `repeats` calls, so a millisecond-scale timing is not one noisy sample."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def mixture_part(noises: int, search_noises: int, repeats: int = 5) -> str:
    path = RectifiedFlowPath()
    fine_ts = get_schedule("uniform", path, 100)
    out = []
    for name, mixture in mixtures().items():
        denoiser = mixture.denoiser(path)
        g = torch.Generator().manual_seed(0)
        search = [torch.randn(search_noises, 2, generator=g, dtype=torch.float64)]
        test = torch.randn(noises, 2, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
        target = exact_endpoint(denoiser, test)
        _, teacher_pass = best_time(lambda: teacher_trajectories(denoiser, search[0], fine_ts), repeats)
        rows: dict[str, dict[int, str]] = {}
        search_time = {}
        for k in KS:
            grids, seconds = best_time(lambda: grids_for(denoiser, k, search, fine_ts), repeats)
            search_time[k] = seconds / 2
            for label, (solver, ts, objective) in grids.items():
                err = rmse(sample(denoiser, test, ts, get_solver(solver)).x, target)
                obj = f" / {objective:.2e}" if objective is not None else ""
                rows.setdefault(label, {})[k] = f"{err:.3f}{obj}"
        out.append(f"\n#### {name} (rectified flow, exact denoiser): RMS error vs exact ODE endpoint / DP objective\n")
        out.append("| grid | " + " | ".join(f"K = {k}" for k in KS) + " |")
        out.append("|---|" + "---|" * len(KS))
        out += [f"| {label} | " + " | ".join(cells[k] for k in KS) + " |" for label, cells in rows.items()]
        ratios = ", ".join(f"K={k}: {search_time[k] / teacher_pass:.1f}x" for k in KS)
        dp_ms = ", ".join(f"K={k}: {1000 * max(search_time[k] - teacher_pass, 0.0):.0f} ms" for k in KS)
        out.append(f"\nSchedule search time (trajectories + DP, per step rule) / one 100-step teacher pass on the "
                   f"same {search_noises} noises (best of {repeats} runs each): {ratios}. The teacher pass (the "
                   f"floor: the search must integrate the teacher once) takes {1000 * teacher_pass:.1f} ms here; "
                   f"the DP on top of it takes {dp_ms}, a fixed cost independent of the network.")
    return "\n".join(out)


def mnist_part(num_images: int, search_noises: int) -> str:
    """FID / accuracy / RMS-to-reference of BOSS and analytic grids on the shipped MNIST flow teacher."""
    from fewstep.io import assets_dir
    from fewstep.metrics.mnist import MnistScorer
    from fewstep.pipelines.loading import load_teacher
    from fewstep.pipelines.scoring import generate_images, rms_pixel_error

    teacher = load_teacher(assets_dir() / "teachers" / "mnist_flow")
    scorer = MnistScorer()
    path = teacher.path
    fine_ts = get_schedule("uniform", path, 100)
    g = torch.Generator().manual_seed(0)
    search = [(torch.randn((search_noises, *teacher.sample_shape), generator=g), teacher.class_labels(search_noises))]
    reference, labels, _ = generate_images(teacher, get_schedule("uniform", path, 32), "dpmpp_3m", num_images, seed=1)
    ref_scores = scorer.score(reference, labels)
    lines = [f"\nmnist_flow teacher (no guidance): FID_{num_images} on mnist features / accuracy / RMS pixel error "
             f"vs the 32-step DPM-Solver++(3M) samples from the same noise (reference: FID {ref_scores.fid:.2f}, "
             f"accuracy {100 * ref_scores.accuracy:.1f}%). Search: {search_noises} noises, 100 fine steps.\n",
             "| grid | " + " | ".join(f"K = {k}" for k in KS) + " |", "|---|" + "---|" * len(KS)]
    rows: dict[str, dict[int, str]] = {}
    start = time.perf_counter()
    teacher_trajectories(teacher.denoiser, search[0][0], fine_ts, **search[0][1])
    teacher_pass = time.perf_counter() - start
    search_seconds = []
    for k in KS:
        start = time.perf_counter()
        euler = boss_schedule(teacher.denoiser, search, k, fine_ts, step_rule="euler")
        two_m = boss_schedule(teacher.denoiser, search, k, fine_ts, step_rule="dpmpp_2m")
        search_seconds.append((time.perf_counter() - start) / 2)
        grids = {
            "Euler, uniform": ("ddim", get_schedule("uniform", path, k), f" / {euler.uniform_objective:.3g}"),
            "Euler, BOSS": ("ddim", euler.ts, f" / {euler.objective:.3g}"),
            "2M, uniform": ("dpmpp_2m", get_schedule("uniform", path, k), f" / {two_m.uniform_objective:.3g}"),
            "2M, BOSS-for-2M": ("dpmpp_2m", two_m.ts, f" / {two_m.objective:.3g}"),
            "2M, SD3 shift 3": ("dpmpp_2m", get_schedule("flow_shift", path, k, shift=3.0), ""),
        }
        for label, (solver, ts, objective) in grids.items():
            images, labels, _ = generate_images(teacher, ts, solver, num_images, seed=1)
            scores = scorer.score(images, labels)
            err = rms_pixel_error(images, reference)
            rows.setdefault(label, {})[k] = f"{scores.fid:.2f} / {100 * scores.accuracy:.0f}% / {err:.3f}{objective}"
    lines += [f"| {label} | " + " | ".join(cells[k] for k in KS) + " |" for label, cells in rows.items()]
    lines.append("\nCells: FID / accuracy / RMS error to reference / DP objective (where the grid has one). Search "
                 f"time per step rule / one 100-step teacher pass: {min(search_seconds) / teacher_pass:.1f}-"
                 f"{max(search_seconds) / teacher_pass:.1f}x.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["mixture", "mnist"], default="mixture")
    parser.add_argument("--noises", type=int, default=2000, help="held-out evaluation noises")
    parser.add_argument("--search-noises", type=int, default=200)
    parser.add_argument("--images", type=int, default=500, help="MNIST part: images per grid")
    args = parser.parse_args()
    print(f"Machine: {describe_machine()}\n")
    torch.set_grad_enabled(False)
    if args.part == "mixture":
        print(mixture_part(args.noises, args.search_noises))
    else:
        print(mnist_part(args.images, min(args.search_noises, 100)))


if __name__ == "__main__":
    main()
